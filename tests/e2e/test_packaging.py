"""The two distributions as pip builds them: the agent alone (no orchestrator, no engine client), names that cannot
clash with other projects', a licence, and no warnings."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    built: dict[str, Path] = {}
    for name, source in (("overhaul_agent", ROOT / "agent"), ("overhaul", ROOT)):
        # No build isolation: the test environment's setuptools builds them, so no network is needed.
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), "."],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        output = (result.stdout + result.stderr).lower()
        assert "warning" not in output and "deprecat" not in output, result.stdout + result.stderr
        (wheel,) = out.glob(f"{name}-*.whl")
        built[name] = wheel
    return built


def contents(wheel: Path) -> tuple[set[str], str]:
    with zipfile.ZipFile(wheel) as archive:
        tops = {n.split("/", 1)[0] for n in archive.namelist()}
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return tops, archive.read(metadata).decode()


def requirements(metadata: str) -> set[str]:
    names = set()
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            spec = line.split(":", 1)[1].strip()
            names.add(spec.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower())
    return names


def test_the_agent_installs_alone(wheels: dict[str, Path]) -> None:
    tops, metadata = contents(wheels["overhaul_agent"])
    assert tops == {"overhaul_agent", "overhaul_agent-0.1.0.dist-info"}
    assert requirements(metadata) == {"aiohttp", "psutil", "prometheus-client"}
    assert "License-Expression: Apache-2.0" in metadata


def test_the_orchestrator_is_its_own_distribution(wheels: dict[str, Path]) -> None:
    tops, metadata = contents(wheels["overhaul"])
    assert tops == {"overhaul", "overhaul-0.1.0.dist-info"}  # no top-level `agent` or `orchestrator` any more
    assert requirements(metadata) == {"aiohttp", "prometheus-client", "aiodocker", "jmespath", "cryptography"}
    assert "License-Expression: Apache-2.0" in metadata
    with zipfile.ZipFile(wheels["overhaul"]) as archive:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
