"""A scale set across three hosts, end to end: `overhaul serve` on real Podman, and three more Podman services with
stores of their own as the hosts, each behind its own real sshd (its key given) and publishing on its own loopback
address (127.0.0.2, .3, .4). The hosts start with no image: each version is copied to them through their engines.
Nine instances are placed over the three zones, probed where their host publishes, given their config drive through
the engine API, upgraded zone by zone while one host goes away mid-attempt and comes back, a bad version rolled
back, and deleted from their hosts."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo import busybox_images as engine_images
from tests.e2e.hosts import (
    GALLERY,
    GROUPS,
    REPO,
    VMSS,
    containers,
    host_id,
    images,
    images_on,
    inside,
    instances,
    latest,
    publish,
    replication,
    settle,
    wait_for,
)
from tests.engines import Sshd, podman_host, sshd
from tests.serve import API, Served, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(600)]
MODEL: dict[str, Any] = {
    "location": "edge",
    "zones": ["1", "2", "3"],
    "sku": {"capacity": 9},
    "properties": {
        "upgradePolicy": {
            "mode": "Rolling",
            "rollingUpgradePolicy": {
                "maxBatchInstancePercent": 40,
                "rollbackFailedInstancesOnPolicyBreach": True,
                "overhaul": {"instanceHealthTimeout": "PT60S"},  # for a loaded machine (3.0.0 fails at once)
            },
        },
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {"publisher": "overhaul", "offer": "hosts", "sku": "tiny", "version": "latest"},
                "dataDisks": [{"lun": 0}],
            },
            "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
            "overhaul": {"stopTimeoutInSeconds": 2},
        },
    },
}


ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def hosts() -> Iterator[list[tuple[str, Sshd]]]:
    """Three hosts: a Podman store of its own each, behind its own sshd on its own loopback address."""
    with contextlib.ExitStack() as stack:
        yield [(stack.enter_context(podman_host()), stack.enter_context(sshd(a))) for a in ADDRESSES]


@pytest.fixture
def served(tmp_path: Path, hosts: list[tuple[str, Sshd]]) -> Iterator[Served]:
    images([])  # the gallery's images are on the orchestrator's own engine (checked there before publishing)
    engine_images.build("podman", f"{REPO}:9.9.9", "9.9.9")
    with overhaul_serve(tmp_path / "state", "--engine", "podman", "--probe-interval", "0.2") as running:
        try:
            yield running
        finally:
            running.delete(f"{VMSS}?{API}")


def reimage_batches(served: Served, attempt_id: str) -> list[list[int]]:
    """The instances each batch of the attempt reimaged, from the store's journal (read only)."""
    database = f"file:{served.state_dir / 'overhaul.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(database, uri=True, timeout=30)) as db:
        rows = db.execute(
            "SELECT at, instance_id FROM journal WHERE attempt_id = ? AND action = 'reimage' AND phase = 'begin'",
            (attempt_id,),
        ).fetchall()
    found: dict[float, list[int]] = {}
    for at, instance_id in rows:
        found.setdefault(at, []).append(instance_id)
    return [sorted(ids) for _, ids in sorted(found.items())]


def why(served: Served) -> list[str]:
    return [c["code"] for c in served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]
            ["overhaul"].get("why", [])]  # fmt: skip


