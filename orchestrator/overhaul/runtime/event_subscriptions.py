"""Event subscriptions (``Microsoft.EventGrid/eventSubscriptions`` on a scale set or a resource group) and their
dead-lettered deliveries. Delivery itself is the webhook deliverer's (adapters/webhook.py)."""

from __future__ import annotations

from overhaul.core.cloud_events import Delivery, EventSubscription
from overhaul.core.errors import NotFound
from overhaul.runtime.parts import Parts


class EventSubscriptions:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def put(self, subscription: EventSubscription) -> bool:
        """Creates or replaces it; True when it was created. Events from now on reach it."""
        async with self.parts.writing(subscription.id):
            created = await self._find(subscription.id) is None
            await self.parts.store.put_event_subscription(subscription)
            return created

    async def _find(self, subscription_id: str) -> EventSubscription | None:
        wanted = subscription_id.lower()
        return next((s for s in await self.parts.store.event_subscriptions() if s.id.lower() == wanted), None)

    async def get(self, subscription_id: str) -> EventSubscription:
        found = await self._find(subscription_id)
        if found is None:
            raise NotFound(f"event subscription {subscription_id} does not exist", "ResourceNotFound")
        return found

    async def delete(self, subscription_id: str) -> None:
        """With its pending and dead-lettered deliveries."""
        async with self.parts.writing(subscription_id):
            await self.get(subscription_id)  # NotFound: nothing to delete
            await self.parts.store.delete_event_subscription(subscription_id)

    async def dead_letters(self, subscription_id: str) -> list[Delivery]:
        subscription = await self.get(subscription_id)
        return await self.parts.store.dead_letters(subscription.id)

    async def list(self, scope: str) -> list[EventSubscription]:
        return [s for s in await self.parts.store.event_subscriptions() if s.scope.lower() == scope.lower()]
