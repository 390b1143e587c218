"""Pure: events as Event Grid delivers them. An event subscription (``Microsoft.EventGrid/eventSubscriptions`` on a
scale set, a resource group or a subscription) names a webhook and the event types it wants; each event is a
CloudEvents 1.0 document whose ``id`` is fixed by what happened, so an event produced twice (after a crash) is one
event to its receivers, who see the same id.

The event types are ours (Azure publishes no events for rolling upgrades): ``Overhaul.Compute.*``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from overhaul.core.advice import quarantine_reason
from overhaul.core.arm_json import NAME_PATTERN, ModelError, Reader
from overhaul.core.lifecycle_hooks import EventState, HookEvent, HookType
from overhaul.core.rollout import Attempt, AttemptStatus, Step


class EventType(StrEnum):
    ATTEMPT_STARTED = "Overhaul.Compute.RollingUpgradeStarted"
    BATCH_STARTED = "Overhaul.Compute.RollingUpgradeBatchStarted"
    INSTANCE_UPGRADED = "Overhaul.Compute.InstanceUpgraded"
    INSTANCE_ROLLED_BACK = "Overhaul.Compute.InstanceRolledBack"
    INSTANCE_FAILED = "Overhaul.Compute.InstanceUpgradeFailed"
    ATTEMPT_COMPLETED = "Overhaul.Compute.RollingUpgradeCompleted"
    ATTEMPT_FAULTED = "Overhaul.Compute.RollingUpgradeFaulted"
    ATTEMPT_CANCELLED = "Overhaul.Compute.RollingUpgradeCancelled"
    VERSION_QUARANTINED = "Overhaul.Compute.ImageVersionQuarantined"
    HOOK_WAITING = "Overhaul.Compute.LifecycleHookWaiting"


ENDED = {
    AttemptStatus.COMPLETED: EventType.ATTEMPT_COMPLETED,
    AttemptStatus.FAULTED: EventType.ATTEMPT_FAULTED,
    AttemptStatus.CANCELLED: EventType.ATTEMPT_CANCELLED,
}
INSTANCE_ENDS = {
    Step.UPGRADED: EventType.INSTANCE_UPGRADED,
    Step.ROLLED_BACK: EventType.INSTANCE_ROLLED_BACK,
    Step.ROLLBACK_FAILED: EventType.INSTANCE_FAILED,
    Step.FAILED: EventType.INSTANCE_FAILED,
}
SOURCE = "/overhaul"


@dataclass(frozen=True)
class CloudEvent:
    id: str
    type: EventType
    subject: str  # the scale set's resource id
    time: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """CloudEvents 1.0, JSON structured mode."""
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": SOURCE,
            "type": self.type.value,
            "subject": self.subject,
            "time": datetime.fromtimestamp(self.time, UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": dict(self.data),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CloudEvent:
        time = datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
        return cls(doc["id"], EventType(doc["type"]), doc["subject"], time, doc.get("data", {}))


def attempt_events(before: Attempt | None, attempt: Attempt, subject: str, now: float) -> list[CloudEvent]:
    """What happened between two saves of an attempt (``before`` None: it was just started)."""
    base = {"rollingUpgradeId": attempt.id, "targetVersion": attempt.target_version}
    events: list[CloudEvent] = []

    def add(key: str, kind: EventType, **data: Any) -> None:
        events.append(CloudEvent(f"{attempt.id}/{key}", kind, subject, now, {**base, **data}))

    if before is None:
        add("started", EventType.ATTEMPT_STARTED, startedBy=attempt.started_by.value)
    if attempt.batches_started > (before.batches_started if before else 0) and attempt.batch:
        add(
            f"batch/{attempt.batches_started}",
            EventType.BATCH_STARTED,
            batch=attempt.batches_started,
            instances=[str(i) for i in attempt.batch],
        )
    for instance_id, progress in sorted(attempt.instances.items()):
        kind = INSTANCE_ENDS.get(progress.step)
        was = before.instances.get(instance_id) if before else None
        if kind is not None and (was is None or was.step is not progress.step):
            add(
                f"instance/{instance_id}/{progress.step.value}", kind, instanceId=str(instance_id), error=progress.error
            )
    gate = attempt.gate
    opened = before is None or before.gate is None or (gate is not None and before.gate.name != gate.name)
    if gate is not None and gate.state is EventState.ACTIVE and opened:
        events += hook_events(gate, subject)
    # The end is said once every instance's last action finished: it comes after every instance's own event.
    if attempt.done and (before is None or not before.done):
        add(
            attempt.status.value.lower(),
            ENDED[attempt.status],
            errorCode=attempt.error_code,
            message=attempt.error_message,
        )
        reason = quarantine_reason(attempt)
        if reason is not None:
            add("quarantined", EventType.VERSION_QUARANTINED, reason=reason)
    return events


def hook_events(event: HookEvent, subject: str) -> list[CloudEvent]:
    """A lifecycle hook event just opened."""
    data: dict[str, Any] = {
        "lifecycleHookEventName": event.name,
        "lifecycleHookType": event.type.value,
        "targetVersion": event.target_version,
        "waitUntil": datetime.fromtimestamp(event.wait_until, UTC).isoformat().replace("+00:00", "Z"),
        "defaultAction": event.default_action.value,
        "instances": [str(i) for i in event.instance_ids],
    }
    if event.type is HookType.BATCH_STARTING:
        data["rollingUpgradeId"] = event.attempt_id
    return [CloudEvent(f"{event.name}/waiting", EventType.HOOK_WAITING, subject, event.time_created, data)]


# --- subscriptions ------------------------------------------------------------------------------------------

MAX_DELIVERY_ATTEMPTS = 30  # Event Grid's default and maximum
EVENT_TTL_MINUTES = 1440  # Event Grid's default and maximum
# Event Grid's back-off between delivery attempts, seconds (then an hour each).
RETRY_SCHEDULE = (10, 30, 60, 300, 600, 1800, 3600)
URL = re.compile(r"^https?://[^\s/]+(/\S*)?$", re.IGNORECASE)


@dataclass(frozen=True)
class EventSubscription:
    name: str
    scope: str  # the resource id it is on: a scale set, a resource group or a subscription
    endpoint_url: str
    included_event_types: tuple[EventType, ...] = ()  # none: every type
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    max_delivery_attempts: int = MAX_DELIVERY_ATTEMPTS
    event_ttl_minutes: int = EVENT_TTL_MINUTES
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return f"{self.scope}/providers/Microsoft.EventGrid/eventSubscriptions/{self.name}"

    def wants(self, event: CloudEvent) -> bool:
        subject = event.subject.lower()
        return (
            (subject.startswith(self.scope.lower() + "/") or subject == self.scope.lower())
            and (not self.included_event_types or event.type in self.included_event_types)
            and subject.startswith(self.subject_begins_with.lower())
            and subject.endswith(self.subject_ends_with.lower())
        )

    def to_json(self) -> dict[str, Any]:
        filters: dict[str, Any] = {
            "includedEventTypes": [t.value for t in self.included_event_types] or None,
            "subjectBeginsWith": self.subject_begins_with,
            "subjectEndsWith": self.subject_ends_with,
        }
        return {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.EventGrid/eventSubscriptions",
            "properties": {
                "topic": self.scope,
                "provisioningState": "Succeeded",
                "destination": {"endpointType": "WebHook", "properties": {"endpointBaseUrl": self.endpoint_url}},
                "filter": filters,
                "eventDeliverySchema": "CloudEventSchemaV1_0",
                "retryPolicy": {
                    "maxDeliveryAttempts": self.max_delivery_attempts,
                    "eventTimeToLiveInMinutes": self.event_ttl_minutes,
                },
            },
        }


def parse_event_subscription(doc: Any, *, name: str, scope: str) -> EventSubscription:
    """The body of a PUT, checked as Event Grid checks it (for what overhaul delivers: webhooks, CloudEvents)."""
    if not NAME_PATTERN.match(name):
        raise ModelError("name", f"must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
    props = Reader(doc, "").obj("properties")
    destination = props.obj("destination")
    kind = destination.text("endpointType") or ""
    if kind.lower() != "webhook":
        raise ModelError(
            destination.at("endpointType"), f"must be WebHook (the destination overhaul delivers to), got {kind!r}"
        )
    url_reader = destination.obj("properties")
    url = url_reader.required_text("endpointUrl")
    if not URL.match(url):
        raise ModelError(url_reader.at("endpointUrl"), f"must be an http:// or https:// URL, got {url!r}")
    schema = props.text("eventDeliverySchema", "CloudEventSchemaV1_0") or ""
    if schema.lower() != "cloudeventschemav1_0":
        raise ModelError(props.at("eventDeliverySchema"), f"must be CloudEventSchemaV1_0, got {schema!r}")
    filters = props.obj("filter")
    raw_types = filters.doc.get("includedEventTypes") or []
    if not isinstance(raw_types, list):
        raise ModelError(filters.at("includedEventTypes"), "must be a list of event types")
    types: list[EventType] = []
    for index, raw in enumerate(raw_types):
        known = next((t for t in EventType if isinstance(raw, str) and t.value.lower() == raw.lower()), None)
        if known is None:
            names = ", ".join(t.value for t in EventType)
            raise ModelError(
                f"{filters.at('includedEventTypes')}[{index}]", f"names no event type ({names}); got {raw!r}"
            )
        types.append(known)
    retry = props.obj("retryPolicy")
    return EventSubscription(
        name=name,
        scope=scope,
        endpoint_url=url,
        included_event_types=tuple(types),
        subject_begins_with=filters.text("subjectBeginsWith", "") or "",
        subject_ends_with=filters.text("subjectEndsWith", "") or "",
        max_delivery_attempts=retry.integer("maxDeliveryAttempts", MAX_DELIVERY_ATTEMPTS, 1, MAX_DELIVERY_ATTEMPTS),
        event_ttl_minutes=retry.integer("eventTimeToLiveInMinutes", EVENT_TTL_MINUTES, 1, EVENT_TTL_MINUTES),
        sent=dict(doc) if isinstance(doc, Mapping) else {},
    )


def retry_after(attempts: int) -> float:
    """Seconds before delivery attempt number ``attempts + 1`` (``attempts`` failed so far)."""
    return float(RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1]) if attempts > 0 else 0.0


@dataclass(frozen=True)
class Delivery:
    """One event for one subscription, in the outbox."""

    subscription: str  # the subscription's id
    event: CloudEvent
    attempts: int = 0
    next_at: float = 0.0
    last_error: str | None = None

    def failed(self, error: str, now: float, subscription: EventSubscription) -> Delivery | None:
        """The delivery after a failed attempt, or None when it is dead-lettered (attempts or time to live spent)."""
        attempts = self.attempts + 1
        expired = now - self.event.time >= subscription.event_ttl_minutes * 60
        if attempts >= subscription.max_delivery_attempts or expired:
            return None
        return Delivery(self.subscription, self.event, attempts, now + retry_after(attempts), error[:500])
