"""What the tests build their worlds from: scale-set documents, image versions, the in-memory runtime with a
driver that fails on demand, and waiting for a condition. Test modules import from here, never from each other."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageVersion
from overhaul.ports.driver import DriverError, InstanceSpec
from overhaul.runtime.orchestrator import Orchestrator
from overhaul.runtime.settings import RuntimeSettings
from tests.serve import API, Served, overhaul_serve


def wait_for(predicate: Any, timeout: float = 20, every: float = 0.05) -> None:
    """Until ``predicate()`` is true; fails the test past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(every)


# --- through the REST API (a running `overhaul serve`) ---------------------------------------------------------

RG = "/subscriptions/subscription_id/resourceGroups/myResourceGroup"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/myScaleSet"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/myGallery/images/myImage"
IMAGE_VERSIONS = (
    "/subscriptions/subscription_id/providers/Microsoft.Compute/locations/local/publishers/Canonical"
    "/artifacttypes/vmimage/offers/0001-com-ubuntu-server-jammy/skus/22_04-lts/versions"
)
API_MODEL: dict[str, Any] = {
    "location": "local",
    "sku": {"name": "Standard_Container", "capacity": 5},
    "properties": {
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {
                    "publisher": "Canonical",
                    "offer": "0001-com-ubuntu-server-jammy",
                    "sku": "22_04-lts",
                    "version": "latest",
                },
                "dataDisks": [{"lun": 0, "diskSizeGB": 1}],
            },
            # The in-memory engine runs nothing to probe: instances are healthy while they "run".
            "overhaul": {"healthFromPowerState": True},
        },
    },
}


def publish(served: Served, version: str, *, exclude: bool = False) -> None:
    body = {
        "location": "local",
        "properties": {
            "publishingProfile": {"excludeFromLatest": exclude, "targetRegions": [{"name": "local"}]},
            "storageProfile": {"source": {"overhaul": {"containerImage": f"localhost/jammy:{version}"}}},
        },
    }
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


@contextmanager
def seeded_serve(tmp_path: Path) -> Iterator[Served]:
    """`overhaul serve` on the in-memory engine, with the image definition the API documents use and 1.0.0."""
    with overhaul_serve(
        tmp_path / "state", "--engine", "memory", "--auto-upgrade-first-delay", "0", "--auto-upgrade-delay", "0"
    ) as running:
        identifier = {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"}
        status, _, _ = running.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})
        assert status == 201
        publish(running, "1.0.0")
        yield running


# --- the runtime in process ------------------------------------------------------------------------------

RUNTIME_MODEL: dict[str, Any] = {
    "location": "local",
    "sku": {"capacity": 10},
    "properties": {
        "upgradePolicy": {"mode": "Automatic"},
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {"publisher": "overhaul", "offer": "test", "sku": "tiny", "version": "latest"},
                "dataDisks": [{"lun": 0}],
            },
            "overhaul": {"ports": [8080]},
        },
    },
}


def version(v: str) -> ImageVersion:
    return ImageVersion("g", "tiny", v, f"localhost/tiny:{v}", published_at=float(v.split(".", maxsplit=1)[0]))


FAST = RuntimeSettings(retry_min=0.001, retry_max=0.01, restart_min=0.001, restart_max=0.01)


class FlakyDriver(MemoryDriver):
    """Fails chosen calls a given number of times, transiently or for good."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[str, list[DriverError]] = {}

    def fail(self, call: str, *errors: DriverError) -> None:
        self.failures.setdefault(call, []).extend(errors)

    def _next_failure(self, call: str) -> None:
        queue = self.failures.get(call)
        if queue:
            raise queue.pop(0)

    async def observe(self, scale_set: str) -> dict[int, Any]:
        self._next_failure("observe")
        return await super().observe(scale_set)

    async def reimage(self, spec: InstanceSpec) -> None:
        self._next_failure("reimage")
        await super().reimage(spec)

    async def commit(self, spec: InstanceSpec) -> None:
        self._next_failure("commit")
        await super().commit(spec)


class Runtime:
    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(path)
        self.driver = FlakyDriver()
        self.orchestrator = self.new_orchestrator()

    def new_orchestrator(self) -> Orchestrator:
        return Orchestrator(self.store, self.driver, HealthMonitor(), settings=FAST)

    async def restart(self) -> None:
        await self.orchestrator.close()
        self.orchestrator = self.new_orchestrator()
        await self.orchestrator.start()


def small(capacity: int = 4) -> dict[str, Any]:
    doc = copy.deepcopy(RUNTIME_MODEL)
    doc["sku"]["capacity"] = capacity
    return doc


# --- core model documents -----------------------------------------------------------------------------------

MODEL_BASE: dict[str, Any] = {
    "location": "local",
    "sku": {"name": "Standard_Container", "capacity": 5},
    "properties": {
        "upgradePolicy": {"mode": "Automatic"},
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {
                    "publisher": "overhaul",
                    "offer": "demo",
                    "sku": "base",
                    "version": "latest",
                },
                "dataDisks": [{"lun": 0, "diskSizeGB": 1}],
            },
        },
    },
}
