"""Events as pure data: subscriptions checked as Event Grid checks them, what a rollout's saves produce (ids fixed by
what happened), Event Grid's retry schedule and the dead letter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from overhaul.core.arm_json import ModelError
from overhaul.core.cloud_events import (
    RETRY_SCHEDULE,
    CloudEvent,
    Delivery,
    EventType,
    attempt_events,
    parse_event_subscription,
    retry_after,
)
from overhaul.core.lifecycle_hooks import HookAction, HookType, LifecycleHook
from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import Health, InstanceView
from overhaul.core.rollout import ActionResult, AttemptStatus, apply_result, decide
from tests.builders import platform_attempt

RG = "/subscriptions/s/resourceGroups/rg"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/web"
HOOK = {"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "https://example.test/hook"}}}


def body(**properties: Any) -> dict[str, Any]:
    return {"properties": {**HOOK, **properties}}


def test_a_subscription_matches_its_scope_types_and_subject_filters() -> None:
    types = {"includedEventTypes": ["overhaul.compute.rollingupgradestarted"], "subjectEndsWith": "/web"}
    subscription = parse_event_subscription(body(filter=types), name="ops", scope=RG)
    started = CloudEvent("a/started", EventType.ATTEMPT_STARTED, VMSS, 1.0)
    assert subscription.wants(started)
    assert not subscription.wants(replace(started, type=EventType.ATTEMPT_COMPLETED))
    assert not subscription.wants(replace(started, subject=VMSS + "2"))
    assert not subscription.wants(replace(started, subject="/subscriptions/s/resourceGroups/rg2/providers/x/web"))
    everything = parse_event_subscription(body(), name="all", scope=VMSS)
    assert everything.wants(started) and everything.max_delivery_attempts == 30
    assert everything.id == VMSS + "/providers/Microsoft.EventGrid/eventSubscriptions/all"
    assert parse_event_subscription(everything.sent, name="all", scope=VMSS) == everything


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (body(destination={"endpointType": "EventHub"}), "properties.destination.endpointType"),
        (
            body(destination={"endpointType": "WebHook", "properties": {}}),
            "properties.destination.properties.endpointUrl",
        ),
        (
            body(destination={"endpointType": "WebHook", "properties": {"endpointUrl": "ftp://x/y"}}),
            "properties.destination.properties.endpointUrl",
        ),
        (
            body(filter={"includedEventTypes": ["Microsoft.Storage.BlobCreated"]}),
            "properties.filter.includedEventTypes[0]",
        ),
        (body(filter={"includedEventTypes": "all"}), "properties.filter.includedEventTypes"),
        (body(eventDeliverySchema="EventGridSchema"), "properties.eventDeliverySchema"),
        (body(retryPolicy={"maxDeliveryAttempts": 31}), "properties.retryPolicy.maxDeliveryAttempts"),
        (body(retryPolicy={"eventTimeToLiveInMinutes": 0}), "properties.retryPolicy.eventTimeToLiveInMinutes"),
    ],
)
def test_a_subscription_event_grid_would_refuse_is_refused_naming_the_field(doc: Any, path: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_event_subscription(doc, name="ops", scope=RG)
    assert caught.value.path == path


def test_a_rollout_produces_each_event_once_with_ids_fixed_by_what_happened() -> None:
    views = {i: InstanceView(i, "1.0.0", Health.HEALTHY, observed_at=0.0) for i in range(2)}
    hook = LifecycleHook(HookType.BATCH_STARTING, 60, HookAction.APPROVE)
    attempt = platform_attempt(views, RollingUpgradePolicy(max_batch_instance_percent=50), 0.0, batch_hook=hook)
    seen: list[CloudEvent] = attempt_events(None, attempt, VMSS, 0.0)
    now = 0.0
    for _ in range(40):
        before = attempt
        decision = decide(attempt, views, now)
        attempt = decision.attempt
        for action in decision.actions:
            attempt = apply_result(attempt, ActionResult(action, ok=True), now)
            if action.kind.value == "reimage":
                views[action.instance_id] = InstanceView(
                    action.instance_id, "2.0.0", Health.HEALTHY, observed_at=now + 1
                )
        seen += attempt_events(before, attempt, VMSS, now)
        assert attempt_events(attempt, attempt, VMSS, now) == []  # a save that changed nothing says nothing
        if attempt.done:
            break
        now = max(now + 1, decision.wake_at or 0)
    assert attempt.status is AttemptStatus.COMPLETED
    kinds = [e.type for e in seen]
    assert kinds == [
        EventType.ATTEMPT_STARTED,
        EventType.HOOK_WAITING,
        EventType.BATCH_STARTED,
        EventType.INSTANCE_UPGRADED,
        EventType.HOOK_WAITING,
        EventType.BATCH_STARTED,
        EventType.INSTANCE_UPGRADED,
        EventType.ATTEMPT_COMPLETED,
    ], kinds
    assert len({e.id for e in seen}) == len(seen) and all(e.subject == VMSS for e in seen)
    doc = seen[0].to_json()
    assert doc["specversion"] == "1.0" and doc["source"] == "/overhaul" and doc["time"] == "1970-01-01T00:00:00Z"
    assert CloudEvent.from_json(doc) == seen[0]


def test_a_faulted_attempt_says_so_and_that_its_version_is_quarantined() -> None:
    views = {0: InstanceView(0, "1.0.0", Health.HEALTHY, observed_at=0.0)}
    attempt = platform_attempt(views, RollingUpgradePolicy(instance_health_timeout=5), 0.0)
    events: list[CloudEvent] = []
    now = 0.0
    while not attempt.done:
        before = attempt
        decision = decide(attempt, views, now)
        attempt = decision.attempt
        for action in decision.actions:
            attempt = apply_result(attempt, ActionResult(action, ok=True), now)
        events += attempt_events(before, attempt, VMSS, now)
        now += 10
    assert [e.type for e in events] == [
        EventType.BATCH_STARTED,
        EventType.INSTANCE_ROLLED_BACK,
        EventType.ATTEMPT_FAULTED,
        EventType.VERSION_QUARANTINED,
    ]


def test_deliveries_follow_event_grids_schedule_then_are_dead_lettered() -> None:
    assert [retry_after(n) for n in range(1, 9)] == [*RETRY_SCHEDULE, 3600.0]
    subscription = parse_event_subscription(body(retryPolicy={"maxDeliveryAttempts": 3}), name="ops", scope=RG)
    delivery = Delivery(subscription.id, CloudEvent("x", EventType.ATTEMPT_STARTED, VMSS, 0.0))
    first = delivery.failed("500", 1.0, subscription)
    assert first is not None and first.attempts == 1 and first.next_at == 11.0 and first.last_error == "500"
    second = first.failed("reset", 11.0, subscription)
    assert second is not None and second.next_at == 41.0
    assert second.failed("timeout", 41.0, subscription) is None  # the third attempt was the last
    short = parse_event_subscription(body(retryPolicy={"eventTimeToLiveInMinutes": 1}), name="ops", scope=RG)
    assert delivery.failed("500", 60.0, short) is None  # its time to live is spent
