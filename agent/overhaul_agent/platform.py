"""Platform notices from the orchestrator (Azure's IMDS tags), and the application's answer to them.

With ``osRollingUpgradeDeferral`` the orchestrator writes ``platform.json`` beside the instance's metadata on its
config drive, ``{"tags": {"Platform.PendingOSUpgrade": "<version>"}}``, and holds the instance's OS upgrade until
it is approved. The application reads the tags where Azure's IMDS has them and approves through the agent; the
agent's /health then carries the approval, which the orchestrator watches."""

from __future__ import annotations

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
    """Reads the notice file when asked (it changes while the agent runs: the config drive is live)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def beside(cls, metadata_path: str | None) -> PlatformNotices:
        return cls(Path(metadata_path).with_name(FILE_NAME) if metadata_path else None)

    def tags(self) -> dict[str, str]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return parse_tags(load_json_file(str(self.path), "platform notices"))
        except SettingsError:
            return {}  # half-written or damaged: no notice is the safe reading (nothing gets approved)

    def pending_os_upgrade(self) -> str | None:
        return self.tags().get(PENDING_OS_UPGRADE)
