"""Every Python and shell example in README.md and docs/ runs as written (a broken import in one went unnoticed
once). Fenced ``python`` and ``sh`` blocks are examples; ``text`` blocks are synopses and transcripts (command
forms with alternatives, steps that need root or an engine, which the e2e tests run their own way)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.azcli import Az, ensure_az

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(python|sh)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
# Installing the distributions is what tests/test_packaging.py does, from the same sources.
INSTALL = re.compile(r"^pip install [./ ]*(agent)?[./ ]*(#.*)?$")


def examples(kind: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text(encoding="utf-8"))):
            if match.group(1) == kind:
                found.append((f"{page.relative_to(ROOT)}#{number}", match.group(2)))
    return found


PYTHON, SHELL = examples("python"), examples("sh")


def test_the_docs_have_examples_of_both_kinds() -> None:
    assert PYTHON and SHELL
    assert any(name.startswith("README.md") for name, _ in SHELL)  # the quick start


@pytest.mark.parametrize(("name", "code"), PYTHON, ids=[name for name, _ in PYTHON])
def test_a_python_example_runs(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("name", "code"), SHELL, ids=[name for name, _ in SHELL])
def test_a_shell_example_runs(name: str, code: str, tmp_path: Path) -> None:
    lines = [line for line in code.splitlines() if not INSTALL.match(line.strip())]
    # Every command must succeed, and whatever the example starts in the background stops with it.
    script = "set -eu\ntrap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT\n" + "\n".join(lines) + "\n"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("OVERHAUL_TOKEN", None)
    if re.search(r"^az |\baz login\b", code, flags=re.MULTILINE):  # the real az, as its page says to install it
        az = Az(ensure_az(), tmp_path / "azure")
        env = {**az.environment(), "PATH": f"{Path(sys.executable).parent}:{az.environment()['PATH']}"}
        env.pop("OVERHAUL_TOKEN", None)
        env["OVERHAUL_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr
