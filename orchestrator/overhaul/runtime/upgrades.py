"""Rolling upgrades: started by a person, by the platform (automatic OS upgrades) or by a model change; cancelled,
approved, and followed through their history."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import replace

from overhaul.core.auto_upgrade import AutoUpgradeSettings, due_upgrade
from overhaul.core.cloud_events import attempt_events
from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.lifecycle_hooks import HookType
from overhaul.core.model import RollingUpgradePolicy, ScaleSet, ScaleSetRef, model_digest
from overhaul.core.planner import Health
from overhaul.core.rollout import FIRST_LOOK, Attempt, StartedBy, request_cancel, start
from overhaul.core.rules import attempt_policy, check_instance_ids, model_upgrade_policy, model_upgrade_version
from overhaul.core.why import Cause
from overhaul.ports.driver import InstanceState
from overhaul.ports.events import AttemptChanged, Event
from overhaul.ports.store import StoredAttempt
from overhaul.runtime.lifecycle_hooks import scheduled
from overhaul.runtime.maintenance import window_of
from overhaul.runtime.outbox import subject_of
from overhaul.runtime.parts import Parts, as_ref
from overhaul.runtime.views import image_reference_for, instance_views
from overhaul.runtime.why import why

log = logging.getLogger(__name__)


class Upgrades:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._ended: dict[str, asyncio.Event] = {}
        parts.events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, AttemptChanged) and event.attempt.done:
            self.parts.changes.bump()
            ended = self._ended.pop(event.attempt.id, None)
            if ended is not None:
                ended.set()

    async def start(
        self,
        ref: ScaleSetRef | str,
        *,
        started_by: StartedBy = StartedBy.USER,
        version: str | None = None,
        fix_forward: bool = False,
    ) -> Attempt:
        """Starts an attempt towards the model's image (or ``version``); it runs in the background. ``fix_forward``:
        this attempt fixes a sick fleet forward whatever the policy says (core/rollout.py's pre-existing)."""
        ref = as_ref(ref)
        async with self.parts.writing(ref.name):
            model = await self.parts.scale_set(ref)
            await self.parts.settle(model.name)
            policy = attempt_policy(model, started_by)
            if fix_forward:
                policy = replace(policy, fix_forward=True)
            return await self.begin(model, started_by, version, None, policy=policy)

    async def start_due(self, ref: ScaleSetRef, settings: AutoUpgradeSettings) -> float | None:
        """Azure's automatic OS upgrade: starts a platform attempt when the gallery's latest version is due for
        the scale set. Decided under the scale set's write lock, so a create or update in progress is seen whole.
        Returns when the upgrade falls due if it is not due yet."""
        parts = self.parts
        async with parts.writing(ref.name):
            model = await parts.find_scale_set(ref)
            if model is None or await parts.active(model.name):
                return None
            states = await parts.observe(model.name)
            due = due_upgrade(
                model,
                definitions=await parts.store.image_definitions(),
                versions=await parts.store.image_versions(),
                instance_versions=[states[i].version if i in states else None for i in range(model.capacity)],
                attempts=[s.attempt for s in await parts.store.attempts(model.name)],
                settings=settings,
            )
            if due is None:
                return None
            if due.due_at > parts.clock():
                return due.due_at
            window = await window_of(parts, model.name)
            if window is not None and not window.is_open(parts.clock()):
                occurrence = window.around(parts.clock())
                return occurrence[0] if occurrence else None  # due: it starts when the window opens
            go, wait_until = await scheduled(parts, model, due)
            if not go:
                return wait_until
            if any(i not in states or states[i].current is None for i in range(model.capacity)):
                # A listing taken while the engine is busy can miss an instance: ask once more before acting on it.
                states = await parts.observe(model.name)
                if all(states.get(i) and states[i].version == due.target.version for i in range(model.capacity)):
                    return None
            hearing = first_word_pending(parts, model, states)
            if hearing is not None:
                return hearing  # just began acting: no attempt on a verdict the health source has not given yet
            log.info("automatic OS upgrade of %s to %s", model.name, due.target.version)
            await self.begin(model, StartedBy.PLATFORM, due.target.version, states)
            return None

    async def manual(self, ref: ScaleSetRef | str, instance_ids: list[int]) -> Attempt:
        """Azure's manualupgrade (`az vmss update-instances`): the chosen instances, failed ones included, get new
        OS disks made with the current model, keeping the version they run; health-gated in batches when the mode
        is Rolling, all at once otherwise."""
        ref = as_ref(ref)
        async with self.parts.writing(ref.name):
            model = await self.parts.scale_set(ref)
            await self.parts.settle(model.name)
            check_instance_ids(model, instance_ids)
            if not instance_ids:
                raise InvalidInput("instanceIds: name at least one instance", target="instanceIds")
            states = await self.parts.observe(model.name)
            return await self.begin_model_upgrade(model, states, tuple(sorted(instance_ids)))

    async def begin_model_upgrade(
        self, model: ScaleSet, states: dict[int, InstanceState], scope: tuple[int, ...] | None
    ) -> Attempt:
        """An attempt that moves instances onto the current model; their OS image stays the one they all run (the
        model's image when they differ). The caller holds the scale set's write lock."""
        version = model_upgrade_version({i: s.version for i, s in states.items()}, scope)
        log.info("model upgrade of %s (%s mode)", model.name, model.upgrade_policy.mode)
        return await self.begin(
            model,
            StartedBy.USER,
            version,
            states,
            target_model_digest=model_digest(model),
            scope=scope,
            policy=model_upgrade_policy(model),
        )

    async def begin(
        self,
        model: ScaleSet,
        started_by: StartedBy,
        version: str | None,
        states: dict[int, InstanceState] | None,
        *,
        target_model_digest: str | None = None,
        scope: tuple[int, ...] | None = None,
        policy: RollingUpgradePolicy | None = None,
    ) -> Attempt:
        """Records a new attempt and hands it to the supervisor. The caller holds the scale set's write lock."""
        parts = self.parts
        target = await parts.instances.resolve(model, version)
        await parts.require_image(target, f"image version {target.version}", vm=model.is_vm)
        if states is None:
            states = await parts.observe(model.name)
        now = parts.clock()
        # Azure keeps automatic OS upgrades to the assigned maintenance window; manual starts ignore it.
        automatic = started_by is StartedBy.PLATFORM
        window = await window_of(parts, model.name) if automatic else None
        attempt = start(
            window=window,
            # Lifecycle hooks are Azure's for automatic OS upgrades only.
            batch_hook=model.lifecycle_hook(HookType.BATCH_STARTING) if automatic and not target_model_digest else None,
            attempt_id=uuid.uuid4().hex,
            scale_set=model.name,
            target_version=target.version,
            started_by=started_by,
            disable_automatic_rollback=model.upgrade_policy.automatic.disable_automatic_rollback,
            policy=policy or attempt_policy(model, started_by),
            capacity=model.capacity,
            views=instance_views(model, states, parts.health, now),
            now=now,
            # Azure defers automatic OS upgrades only: a person starting one has approved it.
            deferred=started_by is StartedBy.PLATFORM and model.upgrade_policy.automatic.os_rolling_upgrade_deferral,
            target_model_digest=target_model_digest,
            scope=scope,
            host_outage_timeout=parts.settings.host_outage_timeout,
        )
        busy = await parts.store.start_attempt(attempt, image_reference_for(model, attempt))
        if busy is not None:
            raise Conflict(f"a rolling upgrade of {model.name} is in progress ({busy})", "RollingUpgradeInProgress")
        await parts.outbox.publish(attempt_events(None, attempt, subject_of(model), now))
        parts.reconciler.announce(None, attempt)
        if not attempt.done:
            parts.supervisor.ensure(model.name, states)
        return attempt

    async def _running(self, model: ScaleSet) -> Attempt | None:
        return next((a for a in await self.parts.active(model.name) if not a.status.terminal), None)

    async def cancel(self, ref: ScaleSetRef | str) -> Attempt:
        """Saved in the store (the reconciler reads it on every pass); the batch in flight ends first."""
        model = await self.parts.scale_set(ref)
        running = await self._running(model)
        if running is None or not await self.parts.store.request_cancel(running.id):
            raise Conflict(f"no rolling upgrade of {model.name} is in progress", "NoRollingUpgradeInProgress")
        self.parts.reconciler.wake(running.id)
        return request_cancel(running, self.parts.clock())

    async def approve(self, ref: ScaleSetRef | str, instance_ids: list[int] | None = None) -> Attempt:
        """approveRollingUpgrade: the deferred OS upgrades of ``instance_ids`` (default: every instance) may go
        ahead, now for those awaiting approval, at once when their batch comes for the others."""
        model = await self.parts.scale_set(ref)
        ids = list(range(model.capacity)) if instance_ids is None else instance_ids
        check_instance_ids(model, ids)
        running = await self._running(model)
        if running is None or not running.deferred or not await self.parts.store.approve(running.id, ids):
            raise Conflict(
                f"no rolling upgrade of {model.name} awaits approval (osRollingUpgradeDeferral defers automatic "
                "OS upgrades only)",
                "NoDeferredRollingUpgrade",
            )
        self.parts.reconciler.wake(running.id)
        return running

    async def latest(self, ref: ScaleSetRef | str) -> StoredAttempt | None:
        attempts = await self.history(ref)
        return attempts[0] if attempts else None

    async def history(self, ref: ScaleSetRef | str) -> list[StoredAttempt]:
        model = await self.parts.scale_set(ref)
        return await self.parts.store.attempts(model.name)

    async def why(self, ref: ScaleSetRef | str) -> list[Cause]:
        """Why the scale set's rollout waits, or why none moves it on (core/why.py)."""
        model = await self.parts.scale_set(ref)
        latest = await self.latest(model.ref)
        return await why(self.parts, model, latest.attempt if latest else None)

    async def find(self, attempt_id: str) -> Attempt | None:
        stored = await self.parts.store.get_attempt(attempt_id)
        return stored.attempt if stored else None

    async def wait(self, attempt_id: str, timeout: float) -> Attempt:
        """Until the attempt ends (tests and `--wait` use it); TimeoutError past ``timeout``."""
        found = await self.find(attempt_id)
        if found is None:
            raise NotFound(f"attempt {attempt_id} not found")
        if found.done:
            return found
        ended = self._ended.setdefault(attempt_id, asyncio.Event())
        found = await self.find(attempt_id)  # it may have ended between the two looks
        if found is not None and not found.done:
            async with asyncio.timeout(timeout):
                await ended.wait()
            found = await self.find(attempt_id)
        assert found is not None
        return found


def first_word_pending(parts: Parts, model: ScaleSet, states: Mapping[int, InstanceState]) -> float | None:
    """When to look again while this orchestrator began acting less than FIRST_LOOK ago (a restart, a new leader)
    and its health source has not yet said a word on some instance (None: go ahead). Counting those as unhealthy
    would fault the upgrade at its start on the orchestrator's downtime, not the instances' health."""
    now = parts.clock()
    began = parts.acting_since
    if began is None or now >= began + FIRST_LOOK:
        return None
    views = instance_views(model, states, parts.health, now)
    if any(v.health is Health.UNKNOWN and v.observed_at == 0 for v in views.values()):
        return min(now + 1.0, began + FIRST_LOOK)
    return None
