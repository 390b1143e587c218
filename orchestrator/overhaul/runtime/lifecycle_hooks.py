"""Lifecycle hook events: listed, read and answered (a PATCH, as Azure's API has it), and the gate an automatic
OS upgrade passes before it starts (UpgradeAutoOSScheduling). The gate before each batch is the attempt's
(core/rollout.py); the reconciler writes its events."""

from __future__ import annotations

import logging

from overhaul.core.arm_json import ModelError
from overhaul.core.auto_upgrade import DueUpgrade
from overhaul.core.cloud_events import hook_events
from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.lifecycle_hooks import (
    ActionState,
    EventNotActive,
    EventState,
    HookEvent,
    HookType,
    Response,
    respond,
    scheduling_event,
)
from overhaul.core.model import ScaleSet, ScaleSetRef
from overhaul.runtime.outbox import subject_of
from overhaul.runtime.parts import Parts

log = logging.getLogger(__name__)
# A response races the platform settling the same event at most this many times before it is refused.
RESPONSE_TRIES = 5


class LifecycleHookEvents:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def list(self, ref: ScaleSetRef | str) -> list[HookEvent]:
        """The scale set's events, newest first, as they stand now (past waitUntil, the default action answered)."""
        model = await self.parts.scale_set(ref)
        now = self.parts.clock()
        return [e.settled(now) for e in await self.parts.store.hook_events(model.name)]

    async def get(self, ref: ScaleSetRef | str, name: str) -> HookEvent:
        model = await self.parts.scale_set(ref)
        event = await self._find(model, name)
        return event.settled(self.parts.clock())

    async def _find(self, model: ScaleSet, name: str) -> HookEvent:
        event = await self.parts.store.hook_event(name)
        if event is None or event.scale_set.lower() != model.name.lower():
            raise NotFound(f"lifecycle hook event {name} of {model.name} does not exist", "ResourceNotFound")
        return event

    async def respond(self, ref: ScaleSetRef | str, name: str, response: Response) -> HookEvent:
        """Approves or rejects targets, or puts the event off (a new waitUntil); the platform acts on it at once."""
        model = await self.parts.scale_set(ref)
        for _ in range(RESPONSE_TRIES):
            event = await self._find(model, name)
            try:
                answered = respond(event, response, self.parts.clock())
            except EventNotActive as exc:
                raise Conflict(str(exc), "LifecycleHookEventNotActive") from exc
            except ModelError as exc:
                raise InvalidInput(exc.message, target=exc.path) from exc
            if answered == event or await self.parts.store.put_hook_event(answered, event):
                break
        else:
            raise Conflict(f"lifecycle hook event {name} kept changing: try again", "ConcurrentUpdate")
        log.info("lifecycle hook event %s of %s answered: %s", name, model.name, _summary(answered))
        if answered.attempt_id is not None:
            self.parts.reconciler.wake(answered.attempt_id)
        else:
            self.parts.changes.bump()  # the automatic upgrader looks again
        return answered


def _summary(event: HookEvent) -> str:
    states = ", ".join(f"{'scale set' if t is None else t}: {s.value}" for t, s in event.targets.items())
    return f"{states}; {event.state.value}"


async def scheduled(parts: Parts, model: ScaleSet, due: DueUpgrade) -> tuple[bool, float | None]:
    """UpgradeAutoOSScheduling: whether the automatic upgrade ``due`` may start now, and if it waits, until when.
    The event is opened once per due upgrade; a rejected one is not started (a newer version opens another)."""
    hook = model.lifecycle_hook(HookType.SCHEDULING)
    if hook is None:
        return True, None
    now = parts.clock()
    opened = scheduling_event(hook, model.name, due.target.version, due.due_at, now)
    stored = await parts.store.hook_event(opened.name)
    if stored is None:
        await parts.outbox.publish(hook_events(opened, subject_of(model)))
        await parts.store.put_hook_event(opened, None)
        log.info(
            "automatic OS upgrade of %s to %s waits for lifecycle hook event %s",
            model.name,
            due.target.version,
            opened.name,
        )
        stored = await parts.store.hook_event(opened.name) or opened
    settled = stored.settled(now)
    if settled.state is EventState.ACTIVE:
        return False, settled.wait_until
    if settled != stored:
        await parts.store.put_hook_event(settled, stored)
    go = settled.targets.get(None) is ActionState.APPROVED
    if not go:
        log.info(
            "automatic OS upgrade of %s to %s rejected by lifecycle hook event %s",
            model.name,
            due.target.version,
            settled.name,
        )
    return go, None
