"""`make chaos`: real rollouts and rollbacks on Podman with a fault at a random moment of each: `overhaul serve`
SIGKILLed (sometimes its private Podman service first), the Podman service alone SIGKILLed (serve restarts it),
or the version's image removed from the engine for a few seconds. After each it checks the design's invariants:
every instance ends with exactly one running OS disk and no previous one, its data disk still holds what the first
OS disk wrote, every attempt ends with a true history record, no good version is ever quarantined (the faults are
the infrastructure's), and no Podman service is leaked.

    python bench/chaos_podman.py [--kills 100] [--seed 1] [--surge]

``--surge`` rolls out with maxSurge: kills then land while a new OS disk runs beside the old one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import busybox_images as engine_images  # noqa: E402

REPO = "localhost/overhaul-chaos"
API = "api-version=2024-07-01"
RG = "/subscriptions/local/resourceGroups/chaos"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/chaos"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/tiny"
CAPACITY = 5
MODEL: dict[str, Any] = {
    "sku": {"capacity": CAPACITY},
    "properties": {
        "upgradePolicy": {
            "mode": "Automatic",
            "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, "useRollingUpgradePolicy": True},
            "rollingUpgradePolicy": {
                "maxBatchInstancePercent": 40,
                "maxUnhealthyUpgradedInstancePercent": 100,
                "maxUnhealthyInstancePercent": 100,
                "overhaul": {"instanceHealthTimeout": "PT4S"},
            },
        },
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {"publisher": "overhaul", "offer": "chaos", "sku": "tiny", "version": "latest"},
                "dataDisks": [{"lun": 0}],
            },
            "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
            "overhaul": {"stopTimeoutInSeconds": 2},
        },
    },
}


class Server:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        log = (self.state / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overhaul.cli",
                "serve",
                "--state-dir",
                str(self.state),
                "--port",
                str(self.port),
                "--probe-interval",
                "0.2",
                "--auto-upgrade-first-delay",
                "0",
                "--auto-upgrade-delay",
                "0",
                "--engine-service-restart-min",
                "0.2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("overhaul serve did not start; see serve.log") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {(self.state / 'token').read_text().strip()}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw.strip() else None


def podman_services(state: Path) -> list[int]:
    sock = str(state / "podman" / "podman.sock")
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if sock in line and "system service" in line]


def containers() -> dict[str, tuple[bool, str]]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--filter", "name=chaos_", "--format", "{{.Names}}|{{.State}}|{{.Ports}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, state, ports = line.split("|", 2)
        found[name] = (state == "running" or state.startswith("Up"), ports)
    return found


def version_tag(number: int) -> str:
    return f"{REPO}:v{number}"


def podman(*args: str) -> None:
    subprocess.run(["podman", *args], check=True, capture_output=True, timeout=60)


def publish(server: Server, number: int, good: bool) -> None:
    image = version_tag(number)
    podman("tag", f"{REPO}:good" if good else f"{REPO}:bad", image)
    body = {"properties": {"storageProfile": {"source": {"overhaul": {"containerImage": image}}}}}
    for _ in range(300):  # as a client does: a 503 (the engine restarting) is tried again
        status, doc = server.call("PUT", f"{GALLERY}/versions/{number}.0.0?{API}", body)
        if status != 503:
            break
        time.sleep(0.2)
    assert status in (200, 201), doc


def settled(server: Server) -> bool:
    """No attempt rolls forward and no previous OS disk is left."""
    status, doc = server.call("GET", f"{VMSS}/osUpgradeHistory?{API}")
    if status != 200:
        return False
    if any(r["properties"]["runningStatus"]["code"] == "RollingForward" for r in doc["value"]):
        return False
    return not any(name.endswith(".prev") for name in containers())


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        time.sleep(0.2)


def check(server: Server, violations: list[str], kill: int) -> None:
    found = containers()
    expected = {f"chaos_{i}" for i in range(CAPACITY)}
    if set(found) != expected:
        violations.append(f"kill {kill}: containers {sorted(found)}")
    for name, (running, _) in found.items():
        if not running:
            state = subprocess.run(
                [
                    "podman",
                    "inspect",
                    "--format",
                    "{{.State.Status}} exit {{.State.ExitCode}} at {{.State.FinishedAt}}",
                    name,
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            ).stdout.strip()
            violations.append(f"kill {kill}: {name} is not running ({state})")
    status, doc = server.call("GET", f"{VMSS}/virtualMachines?{API}")
    if status != 200:
        violations.append(f"kill {kill}: virtualMachines answered {status}")
        return
    for vm in doc["value"]:
        port = vm["properties"]["overhaul"]["hostPorts"].get("8080")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/first", timeout=5) as resp:
                first = resp.read().decode().strip()
        except OSError as exc:
            first = f"unreadable ({exc})"
        if first != "good":  # what the first OS disk wrote on its new data disk
            violations.append(f"kill {kill}: {vm['name']}'s data disk says {first!r}")
    status, doc = server.call("GET", f"{VMSS}/osUpgradeHistory?{API}")
    for record in doc["value"]:
        props = record["properties"]
        if props["runningStatus"]["code"] not in ("Completed", "Faulted", "Cancelled"):
            violations.append(f"kill {kill}: an attempt is {props['runningStatus']['code']}")


def kill_once(
    server: Server,
    rng: random.Random,
    kill: int,
    number: int,
    good: bool,
    *,
    counts: Counter[str],
    violations: list[str],
    seen: set[str],
) -> None:
    """Publish a version, a fault in the middle of what follows, and check once it has settled."""
    state = server.state
    publish(server, number, good)
    time.sleep(rng.uniform(0.1, 6.0))  # somewhere in the rollout or its rollback
    fault = rng.choices(["serve", "service", "image"], weights=[6, 2, 2])[0]
    counts[f"faults: {fault}"] += 1
    if fault == "service":
        for pid in podman_services(state):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # serve notices, then restarts it
        wait(lambda: server.call("GET", "/healthz")[0] == 200, 60, f"kill {kill}: the podman service is back")
    elif fault == "image":
        podman("untag", version_tag(number), version_tag(number))
        time.sleep(rng.uniform(1.0, 5.0))
        podman("tag", f"{REPO}:good" if good else f"{REPO}:bad", version_tag(number))
    else:
        kill_serve(server, rng, kill, counts=counts, violations=violations)
    wait(lambda: settled(server), 180, f"kill {kill}: the attempt ends")
    check(server, violations, kill)
    status, doc = server.call("GET", f"{GALLERY}/versions/{number}.0.0?{API}")
    if good and status == 200 and doc["properties"]["overhaul"]["quarantined"]:
        reason = doc["properties"]["overhaul"].get("quarantineReason")
        violations.append(f"kill {kill}: good version {number}.0.0 quarantined after a {fault} fault: {reason}")
    status, doc = server.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")
    if status == 200 and doc["properties"]["overhaul"]["attemptId"] not in seen:
        seen.add(doc["properties"]["overhaul"]["attemptId"])
        counts["attempts " + doc["properties"]["runningStatus"]["code"]] += 1
        steps = [i["step"] for i in doc["properties"]["overhaul"]["instances"]]
        counts["instances upgraded"] += steps.count("Upgraded")
        counts["instances rolled back"] += steps.count("RolledBack")
    services = podman_services(state)
    if len(services) != 1:
        violations.append(f"kill {kill}: {len(services)} podman services for one serve")


def kill_serve(server: Server, rng: random.Random, kill: int, *, counts: Counter[str], violations: list[str]) -> None:
    """SIGKILLs serve (sometimes its Podman service first), then starts it again."""
    state = server.state
    if rng.random() < 0.3:
        for pid in podman_services(state):
            os.kill(pid, signal.SIGKILL)
        counts["podman service kills"] += 1
        time.sleep(rng.uniform(0.0, 1.0))
    server.kill()
    counts["serve kills"] += 1
    try:
        wait(lambda: not podman_services(state), 10, "the private podman service dies with serve")
    except AssertionError as exc:
        violations.append(f"kill {kill}: {exc}")
        for pid in podman_services(state):
            os.kill(pid, signal.SIGKILL)
    server.start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--surge", action="store_true", help="maxSurge: new OS disks start beside the old ones")
    args = parser.parse_args()
    model = json.loads(json.dumps(MODEL))
    model["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxSurge"] = args.surge
    rng = random.Random(args.seed)
    engine_images.build("podman", f"{REPO}:good", "good")
    engine_images.build("podman", f"{REPO}:bad", "bad", healthy=False)
    state = Path(tempfile.mkdtemp(prefix="overhaul-chaos-"))
    server = Server(state)
    server.start()
    identifier = {"publisher": "overhaul", "offer": "chaos", "sku": "tiny"}
    assert server.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(server, 1, good=True)
    status, doc = server.call("PUT", f"{VMSS}?{API}", model)
    assert status == 201, doc
    wait(lambda: len(containers()) == CAPACITY, 60, "the scale set")
    counts: Counter[str] = Counter()
    violations: list[str] = []
    seen: set[str] = set()
    number = 1
    started = time.monotonic()
    try:
        for kill in range(1, args.kills + 1):
            number += 1
            good = rng.random() < 0.6
            kill_once(server, rng, kill, number, good, counts=counts, violations=violations, seen=seen)
            print(
                f"[{time.monotonic() - started:7.1f}s] kill {kill}: {number}.0.0 ({'good' if good else 'bad'}); "
                f"violations so far {len(violations)}",
                flush=True,
            )
    finally:
        server.call("DELETE", f"{VMSS}?{API}")
        server.stop()
    print("\nchaos on real Podman")
    for key, value in sorted(counts.items()):
        print(f"  {key:<32}{value:>6}")
    print(f"  {'invariant violations':<32}{len(violations):>6}")
    for violation in violations[:20]:
        print("   ", violation)
    leaked = podman_services(state)
    print(f"  {'podman services left after stop':<32}{len(leaked):>6}")
    if violations or leaked:
        print(f"  state directory and serve.log kept in {state}")
        return 1
    shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
