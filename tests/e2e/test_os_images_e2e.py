"""The whole story with real system containers: OS images with the agent inside, booted by systemd in Podman."""

from __future__ import annotations

import functools
import io
import json
import sqlite3
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo import os_image
from demo.fleet_model import DATA_MARKER, EXTENSION_MARKER, os_fleet_model
from tests import builders
from tests.engines import podman_inspect
from tests.serve import API, Served, overhaul_serve

# The first test may build the OS images (or wait for another worker building them): minutes, not the usual two.
pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(900)]
RG = "/subscriptions/local/resourceGroups/e2e"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/os"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/os"


@pytest.fixture(scope="module")
def images() -> None:
    os_image.build("1.0.0", bad=False)
    os_image.build("2.0.0", bad=False)
    os_image.build("3.0.0", bad=True)


@pytest.fixture
def served(images: None, tmp_path: Path) -> Iterator[Served]:
    with overhaul_serve(
        tmp_path / "state", "--engine", "podman", "--auto-upgrade-first-delay", "0", "--auto-upgrade-delay", "0"
    ) as running:
        try:
            yield running
        finally:
            remove_scale_set(running)


def remove_scale_set(served: Served) -> None:
    """What a test made goes, so the next one starts from nothing: an attempt still running (one waiting for an
    approval, say) is cancelled first, since a scale set is not deleted under one."""
    if served.call("POST", f"{VMSS}/rollingUpgrades/cancel?{API}")[0] == 202:
        wait_for(lambda: served.latest_code(VMSS) != "RollingForward", timeout=120)
    status, doc = served.delete(f"{VMSS}?{API}")
    assert status == 204 or doc["status"] == "Succeeded", doc


def publish(served: Served, version: str) -> None:
    body = {
        "properties": {"storageProfile": {"source": {"overhaul": {"containerImage": f"{os_image.REPO}:{version}"}}}}
    }
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


def read_file(instance: str, path: str) -> str:
    """Reads a file of a running system container (no exec: `podman cp` to stdout, a tar stream)."""
    out = subprocess.run(
        ["podman", "cp", f"{instance}:{path}", "-"], capture_output=True, check=True, timeout=60
    ).stdout

    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        member = tar.next()
        assert member is not None
        extracted = tar.extractfile(member)
        assert extracted is not None
        return extracted.read().decode().strip()


wait_for = functools.partial(builders.wait_for, timeout=240, every=0.5)


