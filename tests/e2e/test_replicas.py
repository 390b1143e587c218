"""Three `overhaul serve` processes on one real PostgreSQL (the memory engine: what is tested here is the
orchestrators', not the engine's): one leads, the others stand by, answer reads and forward writes; one API token
for all; the leader killed, a standby leads within 15 s under a greater token; 100 concurrent starts over the three
give one 202; a leader stopped past its lease and woken steps down without a write."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from overhaul.localhost import free_port
from tests.postgres import Postgres
from tests.serve import API, ServedProcess, overhaul_serve

RG = "/subscriptions/local/resourceGroups/ha"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/web"
FAST_LEASE = ("--lease-ttl", "3", "--lease-renew-every", "0.5")


def replica_flags(url: str) -> tuple[str, ...]:
    return ("--store", url, "--engine", "memory", *FAST_LEASE, "--auto-upgrade-first-delay", "3600")


@contextlib.contextmanager
def replicas(tmp_path: Path, url: str, count: int = 3) -> Iterator[list[ServedProcess]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(overhaul_serve(tmp_path / f"r{n}", *replica_flags(url))) for n in range(count)]


def healthz(replica: ServedProcess) -> dict[str, Any]:
    status, doc, _ = replica.call("GET", "/healthz", token="")
    assert status in (200, 503), doc
    return dict(doc)


def wait(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)


def leaders(running: list[ServedProcess]) -> list[ServedProcess]:
    return [r for r in running if r.process.poll() is None and healthz(r).get("role") == "leader"]


def model(capacity: int) -> dict[str, Any]:
    image = {"publisher": "overhaul", "offer": "ha", "sku": "tiny", "version": "latest"}
    return {
        "location": "local",
        "sku": {"capacity": capacity},
        "properties": {
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 20,
                    "pauseTimeBetweenBatches": "PT30S",  # an attempt lasts long enough to be met by the next start
                },
            },
            "virtualMachineProfile": {"storageProfile": {"imageReference": image}},
        },
    }


def publish(replica: ServedProcess, version: str) -> None:
    body = {"location": "local", "properties": {"publishingProfile": {}, "storageProfile": {"source": {"overhaul": {
        "containerImage": f"localhost/ha:{version}"}}}}}  # fmt: skip
    status, doc, _ = replica.call("PUT", f"{GALLERY}/images/tiny/versions/{version}?{API}", body)
    assert status in (200, 201), doc


def make_fleet(replica: ServedProcess) -> None:
    assert replica.call("PUT", f"{GALLERY}?{API}", {"location": "local"})[0] in (200, 201)
    identifier = {"publisher": "overhaul", "offer": "ha", "sku": "tiny"}
    definition = {"location": "local", "properties": {"identifier": identifier}}
    assert replica.call("PUT", f"{GALLERY}/images/tiny?{API}", definition)[0] in (200, 201)
    publish(replica, "1.0.0")
    status, doc, _ = replica.call("PUT", f"{VMSS}?{API}", model(10))
    assert status in (200, 201), doc


@pytest.fixture
def three(postgres: Postgres, tmp_path: Path) -> Iterator[list[ServedProcess]]:
    with replicas(tmp_path, postgres.create_database()) as running:
        yield running


def test_one_leads_standbys_forward_writes_and_a_killed_leader_is_replaced_within_15_s(
    three: list[ServedProcess],
) -> None:
    [leader] = wait("one leader", lambda: leaders(three))
    standbys = [r for r in three if r is not leader]
    assert {r.token for r in three} == {leader.token}  # one API token for all
    first = healthz(leader)["lease"]
    assert first["holder"] and first["token"] >= 1 and first["address"] == leader.url
    assert [healthz(r)["role"] for r in standbys] == ["standby", "standby"]
    assert healthz(standbys[0])["lease"]["holder"] == first["holder"]
    assert leader.metric("overhaul_leader") == 1 and leader.metric("overhaul_lease_token") == first["token"]
    assert standbys[0].metric("overhaul_leader") == 0 and standbys[0].metric("overhaul_lease_token") == 0

    make_fleet(standbys[0])  # every write sent to a standby is made by the leader
    status, doc, _ = standbys[1].call("GET", f"{VMSS}?{API}")
    assert status == 200 and doc["sku"]["capacity"] == 10
    wait("10 instances", lambda: len(leader.instances(VMSS)) == 10)  # each replica's memory engine is its own
    status, _, headers = standbys[1].call("POST", f"{VMSS}/osRollingUpgrade?{API}")
    assert status == 202
    assert headers["Azure-AsyncOperation"].startswith(standbys[1].url)  # the address the caller used

    killed = time.monotonic()
    os.kill(leader.pid, signal.SIGKILL)
    leader.process.wait(10)
    # Its lease has not expired yet: a write is forwarded to it, finds nobody, and is refused, never made twice.
    status, doc, headers = standbys[0].call("POST", f"{VMSS}/rollingUpgrades/cancel?{API}")
    assert status == 503 and doc["error"]["code"] == "NoLeader" and headers["Retry-After"], doc
    [new] = wait("a new leader", lambda: leaders(standbys), timeout=15)
    took = time.monotonic() - killed
    assert took < 15, took
    assert healthz(new)["lease"]["token"] > first["token"]
    assert new.metric("overhaul_lease_takeovers_total") == 1 and new.metric("overhaul_leader") == 1
    other = next(r for r in standbys if r is not new)
    publish(other, "2.0.0")  # forwarded to the new leader
    status, doc, _ = new.call("GET", f"{GALLERY}/images/tiny/versions/2.0.0?{API}")
    assert status == 200, doc


def test_concurrent_starts_over_three_replicas_give_one_202(three: list[ServedProcess]) -> None:
    wait("one leader", lambda: leaders(three))
    make_fleet(three[0])
    wait("10 instances", lambda: len(three[0].instances(VMSS)) == 10)
    publish(three[1], "2.0.0")

    def start(n: int) -> int:
        return three[n % 3].call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        codes = list(pool.map(start, range(100)))
    assert sorted(codes) == [202] + [409] * 99, sorted(codes)
    [leader] = leaders(three)
    standby = next(r for r in three if r is not leader)
    sent = time.monotonic()
    assert standby.call("POST", f"{VMSS}/rollingUpgrades/cancel?{API}")[0] == 202  # in a 30 s pause
    wait("cancelled", lambda: leader.latest_code(VMSS) == "Cancelled", timeout=10)
    took = time.monotonic() - sent
    assert took < 2, took  # forwarded to the leader, whose reconciler is woken at once


def test_concurrent_creating_puts_over_three_replicas_give_no_5xx(three: list[ServedProcess]) -> None:
    wait("one leader", lambda: leaders(three))
    make_fleet(three[0])
    other = VMSS.replace("/web", "/api")

    def create(n: int) -> int:
        return three[n % 3].call("PUT", f"{other}?{API}", model(3))[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        codes = list(pool.map(create, range(100)))
    assert sorted(set(codes)) == [200, 201] and codes.count(201) == 1, sorted(codes)
    vm = model(1)
    vm["properties"]["virtualMachineProfile"]["overhaul"] = {"vm": {}}
    status, doc, _ = three[1].call("PUT", f"{VMSS.replace('/web', '/vms')}?{API}", vm)
    assert status == 400 and doc["error"]["target"] == "properties.virtualMachineProfile.overhaul.vm", doc
    assert "shared store" in doc["error"]["message"]


def test_a_store_newer_than_the_code_or_out_of_reach_exits_1_naming_why(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.create_database()
    with replicas(tmp_path, url, count=1):
        pass  # migrated
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO overhaul_migrations (version) VALUES (99)")
    newer = serve_once(tmp_path / "newer", url)
    assert newer.returncode == 1 and "schema is version 99, newer than this overhaul's" in newer.stderr, newer.stderr
    gone = serve_once(tmp_path / "gone", f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x")
    assert gone.returncode == 1 and "the PostgreSQL store cannot be reached" in gone.stderr, gone.stderr
    assert "secret" not in gone.stderr


def serve_once(state_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "overhaul.cli", "serve", "--state-dir", str(state_dir), "--port", "1"]
    return subprocess.run([*command, *replica_flags(url)], capture_output=True, text=True, timeout=60, check=False)


def test_a_leader_stopped_gracefully_hands_the_lease_over_at_once(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.create_database()
    slow = ("--store", url, "--engine", "memory", "--lease-ttl", "15", "--lease-renew-every", "5")
    with contextlib.ExitStack() as stack:
        running = [stack.enter_context(overhaul_serve(tmp_path / f"r{n}", *slow)) for n in range(2)]
        [leader] = wait("one leader", lambda: leaders(running), timeout=30)
        other = next(r for r in running if r is not leader)
        stopped = time.monotonic()
        leader.process.send_signal(signal.SIGTERM)  # releases the lease, and says so to the standbys
        leader.process.wait(20)
        wait("the standby leading", lambda: leaders([other]), timeout=20)
        took = time.monotonic() - stopped
        assert took < 2, took  # its next try would have been up to 5 s away


def test_replicas_with_tls_auto_share_one_local_ca_and_a_standby_forwards_over_https(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Each replica makes a local CA on its first start; the first one's is kept in the shared store, so a client
    trusting any replica's ca.pem trusts them all, and a standby's forward to the leader (https) is trusted."""
    url = postgres.create_database()
    with contextlib.ExitStack() as stack:
        running = [
            stack.enter_context(overhaul_serve(tmp_path / f"t{n}", *replica_flags(url), "--tls", "auto"))
            for n in range(2)
        ]
        [leader] = wait("one leader", lambda: leaders(running))
        [standby] = [r for r in running if r is not leader]
        cas = {(r.state_dir / "tls" / "ca.pem").read_text() for r in running}
        assert len(cas) == 1  # one CA for both
        for replica in running:
            assert stat.S_IMODE((replica.state_dir / "tls" / "ca.key").stat().st_mode) == 0o600
            # The CA in either state directory verifies the other replica's certificate.
            other = next(r for r in running if r is not replica)
            context = ssl.create_default_context(cafile=replica.state_dir / "tls" / "ca.pem")
            with urllib.request.urlopen(f"{other.url}/healthz", timeout=10, context=context) as answer:
                assert answer.status == 200
        make_fleet(standby)  # forwarded to the leader over https
        wait("10 instances", lambda: len(leader.instances(VMSS)) == 10)
