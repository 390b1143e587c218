"""Defaults the server and the CLI agree on, without either importing the other."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PORT = 8480


def default_state_dir() -> Path:
    """OVERHAUL_STATE_DIR, else /var/lib/overhaul for root, else the XDG state directory."""
    if os.environ.get("OVERHAUL_STATE_DIR"):
        return Path(os.environ["OVERHAUL_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/lib/overhaul")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "overhaul"
