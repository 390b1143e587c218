"""The only place rollout decisions become driver calls: observe -> decide -> journal -> act -> journal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.drivers.base import Driver, DriverError, InstanceSpec, InstanceState
from orchestrator.health import HealthMonitor
from orchestrator.model import ScaleSet
from orchestrator.planner import Health, InstanceView
from orchestrator.rollout import (
    Action,
    ActionKind,
    ActionResult,
    Attempt,
    apply_results,
    decide,
    request_cancel,
    resume,
)
from orchestrator.store import Store

log = logging.getLogger(__name__)
SpecFor = Callable[[ScaleSet, int, str], InstanceSpec]
# How long one driver action may take before it counts as failed (a stop alone may take StopTimeout).
ACTION_TIMEOUT = 600.0


def instance_views(
    model: ScaleSet, states: Mapping[int, InstanceState], monitor: HealthMonitor, now: float
) -> dict[int, InstanceView]:
    """One view per instance id of the model: the engine's version and power state, the health source's word."""
    views: dict[int, InstanceView] = {}
    watched = model.uses_agent or model.health_probe is not None
    for instance_id in range(model.capacity):
        state = states.get(instance_id)
        if state is None or not state.running:
            views[instance_id] = InstanceView(
                instance_id, state.version if state else None, Health.UNHEALTHY, observed_at=now
            )
            continue
        if not watched:
            views[instance_id] = InstanceView(instance_id, state.version, Health.HEALTHY, observed_at=now)
            continue
        report = monitor.report((model.name, instance_id))
        if report is None:
            views[instance_id] = InstanceView(instance_id, state.version, Health.UNKNOWN, observed_at=0.0)
            continue
        views[instance_id] = InstanceView(
            instance_id, state.version, report.health, report.phase, report.skip_upgrade, report.observed_at
        )
    return views


@dataclass
class Reconciler:
    store: Store
    driver: Driver
    monitor: HealthMonitor
    spec_for: SpecFor
    clock: Callable[[], float] = time.time
    image_reference_for: Callable[[Attempt], Mapping[str, Any]] = lambda attempt: {"version": attempt.target_version}
    on_change: Callable[[Attempt], None] = lambda attempt: None
    cancel_events: dict[str, asyncio.Event] = field(default_factory=dict)

    def cancel_event(self, scale_set: str) -> asyncio.Event:
        return self.cancel_events.setdefault(scale_set, asyncio.Event())

    def _save(self, attempt: Attempt) -> None:
        self.store.save_attempt(attempt, self.image_reference_for(attempt))
        self.on_change(attempt)

    async def _act(self, model: ScaleSet, attempt: Attempt, action: Action) -> ActionResult:
        spec = self.spec_for(model, action.instance_id, attempt.target_version)
        call = {
            ActionKind.REIMAGE: self.driver.reimage,
            ActionKind.COMMIT: self.driver.commit,
            ActionKind.ROLLBACK: self.driver.rollback,
        }[action.kind]
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                await call(spec)
        except (DriverError, TimeoutError) as exc:
            log.warning("%s %s failed: %s", action.kind.value, spec.name, exc)
            return ActionResult(action, ok=False, error=str(exc) or type(exc).__name__)
        return ActionResult(action, ok=True)

    async def run(self, model: ScaleSet, attempt: Attempt) -> Attempt:
        """Drives one attempt to its end; safe to call again on an attempt loaded after a crash."""
        attempt = resume(attempt)
        cancel = self.cancel_event(model.name)
        while True:
            if cancel.is_set():
                attempt = request_cancel(attempt, self.clock())
            states = await self.driver.observe(model.name)
            now = self.clock()
            decision = decide(attempt, instance_views(model, states, self.monitor, now), now)
            attempt = decision.attempt
            self._save(attempt)  # actions in flight are persisted before they run
            if attempt.status.terminal:
                cancel.clear()
                return attempt
            if decision.actions:
                self.store.journal_begin(attempt.id, decision.actions, now)
                results = await asyncio.gather(*(self._act(model, attempt, a) for a in decision.actions))
                done = self.clock()
                self.store.journal_end(attempt.id, results, done)
                attempt = apply_results(attempt, results, done)
                for result in results:
                    if result.action.kind is not ActionKind.COMMIT:
                        self.monitor.reset((model.name, result.action.instance_id))
                self._save(attempt)
                continue
            timeout = None if decision.wake_at is None else max(0.0, decision.wake_at - self.clock())
            await self._wait(cancel, timeout)

    async def _wait(self, cancel: asyncio.Event, timeout: float | None) -> None:
        """Until a health report changes, a cancel arrives, or the decision's wake-up time."""
        changed = asyncio.ensure_future(self.monitor.wait_changed(timeout))
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({changed, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, cancelled):
                task.cancel()
            await asyncio.gather(changed, cancelled, return_exceptions=True)
