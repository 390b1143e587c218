"""Events into the persisted outbox, one delivery per subscription that wants each, written before the state they
describe is saved: an event is never lost to a crash, and one produced again after it keeps its id (the store keeps
a delivery once). The webhook deliverer (adapters/webhook.py) drains it."""

from __future__ import annotations

from collections.abc import Sequence

from overhaul.aio import Changes
from overhaul.core.cloud_events import CloudEvent, Delivery
from overhaul.core.model import ScaleSet
from overhaul.core.naming import scale_set_id
from overhaul.ports.clock import Clock
from overhaul.ports.store import Store


def subject_of(model: ScaleSet) -> str:
    return scale_set_id(model.subscription, model.resource_group, model.name)


class Outbox:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.changes = Changes()  # bumped when deliveries were added (the deliverer waits on it)

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        if not events:
            return
        subscriptions = await self.store.event_subscriptions()
        now = self.clock()
        deliveries = [Delivery(s.id, e, next_at=now) for e in events for s in subscriptions if s.wants(e)]
        if deliveries:
            await self.store.enqueue(deliveries)
            self.changes.bump()
