"""Pure part of extensions: parse the model's extensionProfile and order it by provisionAfterExtensions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from overhaul_agent.settings import SettingsError

CUSTOM_SCRIPT_TYPES = frozenset({"customscript", "customscriptforlinux"})
HEALTH_TYPES = frozenset({"applicationhealthlinux", "applicationhealthwindows"})
# Azure's CustomScript limit is 90 minutes.
DEFAULT_SCRIPT_TIMEOUT = 90 * 60.0


class ProvisioningState(StrEnum):
    TRANSITIONING = "Transitioning"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Extension:
    name: str
    type: str
    settings: Mapping[str, Any]
    provision_after: tuple[str, ...]
    command: str | None
    timeout: float

    @property
    def is_health(self) -> bool:
        return self.type.lower() in HEALTH_TYPES

    @property
    def fingerprint(self) -> str:
        """Changes when what the extension would do changes, so a new command runs again."""
        doc = {"type": self.type, "command": self.command, "settings": self.settings}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExtensionStatus:
    name: str
    type: str
    state: ProvisioningState
    fingerprint: str = ""
    exit_code: int | None = None
    message: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "provisioningState": self.state.value,
            "fingerprint": self.fingerprint,
            "exitCode": self.exit_code,
            "message": self.message,
            "stdoutTail": self.stdout_tail,
            "stderrTail": self.stderr_tail,
            "startTime": self.started_at,
            "endTime": self.finished_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ExtensionStatus:
        return cls(
            name=str(doc["name"]),
            type=str(doc["type"]),
            state=ProvisioningState(doc["provisioningState"]),
            fingerprint=str(doc.get("fingerprint", "")),
            exit_code=doc.get("exitCode"),
            message=str(doc.get("message", "")),
            stdout_tail=str(doc.get("stdoutTail", "")),
            stderr_tail=str(doc.get("stderrTail", "")),
            started_at=doc.get("startTime"),
            finished_at=doc.get("endTime"),
        )


def _parse_one(raw: Any, field: str) -> Extension:
    if not isinstance(raw, Mapping):
        raise SettingsError(field, "must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SettingsError(f"{field}.name", "is required")
    props = raw.get("properties", {})
    if not isinstance(props, Mapping):
        raise SettingsError(f"{field}.properties", "must be a JSON object")
    ext_type = props.get("type")
    if not isinstance(ext_type, str) or not ext_type:
        raise SettingsError(f"{field}.properties.type", "is required")
    settings = props.get("settings", {}) or {}
    protected = props.get("protectedSettings", {}) or {}
    if not isinstance(settings, Mapping):
        raise SettingsError(f"{field}.properties.settings", "must be a JSON object")
    if not isinstance(protected, Mapping):
        raise SettingsError(f"{field}.properties.protectedSettings", "must be a JSON object")
    after = props.get("provisionAfterExtensions", []) or []
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise SettingsError(f"{field}.properties.provisionAfterExtensions", "must be a list of extension names")
    command: str | None = None
    timeout = DEFAULT_SCRIPT_TIMEOUT
    if ext_type.lower() in CUSTOM_SCRIPT_TYPES:
        # Azure accepts commandToExecute in either settings or protectedSettings (the latter wins).
        command = protected.get("commandToExecute", settings.get("commandToExecute"))
        if not isinstance(command, str) or not command.strip():
            raise SettingsError(f"{field}.properties.settings.commandToExecute", "is required for CustomScript")
        extras = settings.get("overhaul", {})
        if not isinstance(extras, Mapping):
            raise SettingsError(f"{field}.properties.settings.overhaul", "must be a JSON object")
        raw_timeout = extras.get("timeoutInSeconds", DEFAULT_SCRIPT_TIMEOUT)
        if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float) or raw_timeout <= 0:
            raise SettingsError(
                f"{field}.properties.settings.overhaul.timeoutInSeconds",
                "must be a number of seconds above 0",
            )
        timeout = float(raw_timeout)
    return Extension(
        name=name,
        type=ext_type,
        settings=dict(settings),
        provision_after=tuple(after),
        command=command,
        timeout=timeout,
    )


def parse_extensions(profile: Any, *, field: str = "extensionProfile") -> list[Extension]:
    """Parse ``{"extensions": [...]}`` and return the extensions in a valid provisioning order."""
    if profile is None:
        return []
    if not isinstance(profile, Mapping):
        raise SettingsError(field, "must be a JSON object")
    raw_list = profile.get("extensions", [])
    if not isinstance(raw_list, list):
        raise SettingsError(f"{field}.extensions", "must be a list")
    extensions = [_parse_one(raw, f"{field}.extensions[{i}]") for i, raw in enumerate(raw_list)]
    names = [e.name for e in extensions]
    for i, ext in enumerate(extensions):
        if names.count(ext.name) > 1:
            raise SettingsError(f"{field}.extensions[{i}].name", f"duplicate extension name {ext.name!r}")
        for dep in ext.provision_after:
            if dep not in names:
                raise SettingsError(
                    f"{field}.extensions[{i}].properties.provisionAfterExtensions",
                    f"names unknown extension {dep!r}",
                )
    return order_extensions(extensions, field=field)


def order_extensions(extensions: Sequence[Extension], *, field: str = "extensionProfile") -> list[Extension]:
    """Stable topological order: an extension comes after those it names, otherwise in list order."""
    done: set[str] = set()
    ordered: list[Extension] = []
    pending = list(extensions)
    while pending:
        ready = next((e for e in pending if all(d in done for d in e.provision_after)), None)
        if ready is None:
            cycle = ", ".join(e.name for e in pending)
            raise SettingsError(f"{field}.extensions", f"provisionAfterExtensions forms a cycle among: {cycle}")
        ordered.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return ordered
