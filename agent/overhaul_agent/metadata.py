"""The instance metadata document the orchestrator hands each instance on its config drive (pure parsing)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overhaul_agent.extension_plan import Extension, parse_extensions
from overhaul_agent.settings import SettingsError


@dataclass(frozen=True)
class InstanceMetadata:
    instance_id: str | None = None
    scale_set: str | None = None
    image_reference: Mapping[str, Any] = field(default_factory=dict)
    extensions: tuple[Extension, ...] = ()
    custom_data: str | None = None
    # What the orchestrator shows when it pushes platform notices (PUT /platform/tags); none: it does not push.
    platform_token: str | None = None

    @property
    def health_settings(self) -> Mapping[str, Any] | None:
        """The ApplicationHealthLinux extension's settings, if the model has one."""
        for ext in self.extensions:
            if ext.is_health:
                return ext.settings
        return None


def parse_metadata(doc: Any) -> InstanceMetadata:
    if not isinstance(doc, Mapping):
        raise SettingsError("metadata", "must be a JSON object")

    def text(key: str) -> str | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise SettingsError(f"metadata.{key}", "must be a string")
        return str(value)

    image = doc.get("imageReference", {}) or {}
    if not isinstance(image, Mapping):
        raise SettingsError("metadata.imageReference", "must be a JSON object")
    return InstanceMetadata(
        instance_id=text("instanceId"),
        scale_set=text("scaleSet"),
        image_reference=dict(image),
        extensions=tuple(parse_extensions(doc.get("extensionProfile"), field="metadata.extensionProfile")),
        custom_data=text("customData"),
        platform_token=text("platformToken"),
    )


# Settings and metadata documents are small; a larger file is a mistake, not something to parse.
MAX_FILE_BYTES = 1 << 20


def load_json_file(path: str, what: str) -> Any:
    """Read a JSON file; errors name the file and what it was for."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError(what, f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(what, f"{path} is not UTF-8 text: {exc.reason}") from exc
    if len(text) > MAX_FILE_BYTES:
        raise SettingsError(what, f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise SettingsError(what, f"{path} is not valid JSON: nested too deeply") from exc
    except ValueError as exc:
        raise SettingsError(what, f"{path} is not valid JSON: {exc}") from exc
