"""What the multi-host end-to-end tests share: the ids they use, the gallery's images, and reading a host's own
Podman store and the API's word on the scale set."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo import busybox_images as engine_images
from tests import builders
from tests.engines import podman_store
from tests.serve import API, Served

REPO = "localhost/overhaul-hosts"
RG = "/subscriptions/local/resourceGroups/edge"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/spread"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/tiny"
GROUPS = RG + "/providers/Microsoft.Compute/hostGroups"
wait_for = functools.partial(builders.wait_for, timeout=120, every=0.2)


def images(store: list[str]) -> None:
    """1.0.0 and 2.0.0 healthy, 3.0.0 without /health."""
    for version, healthy in (("1.0.0", True), ("2.0.0", True), ("3.0.0", False)):
        engine_images.build("podman", f"{REPO}:{version}", version, healthy=healthy, store=store)


def podman(url: str, *command: str) -> str:
    """A podman command on the store behind the engine socket ``url`` (a host's own)."""
    store = podman_store(Path(url.removeprefix("unix://")).parent)
    done = subprocess.run(["podman", *store, *command], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def containers(url: str) -> list[str]:
    return sorted(podman(url, "ps", "-a", "--format", "{{.Names}}").split())


def images_on(url: str) -> list[str]:
    return sorted(podman(url, "images", "--format", "{{.Repository}}:{{.Tag}}").split())


def inside(url: str, container: str, *command: str) -> str:
    return podman(url, "exec", container, *command)


def publish(served: Served, version: str) -> None:
    """Publishes the version to 'local' and 'edge' and waits until every host of 'edge' has its copy."""
    body = {
        "properties": {
            "publishingProfile": {"targetRegions": [{"name": "local"}, {"name": "edge"}]},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"{REPO}:{version}"}}},
        }
    }
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc
    wait_for(lambda: replication(served, version)["aggregatedState"] == "Completed")


def replication(served: Served, version: str) -> Any:
    doc = served.call("GET", f"{GALLERY}/versions/{version}?{API}&$expand=ReplicationStatus")[1]
    return doc["properties"]["replicationStatus"]


def instances(served: Served) -> list[tuple[str, str, str | None, str]]:
    """(host, address, exact version, health) of each instance."""
    status, doc, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert status == 200, doc
    return [
        (
            vm["properties"]["overhaul"]["host"].rsplit("/", 1)[-1],
            vm["properties"]["overhaul"]["address"],
            vm["properties"]["storageProfile"]["imageReference"]["exactVersion"],
            vm["properties"]["instanceView"]["vmHealth"]["status"]["displayStatus"],
        )
        for vm in doc["value"]
    ]


def settle(served: Served, predicate: Callable[[], bool]) -> None:
    """wait_for, failing with what the scale set's instances and its latest attempt were."""
    try:
        wait_for(predicate)
    except AssertionError as exc:
        attempt = served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1].get("properties", {})
        shown = {k: attempt.get(k) for k in ("runningStatus", "progress", "overhaul")}
        raise AssertionError(f"instances {instances(served)}; latest {shown}") from exc


def host_id(served: Served, group: str, host: str) -> str:
    return str(served.call("GET", f"{GROUPS}/{group}/hosts/{host}?{API}")[1]["id"])


def latest(served: Served) -> str:
    return str(served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")[1]["properties"]["runningStatus"]["code"])
