"""Three `overhaul serve` processes on one real PostgreSQL and one real Podman engine (a service every replica
reaches at its socket). The leader paused past its lease and woken: it stands down having journaled nothing and
made no engine call once woken. The leader SIGKILLed mid-batch: a standby takes over within 15 s, resumes the
attempt where the journal says it stopped and completes it; no instance is reimaged twice for one step and no
previous OS disk (``.prev``) outlives the attempt. PostgreSQL restarted mid-attempt, and then the leader cut from
it by a proxy: the attempt goes on (the default lease here: 10 s, renewed every 2 s; bench/failover_bench.py
measures its failover time)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from demo import busybox_images as engine_images
from tests.e2e.test_replicas import healthz, leaders, wait
from tests.engines import containers as engine_containers
from tests.engines import podman_service
from tests.postgres import Postgres, TcpProxy
from tests.serve import API, ServedProcess, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine]
REPO = "localhost/overhaul-replicas"
RG = "/subscriptions/local/resourceGroups/replicas"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/tiny"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/ha"
CAPACITY = 5


def model() -> dict[str, Any]:
    image = {"publisher": "overhaul", "offer": "replicas", "sku": "tiny", "version": "latest"}
    return {
        "sku": {"capacity": CAPACITY},
        "properties": {
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 20,
                    "pauseTimeBetweenBatches": "PT2S",
                    "overhaul": {"instanceHealthTimeout": "PT60S"},
                },
            },
            "virtualMachineProfile": {
                "storageProfile": {"imageReference": image, "dataDisks": [{"lun": 0}]},
                "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
                "overhaul": {"stopTimeoutInSeconds": 2},
            },
        },
    }


def publish(replica: ServedProcess, version: str) -> None:
    body = {"properties": {"publishingProfile": {}, "storageProfile": {"source": {"overhaul": {
        "containerImage": f"{REPO}:{version}"}}}}}  # fmt: skip
    status, doc, _ = replica.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


def containers() -> dict[str, str]:
    return {c["name"]: c["state"] for c in engine_containers("podman", "ha_")}


def journal(url: str) -> list[tuple[int, str, str, bool | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT instance_id, action, phase, ok FROM journal ORDER BY seq").fetchall()
    return [(int(i), str(a), str(p), None if ok is None else bool(ok)) for i, a, p, ok in rows]


def journal_tokens(url: str) -> Counter[int]:
    """Journal entries by the lease token they were written under."""
    with psycopg.connect(url) as conn:
        return Counter(int(t) for (t,) in conn.execute("SELECT token FROM journal").fetchall())


def fleet_on_replicas(replicas: list[ServedProcess]) -> tuple[ServedProcess, ServedProcess]:
    """The leader and a standby, a scale set of 5 healthy instances on 1.0.0, 2.0.0 published."""
    [leader] = wait("one leader", lambda: leaders(replicas), timeout=30)
    standby = next(r for r in replicas if r is not leader)
    identifier = {"publisher": "overhaul", "offer": "replicas", "sku": "tiny"}
    assert standby.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(standby, "1.0.0")
    assert standby.call("PUT", f"{VMSS}?{API}", model())[0] in (200, 201)
    healthy = [("1.0.0", "Healthy")] * CAPACITY
    wait("5 healthy instances", lambda: standby.versions_and_health(VMSS) == healthy, timeout=120)
    publish(standby, "2.0.0")
    return leader, standby


@pytest.fixture(scope="module")
def images() -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        engine_images.build("podman", f"{REPO}:{version}", version)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    with podman_service(tmp_path) as url:
        try:
            yield url
        finally:
            for name in containers():
                subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=60, check=False)


def test_a_leader_paused_past_its_lease_is_fenced_then_a_leader_killed_mid_batch_is_replaced(
    images: None, engine: str, postgres: Postgres, tmp_path: Path
) -> None:
    """Two rollouts on one fleet: 1.0.0 -> 2.0.0 with the leader SIGSTOPped mid-batch past its lease and woken;
    2.0.0 -> 3.0.0 with the (new) leader SIGKILLed mid-batch."""
    url = postgres.create_database()
    flags = ("--store", url, "--engine", engine, "--probe-interval", "0.2", "--auto-upgrade-first-delay", "3600",
             "--log-level", "debug", "--lease-ttl", "4", "--lease-renew-every", "1")  # fmt: skip
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(overhaul_serve(tmp_path / f"r{n}", *flags)) for n in range(3)]
        leader, standby = fleet_on_replicas(running)
        new = pause_the_leader_mid_batch(url, running, leader, standby)
        assert new.versions_and_health(VMSS) == [("2.0.0", "Healthy")] * CAPACITY
        assert sorted(containers()) == [f"ha_{i}" for i in range(CAPACITY)]

        publish(new, "3.0.0")
        other = next(r for r in running if r is not new and r.process.poll() is None)
        assert other.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
        begun = sum(e[1:3] == ("reimage", "begin") for e in journal(url))
        wait("a second batch begun", lambda: sum(e[1:3] == ("reimage", "begin") for e in journal(url)) >= begun + 2, 60)
        term = healthz(new)["lease"]["token"]
        killed = time.monotonic()
        os.kill(new.pid, signal.SIGKILL)
        new.process.wait(10)
        survivors = [r for r in running if r.process.poll() is None]
        [last] = wait("a new leader", lambda: leaders(survivors), timeout=15)
        assert time.monotonic() - killed < 15
        assert healthz(last)["lease"]["token"] > term
        wait("completed", lambda: last.latest_code(VMSS) == "Completed", timeout=180)
        assert last.versions_and_health(VMSS) == [("3.0.0", "Healthy")] * CAPACITY
        assert sorted(containers()) == [f"ha_{i}" for i in range(CAPACITY)]  # no .prev left
        assert set(containers().values()) == {"running"}
        reimaged = Counter(e[0] for e in journal(url) if e[1:] == ("reimage", "end", True))
        assert set(reimaged.values()) == {2} and len(reimaged) == CAPACITY, reimaged  # once in each rollout


def pause_the_leader_mid_batch(
    url: str, running: list[ServedProcess], leader: ServedProcess, standby: ServedProcess
) -> ServedProcess:
    """SIGSTOP the leader mid-batch until another leads, SIGCONT it: it stands down having journaled nothing and
    made no engine call once woken; the new leader completes the attempt. Returns the new leader."""
    assert standby.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    wait("a second batch begun", lambda: sum(e[1:3] == ("reimage", "begin") for e in journal(url)) >= 2, 60)
    old = healthz(leader)["lease"]["token"]
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        survivors = [r for r in running if r is not leader]
        [new] = leaders_now = wait("a new leader", lambda: leaders(survivors), timeout=15)
        assert isinstance(new, ServedProcess) and len(leaders_now) == 1
        assert healthz(new)["lease"]["token"] == old + 1
        wait("the new leader's first journal entry", lambda: journal_tokens(url)[old + 1] > 0, timeout=60)
        before = journal_tokens(url)[old]
        woken_at = leader.log.stat().st_size
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    wait("the woken leader standing by", lambda: healthz(leader).get("role") == "standby", timeout=10)
    wait("completed", lambda: new.latest_code(VMSS) == "Completed", timeout=180)
    assert journal_tokens(url)[old] == before  # nothing journaled under the old token once it was woken
    with leader.log.open("rb") as log:
        log.seek(woken_at)
        after = log.read().decode()
    assert "standing down" in after
    assert f"under lease token {old}" not in after, after  # no engine call from it after its lease ended
    return new


def test_the_database_restarted_and_the_leader_cut_from_it_the_attempt_goes_on(
    images: None, engine: str, tmp_path: Path
) -> None:
    cluster = Postgres()
    proxy: TcpProxy | None = None
    try:
        cluster.start()
        proxy = TcpProxy(cluster.port)
        direct = cluster.url()
        through_proxy = direct.replace(f":{cluster.port}/", f":{proxy.port}/")
        common = ("--engine", engine, "--probe-interval", "0.2", "--auto-upgrade-first-delay", "3600")
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(overhaul_serve(tmp_path / "r0", "--store", through_proxy, *common))
            wait("the first replica leading", lambda: leaders([first]), timeout=30)
            running = [first] + [
                stack.enter_context(overhaul_serve(tmp_path / f"r{n}", "--store", direct, *common)) for n in (1, 2)
            ]
            leader, standby = fleet_on_replicas(running)
            assert leader is first
            assert standby.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
            wait("a batch begun", lambda: sum(e[1:3] == ("reimage", "begin") for e in journal(direct)) >= 1, 60)

            cluster.kill()  # PostgreSQL restarted mid-attempt
            status, doc, headers = standby.call("PUT", f"{GALLERY}/versions/9.0.0?{API}", {"properties": {}})
            assert status == 503 and "Retry-After" in headers, doc  # refused whole: nothing is half written
            assert healthz(leader)["status"] == "unavailable"
            time.sleep(0.5)
            cluster.start()
            wait("the store back", lambda: healthz(leader)["status"] == "ok", timeout=30)
            ended = sum(e[1:] == ("reimage", "end", True) for e in journal(direct))
            wait(
                "the attempt going on",
                lambda: sum(e[1:] == ("reimage", "end", True) for e in journal(direct)) > ended,
                90,
            )

            assert leaders(running) == [first]  # the default lease outlasted the restart
            cut = time.monotonic()
            proxy.cut()  # the leader can no longer reach the store: it stops at its own deadline, another leads
            survivors = running[1:]
            [new] = wait("a new leader", lambda: leaders(survivors), timeout=20)
            assert time.monotonic() - cut < 15
            wait("completed", lambda: new.latest_code(VMSS) == "Completed", timeout=180)
            assert new.versions_and_health(VMSS) == [("2.0.0", "Healthy")] * CAPACITY
            assert sorted(containers()) == [f"ha_{i}" for i in range(CAPACITY)]
            status, doc, _ = new.call("GET", f"{GALLERY}/versions/9.0.0?{API}")
            assert status == 404, doc
            proxy.heal()
            wait("the cut replica standing by", lambda: healthz(first).get("role") == "standby", timeout=30)
    finally:
        if proxy is not None:
            proxy.close()
        cluster.remove()