def agent_health(served: Served, instance_id: int) -> dict[str, Any]:
    vm = served.instances(VMSS)[instance_id]
    port = vm["properties"]["overhaul"]["hostPorts"]["8090"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


def test_demo_story_with_five_system_containers(served: Served) -> None:
    identifier = {"publisher": "contoso", "offer": "os", "sku": "bookworm"}
    assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(served, "1.0.0")
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", os_fleet_model(5, health_timeout="PT20S"))
    assert status == 201, doc
    wait_for(lambda: served.versions_and_health(VMSS) == [("1.0.0", "Healthy")] * 5)
    names = [f"os_{i}" for i in range(5)]
    # Isolated by default: a network stack of its own each, no address on a bridge another container could use.
    for name in names:
        mode, address = podman_inspect(name, "{{.HostConfig.NetworkMode}} {{.NetworkSettings.IPAddress}}").partition(
            " "
        )[::2]
        assert (mode, address.strip()) == ("slirp4netns", ""), name
    first_markers = {n: read_file(n, EXTENSION_MARKER) for n in names}
    assert {read_file(n, DATA_MARKER) for n in names} == {"1.0.0"}

    publish(served, "2.0.0")  # automatic: no other call
    wait_for(lambda: served.versions_and_health(VMSS) == [("2.0.0", "Healthy")] * 5)
    wait_for(lambda: served.latest_code(VMSS) == "Completed")
    for name in names:
        marker = read_file(name, EXTENSION_MARKER)
        assert marker and marker != first_markers[name], f"the extension did not run again on {name}"
        assert read_file(name, DATA_MARKER) == "1.0.0", f"the data disk of {name} was not kept"
    # Batches waited for the agent's Healthy: each commit came after that instance's agent said Healthy, and the
    # next reimage after that commit.
    journal = (
        sqlite3.connect(served.state_dir / "overhaul.db")
        .execute("SELECT instance_id, action, phase, at FROM journal ORDER BY seq")
        .fetchall()
    )
    at = {(i, a, p): t for i, a, p, t in journal}
    for i in range(5):
        healthy_since = agent_health(served, i)["since"]
        assert healthy_since <= at[(i, "commit", "begin")] + 0.5
        if i < 4:
            assert at[(i + 1, "reimage", "begin")] >= at[(i, "commit", "begin")]

    publish(served, "3.0.0")  # its application never becomes healthy
    wait_for(lambda: served.latest_code(VMSS) == "Faulted")
    wait_for(lambda: served.versions_and_health(VMSS) == [("2.0.0", "Healthy")] * 5)
    status, doc, _ = served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")
    newest, oldest = doc["value"]
    assert newest["properties"]["runningStatus"]["code"] == "Faulted"
    assert newest["properties"]["targetImageReference"]["version"] == "3.0.0"
    assert newest["properties"]["rollbackInfo"]["successfullyRolledbackInstanceCount"] == 1
    assert newest["properties"]["error"]["code"] == "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
    assert oldest["properties"]["runningStatus"]["code"] == "Completed"
    assert oldest["properties"]["progress"]["successfulInstanceCount"] == 5
    assert read_file("os_0", DATA_MARKER) == "1.0.0"
    # Creating, upgrading and rolling back took agents away only on purpose: no watch error was counted.
    with urllib.request.urlopen(f"{served.url}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert "\noverhaul_health_watch_errors_total 0.0\n" in metrics, metrics


APPROVE = (
    "import json, sys, urllib.request, urllib.error\n"
    "headers = {}\n"
    "if len(sys.argv) > 2:\n"
    "    token = json.load(open('/etc/overhaul/metadata.json'))['platformToken']\n"
    "    headers['Authorization'] = 'Bearer ' + token\n"
    "request = urllib.request.Request(sys.argv[1], data=b'', headers=headers, method='POST')\n"
    "try:\n"
    "    print(urllib.request.urlopen(request, timeout=10).status)\n"
    "except urllib.error.HTTPError as exc:\n"
    "    print(exc.code)\n"
)


def test_only_the_instance_itself_approves_its_deferred_upgrade(served: Served) -> None:
    """osRollingUpgradeDeferral: a neighbour container on the engine's bridge and a local user on the published
    port are refused (401); the application inside, with the platformToken of its metadata, approves."""
    identifier = {"publisher": "contoso", "offer": "os", "sku": "bookworm"}
    assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(served, "1.0.0")
    model = os_fleet_model(2)
    model["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"]["osRollingUpgradeDeferral"] = True
    model["properties"]["virtualMachineProfile"]["overhaul"]["network"] = "shared"  # neighbours on one bridge
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    wait_for(lambda: served.versions_and_health(VMSS) == [("1.0.0", "Healthy")] * 2)
    publish(served, "2.0.0")
    wait_for(lambda: agent_health(served, 0)["approvedOSUpgrade"] is None and pending_notice("os_0") == "2.0.0")

    port = served.instances(VMSS)[0]["properties"]["overhaul"]["hostPorts"]["8090"]
    local_user = approve_from_host(f"http://127.0.0.1:{port}/platform/approve-os-upgrade")
    address = podman_inspect("os_0", "{{.NetworkSettings.IPAddress}}")
    neighbour_url = f"http://{address}:8090/platform/approve-os-upgrade"
    neighbour = subprocess.run(
        ["podman", "run", "--rm", "--entrypoint", "python3", f"{os_image.REPO}:1.0.0", "-c", APPROVE, neighbour_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert (local_user, neighbour) == (401, "401")
    # The agent's own word, which is all the orchestrator hears: nothing was approved.
    assert agent_health(served, 0)["approvedOSUpgrade"] is None
    assert served.versions_and_health(VMSS)[0] == ("1.0.0", "Healthy")

    itself = subprocess.run(
        ["podman", "exec", "os_0", "python3", "-c", APPROVE, "http://127.0.0.1:8090/platform/approve-os-upgrade", "t"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert itself == "200"
    wait_for(lambda: served.versions_and_health(VMSS)[0] == ("2.0.0", "Healthy"))


def pending_notice(instance: str) -> str | None:
    try:
        doc = json.loads(read_file(instance, "/etc/overhaul/platform.json"))
    except subprocess.CalledProcessError:
        return None
    pending = doc.get("tags", {}).get("Platform.PendingOSUpgrade")
    return str(pending) if pending is not None else None


def approve_from_host(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
