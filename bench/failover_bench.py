"""Failover of several orchestrators on one real PostgreSQL (the default lease: 10 s, renewed every 2 s), measured
side by side with 2 and 3 replicas in one run:

- the leader SIGKILLed 10 times (a new one started each time, so the count stays): the time from the kill to the
  new leader's /healthz saying so, and to its first engine call (its start observes each scale set's instances;
  each engine call is logged with the lease token it is made under), median and worst;
- a standby's idle CPU over 30 s (it reads the leader's health verdicts every second and asks for the lease every
  2 s).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.test_replicas import healthz, leaders, make_fleet, wait  # noqa: E402
from tests.postgres import Postgres  # noqa: E402
from tests.serve import ServedProcess, overhaul_serve  # noqa: E402

KILLS = 10
IDLE_SECONDS = 30.0


def flags(url: str) -> tuple[str, ...]:
    return ("--store", url, "--engine", "memory", "--log-level", "debug", "--auto-upgrade-first-delay", "3600")


def first_engine_call(replica: ServedProcess, token: int) -> float:
    """The wall-clock time of the replica's first engine call under ``token`` (from its log)."""
    marker = f"under lease token {token}"
    for line in replica.log.read_text(errors="replace").splitlines():
        if marker in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no engine call under token {token} in {replica.log}")


def failovers(work: Path, url: str, count: int) -> dict[str, Any]:
    to_leader: list[float] = []
    to_call: list[float] = []
    with contextlib.ExitStack() as stack:
        started = 0

        def start() -> ServedProcess:
            nonlocal started
            started += 1
            return stack.enter_context(overhaul_serve(work / f"r{started}", *flags(url)))

        running = [start() for _ in range(count)]
        [leader] = wait("a leader", lambda: leaders(running), timeout=30)
        make_fleet(leader)
        idle = standby_cpu(next(r for r in running if r is not leader))
        for _ in range(KILLS):
            [leader] = wait("a leader", lambda: leaders(running), timeout=30)
            token = healthz(leader)["lease"]["token"]
            killed = time.time()
            os.kill(leader.pid, signal.SIGKILL)
            leader.process.wait(10)
            running.remove(leader)
            [new] = wait("a new leader", lambda: leaders(running), timeout=30)
            to_leader.append(time.time() - killed)
            assert healthz(new)["lease"]["token"] > token
            called = wait("its first engine call", functools.partial(_first_call, new), timeout=30)
            to_call.append(called - killed)
            running.append(start())  # the replica count stays
    return {"leader": to_leader, "call": to_call, "idle": idle}


def _first_call(replica: ServedProcess) -> float | None:
    token = healthz(replica)["lease"]["token"]
    try:
        return first_engine_call(replica, token)
    except AssertionError:
        return None


def standby_cpu(replica: ServedProcess) -> float:
    process = psutil.Process(replica.pid)
    before = process.cpu_times()
    time.sleep(IDLE_SECONDS)
    after = process.cpu_times()
    return 100 * ((after.user - before.user) + (after.system - before.system)) / IDLE_SECONDS


def main() -> None:
    cluster = Postgres()
    try:
        cluster.start()
        rows = []
        for count in (2, 3):
            with tempfile.TemporaryDirectory(prefix="ovh-failover-") as work:
                rows.append((count, failovers(Path(work), cluster.create_database(), count)))
        print(f"failover of the leader (SIGKILL), {KILLS} times each, default lease (ttl 10 s, renewal 2 s)")
        print("| replicas | to a new leader: median / worst | to its first engine call: median / worst | standby CPU |")
        print("|---|---|---|---|")
        for count, m in rows:
            print(
                f"| {count} | {statistics.median(m['leader']):.2f} s / {max(m['leader']):.2f} s "
                f"| {statistics.median(m['call']):.2f} s / {max(m['call']):.2f} s | {m['idle']:.2f} % of a core |"
            )
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
