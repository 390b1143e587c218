"""`make chaos-ha`: three `overhaul serve` on one real PostgreSQL and one real Podman service, automatic upgrades of a
scale set of 5 busybox containers with data disks (versions published one after another, 60 % good, 40 % never
healthy: rollouts and rollbacks), and at a random moment of each one fault: the leader SIGKILLed, the leader
SIGSTOPped past its lease then woken, a standby SIGKILLed, or PostgreSQL killed and started again. Killed replicas
are started again. After each it checks:

- every instance ends with exactly one running OS disk, no previous one (``.prev``) left, its data disk still
  holding what its first OS disk wrote, and every attempt with a true (terminal) history record;
- no good version quarantined (every fault is the infrastructure's);
- never two replicas acting under one token (each engine call is logged with its token);
- no engine call by a replica after its lease ended (a woken leader's log from its waking on), and nothing
  journaled under its token from then on;
- every takeover within 15 s of the fault.

    python bench/chaos_ha.py [--kills 200] [--seed 1]

The lease is shortened (4 s, renewed every second) so rounds are quick; bench/failover_bench.py measures the
default's failover time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chaos_podman import GALLERY, MODEL, REPO, VMSS, podman, version_tag, wait  # noqa: E402

from demo import busybox_images as engine_images  # noqa: E402
from tests.engines import podman_service  # noqa: E402
from tests.postgres import Postgres  # noqa: E402
from tests.serve import API, ServedProcess, overhaul_serve  # noqa: E402

CAPACITY = 5
TTL, RENEW = 4.0, 1.0
TAKEOVER_LIMIT = 15.0
TOKEN_LINE = re.compile(r"under lease token (\d+)")


class Fleet:
    """Three replicas, each on a state directory of its own; one started again where it was killed."""

    def __init__(self, work: Path, url: str, engine: str, stack: contextlib.ExitStack) -> None:
        self.work, self.url, self.engine, self.stack = work, url, engine, stack
        self.replicas: list[ServedProcess] = [self.start(n) for n in range(3)]

    def start(self, n: int) -> ServedProcess:
        flags = ("--store", self.url, "--engine", self.engine, "--probe-interval", "0.2", "--log-level", "debug",
                 "--auto-upgrade-first-delay", "0", "--auto-upgrade-delay", "0",
                 "--lease-ttl", str(TTL), "--lease-renew-every", str(RENEW))  # fmt: skip
        return self.stack.enter_context(overhaul_serve(self.work / f"r{n}", *flags))

    def role(self, replica: ServedProcess) -> str:
        if replica.process.poll() is not None:
            return "down"
        try:  # a paused replica accepts the connection and never answers
            with urllib.request.urlopen(f"{replica.url}/healthz", timeout=2) as answer:
                return str(json.loads(answer.read()).get("role", "?"))
        except urllib.error.HTTPError as exc:
            return str(json.loads(exc.read()).get("role", "?"))
        except (OSError, ValueError):
            return "?"

    def leader(self, timeout: float = 30) -> tuple[int, ServedProcess]:
        deadline = time.monotonic() + timeout
        while True:
            found = [(n, r) for n, r in enumerate(self.replicas) if self.role(r) == "leader"]
            if len(found) == 1:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no single leader within {timeout}s: {[self.role(r) for r in self.replicas]}")
            time.sleep(0.05)

    def any_up(self) -> ServedProcess:
        return next(r for r in self.replicas if r.process.poll() is None)

    def restart(self, n: int) -> None:
        """Started again on its state directory; its log so far is kept (the new process's log starts empty)."""
        with self.history(n).open("ab") as kept:
            kept.write(self.replicas[n].log.read_bytes())
        self.replicas[n] = self.start(n)

    def history(self, n: int) -> Path:
        return self.work / f"r{n}.earlier.log"

    def all_logs(self, n: int) -> str:
        earlier = self.history(n).read_text(errors="replace") if self.history(n).exists() else ""
        return earlier + self.replicas[n].log.read_text(errors="replace")


def containers() -> dict[str, bool]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--filter", "name=chaos_", "--format", "{{.Names}}|{{.State}}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return {n: s == "running" or s.startswith("Up") for n, s in (line.split("|", 1) for line in out.splitlines())}


def publish(replica: ServedProcess, number: int, good: bool) -> None:
    podman("tag", f"{REPO}:good" if good else f"{REPO}:bad", version_tag(number))
    body = {"properties": {"storageProfile": {"source": {"overhaul": {"containerImage": version_tag(number)}}}}}
    for _ in range(300):  # as a client does: a 503 (no leader, the store restarting) is tried again
        status, doc, _ = replica.call("PUT", f"{GALLERY}/versions/{number}.0.0?{API}", body)
        if status != 503:
            break
        time.sleep(0.2)
    assert status in (200, 201), doc


def journal_tokens(url: str) -> Counter[int]:
    with psycopg.connect(url) as conn:
        return Counter(int(t) for (t,) in conn.execute("SELECT token FROM journal WHERE token IS NOT NULL"))


def settled(fleet: Fleet) -> bool:
    status, doc, _ = fleet.any_up().call("GET", f"{VMSS}/osUpgradeHistory?{API}")
    if status != 200 or any(r["properties"]["runningStatus"]["code"] == "RollingForward" for r in doc["value"]):
        return False
    return not any(name.endswith(".prev") for name in containers())


class Violations(list[str]):
    """Said as they are found (a long run's log shows them at once)."""

    def append(self, violation: str) -> None:
        print(f"  VIOLATION {violation}", flush=True)
        super().append(violation)


class Chaos:
    def __init__(self, fleet: Fleet, cluster: Postgres, url: str, rng: random.Random) -> None:
        self.fleet, self.cluster, self.url, self.rng = fleet, cluster, url, rng
        self.counts: Counter[str] = Counter()
        self.violations = Violations()
        self.takeovers: list[float] = []
        self.seen: set[str] = set()

    def fault(self, kill: int) -> None:
        fault = self.rng.choices(["leader kill", "leader pause", "standby kill", "postgresql"], [5, 3, 1, 1])[0]
        self.counts[f"faults: {fault}"] += 1
        n, leader = self.fleet.leader()
        token = leader.call("GET", "/healthz", token="")[1]["lease"]["token"]
        began = time.monotonic()
        if fault == "leader kill":
            os.kill(leader.pid, signal.SIGKILL)
            leader.process.wait(10)
            self.took_over(kill, began, token)
            self.fleet.restart(n)
        elif fault == "leader pause":
            self.pause(kill, n, leader, token, began)
        elif fault == "standby kill":
            m = self.rng.choice([i for i in range(3) if i != n])
            os.kill(self.fleet.replicas[m].pid, signal.SIGKILL)
            self.fleet.replicas[m].process.wait(10)
            self.fleet.restart(m)
        else:
            self.cluster.kill()
            time.sleep(self.rng.uniform(0.2, 3.0))
            self.cluster.start()

    def pause(self, kill: int, n: int, leader: ServedProcess, token: int, began: float) -> None:
        os.kill(leader.pid, signal.SIGSTOP)
        try:
            self.took_over(kill, began, token)
            time.sleep(self.rng.uniform(0.0, 2.0))
            journaled = journal_tokens(self.url)[token]
            woken_at = leader.log.stat().st_size
        finally:
            os.kill(leader.pid, signal.SIGCONT)
        wait(lambda: self.fleet.role(leader) == "standby", 15, f"round {kill}: the woken leader stands by")
        time.sleep(1.0)
        with leader.log.open("rb") as log:
            log.seek(woken_at)
            after = log.read().decode(errors="replace")
        if f"under lease token {token}" in after:
            self.violations.append(f"round {kill}: replica {n} called an engine under token {token} once woken")
        if journal_tokens(self.url)[token] != journaled:
            self.violations.append(f"round {kill}: journal entries under token {token} after it was taken over")

    def took_over(self, kill: int, began: float, token: int) -> None:
        _, new = self.fleet.leader(timeout=60)
        took = time.monotonic() - began
        self.takeovers.append(took)
        if took > TAKEOVER_LIMIT:
            self.violations.append(f"round {kill}: took {took:.1f}s to take over")
        if new.call("GET", "/healthz", token="")[1]["lease"]["token"] <= token:
            self.violations.append(f"round {kill}: the new leader's token is not greater than {token}")

    def check(self, kill: int, number: int, good: bool) -> None:
        found = containers()
        if found != {f"chaos_{i}": True for i in range(CAPACITY)}:
            self.violations.append(f"round {kill}: containers {found}")
        replica = self.fleet.any_up()
        status, doc, _ = replica.call("GET", f"{VMSS}/virtualMachines?{API}")
        for vm in doc["value"] if status == 200 else []:
            port = vm["properties"]["overhaul"]["hostPorts"].get("8080")
            first = subprocess.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/data/first"],
                                   capture_output=True, text=True, check=False, timeout=10).stdout.strip()  # fmt: skip
            if first != "good":
                self.violations.append(f"round {kill}: {vm['name']}'s data disk says {first!r}")
        status, doc, _ = replica.call("GET", f"{VMSS}/osUpgradeHistory?{API}")
        for record in doc["value"]:
            code = record["properties"]["runningStatus"]["code"]
            if code not in ("Completed", "Faulted", "Cancelled"):
                self.violations.append(f"round {kill}: an attempt is {code}")
        status, doc, _ = replica.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")
        if status == 200 and doc["properties"]["overhaul"]["attemptId"] not in self.seen:
            self.seen.add(doc["properties"]["overhaul"]["attemptId"])
            self.counts["attempts " + doc["properties"]["runningStatus"]["code"]] += 1
            steps = [i["step"] for i in doc["properties"]["overhaul"]["instances"]]
            self.counts["instances upgraded"] += steps.count("Upgraded")
            self.counts["instances rolled back"] += steps.count("RolledBack")
        status, doc, _ = replica.call("GET", f"{GALLERY}/versions/{number}.0.0?{API}")
        if good and status == 200 and doc["properties"]["overhaul"]["quarantined"]:
            self.violations.append(f"round {kill}: good version {number}.0.0 quarantined")

    def tokens_by_replica(self) -> None:
        holders: dict[int, set[int]] = {}
        for n in range(len(self.fleet.replicas)):
            for match in TOKEN_LINE.finditer(self.fleet.all_logs(n)):
                holders.setdefault(int(match.group(1)), set()).add(n)
        for token, which in sorted(holders.items()):
            if len(which) > 1:
                self.violations.append(f"token {token}: engine calls from replicas {sorted(which)}")
        self.counts["lease tokens used"] = len(holders)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    engine_images.build("podman", f"{REPO}:good", "good")
    engine_images.build("podman", f"{REPO}:bad", "bad", healthy=False)
    work = Path(tempfile.mkdtemp(prefix="ovh-chaos-ha-"))
    cluster = Postgres()
    started = time.monotonic()
    try:
        cluster.start()
        url = cluster.create_database()
        with contextlib.ExitStack() as stack:
            engine = stack.enter_context(podman_service(work))
            fleet = Fleet(work, url, engine, stack)
            chaos = Chaos(fleet, cluster, url, rng)
            _, leader = fleet.leader()
            identifier = {"publisher": "overhaul", "offer": "chaos", "sku": "tiny"}
            assert leader.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
            publish(leader, 1, good=True)
            assert leader.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201
            wait(lambda: len(containers()) == CAPACITY, 120, "the scale set")
            try:
                for kill in range(1, args.kills + 1):
                    good = rng.random() < 0.6
                    publish(fleet.any_up(), kill + 1, good)
                    time.sleep(rng.uniform(0.1, 6.0))  # somewhere in the rollout or its rollback
                    chaos.fault(kill)
                    wait(lambda: settled(fleet), 240, f"round {kill}: the attempt ends")
                    chaos.check(kill, kill + 1, good)
                    what = f"{kill + 1}.0.0 ({'good' if good else 'bad'})"
                    elapsed = time.monotonic() - started
                    print(f"[{elapsed:7.1f}s] round {kill}: {what}; violations so far {len(chaos.violations)}")
                chaos.tokens_by_replica()
            finally:
                fleet.any_up().call("DELETE", f"{VMSS}?{API}")
                for name in containers():
                    subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, check=False)
    finally:
        cluster.remove()
    report(chaos, started)
    if chaos.violations:
        print(f"  logs kept in {work}")
        return 1
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


def report(chaos: Chaos, started: float) -> None:
    print(f"\nchaos with three orchestrators on PostgreSQL and real Podman ({time.monotonic() - started:.0f} s)")
    for key, value in sorted(chaos.counts.items()):
        if value:
            print(f"  {key:<36}{value:>6}")
    if chaos.takeovers:
        ordered = sorted(chaos.takeovers)
        print(f"  {'takeovers (median / worst, s)':<36}{ordered[len(ordered) // 2]:>6.1f} / {ordered[-1]:.1f}")
    print(f"  {'invariant violations':<36}{len(chaos.violations):>6}")
    for violation in chaos.violations[:30]:
        print("   ", violation)


if __name__ == "__main__":
    sys.exit(main())
