"""A scale set across two hosts, end to end: `overhaul serve` on real Podman, and two more Podman services with
stores of their own as the hosts, one a socket of this machine, the other reached through a real sshd (its key
given), each publishing on its own loopback address. Instances are
placed over the two zones, probed where their host publishes, upgraded in place, a bad version rolled back, and
deleted from their hosts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.hosts import (
    GALLERY,
    GROUPS,
    VMSS,
    containers,
    host_id,
    images,
    inside,
    instances,
    latest,
    publish,
    wait_for,
)
from tests.engines import Sshd, podman_host, sshd
from tests.serve import API, Served, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(600)]
MODEL: dict[str, Any] = {
    "location": "edge",
    "zones": ["1", "2"],
    "sku": {"capacity": 4},
    "properties": {
        "upgradePolicy": {
            "mode": "Rolling",
            "rollingUpgradePolicy": {
                "maxBatchInstancePercent": 50,
                "rollbackFailedInstancesOnPolicyBreach": True,
                "overhaul": {"instanceHealthTimeout": "PT60S"},  # for a loaded machine (3.0.0 fails at once)
            },
        },
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {"publisher": "overhaul", "offer": "hosts", "sku": "tiny", "version": "latest"},
            },
            "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
            "overhaul": {"stopTimeoutInSeconds": 2},
        },
    },
}


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    with podman_host(images) as two, podman_host(images) as three:
        yield two, three


@pytest.fixture
def server() -> Iterator[Sshd]:
    with sshd("127.0.0.3") as running:
        yield running


@pytest.fixture
def served(tmp_path: Path, hosts: tuple[str, str]) -> Iterator[Served]:
    images([])  # the orchestrator's own engine checks a version's image before it is published
    with overhaul_serve(tmp_path / "state", "--engine", "podman", "--probe-interval", "0.2") as running:
        try:
            yield running
        finally:
            running.delete(f"{VMSS}?{API}")


def test_a_scale_set_across_two_hosts_is_placed_upgraded_rolled_back_and_removed(
    served: Served, hosts: tuple[str, str], server: Sshd
) -> None:
    # Host 1's engine is a socket of this machine; host 2's is reached over SSH, its key given.
    through_ssh = {
        "engine": f"ssh://root@{server.address}:{server.port}{hosts[1].removeprefix('unix://')}",
        "sshKey": str(server.client_key),
        "hostKey": server.host_key,
    }
    for zone, engine, address in (("1", {"engine": hosts[0]}, "127.0.0.2"), ("2", through_ssh, "127.0.0.3")):
        body = {"location": "edge", "zones": [zone], "properties": {"platformFaultDomainCount": 1}}
        assert served.call("PUT", f"{GROUPS}/z{zone}?{API}", body)[0] == 201
        ours = {**engine, "publishAddress": address, "hostPorts": "32000-32099"}
        status, doc, _ = served.call("PUT", f"{GROUPS}/z{zone}/hosts/h{zone}?{API}", {"properties": {"overhaul": ours}})
        assert status == 201, doc
    identifier = {"publisher": "overhaul", "offer": "hosts", "sku": "tiny"}
    assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(served, "1.0.0")
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", MODEL)
    assert status == 201, doc
    on = {"h1": "127.0.0.2", "h2": "127.0.0.3"}
    placed = [("h1", "127.0.0.2"), ("h2", "127.0.0.3")] * 2
    # Healthy means the probe reached each instance where its host publishes (both hosts use the same ports).
    wait_for(lambda: instances(served) == [(h, a, "1.0.0", "Healthy") for h, a in placed])
    assert containers(hosts[0]) == ["spread_0", "spread_2"] and containers(hosts[1]) == ["spread_1", "spread_3"]
    assert all(on[h] == a for h, a, _, _ in instances(served))
    # The config drive: bind-mounted on the host of this machine, copied through the engine API into the other's.
    for url, instance_id in ((hosts[0], 0), (hosts[1], 1)):
        metadata = json.loads(inside(url, f"spread_{instance_id}", "cat", "/etc/overhaul/metadata.json"))
        assert (metadata["instanceId"], metadata["location"], bool(metadata["platformToken"])) == (
            str(instance_id),
            "edge",
            True,
        )
    listed = inside(hosts[1], "spread_1", "busybox", "ls", "-l", "/etc/overhaul/metadata.json")
    assert listed.startswith("-rw-------"), listed  # root's alone, as the bind-mounted one
    publish(served, "2.0.0")
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    wait_for(lambda: latest(served) == "Completed")
    assert instances(served) == [(h, a, "2.0.0", "Healthy") for h, a in placed]
    publish(served, "3.0.0")  # its /health is missing: the first batch fails and is rolled back
    assert served.call("POST", f"{VMSS}/osRollingUpgrade?{API}")[0] == 202
    wait_for(lambda: latest(served) == "Faulted")
    wait_for(lambda: instances(served) == [(h, a, "2.0.0", "Healthy") for h, a in placed])
    # Host 2 gone (its sshd and every connection to it): its instances are Unknown with the reason, the host's
    # view says so, /healthz stays 200 naming it, and its gauge is 0. Back, everything is as it was.
    server.stop()
    wait_for(lambda: [v for _, _, _, v in instances(served)] == ["Healthy", "Unknown"] * 2)
    details = served.call("GET", f"{VMSS}/virtualMachines/1?{API}")[1]["properties"]["instanceView"]["vmHealth"]
    assert "host z2/h2 does not answer" in details["status"]["message"]
    view = served.call("GET", f"{GROUPS}/z2/hosts/h2/instanceView?{API}")[1]
    assert view["statuses"][1]["code"] == "HealthState/unavailable" and view["overhaul"]["lastSeen"], view
    status, health, _ = served.call("GET", "/healthz")
    assert status == 200 and list(health["hosts"]) == [host_id(served, "z2", "h2").lower()], health
    assert served.metric("overhaul_host_up", host=host_id(served, "z2", "h2").lower()) == 0
    server.start()
    wait_for(lambda: instances(served) == [(h, a, "2.0.0", "Healthy") for h, a in placed])
    view = served.call("GET", f"{GROUPS}/z2/hosts/h2/instanceView?{API}")[1]
    assert view["statuses"][1]["code"] == "HealthState/available", view
    assert served.delete(f"{VMSS}?{API}")[1]["status"] == "Succeeded"
    wait_for(lambda: containers(hosts[0]) == [] and containers(hosts[1]) == [])