def test_a_scale_set_across_three_ssh_hosts_is_placed_upgraded_zone_by_zone_and_rides_out_a_host_outage(
    served: Served, hosts: list[tuple[str, Sshd]]
) -> None:
    for zone, (url, server) in enumerate(hosts, start=1):
        body = {"location": "edge", "zones": [str(zone)], "properties": {"platformFaultDomainCount": 1}}
        assert served.call("PUT", f"{GROUPS}/z{zone}?{API}", body)[0] == 201
        ours = {
            "engine": f"ssh://root@{server.address}:{server.port}{url.removeprefix('unix://')}",
            "sshKey": str(server.client_key),
            "hostKey": server.host_key,
            "hostPorts": "32000-32099",  # the same range on each: each host publishes on its own address
        }
        status, doc, _ = served.call("PUT", f"{GROUPS}/z{zone}/hosts/h{zone}?{API}", {"properties": {"overhaul": ours}})
        assert status == 201, doc
    identifier = {"publisher": "overhaul", "offer": "hosts", "sku": "tiny"}
    assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(served, "1.0.0")
    assert replication(served, "1.0.0")["summary"][1] == {
        "region": "edge",
        "state": "Completed",
        "details": "",
        "progress": 100,
    }
    assert all(images_on(url) == [f"{REPO}:1.0.0"] for url, _ in hosts)  # copied through each host's engine
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", MODEL)
    assert status == 201, doc
    placed = [(f"h{i % 3 + 1}", ADDRESSES[i % 3]) for i in range(9)]  # zones 1, 2, 3 in turn
    # Healthy means the probe reached each instance where its host publishes.
    settle(served, lambda: instances(served) == [(h, a, "1.0.0", "Healthy") for h, a in placed])
    for zone, (url, _) in enumerate(hosts, start=1):
        assert containers(url) == [f"spread_{i}" for i in range(9) if i % 3 == zone - 1]
    # Nothing of this machine is mounted there: the config drive was copied in, root's alone.
    metadata = json.loads(inside(hosts[2][0], "spread_2", "cat", "/etc/overhaul/metadata.json"))
    assert (metadata["instanceId"], metadata["location"], bool(metadata["platformToken"])) == ("2", "edge", True)
    listed = inside(hosts[1][0], "spread_1", "busybox", "ls", "-l", "/etc/overhaul/metadata.json")
    assert listed.startswith("-rw-------"), listed

    # v2 is rolled out zone by zone; host 3 goes away (its sshd and every connection to it) while zone 1's batch
    # runs: zones 1 and 2 are upgraded, zone 3's instances wait as Unknown, counted neither way.
    publish(served, "2.0.0")
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    hosts[2][1].stop()
    expected = [(h, a, "2.0.0", "Healthy") if h != "h3" else (h, a, None, "Unknown") for h, a in placed]
    settle(served, lambda: instances(served) == expected)
    wait_for(lambda: "HostUnreachable" in why(served))
    details = served.call("GET", f"{VMSS}/virtualMachines/2?{API}")[1]["properties"]["instanceView"]["vmHealth"]
    assert "host z3/h3 does not answer" in details["status"]["message"]
    view = served.call("GET", f"{GROUPS}/z3/hosts/h3/instanceView?{API}")[1]
    assert view["statuses"][1]["code"] == "HealthState/unavailable" and view["overhaul"]["lastSeen"], view
    status, health, _ = served.call("GET", "/healthz")
    assert status == 200 and list(health["hosts"]) == [host_id(served, "z3", "h3").lower()], health
    assert served.metric("overhaul_host_up", host=host_id(served, "z3", "h3").lower()) == 0
    assert latest(served) == "RollingForward"
    hosts[2][1].start()  # back: the attempt picks up where it stopped
    settle(served, lambda: latest(served) == "Completed")
    assert instances(served) == [(h, a, "2.0.0", "Healthy") for h, a in placed]
    # The journal: each batch's reimages begin in one write, and no batch held two zones' instances.
    attempt_id = served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["overhaul"]["attemptId"]
    batches = reimage_batches(served, attempt_id)
    assert {i for b in batches for i in b} == set(range(9)), batches
    assert all(len({i % 3 for i in b}) == 1 for b in batches), batches  # instance i is in zone i % 3 + 1
    # Each instance's data disk stayed on its host: the file its first OS disk wrote is there.
    for i in (0, 4, 8):
        assert inside(hosts[i % 3][0], f"spread_{i}", "cat", "/datadisks/lun0/first").strip() == "1.0.0"

    publish(served, "3.0.0")  # its /health is missing: the first batch fails and is rolled back
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    settle(served, lambda: latest(served) == "Faulted")
    settle(served, lambda: instances(served) == [(h, a, "2.0.0", "Healthy") for h, a in placed])
    assert served.delete(f"{VMSS}?{API}")[1]["status"] == "Succeeded"
    wait_for(lambda: all(containers(url) == [] for url, _ in hosts))
    assert_a_wrong_host_key_acts_on_nothing(served, hosts[0])


def assert_a_wrong_host_key_acts_on_nothing(served: Served, host: tuple[str, Sshd]) -> None:
    """Host 1's engine added again under another key: it is unreachable, and a copy to it fails, naming why."""
    url, server = host
    assert served.call("DELETE", f"{GROUPS}/z1/hosts/h1?{API}")[0] in (200, 202)
    body = {"location": "far", "zones": ["1"], "properties": {"platformFaultDomainCount": 1}}
    assert served.call("PUT", f"{GROUPS}/far?{API}", body)[0] == 201
    ours = {
        "engine": f"ssh://root@{server.address}:{server.port}{url.removeprefix('unix://')}",
        "sshKey": str(server.client_key),
        "hostKey": Sshd.fresh_host_key(),
        "hostPorts": "32000-32099",
    }
    assert served.call("PUT", f"{GROUPS}/far/hosts/wrong?{API}", {"properties": {"overhaul": ours}})[0] == 201
    view = served.call("GET", f"{GROUPS}/far/hosts/wrong/instanceView?{API}")[1]
    assert "host key mismatch" in view["statuses"][1]["message"], view
    body = {
        "properties": {
            "publishingProfile": {"targetRegions": [{"name": "local"}, {"name": "far"}]},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"{REPO}:9.9.9"}}},
        }
    }
    assert served.call("PUT", f"{GALLERY}/versions/9.9.9?{API}", body)[0] == 201
    wait_for(lambda: replication(served, "9.9.9")["aggregatedState"] == "Failed")
    assert "host key mismatch" in replication(served, "9.9.9")["summary"][1]["details"]
    assert f"{REPO}:9.9.9" not in images_on(url)
    assert served.call("DELETE", f"{GALLERY}/versions/9.9.9?{API}")[0] in (200, 202)
    assert served.call("DELETE", f"{GROUPS}/far/hosts/wrong?{API}")[0] in (200, 202)
