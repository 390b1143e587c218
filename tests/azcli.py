"""The real az (azure-cli from PyPI) for tests: installed once into a virtual environment of its own, cached between
runs (~/.cache/overhaul/azure-cli-VERSION, 730 MB, a minute and a half to install), and signed in to a running
`overhaul serve` with nothing but what `overhaul az-login` prints."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.serve import Served

AZ_VERSION = "2.91.0"
INSTALL_TIMEOUT = 900


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "overhaul"


def ensure_az() -> Path:
    """The az executable, installed first if this machine has none of this version (one installer at a time)."""
    home = cache_dir() / f"azure-cli-{AZ_VERSION}"
    done = home / ".installed"
    if done.exists():
        return home / "bin" / "az"
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / f"azure-cli-{AZ_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing it
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)  # a half-made one from an interrupted install
            venv.create(home, with_pip=True)
            pip = subprocess.run(
                [home / "bin" / "python", "-m", "pip", "install", "--quiet", f"azure-cli=={AZ_VERSION}"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
            if pip.returncode != 0:
                raise RuntimeError(f"installing azure-cli {AZ_VERSION} from PyPI failed: {pip.stderr[-3000:]}")
            done.touch()
    return home / "bin" / "az"


@dataclass
class Az:
    """az with its own configuration directory, signed in to one serve."""

    executable: Path
    config_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "REQUESTS_CA"))}
        return {
            **base,
            "PATH": f"{self.executable.parent}:{base.get('PATH', '')}",
            "AZURE_CONFIG_DIR": str(self.config_dir),
            "AZURE_CORE_COLLECT_TELEMETRY": "false",
            "AZURE_CORE_NO_COLOR": "true",
            "AZURE_CORE_SURVEY_MESSAGE": "false",
            "AZURE_EXTENSION_USE_DYNAMIC_INSTALL": "no",
            **self.env,
        }

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.executable), *args],
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"az {shlex.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
        return result

    def __call__(self, command: str, *extra: str, timeout: float = 300) -> Any:
        """az COMMAND (split as a shell would) EXTRA -o json, parsed (None when az prints nothing); fails the test
        on a non-zero exit."""
        out = self.run(*shlex.split(command), *extra, "--output", "json", timeout=timeout).stdout
        return json.loads(out) if out.strip() else None


def signed_in_az(served: Served, config_dir: Path) -> Az:
    """az after running, in a shell, exactly what `overhaul az-login` prints for ``served``'s state directory."""
    overhaul = {**os.environ, "OVERHAUL_STATE_DIR": str(served.state_dir), "OVERHAUL_ENDPOINT": served.url}
    script = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "az-login"],
        capture_output=True,
        text=True,
        env=overhaul,
        timeout=60,
        check=True,
    ).stdout
    az = Az(ensure_az(), config_dir)
    shell = subprocess.run(
        ["bash", "-euc", script + "\nenv -0"],
        capture_output=True,
        env=az.environment(),
        timeout=300,
        check=False,
    )
    assert shell.returncode == 0, f"overhaul az-login's lines failed: {shell.stderr.decode()[-3000:]}"
    exported = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    az.env = {k: exported[k] for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE") if k in exported}
    return az
