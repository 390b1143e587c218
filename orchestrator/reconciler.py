"""The only place rollout decisions become driver calls: observe -> decide -> journal -> act -> journal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.drivers.base import Driver, DriverError, InstanceSpec, InstanceState, OsDisk
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


# The engine is asked afresh at least this often; in between, what the reconciler's own actions did is known
# and the health source notices an instance that stopped.
OBSERVE_EVERY = 30.0


def known_after(states: Mapping[int, InstanceState], result: ActionResult, target: str) -> dict[int, InstanceState]:
    """The instance states after a successful driver action, without asking the engine (pure)."""
    updated = dict(states)
    instance_id = result.action.instance_id
    state = states.get(instance_id, InstanceState(instance_id, None))
    if result.action.kind is ActionKind.REIMAGE:
        previous = state.current if state.version != target else state.previous
        updated[instance_id] = InstanceState(instance_id, OsDisk(target, "", True), previous)
    elif result.action.kind is ActionKind.ROLLBACK and state.previous is not None:
        restored = OsDisk(state.previous.version, state.previous.image, True)
        updated[instance_id] = InstanceState(instance_id, restored, None)
    elif result.action.kind is ActionKind.COMMIT:
        updated[instance_id] = InstanceState(instance_id, state.current, None)
    return updated


@dataclass
class Reconciler:
    store: Store
    driver: Driver
    monitor: HealthMonitor
    spec_for: SpecFor
    clock: Callable[[], float] = time.time
    image_reference_for: Callable[[Attempt], Mapping[str, Any]] = lambda attempt: {"version": attempt.target_version}
    on_change: Callable[[Attempt], None] = lambda attempt: None
    on_result: Callable[[ScaleSet, ActionResult], None] = lambda model, result: None
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
        started = time.monotonic()
        try:
            async with asyncio.timeout(ACTION_TIMEOUT):
                await call(spec)
        except (DriverError, TimeoutError) as exc:
            log.warning("%s %s failed: %s", action.kind.value, spec.name, exc)
            error = str(exc) or type(exc).__name__
            result = ActionResult(action, ok=False, error=error, duration=time.monotonic() - started)
        else:
            result = ActionResult(action, ok=True, duration=time.monotonic() - started)
        self.on_result(model, result)
        return result

    async def run(
        self, model: ScaleSet, attempt: Attempt, observed: Mapping[int, InstanceState] | None = None
    ) -> Attempt:
        """Drives one attempt to its end; safe to call again on an attempt loaded after a crash.

        Driver actions run as tasks, so deciding goes on while they do: the commits of one batch overlap the
        reimages of the next. Every action is journaled before it starts and after it ends.
        """
        attempt = resume(attempt)
        cancel = self.cancel_event(model.name)
        in_flight: dict[asyncio.Task[ActionResult], Action] = {}
        loop = asyncio.get_running_loop()
        # Listing containers is slow while the engine is busy: ask again only when what our own actions did
        # is not enough (an action failed, power state is the health source) or the last answer is old.
        power_state_only = not (model.uses_agent or model.health_probe is not None)
        # What the caller just observed saves the first listing.
        states: dict[int, InstanceState] = dict(observed or {})
        observed_at = loop.time() if observed is not None else float("-inf")
        try:
            while True:
                if cancel.is_set():
                    attempt = request_cancel(attempt, self.clock())
                if power_state_only or loop.time() - observed_at >= OBSERVE_EVERY:
                    states = await self.driver.observe(model.name)
                    observed_at = loop.time()
                now = self.clock()
                seen = self.monitor.version
                decision = decide(attempt, instance_views(model, states, self.monitor, now), now)
                attempt = decision.attempt
                if decision.actions:
                    self.store.journal_begin(attempt.id, decision.actions, now)
                    for action in decision.actions:
                        task = asyncio.create_task(
                            self._act(model, attempt, action), name=f"{action.kind}-{action.instance_id}"
                        )
                        in_flight[task] = action
                self._save(attempt)  # actions in flight are persisted before anything else happens
                if attempt.done:
                    cancel.clear()
                    return attempt
                timeout = None if decision.wake_at is None else max(0.0, decision.wake_at - self.clock())
                finished = await self._wait(set(in_flight), cancel, seen, timeout)
                if finished:
                    results = [task.result() for task in finished]
                    for task in finished:
                        del in_flight[task]
                    done = self.clock()
                    self.store.journal_end(attempt.id, results, done)
                    attempt = apply_results(attempt, results, done)
                    for result in results:
                        if result.ok:
                            states = known_after(states, result, attempt.target_version)
                        else:
                            observed_at = float("-inf")
                        if result.action.kind is not ActionKind.COMMIT:
                            self.monitor.reset((model.name, result.action.instance_id))
                    self._save(attempt)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _wait(
        self, actions: set[asyncio.Task[ActionResult]], cancel: asyncio.Event, seen: int, timeout: float | None
    ) -> set[asyncio.Task[ActionResult]]:
        """Until an action ends, a health report changes, a cancel arrives, or the decision's wake-up time.
        Returns the actions that ended."""
        changed = asyncio.ensure_future(self.monitor.wait_changed(seen, timeout))
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({changed, cancelled, *actions}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, cancelled):
                task.cancel()
            await asyncio.gather(changed, cancelled, return_exceptions=True)
        return {task for task in actions if task.done()}
