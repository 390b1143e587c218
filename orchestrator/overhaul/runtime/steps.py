"""One driver step as the runtime takes it: bounded, retried, and triaged (core/triage.py).

An infrastructure fault (the engine unreachable or restarting, a port taken, an image missing, a leftover of an
engine restart) is retried with back-off: a reimage until rollout.infra_deadline, a rollback without end (an
instance must run an OS disk), a commit or a withdrawn notice through any error (they change nothing that runs).
The image's failures fail the step they happened in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from overhaul.aio import Backoff
from overhaul.core.rollout import ActionKind
from overhaul.core.triage import Blame, Fault
from overhaul.core.why import Retrying
from overhaul.ports.clock import Clock
from overhaul.ports.driver import PENDING_OS_UPGRADE, Driver, DriverError, InstanceSpec, InstanceState
from overhaul.ports.events import Events, TransientError
from overhaul.ports.health import HealthSource
from overhaul.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

# New host ports for an instance's spec, when one it was to publish on is taken.
Respec = Callable[[], Awaitable[InstanceSpec]]


@dataclass(frozen=True)
class StepFailure:
    """Why a driver step failed; ``gave_up_on``: the infrastructure fault it was retried through until
    rollout.infra_deadline (None: the image's)."""

    error: str
    gave_up_on: Fault | None = None


@dataclass
class Steps:
    driver: Driver
    health: HealthSource
    events: Events
    clock: Clock = time.time
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    # Steps retried through an infrastructure fault right now, by (scale set, instance id): the "why" of a wait.
    retrying: dict[tuple[str, int], Retrying] = field(default_factory=dict)

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.retry_min, self.settings.retry_max)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        """The engine's view of the scale set, retried until the engine answers: listing only reads."""
        backoff = self._backoff()
        while True:
            try:
                async with asyncio.timeout(self.settings.action_timeout):
                    return await self.driver.observe(scale_set)
            except (DriverError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                log.warning("listing %s failed, retrying in %.2fs: %s", scale_set, backoff.delay, error)
                self.events.emit(TransientError(scale_set, "observe", error))
                await backoff.wait()

    async def step(
        self, scale_set: str, kind: ActionKind, spec: InstanceSpec, *, respec: Respec | None = None
    ) -> StepFailure | None:
        """One driver step, retried through infrastructure faults (core/triage.py) until rollout.infra_deadline,
        and a commit or a withdrawn notice through any error (they change nothing that runs); a rollback through
        infrastructure faults without end, as an instance must run an OS disk. ``respec``: new host ports for
        the spec when one was taken. Returns why it failed, or None when it is done."""
        if kind in (ActionKind.REIMAGE, ActionKind.ROLLBACK):
            # The instance's agent goes away with its OS disk: failed watch requests until it answers are expected.
            self.health.expect_outage((scale_set, spec.instance_id))
        key = (scale_set, spec.instance_id)
        try:
            return await self._retried(scale_set, kind, spec, respec)
        finally:
            self.retrying.pop(key, None)

    async def _retried(
        self, scale_set: str, kind: ActionKind, spec: InstanceSpec, respec: Respec | None
    ) -> StepFailure | None:
        backoff = self._backoff()
        first_fault: float | None = None
        while True:
            try:
                async with asyncio.timeout(self.settings.action_timeout):
                    await self._driver_call(kind, spec)
                return None
            except (DriverError, TimeoutError) as exc:
                error = str(exc) or f"no answer within {self.settings.action_timeout:g}s"
                fault = exc.fault if isinstance(exc, DriverError) else Fault.ENGINE_UNAVAILABLE
                if fault.blame is Blame.IMAGE and kind in (ActionKind.REIMAGE, ActionKind.ROLLBACK, ActionKind.NOTIFY):
                    return StepFailure(error)
                now = self.clock()
                first_fault = now if first_fault is None else first_fault
                if kind is ActionKind.REIMAGE and now - first_fault >= self.settings.infra_deadline:
                    return StepFailure(f"{error} (retried for {now - first_fault:.0f}s)", fault)
                if fault is Fault.HOST_PORT_TAKEN and respec is not None:
                    spec = await respec()
                    log.warning("%s: a host port was taken; publishing on %s instead", spec.name, dict(spec.ports))
                log.warning("%s %s failed, retrying in %.2fs: %s", kind.value, spec.name, backoff.delay, error)
                self.events.emit(TransientError(scale_set, f"{kind.value} {spec.name}", error))
                deadline = first_fault + self.settings.infra_deadline if kind is ActionKind.REIMAGE else None
                self.retrying[(scale_set, spec.instance_id)] = Retrying(
                    fault, f"{kind.value}: {error}", first_fault, now + backoff.delay, deadline
                )
                await backoff.wait()

    async def _driver_call(self, kind: ActionKind, spec: InstanceSpec) -> None:
        if kind is ActionKind.REIMAGE:
            await self.driver.reimage(spec)
        elif kind is ActionKind.COMMIT:
            await self.driver.commit(spec)
        elif kind is ActionKind.ROLLBACK:
            await self.driver.rollback(spec)
        else:
            tags = {PENDING_OS_UPGRADE: spec.version} if kind is ActionKind.NOTIFY else {}
            await self.driver.notify(spec, tags)
