"""What the tests build their worlds from: scale-set documents, image versions, the in-memory runtime with a
driver that fails on demand, and waiting for a condition. Test modules import from here, never from each other."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition, ImageVersion
from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import InstanceView
from overhaul.core.rollout import Attempt, StartedBy, start
from overhaul.ports.driver import DriverError, InstanceSpec, InstanceState
from overhaul.runtime.orchestrator import Orchestrator
from overhaul.runtime.settings import RuntimeSettings
from tests.serve import API, Served, serve_in_process


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


def automatic_model(capacity: int = 4) -> dict[str, Any]:
    """small() with automatic OS upgrades in batches of half, 20 minutes apart, health from the power state."""
    doc = small(capacity)
    doc["properties"]["upgradePolicy"] = {
        "mode": "Automatic",
        "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True, "useRollingUpgradePolicy": True},
        "rollingUpgradePolicy": {"maxBatchInstancePercent": 50, "pauseTimeBetweenBatches": "PT20M"},
    }
    doc["properties"]["virtualMachineProfile"]["overhaul"]["healthFromPowerState"] = True
    return doc


def hooked_model(*hooks: dict[str, Any]) -> dict[str, Any]:
    """API_MODEL with automatic OS upgrades, batches of one of its two instances, and these lifecycle hooks."""
    model = copy.deepcopy(API_MODEL)
    model["sku"]["capacity"] = 2
    model["properties"]["upgradePolicy"] = {
        "mode": "Rolling",
        "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True},
        "rollingUpgradePolicy": {"maxBatchInstancePercent": 50},
    }
    model["properties"]["lifecycleHooksProfile"] = {"lifecycleHooks": list(hooks)}
    return model


async def wait_for_async(predicate: Callable[[], Any], timeout: float = 20, every: float = 0.01) -> None:
    """Until ``await predicate()`` is true, inside the event loop; fails the test past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(every)


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
def seeded_serve(tmp_path: Path, *extra: str) -> Iterator[Served]:
    """`overhaul serve` on the in-memory engine, with the image definition the API documents use and 1.0.0."""
    with serve_in_process(
        tmp_path / "state", "--engine", "memory", "--auto-upgrade-first-delay", "0", "--auto-upgrade-delay", "0", *extra
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


# --- a fleet on the in-memory driver with a simulated clock and chosen engine failures -------------------------

Failing = Callable[[str, "InstanceSpec | None"], "DriverError | None"]
RETRY = 15.0  # simulated seconds each failed engine call costs (the back-off it waits)
SIMULATED = RuntimeSettings(retry_min=0.0005, retry_max=0.002, restart_min=0.001, restart_max=0.01)


@dataclass
class SimulatedClock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FaultDriver(MemoryDriver):
    """Fails calls while ``failing`` says so, each failure costing RETRY simulated seconds."""

    clock: SimulatedClock = field(default_factory=SimulatedClock)
    failing: Callable[[str, InstanceSpec | None], DriverError | None] = lambda call, spec: None
    failures: int = 0

    def _fault(self, call: str, spec: InstanceSpec | None = None) -> None:
        error = self.failing(call, spec)
        if error is not None:
            self.failures += 1
            self.clock.now += RETRY
            raise error

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        self._fault("observe")
        return await super().observe(scale_set)

    async def reimage(self, spec: InstanceSpec) -> None:
        self._fault("reimage", spec)
        await super().reimage(spec)

    async def commit(self, spec: InstanceSpec) -> None:
        self._fault("commit", spec)
        await super().commit(spec)

    async def rollback(self, spec: InstanceSpec) -> None:
        self._fault("rollback", spec)
        await super().rollback(spec)


@dataclass
class Fleet:
    store: SqliteStore
    driver: FaultDriver
    orchestrator: Orchestrator

    @property
    def clock(self) -> SimulatedClock:
        return self.driver.clock

    async def upgrade(self) -> Attempt:
        await self.orchestrator.galleries.publish(version("2.0.0"))
        attempt = await self.orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
        return await self.orchestrator.upgrades.wait(attempt.id, 60)

    async def quarantined(self, v: str) -> bool:
        versions = await self.store.image_versions()
        return any(iv.version == v and iv.quarantined for iv in versions)

    async def versions(self) -> dict[int, str | None]:
        states = await MemoryDriver.observe(self.driver, "web")
        assert all(s.running and s.previous is None for s in states.values()), states
        return {i: s.version for i, s in states.items()}

    def rollbacks(self) -> int:
        return sum(1 for call, _ in self.driver.calls if call == "rollback")


@contextlib.asynccontextmanager
async def fleet_with(tmp_path: Path, settings: RuntimeSettings = SIMULATED) -> AsyncIterator[Fleet]:
    store = SqliteStore(tmp_path / "overhaul.db")
    driver = FaultDriver()
    orchestrator = Orchestrator(store, driver, HealthMonitor(), clock=driver.clock, settings=settings)
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await orchestrator.galleries.publish(version("1.0.0"))
    await orchestrator.scale_sets.put("web", small(5))
    yield Fleet(store, driver, orchestrator)
    await orchestrator.close()
    await store.close()


def platform_attempt(
    views: Mapping[int, InstanceView], policy: RollingUpgradePolicy, now: float, **options: Any
) -> Attempt:
    """A platform attempt of scale set "web" to 2.0.0 over ``views`` (``options``: start()'s keyword arguments)."""
    return start(
        attempt_id="a",
        scale_set="web",
        target_version="2.0.0",
        started_by=StartedBy.PLATFORM,
        disable_automatic_rollback=False,
        policy=policy,
        capacity=len(views),
        views=views,
        now=now,
        **options,
    )
