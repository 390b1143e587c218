"""Platform notices from the orchestrator (Azure's IMDS tags), and the application's answer to them.

With ``osRollingUpgradeDeferral`` the orchestrator writes ``platform.json`` beside the instance's metadata on its
config drive, ``{"tags": {"Platform.PendingOSUpgrade": "<version>"}}``, and holds the instance's OS upgrade until
it is approved. A VM's config drive is a read-only disk, so there the orchestrator pushes the same document to the
agent instead (``PUT /platform/tags``, with the ``platformToken`` of its metadata), which keeps it under its runtime
directory: it lives as long as the VM, and a new or restored OS disk boots with none. The application reads the tags
where Azure's IMDS has them and approves through the agent; the agent's /health then carries the approval, which the
orchestrator watches."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path

from overhaul_agent.metadata import load_json_file
from overhaul_agent.settings import SettingsError

PENDING_OS_UPGRADE = "Platform.PendingOSUpgrade"
FILE_NAME = "platform.json"


def parse_tags(doc: object) -> dict[str, str]:
    """The notice file's tags; a file that is not the expected shape names none."""
    tags = doc.get("tags") if isinstance(doc, Mapping) else None
    if not isinstance(tags, Mapping):
        return {}
    return {str(k): str(v) for k, v in tags.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}


class PlatformNotices:
    """Reads the notice file when asked (it changes while the agent runs: the config drive is live), or the notices
    the orchestrator pushed, which then win."""

    def __init__(self, path: Path | None, *, pushed: Path | None = None, token: str | None = None) -> None:
        self.path = path
        self.pushed = pushed
        self.token = token

    @classmethod
    def beside(
        cls, metadata_path: str | None, *, runtime_dir: Path | None = None, token: str | None = None
    ) -> PlatformNotices:
        return cls(
            Path(metadata_path).with_name(FILE_NAME) if metadata_path else None,
            pushed=runtime_dir / FILE_NAME if runtime_dir is not None else None,
            token=token,
        )

    def tags(self) -> dict[str, str]:
        path = self.pushed if self.pushed is not None and self.pushed.exists() else self.path
        if path is None or not path.exists():
            return {}
        try:
            return parse_tags(load_json_file(str(path), "platform notices"))
        except SettingsError:
            return {}  # half-written or damaged: no notice is the safe reading (nothing gets approved)

    def may_push(self, authorization: str | None) -> bool:
        """Whether a request carries this instance's platform token (compared in constant time, as bytes: a header
        of any characters is refused, never an error)."""
        if not self.token or authorization is None:
            return False
        scheme, _, presented = authorization.partition(" ")
        given = presented.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not given:
            return False
        return hmac.compare_digest(given, self.token.encode("utf-8", "surrogateescape"))

    def push(self, tags: Mapping[str, str]) -> None:
        """Replaces the pushed notices, atomically; none withdraws them."""
        if self.pushed is None:
            raise OSError("no runtime directory for platform notices")
        self.pushed.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.pushed.with_name(FILE_NAME + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask: only root in the instance reads it
            f.write(json.dumps({"tags": dict(tags)}))
        os.replace(tmp, self.pushed)

    def pending_os_upgrade(self) -> str | None:
        return self.tags().get(PENDING_OS_UPGRADE)
