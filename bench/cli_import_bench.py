"""The CLI's import time: `overhaul --help` and `overhaul vmss list` must not load the server (target: at most
0.15 s of imports, as `python -X importtime` counts them; the interpreter's own start-up is left out)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP = {"site", "encodings", "_frozen_importlib_external", "zipimport", "codecs", "io", "abc", "time"}
RUNS = 7
TARGET = 0.15


def import_seconds(args: list[str]) -> tuple[float, set[str]]:
    env = {**os.environ, "OVERHAUL_ENDPOINT": "http://127.0.0.1:9", "OVERHAUL_TOKEN": "x"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "overhaul.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    total = 0
    modules: set[str] = set()
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        modules.add(name.strip())
        # A top-level import (one space of indent) counts with everything it imported, once.
        if not name.startswith("  ") and name.strip() not in STARTUP:
            total += int(cumulative)
    return total / 1e6, modules


def main() -> int:
    ok = True
    print(f"\nCLI import time ({RUNS} runs, median; target <= {TARGET:.2f} s)")
    for args in (["--help"], ["vmss", "list"]):
        times = []
        loaded: set[str] = set()
        for _ in range(RUNS):
            seconds, loaded = import_seconds(args)
            times.append(seconds)
        server = sorted(
            m
            for m in loaded
            if m.split(".")[0] in ("aiohttp", "aiodocker", "sqlite3", "prometheus_client")
            or m.startswith(("overhaul.serve", "overhaul.runtime", "overhaul.adapters"))
        )
        median = statistics.median(times)
        good = median <= TARGET and not server
        ok = ok and good
        label = "overhaul " + " ".join(args)
        print(f"  {label:<24}{median:>8.3f} s   server modules loaded: {len(server)}   {'OK' if good else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
