"""Pure: Azure's lifecycle hooks for automatic OS upgrades (api-version 2025-11-01). A scale set's model names the
hooks (``properties.lifecycleHooksProfile.lifecycleHooks``); before an automatic upgrade starts
(``UpgradeAutoOSScheduling``) and before each of its batches (``UpgradeAutoOSRollingBatchStarting``) the platform
opens a lifecycle hook event and waits until each of its targets is Approved or Rejected, by a response (a PATCH
of the event) or, at ``waitUntil``, by the hook's ``defaultAction``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from overhaul.core.arm_json import ModelError, Reader, format_duration, parse_duration, parse_timestamp

# Ours (Azure does not say): how long a response may put an event off, past its creation, at most.
MAX_DELAY = 86400.0
MAX_WAIT_DURATION = 7 * 86400.0
DEFAULT_WAIT_DURATION = 1800.0
# Event names are GUIDs as Azure's are, derived from what they gate, so one opened again after a crash is the same.
EVENT_NAMESPACE = uuid.UUID("6f1d0a52-8b3e-4f7c-9a61-2d4e5b7c8a90")


class HookType(StrEnum):
    SCHEDULING = "UpgradeAutoOSScheduling"
    BATCH_STARTING = "UpgradeAutoOSRollingBatchStarting"


class HookAction(StrEnum):
    APPROVE = "Approve"
    REJECT = "Reject"


class ActionState(StrEnum):
    WAITING = "Waiting"
    APPROVED = "Approved"
    REJECTED = "Rejected"


class EventState(StrEnum):
    ACTIVE = "Active"
    COMPLETED = "Completed"


E = TypeVar("E", bound=StrEnum)
DEFAULT_STATE = {HookAction.APPROVE: ActionState.APPROVED, HookAction.REJECT: ActionState.REJECTED}


@dataclass(frozen=True)
class LifecycleHook:
    type: HookType
    wait_duration: float = DEFAULT_WAIT_DURATION
    default_action: HookAction = HookAction.APPROVE

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "waitDuration": format_duration(self.wait_duration),
            "defaultAction": self.default_action.value,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LifecycleHook:
        return cls(
            HookType(doc["type"]), parse_duration(doc["waitDuration"], "waitDuration"), HookAction(doc["defaultAction"])
        )


def _choice(r: Reader, key: str, kind: type[E], default: E | None) -> E:
    value = r.text(key)
    if value is None:
        if default is None:
            raise ModelError(r.at(key), f"is required: one of {', '.join(k.value for k in kind)}")
        return default
    for known in kind:
        if known.value.lower() == value.lower():
            return known
    raise ModelError(r.at(key), f"must be one of {', '.join(k.value for k in kind)}, got {value!r}")


def parse_lifecycle_hooks(profile: Reader) -> tuple[LifecycleHook, ...]:
    """``lifecycleHooksProfile``: at most one hook of each type."""
    hooks_path = profile.at("lifecycleHooks")
    raw = profile.doc.get("lifecycleHooks") or []
    if not isinstance(raw, list):
        raise ModelError(hooks_path, "must be a list")
    hooks: list[LifecycleHook] = []
    for index, item in enumerate(raw):
        r = Reader(item, f"{hooks_path}[{index}]")
        kind = _choice(r, "type", HookType, None)
        if any(h.type is kind for h in hooks):
            raise ModelError(r.at("type"), f"{kind.value} is named twice: one hook of each type")
        wait = r.doc.get("waitDuration")
        seconds = DEFAULT_WAIT_DURATION if wait is None else parse_duration(wait, r.at("waitDuration"))
        if not 0 < seconds <= MAX_WAIT_DURATION:
            raise ModelError(r.at("waitDuration"), f"must be more than 0 and at most P7D, got {wait!r}")
        hooks.append(LifecycleHook(kind, seconds, _choice(r, "defaultAction", HookAction, HookAction.APPROVE)))
    return tuple(hooks)


@dataclass(frozen=True)
class HookEvent:
    """One lifecycle hook event. Targets are instance ids; None stands for the scale set itself (the target of
    an UpgradeAutoOSScheduling event)."""

    name: str
    scale_set: str
    type: HookType
    time_created: float
    wait_until: float
    max_wait_until: float
    default_action: HookAction
    targets: Mapping[int | None, ActionState]
    target_version: str
    attempt_id: str | None = None  # the attempt whose batch it gates (UpgradeAutoOSRollingBatchStarting)
    batch: int | None = None
    closed: str | None = None  # why it was completed with targets still waiting (the attempt ended first)

    @property
    def state(self) -> EventState:
        if self.closed is not None or all(s is not ActionState.WAITING for s in self.targets.values()):
            return EventState.COMPLETED
        return EventState.ACTIVE

    def settled(self, now: float) -> HookEvent:
        """As it stands at ``now``: past ``waitUntil`` every target still waiting gets the default action."""
        if self.state is EventState.COMPLETED or now < self.wait_until:
            return self
        decided = DEFAULT_STATE[self.default_action]
        return replace(self, targets={t: decided if s is ActionState.WAITING else s for t, s in self.targets.items()})

    def close(self, reason: str) -> HookEvent:
        return self if self.state is EventState.COMPLETED else replace(self, closed=reason)

    def with_state(self, state: ActionState) -> tuple[int, ...]:
        return tuple(sorted(t for t, s in self.targets.items() if t is not None and s is state))

    @property
    def instance_ids(self) -> tuple[int, ...]:
        return tuple(sorted(t for t in self.targets if t is not None))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scaleSet": self.scale_set,
            "type": self.type.value,
            "timeCreated": self.time_created,
            "waitUntil": self.wait_until,
            "maxWaitUntil": self.max_wait_until,
            "defaultAction": self.default_action.value,
            "targets": [[t, s.value] for t, s in self.targets.items()],
            "targetVersion": self.target_version,
            "attemptId": self.attempt_id,
            "batch": self.batch,
            "closed": self.closed,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HookEvent:
        return cls(
            name=doc["name"],
            scale_set=doc["scaleSet"],
            type=HookType(doc["type"]),
            time_created=doc["timeCreated"],
            wait_until=doc["waitUntil"],
            max_wait_until=doc["maxWaitUntil"],
            default_action=HookAction(doc["defaultAction"]),
            targets={t: ActionState(s) for t, s in doc["targets"]},
            target_version=doc["targetVersion"],
            attempt_id=doc.get("attemptId"),
            batch=doc.get("batch"),
            closed=doc.get("closed"),
        )


def _open(name: str, hook: LifecycleHook, scale_set: str, now: float, **fields: Any) -> HookEvent:
    return HookEvent(
        name=name,
        scale_set=scale_set,
        type=hook.type,
        time_created=now,
        wait_until=now + hook.wait_duration,
        max_wait_until=now + max(hook.wait_duration, MAX_DELAY),
        default_action=hook.default_action,
        **fields,
    )


def scheduling_event(hook: LifecycleHook, scale_set: str, version: str, since: float, now: float) -> HookEvent:
    """The event before an automatic upgrade of ``scale_set`` onto ``version`` (due since ``since``)."""
    name = str(uuid.uuid5(EVENT_NAMESPACE, f"{scale_set.lower()}/{version}/{since!r}"))
    return _open(name, hook, scale_set, now, targets={None: ActionState.WAITING}, target_version=version)


def batch_event(
    hook: LifecycleHook, *, scale_set: str, version: str, attempt_id: str, batch: int, ids: tuple[int, ...], now: float
) -> HookEvent:
    """The event before batch number ``batch`` of an automatic upgrade starts on the instances ``ids``."""
    name = str(uuid.uuid5(EVENT_NAMESPACE, f"{attempt_id}/{batch}"))
    targets = dict.fromkeys(ids, ActionState.WAITING)
    return _open(
        name, hook, scale_set, now, targets=targets, target_version=version, attempt_id=attempt_id, batch=batch
    )


class EventNotActive(ValueError):
    """A response to an event that is Completed (409)."""


@dataclass(frozen=True)
class Response:
    """A PATCH of an event: new states for some targets, a new ``waitUntil``; either may be absent."""

    states: Mapping[int | None, ActionState]
    wait_until: float | None = None


def respond(event: HookEvent, response: Response, now: float) -> HookEvent:
    """The event with a response applied. EventNotActive when it is Completed; ModelError naming the field when
    the response asks what the event cannot do."""
    current = event.settled(now)
    if current.state is EventState.COMPLETED:
        raise EventNotActive(f"lifecycle hook event {event.name} is Completed: it takes no more responses")
    targets = dict(current.targets)
    for index, (target, state) in enumerate(response.states.items()):
        path = f"properties.targetResources[{index}]"
        if target not in targets:
            raise ModelError(f"{path}.resource.id", "is not a target of this lifecycle hook event")
        if state is ActionState.WAITING:
            raise ModelError(f"{path}.actionState", "must be Approved or Rejected")
        if targets[target] is not ActionState.WAITING and targets[target] is not state:
            raise ModelError(f"{path}.actionState", f"the target was already {targets[target].value}")
        targets[target] = state
    wait_until = current.wait_until
    if response.wait_until is not None:
        if not now <= response.wait_until <= current.max_wait_until:
            raise ModelError("properties.waitUntil", "must be between now and the event's maxWaitUntil")
        wait_until = response.wait_until
    return replace(current, targets=targets, wait_until=wait_until)


def parse_response(doc: Any, scale_set_id: str) -> Response:
    """The body of a PATCH of an event: ``properties.targetResources[].{resource.id, actionState}`` (an instance
    ``…/virtualMachines/N``, or the scale set itself) and ``properties.waitUntil``; read-only fields are ignored, as
    ARM does."""
    props = Reader(doc, "").obj("properties")
    raw = props.doc.get("targetResources")
    if not isinstance(raw, list | None):
        raise ModelError(props.at("targetResources"), "must be a list")
    states: dict[int | None, ActionState] = {}
    prefix = f"{scale_set_id}/virtualMachines/".lower()
    for index, item in enumerate(raw or []):
        r = Reader(item, f"{props.at('targetResources')}[{index}]")
        resource_id = r.obj("resource").required_text("id").rstrip("/")
        target: int | None
        if resource_id.lower() == scale_set_id.lower():
            target = None
        elif resource_id.lower().startswith(prefix) and resource_id[len(prefix) :].isdigit():
            target = int(resource_id[len(prefix) :])
        else:
            raise ModelError(r.obj("resource").at("id"), f"must be {scale_set_id} or one of its virtualMachines")
        states[target] = _choice(r, "actionState", ActionState, None)
    wait = props.doc.get("waitUntil")
    return Response(states, parse_timestamp(wait, props.at("waitUntil")) if wait is not None else None)
