"""The only place rollout decisions become driver calls: observe -> decide -> journal -> act -> journal.

Engine errors are split: a transient one (engine unreachable, restarting, slow) is retried with back-off and
never counted against an instance; a permanent one fails the step it happened in. A commit is retried until it
is done, so no previous OS disk outlives its attempt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from overhaul.aio import cancel_and_wait
from overhaul.core.advice import next_steps, quarantine_reason
from overhaul.core.cloud_events import attempt_events
from overhaul.core.errors import OverhaulError
from overhaul.core.lifecycle_hooks import EventState
from overhaul.core.model import HealthSourceKind, ScaleSet
from overhaul.core.naming import instance_name
from overhaul.core.narrate import describe
from overhaul.core.rollout import (
    Action,
    ActionKind,
    ActionResult,
    Attempt,
    Step,
    apply_results,
    approve,
    decide,
    request_cancel,
    resume,
)
from overhaul.ports.clock import Clock
from overhaul.ports.driver import Driver, DriverError, InstanceSpec, InstanceState
from overhaul.ports.events import ActionFinished, AttemptChanged, AttemptEnded, Events
from overhaul.ports.health import HealthSource
from overhaul.ports.store import Store
from overhaul.runtime.instances import Instances
from overhaul.runtime.outbox import Outbox, subject_of
from overhaul.runtime.settings import RuntimeSettings
from overhaul.runtime.steps import Respec, Steps
from overhaul.runtime.views import image_reference_for, instance_views, known_after

log = logging.getLogger(__name__)


@dataclass
class Reconciler:
    store: Store
    driver: Driver
    health: HealthSource
    instances: Instances
    events: Events
    outbox: Outbox
    clock: Clock = time.time
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    steps: Steps = field(init=False)
    _wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    _observed: dict[str, tuple[float, dict[int, InstanceState]]] = field(default_factory=dict)
    # Instances whose host ports were replaced during a step (one was taken): the health watch follows.
    _ports_moved: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.steps = Steps(self.driver, self.health, self.events, self.clock, self.settings)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        states = await self.steps.observe(scale_set)
        self._observed[scale_set] = (time.monotonic(), states)
        return states

    def observed(self, scale_set: str, max_age: float) -> dict[int, InstanceState] | None:
        """What an attempt's last listing of the engine saw, if it is at most ``max_age`` seconds old: ``why``
        reads it rather than list the engine on every poll of a follower."""
        seen = self._observed.get(scale_set)
        if seen is None or time.monotonic() - seen[0] > max_age:
            return None
        return dict(seen[1])

    def wake(self, attempt_id: str) -> None:
        """Something stored about the attempt changed (a cancel): look at the store now, not at the next step."""
        event = self._wakeups.get(attempt_id)
        if event is not None:
            event.set()

    async def _save(self, model: ScaleSet, before: Attempt | None, attempt: Attempt) -> None:
        # What changed goes into the outbox first: a crash between the two makes it again, under the same ids.
        await self.outbox.publish(attempt_events(before, attempt, subject_of(model), self.clock()))
        await self.store.save_attempt(attempt, image_reference_for(model, attempt))
        self.announce(before, attempt)

    def announce(self, before: Attempt | None, attempt: Attempt) -> None:
        """Tells listeners an attempt was saved, and, once, that it ended (``before``: as it was; None: new)."""
        for level, line in describe(before, attempt):
            log.log(level, "%s", line)
        self.events.emit(AttemptChanged(attempt))
        if attempt.status.terminal and (before is None or not before.status.terminal):
            self.events.emit(AttemptEnded(attempt))

    async def _act(self, model: ScaleSet, attempt: Attempt, action: Action) -> ActionResult:
        started = time.monotonic()
        name = instance_name(model.name, action.instance_id)
        onto = f" onto {attempt.target_version}" if action.kind is ActionKind.REIMAGE else ""
        log.info("%s: %s%s started", name, action.kind.value, onto)
        result = await self._attempt_action(model, attempt, action)
        result = replace(result, duration=time.monotonic() - started)
        if result.ok:
            log.info("%s: %s finished in %.1fs", name, action.kind.value, result.duration)
        else:
            log.warning("%s: %s failed after %.1fs: %s", name, action.kind.value, result.duration, result.error)
        self.events.emit(ActionFinished(model.name, result))
        return result

    async def _attempt_action(self, model: ScaleSet, attempt: Attempt, action: Action) -> ActionResult:
        surge = attempt.policy.max_surge
        respec: Respec | None = None
        if action.kind is ActionKind.REIMAGE:
            try:
                spec = await self.instances.spec(model, action.instance_id, attempt.target_version, surge=surge)
            except OverhaulError as exc:  # the version left the gallery since the attempt started
                return ActionResult(action, ok=False, error=exc.message)

            refused: set[int] = set()  # by the host, on each try: never offered again in this step

            async def fresh_ports() -> InstanceSpec:
                nonlocal spec
                self._ports_moved.add((model.name, action.instance_id))
                spec = await self.instances.elsewhere(model, spec, refused)
                return spec

            respec = fresh_ports
        else:
            spec = await self.instances.handle(model, action.instance_id, attempt.target_version, surge=surge)
        failure = await self.steps.step(model.name, action.kind, spec, respec=respec)
        if failure is None:
            return ActionResult(action, ok=True)
        return ActionResult(action, ok=False, error=failure.error, fault=failure.gave_up_on)

    async def run(
        self, model: ScaleSet, attempt: Attempt, observed: Mapping[int, InstanceState] | None = None
    ) -> Attempt:
        """Drives one attempt to its end; safe to call again on an attempt loaded after a crash. Driver actions
        run as tasks, so deciding goes on while they do: the commits of one batch overlap the reimages of the next.
        Every action is journaled before it starts and after it ends."""
        attempt = resume(attempt, self.clock())
        wake = self._wakeups.setdefault(attempt.id, asyncio.Event())
        in_flight: dict[asyncio.Task[ActionResult], Action] = {}
        loop = asyncio.get_running_loop()
        # Listing containers is slow while the engine is busy: ask again only when what our own actions did
        # is not enough (an action failed, power state is the health source) or the last answer is old.
        power_state_only = model.health_source is HealthSourceKind.POWER
        # What the caller just observed saves the first listing.
        states: dict[int, InstanceState] = dict(observed or {})
        observed_at = loop.time() if observed is not None else float("-inf")
        try:
            while True:
                wake.clear()
                attempt = await self._with_requests(attempt)
                if power_state_only or loop.time() - observed_at >= self._observe_every(model, attempt):
                    states = await self.observe(model.name)
                    observed_at = loop.time()
                now = self.clock()
                seen = self.health.version
                before = attempt
                decision = decide(attempt, instance_views(model, states, self.health, now), now)
                attempt = decision.attempt
                if (retry_from := await self._publish_gate(before, attempt)) is not None:
                    attempt = retry_from  # a response landed meanwhile: decide again with it
                    continue
                if attempt.status.terminal and not before.status.terminal:
                    attempt = await self._aftermath(model, attempt, states)
                if decision.actions:
                    await self.store.journal_begin(attempt.id, decision.actions, now)
                    in_flight |= self._start(model, attempt, decision.actions)
                # Actions in flight are persisted before anything else happens.
                if await self._save_step(model, before, attempt):
                    return attempt
                timeout = None if decision.wake_at is None else max(0.0, decision.wake_at - self.clock())
                every = self._observe_every(model, attempt)
                timeout = every if timeout is None else min(timeout, every)
                finished = await self._wait(set(in_flight), wake, seen, timeout)
                if finished:
                    results = [task.result() for task in finished]
                    for task in finished:
                        del in_flight[task]
                    done = self.clock()
                    await self.store.journal_end(attempt.id, results, done)
                    before = attempt
                    attempt = apply_results(attempt, results, done)
                    states, fresh = await self._absorb(model, attempt, results, states)
                    if fresh is not None:
                        observed_at = loop.time() if fresh else float("-inf")
                    if await self._save_step(model, before, attempt):
                        return attempt
        finally:
            self._wakeups.pop(attempt.id, None)
            await cancel_and_wait(in_flight)

    async def _with_requests(self, attempt: Attempt) -> Attempt:
        """What was asked of the attempt from outside, read from the store: a cancel, approvals."""
        if not attempt.cancel_requested and await self.store.cancel_requested(attempt.id):
            attempt = request_cancel(attempt, self.clock())
        if attempt.deferred:
            attempt = approve(attempt, await self.store.approvals(attempt.id))
        if attempt.gate is not None and attempt.gate.state is EventState.ACTIVE:
            stored = await self.store.hook_event(attempt.gate.name)
            if stored is not None and stored != attempt.gate:
                attempt = replace(attempt, gate=stored)  # responses to the batch's lifecycle hook event
        return attempt

    async def _publish_gate(self, before: Attempt, attempt: Attempt) -> Attempt | None:
        """Writes the batch's lifecycle hook event when the decision opened, settled or closed it, over what was
        read; None when written (or unchanged), else the attempt to decide again from (a response came first)."""
        gate = attempt.gate
        if gate is None or gate == before.gate:
            return None
        expected = before.gate if before.gate is not None and before.gate.name == gate.name else None
        if await self.store.put_hook_event(gate, expected):
            return None
        return replace(before, gate=await self.store.hook_event(gate.name) or before.gate)

    def _start(
        self, model: ScaleSet, attempt: Attempt, actions: Iterable[Action]
    ) -> dict[asyncio.Task[ActionResult], Action]:
        """Each action as a task of its own (journaled before: the caller did)."""
        return {
            asyncio.create_task(
                self._act(model, attempt, action), name=f"{action.kind}-{model.name}-{action.instance_id}"
            ): action
            for action in actions
        }

    async def _absorb(
        self, model: ScaleSet, attempt: Attempt, results: list[ActionResult], states: dict[int, InstanceState]
    ) -> tuple[dict[int, InstanceState], bool | None]:
        """The instance states after actions ended, and whether they are fresh from the engine (True), stale
        because an action failed (False), or known from what the actions did (None). Instances that got another
        OS disk are watched afresh."""
        fresh: bool | None = None
        for result in results:
            if result.ok:
                states = known_after(states, result, attempt.target_version, attempt.target_model_digest)
            else:
                fresh = False
        moved = [r.action.instance_id for r in results if r.action.kind in (ActionKind.REIMAGE, ActionKind.ROLLBACK)]
        ports_moved = [i for i in moved if (model.name, i) in self._ports_moved]
        self._ports_moved.difference_update((model.name, i) for i in moved)
        if (attempt.policy.max_surge or model.is_vm or ports_moved) and moved:
            # A surged OS disk listens on host ports of its own (and a rolled-back one on the old ones), a VM on
            # others when one was taken at boot: the store and the health watch follow the engine's word on where.
            states, fresh = await self.observe(model.name), True
            await self.instances.follow(model, states, moved)
        for instance_id in moved:
            self.health.reset((model.name, instance_id))
        return states, fresh

    async def _aftermath(self, model: ScaleSet, attempt: Attempt, states: Mapping[int, InstanceState]) -> Attempt:
        """An attempt that just ended: quarantine the version it Faulted on, and say what to do next."""
        quarantined: tuple[str, str, str] | None = None
        reason = quarantine_reason(attempt)
        if reason is not None:
            try:
                image = await self.instances.resolve(model, attempt.target_version)
            except OverhaulError:
                image = None  # the version left the gallery meanwhile: nothing to quarantine
            if image is not None:
                if not image.quarantined:
                    await self.store.put_image_version(replace(image, quarantine=reason))
                    log.warning("version %s quarantined: 'latest' skips it (%s)", image.version, reason)
                quarantined = (image.gallery, image.image, image.version)
        previous = next(
            (s.version for _, s in sorted(states.items()) if s.version and s.version != attempt.target_version), None
        )
        advice = next_steps(
            attempt,
            resource_group=model.resource_group,
            latest=model.image_reference.is_latest,
            previous_version=previous,
            quarantined=quarantined,
        )
        if advice is None:
            return attempt
        message = (attempt.error_message or "").rstrip(".")
        return replace(attempt, error_message=f"{message}. {advice}" if message else advice)

    def _observe_every(self, model: ScaleSet, attempt: Attempt) -> float:
        """How often the engine is listed: often while an instance waiting for health cannot be reached, as only
        the engine can tell one that exited from one still booting."""
        for instance_id in attempt.batch:
            if attempt.instances[instance_id].step is Step.WAITING:
                report = self.health.report((model.name, instance_id))
                if report is not None and not report.reachable:
                    return self.settings.observe_unreachable_every
        return self.settings.observe_every

    async def _save_step(self, model: ScaleSet, before: Attempt, attempt: Attempt) -> bool:
        """Saves the attempt; at its end only once every instance it touched runs again, so whoever waits for the
        end (a delete, the next attempt) finds nothing left to do. True when it has ended."""
        if attempt.done:
            await self._restart_stopped(model, attempt)
        await self._save(model, before, attempt)
        return attempt.done

    async def _restart_stopped(self, model: ScaleSet, attempt: Attempt) -> None:
        """The attempt is over: each instance it touched must run its one OS disk. One that does not (a stop
        that an engine killed mid-call delivered late) is started again."""
        states = await self.observe(model.name)
        for instance_id in attempt.instances:
            state = states.get(instance_id)
            if state is None or state.current is None or state.running or state.previous is not None:
                continue
            spec = await self.instances.handle(model, instance_id, state.version)
            log.warning("%s is not running after attempt %s: starting it", spec.name, attempt.id)
            try:
                async with asyncio.timeout(self.settings.action_timeout):
                    await self.driver.ensure_running(spec)
            except (DriverError, TimeoutError) as exc:
                log.warning("%s could not be started: %s", spec.name, exc)

    async def _wait(
        self, actions: set[asyncio.Task[ActionResult]], wake: asyncio.Event, seen: int, timeout: float | None
    ) -> set[asyncio.Task[ActionResult]]:
        """Until an action ends, a health report changes, a wake-up (cancel) arrives, or the decision's wake-up
        time. Returns the actions that ended."""
        changed = asyncio.ensure_future(self.health.wait_changed(seen, timeout))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({changed, woken, *actions}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait((changed, woken))
        return {task for task in actions if task.done()}
