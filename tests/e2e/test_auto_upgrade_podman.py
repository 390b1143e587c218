"""Automatic OS upgrades end to end: `overhaul serve` on real Podman; publishing a version is the only call."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from demo import busybox_images as engine_images
from tests import builders
from tests.serve import API, Served, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine]
REPO = "localhost/overhaul-auto"
RG = "/subscriptions/local/resourceGroups/auto"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/auto"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/tiny"
LATE = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/late"
MAINTENANCE = RG + "/providers/Microsoft.Maintenance/maintenanceConfigurations"
MODEL: dict[str, Any] = {
    "sku": {"capacity": 3},
    "properties": {
        "upgradePolicy": {
            "mode": "Automatic",
            "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True},
            "rollingUpgradePolicy": {"overhaul": {"instanceHealthTimeout": "PT20S"}},
        },
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {"publisher": "overhaul", "offer": "auto", "sku": "tiny", "version": "latest"},
                "dataDisks": [{"lun": 0}],
            },
            "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
            "overhaul": {"stopTimeoutInSeconds": 2},
        },
    },
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        engine_images.build("podman", f"{REPO}:{version}", version)
    with overhaul_serve(
        tmp_path / "state",
        "--engine",
        "podman",
        "--probe-interval",
        "0.2",
        "--auto-upgrade-first-delay",
        "0",
        "--auto-upgrade-delay",
        "0",
        "--rollout-min-maintenance-window",
        "60",
    ) as running:
        try:
            yield running
        finally:
            running.delete(f"{VMSS}?{API}")
            running.delete(f"{LATE}?{API}")


def publish(served: Served, version: str, *, exclude: bool = False) -> None:
    body = {
        "properties": {
            "publishingProfile": {"excludeFromLatest": exclude},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"{REPO}:{version}"}}},
        }
    }
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


def instances(served: Served) -> list[tuple[str, str]]:
    status, doc, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert status == 200, doc
    return [
        (
            vm["properties"]["storageProfile"]["imageReference"]["exactVersion"],
            vm["properties"]["instanceView"]["vmHealth"]["status"]["displayStatus"],
        )
        for vm in doc["value"]
    ]


wait_for = functools.partial(builders.wait_for, timeout=90, every=0.2)


def test_publishing_rolls_the_scale_set_and_excluded_versions_do_not(served: Served) -> None:
    identifier = {"publisher": "overhaul", "offer": "auto", "sku": "tiny"}
    assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(served, "1.0.0")
    status, doc, _ = served.call("PUT", f"{VMSS}?{API}", MODEL)
    assert status == 201, doc
    wait_for(lambda: instances(served) == [("1.0.0", "Healthy")] * 3)
    publish(served, "2.0.0")  # no other call: the platform rolls it out
    wait_for(lambda: instances(served) == [("2.0.0", "Healthy")] * 3)
    wait_for(
        lambda: (
            served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")[1]["value"][0]["properties"]["runningStatus"]["code"]
            == "Completed"
        )
    )
    history = served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")[1]["value"]
    assert len(history) == 1
    assert history[0]["properties"]["startedBy"] == "Platform"
    assert history[0]["properties"]["progress"]["successfulInstanceCount"] == 3
    publish(served, "3.0.0", exclude=True)
    # The watcher has looked at every scale set since the publish (and started nothing, as it must not).
    published = served.metric("overhaul_changes")
    wait_for(lambda: served.metric("overhaul_auto_upgrades_checked_change") >= published)
    assert instances(served) == [("2.0.0", "Healthy")] * 3
    assert len(served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")[1]["value"]) == 1


def window(served: Served, name: str, opens: datetime, duration: str) -> str:
    """A daily OSImage maintenance window (UTC) from ``opens``; returns its id."""
    start = opens.strftime("%Y-%m-%d %H:%M")
    body = {
        "location": "local",
        "properties": {
            "maintenanceScope": "OSImage",
            "maintenanceWindow": {"startDateTime": start, "duration": duration, "timeZone": "UTC", "recurEvery": "Day"},
        },
    }
    status, doc, _ = served.call("PUT", f"{MAINTENANCE}/{name}?{API}", body)
    assert status in (200, 201), doc
    return str(doc["id"])


def assign(served: Served, vmss: str, configuration_id: str) -> None:
    body = {"location": "local", "properties": {"maintenanceConfigurationId": configuration_id}}
    path = f"{vmss}/providers/Microsoft.Maintenance/configurationAssignments/window?{API}"
    status, doc, _ = served.call("PUT", path, body)
    assert status in (200, 201), doc


def test_automatic_upgrades_keep_to_each_scale_set_s_maintenance_window(served: Served) -> None:
    """One scale set's window is open now, the other's opens in two hours: publishing moves only the first, and
    `why` says when the second will move."""
    identifier = {"publisher": "overhaul", "offer": "auto", "sku": "tiny"}
    assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish(served, "1.0.0")
    assert served.call("PUT", f"{VMSS}?{API}", MODEL)[0] == 201
    assert served.call("PUT", f"{LATE}?{API}", MODEL)[0] == 201
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    assign(served, VMSS, window(served, "now", now - timedelta(minutes=1), "00:30"))
    later = now + timedelta(hours=2)
    assign(served, LATE, window(served, "later", later, "01:00"))
    wait_for(lambda: instances(served) == [("1.0.0", "Healthy")] * 3)
    publish(served, "2.0.0")
    wait_for(lambda: instances(served) == [("2.0.0", "Healthy")] * 3)
    history = served.call("GET", f"{VMSS}/osUpgradeHistory?{API}")[1]["value"]
    assert history[0]["properties"]["startedBy"] == "Platform"
    status, doc, _ = served.call("GET", f"{LATE}/osUpgradeHistory?{API}")
    assert status == 200 and doc["value"] == []  # nothing started outside its window
    [cause] = served.call("GET", f"{LATE}/rollingUpgrades/why?{API}")[1]["value"]
    assert cause["code"] == "OutsideMaintenanceWindow"
    assert cause["nextActionTime"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
