"""What every aggregate of the runtime shares: the ports, the background machinery, one write lock per name, and
the engine calls made on behalf of a request (observe, the image check) with their errors in the API's words."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from overhaul.aio import Changes
from overhaul.core.errors import Conflict, InvalidInput, NotFound, OverhaulError, Unavailable
from overhaul.core.gallery import ImageVersion
from overhaul.core.model import ScaleSet, ScaleSetRef
from overhaul.core.rollout import Attempt
from overhaul.core.triage import Fault
from overhaul.ports.clock import Clock
from overhaul.ports.driver import Driver, DriverError, InstanceOnTwoHosts, InstanceState
from overhaul.ports.health import HealthSource
from overhaul.ports.store import Store
from overhaul.runtime.events import EventBus
from overhaul.runtime.instances import Instances
from overhaul.runtime.outbox import Outbox
from overhaul.runtime.reconciler import Reconciler
from overhaul.runtime.settings import RuntimeSettings
from overhaul.runtime.supervisor import Supervisor

DEFAULT_SUBSCRIPTION = "local"
DEFAULT_RESOURCE_GROUP = "default"


class EngineFailed(OverhaulError):
    """The engine refused a call for a reason that is not the request's (the message has the engine's words)."""

    code = "EngineError"


def engine_error(exc: DriverError) -> OverhaulError:
    """A request the engine could not carry out: 503 with the fault's code when the infrastructure is to blame
    (trying again later may work), else the engine's own words."""
    if isinstance(exc, InstanceOnTwoHosts):
        return Conflict(f"{exc}: remove the one that should not be there", "InstanceOnTwoHosts")
    if exc.fault is Fault.ENGINE_UNAVAILABLE:
        return Unavailable(f"the container engine is unavailable: {exc}", "EngineUnavailable")
    if exc.transient:
        return Unavailable(f"the engine cannot do it now ({exc.fault.value}): {exc}", exc.fault.value)
    return EngineFailed(str(exc))


def utc_timestamp(at: float) -> str:
    """A time as ARM documents write it (seconds, UTC): a deployment's timestamp, an operation's start and end."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def as_ref(ref: ScaleSetRef | str) -> ScaleSetRef:
    """A bare name means the default subscription and resource group (the Python API's shorthand)."""
    return ref if isinstance(ref, ScaleSetRef) else ScaleSetRef(DEFAULT_SUBSCRIPTION, DEFAULT_RESOURCE_GROUP, ref)


@dataclass
class Parts:
    store: Store
    driver: Driver
    health: HealthSource
    clock: Clock
    settings: RuntimeSettings
    events: EventBus
    instances: Instances
    reconciler: Reconciler
    supervisor: Supervisor
    outbox: Outbox
    changes: Changes  # bumped when the gallery, a model, a host or an attempt's end changes
    # When this orchestrator last began acting (Orchestrator.start: a serve's start, a new leader's term).
    acting_since: float | None = None
    _locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(default_factory=weakref.WeakValueDictionary)

    @classmethod
    def assemble(
        cls, store: Store, driver: Driver, health: HealthSource, clock: Clock, settings: RuntimeSettings
    ) -> Parts:
        events, changes = EventBus(), Changes()
        instances = Instances(store, driver, health, changes)
        outbox = Outbox(store, clock)
        reconciler = Reconciler(store, driver, health, instances, events, outbox, clock, settings)
        supervisor = Supervisor(store, reconciler, settings)
        return cls(store, driver, health, clock, settings, events, instances, reconciler, supervisor, outbox, changes)

    @contextlib.asynccontextmanager
    async def writing(self, name: str) -> AsyncIterator[None]:
        """One writer per name at a time (a scale set's create, update, delete, reimage, start; the gallery; the
        load balancers)."""
        # A lock lives as long as a writer holds or waits for it (the dictionary's references are weak).
        lock = self._locks.get(name.lower())
        if lock is None:
            lock = self._locks[name.lower()] = asyncio.Lock()
        async with lock:
            yield

    async def observe(self, name: str) -> dict[int, InstanceState]:
        try:
            async with asyncio.timeout(self.settings.action_timeout):
                return await self.driver.observe(name)
        except DriverError as exc:
            raise engine_error(exc) from exc
        except TimeoutError as exc:
            raise Unavailable("the container engine did not answer", "EngineUnavailable") from exc

    async def require_image(self, version: ImageVersion, target: str, *, vm: bool = False) -> None:
        """The artefact instances are made from, present before any instance is touched."""
        image = version.source_for(vm)
        try:
            present = await self.driver.image_present(image, vm=vm)
        except DriverError as exc:
            raise engine_error(exc) from exc
        if not present:
            what = f"no VM artefacts (base.qcow2, vmlinuz, initrd.img) in {image!r}" if vm else f"no image {image!r}"
            raise InvalidInput(f"{target}: the engine has {what}", "ImageNotFound", target)

    async def find_scale_set(self, ref: ScaleSetRef | str) -> ScaleSet | None:
        ref = as_ref(ref)
        model = await self.store.get_scale_set(ref.name)
        return model if model is not None and ref.matches(model) else None

    async def scale_set(self, ref: ScaleSetRef | str) -> ScaleSet:
        ref = as_ref(ref)
        model = await self.find_scale_set(ref)
        if model is None:
            raise NotFound(
                f"scale set {ref.name} does not exist in resource group {ref.resource_group}", "ResourceNotFound"
            )
        return model

    async def active(self, name: str) -> list[Attempt]:
        return [s.attempt for s in await self.store.attempts(name) if not s.attempt.done]

    async def settle(self, name: str) -> None:
        """Conflict while an attempt rolls forward; waits out one that is only finishing its clean-up."""
        active = await self.active(name)
        running = next((a for a in active if not a.status.terminal), None)
        if running is not None:
            detail = {
                "code": "RollingUpgradeInProgress",
                "message": f"rolling upgrade {running.id} (to {running.target_version}) is in progress",
                "unblock": "wait for it to end (`overhaul vmss rolling-upgrade get-latest --wait`), or cancel it "
                "(`overhaul vmss rolling-upgrade cancel`)",
            }
            raise Conflict(f"a rolling upgrade of {name} is in progress", "RollingUpgradeInProgress", details=(detail,))
        if active:
            self.supervisor.ensure(name)
            await self.supervisor.wait_idle(name, self.settings.action_timeout)
            if await self.active(name):
                raise Conflict(f"a rolling upgrade of {name} is still finishing", "RollingUpgradeInProgress")
