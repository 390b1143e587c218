"""Delivers the outbox's events to webhooks as Event Grid does: CloudEvents 1.0 in JSON structured mode, at least
once, each subscription on its own (a webhook that hangs, fails or resets delays only its own deliveries), with
Event Grid's retry schedule and dead letter (core/cloud_events.py); and Event Grid's validation handshake for
CloudEvents (an OPTIONS request with ``WebHook-Request-Origin``), which a subscription's endpoint must pass."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from overhaul.aio import Changes, cancel_and_wait
from overhaul.core.cloud_events import Delivery, EventSubscription
from overhaul.ports.store import Store

log = logging.getLogger(__name__)
# Event Grid's origin: receivers written for it (Azure Functions, its SDKs' samples) accept it unchanged.
ORIGIN = "eventgrid.azure.net"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# Answers Event Grid does not retry: the event goes to the dead letter at once.
FINAL_STATUSES = frozenset({400, 413})


@dataclass(frozen=True)
class DeliverySettings:
    timeout: float = 10.0  # one delivery or handshake, seconds
    per_pass: int = 50  # deliveries of one subscription per pass


async def handshake(url: str, timeout: float) -> str | None:
    """Event Grid's abuse protection for CloudEvents: None when the endpoint allows our deliveries, else why not."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.options(
                url, headers={"WebHook-Request-Origin": ORIGIN}, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp,
        ):
            allowed = resp.headers.get("WebHook-Allowed-Origin", "")
            if resp.status == 200 and allowed in (ORIGIN, "*"):
                return None
            return f"the validation handshake got HTTP {resp.status} with WebHook-Allowed-Origin {allowed!r}"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"the validation handshake failed: {exc or type(exc).__name__}"


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ["subscription"]
        self.delivered = Counter("overhaul_events_delivered", "Events delivered.", labels, registry=registry)
        self.failures = Counter(
            "overhaul_event_delivery_failures", "Failed delivery attempts (retried).", labels, registry=registry
        )
        self.dead = Counter("overhaul_events_dead_lettered", "Events dead-lettered.", labels, registry=registry)
        self.lag = Histogram(
            "overhaul_event_delivery_lag_seconds",
            "From an event to its delivery.",
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 86400),
            registry=registry,
        )
        self.pending = Gauge("overhaul_events_pending", "Deliveries waiting in the outbox.", registry=registry)


class WebhookDeliverer:
    def __init__(
        self,
        store: Store,
        changes: Changes,
        *,
        clock: Callable[[], float] = time.time,
        settings: DeliverySettings | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.changes = changes
        self.clock = clock
        self.settings = settings or DeliverySettings()
        self.metrics = DeliveryMetrics(registry)
        self._draining: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Each pass starts a drain of every subscription with something due, then waits for a new event or the
        next due retry."""
        async with aiohttp.ClientSession() as session:
            try:
                while True:
                    seen = self.changes.version
                    for subscription in await self.store.event_subscriptions():
                        task = self._draining.get(subscription.id)
                        if task is None or task.done():
                            self._draining[subscription.id] = asyncio.create_task(
                                self._drain(session, subscription), name=f"deliver-{subscription.name}"
                            )
                    self.metrics.pending.set(await self.store.pending_deliveries())
                    upcoming = await self.store.next_delivery()
                    wait = None if upcoming is None else max(0.05, upcoming[1] - self.clock())
                    await self.changes.wait(seen, wait)
            finally:
                await cancel_and_wait(self._draining.values())

    async def _drain(self, session: aiohttp.ClientSession, subscription: EventSubscription) -> None:
        """Delivers what is due for one subscription, in order, until none is or one fails (it waits its retry)."""
        due = await self.store.due_deliveries(subscription.id, self.clock(), self.settings.per_pass)
        try:
            for delivery in due:
                if not await self._deliver(session, subscription, delivery):
                    return
            if len(due) == self.settings.per_pass:
                self.changes.bump()  # more may be due: the next pass drains them
        finally:
            if due:
                self.metrics.pending.set(await self.store.pending_deliveries())

    async def _deliver(
        self, session: aiohttp.ClientSession, subscription: EventSubscription, delivery: Delivery
    ) -> bool:
        label = subscription.id
        error, final = await self._post(session, subscription.endpoint_url, delivery)
        now = self.clock()
        if error is None:
            await self.store.delivered(delivery, now)
            self.metrics.delivered.labels(label).inc()
            self.metrics.lag.observe(max(0.0, now - delivery.event.time))
            return True
        self.metrics.failures.labels(label).inc()
        later = None if final else delivery.failed(error, now, subscription)
        if later is None:
            log.warning("event %s to %s dead-lettered: %s", delivery.event.id, subscription.name, error)
            await self.store.dead_letter(delivery, error, now)
            self.metrics.dead.labels(label).inc()
            return True  # the next event may go
        log.info(
            "event %s to %s failed (%s): retried in %.0fs",
            delivery.event.id,
            subscription.name,
            error,
            later.next_at - now,
        )
        await self.store.retry_later(later)
        return False

    async def _post(self, session: aiohttp.ClientSession, url: str, delivery: Delivery) -> tuple[str | None, bool]:
        """(why it failed or None, whether the failure is final)."""
        headers = {"Content-Type": CONTENT_TYPE, "aeg-delivery-count": str(delivery.attempts)}
        try:
            async with session.post(
                url,
                data=json.dumps(delivery.event.to_json()),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as resp:
                if 200 <= resp.status < 300:
                    return None, False
                return f"HTTP {resp.status}", resp.status in FINAL_STATUSES
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300], False
