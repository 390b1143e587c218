"""Agent benchmarks, measured side by side in one run.

1. /health throughput and p99 latency under 64 concurrent keep-alive clients (wrk), the agent versus a bare
   aiohttp handler returning a constant, alternating rounds so both see the same machine.
2. A soak: one agent probing every 1 s (RSS at minute 1 and at the end) and one at the default 5 s interval
   (CPU seconds, extrapolated to an hour), running together.

OVERHAUL_BENCH_SOAK_SECONDS shortens the soak (default 300).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from overhaul.localhost import free_port

ROOT = Path(__file__).resolve().parent.parent
SOAK_SECONDS = float(os.environ.get("OVERHAUL_BENCH_SOAK_SECONDS", "300"))
ROUNDS = 3
ROUND_SECONDS = 8


def wait_http(url: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # answering (503 while not Healthy counts)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def agent_args(app_port: int, port: int, interval: float, state_dir: Path) -> list[str]:
    settings = {"protocol": "http", "port": app_port, "requestPath": "/health", "intervalInSeconds": interval}
    if interval < 5:
        settings["overhaul"] = {"fastProbes": True}
    return [
        sys.executable,
        "-m",
        "overhaul_agent",
        "--settings",
        _write(state_dir / f"settings-{port}.json", settings),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tcp-port",
        "0",
        "--state-dir",
        str(state_dir / str(port)),
        "--log-level",
        "warning",
    ]


def _write(path: Path, doc: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return str(path)


def wrk(url: str) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{ROUND_SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=ROUND_SECONDS + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return rps, p99


def throughput(app_port: int, work: Path) -> None:
    agent_port, bare_port = free_port(), free_port()
    with (
        process(*agent_args(app_port, agent_port, 5, work)),
        process(sys.executable, str(ROOT / "bench" / "bare_server.py"), str(bare_port)),
    ):
        wait_http(f"http://127.0.0.1:{agent_port}/health")
        wait_http(f"http://127.0.0.1:{bare_port}/health")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # measure the agent while Healthy (200), as in production
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{agent_port}/health", timeout=2):
                    break
            except urllib.error.HTTPError:
                time.sleep(0.2)
        results: dict[str, list[tuple[float, float]]] = {"agent": [], "bare": []}
        for _ in range(ROUNDS):
            results["bare"].append(wrk(f"http://127.0.0.1:{bare_port}/health"))
            results["agent"].append(wrk(f"http://127.0.0.1:{agent_port}/health"))
    rows = {}
    for name, runs in results.items():
        rows[name] = (statistics.median(r for r, _ in runs), statistics.median(p for _, p in runs))
    print(
        "\n/health under 64 concurrent keep-alive clients "
        f"(wrk, {ROUNDS} alternating rounds of {ROUND_SECONDS}s, medians)"
    )
    print(f"{'server':<28}{'requests/s':>12}{'p99 ms':>10}")
    print(f"{'bare aiohttp constant':<28}{rows['bare'][0]:>12.0f}{rows['bare'][1]:>10.2f}")
    print(f"{'overhaul-agent /health':<28}{rows['agent'][0]:>12.0f}{rows['agent'][1]:>10.2f}")
    ratio = rows["agent"][0] / rows["bare"][0]
    print(f"agent / bare throughput: {ratio:.2f} (target >= 0.80) {'OK' if ratio >= 0.8 else 'MISSED'}")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def soak(app_port: int, work: Path) -> None:
    fast_port, default_port = free_port(), free_port()
    with (
        process(*agent_args(app_port, fast_port, 1, work)) as fast,
        process(*agent_args(app_port, default_port, 5, work)) as default,
    ):
        wait_http(f"http://127.0.0.1:{fast_port}/health")
        wait_http(f"http://127.0.0.1:{default_port}/health")
        fast_ps, default_ps = psutil.Process(fast.pid), psutil.Process(default.pid)
        started = time.monotonic()
        cpu_start = cpu_seconds(default_ps)
        fast_cpu_start = cpu_seconds(fast_ps)
        rss_minute_1 = None
        samples = []
        print(f"\nsoak: {SOAK_SECONDS:.0f}s, RSS sampled every 10s", flush=True)
        while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
            rss = fast_ps.memory_info().rss
            samples.append(rss)
            if rss_minute_1 is None and elapsed >= min(60, SOAK_SECONDS / 5):
                rss_minute_1 = rss
            time.sleep(min(10, SOAK_SECONDS - elapsed))
        duration = time.monotonic() - started
        rss_end = fast_ps.memory_info().rss
        cpu_per_hour = (cpu_seconds(default_ps) - cpu_start) / duration * 3600
        fast_cpu_per_hour = (cpu_seconds(fast_ps) - fast_cpu_start) / duration * 3600
    rss_minute_1 = rss_minute_1 or samples[0]
    mib = 1024 * 1024
    growth = (rss_end - rss_minute_1) / mib
    print(f"{'measure':<52}{'value':>10}  target")
    print(f"{'agent RSS at minute 1, probing every 1 s (MiB)':<52}{rss_minute_1 / mib:>10.1f}")
    print(f"{'agent RSS at the end, probing every 1 s (MiB)':<52}{rss_end / mib:>10.1f}  <= 50")
    print(f"{'RSS growth minute 1 -> end (MiB)':<52}{growth:>10.2f}  ~0")
    print(f"{'CPU s per hour, default 5 s interval':<52}{cpu_per_hour:>10.1f}  <= 20")
    print(f"{'CPU s per hour, 1 s interval (for reference)':<52}{fast_cpu_per_hour:>10.1f}")


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing: run `make bench`, which installs it", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="overhaul-bench-"))
    app_port = free_port()
    with process(sys.executable, str(ROOT / "demo" / "sample_app.py"), "--port", str(app_port)):
        wait_http(f"http://127.0.0.1:{app_port}/health")
        throughput(app_port, work)
        soak(app_port, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
