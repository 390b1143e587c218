"""Lifecycle hook events as pure data: opened, answered, extended, settled by the default action at waitUntil."""

from __future__ import annotations

import pytest

from overhaul.core.arm_json import ModelError
from overhaul.core.lifecycle_hooks import (
    MAX_DELAY,
    ActionState,
    EventNotActive,
    EventState,
    HookAction,
    HookEvent,
    HookType,
    LifecycleHook,
    Response,
    batch_event,
    parse_response,
    respond,
    scheduling_event,
)

BATCH = LifecycleHook(HookType.BATCH_STARTING, 60, HookAction.REJECT)


def opened(now: float = 100.0) -> HookEvent:
    return batch_event(BATCH, scale_set="web", version="2.0.0", attempt_id="a1", batch=1, ids=(0, 3), now=now)


def test_an_event_waits_for_each_target_then_completes() -> None:
    event = opened()
    assert event.state is EventState.ACTIVE and event.wait_until == 160 and event.max_wait_until == 100 + MAX_DELAY
    half = respond(event, Response({0: ActionState.APPROVED}), 110)
    assert half.state is EventState.ACTIVE and half.with_state(ActionState.APPROVED) == (0,)
    done = respond(half, Response({3: ActionState.REJECTED}), 120)
    assert done.state is EventState.COMPLETED and done.with_state(ActionState.REJECTED) == (3,)
    with pytest.raises(EventNotActive):
        respond(done, Response({3: ActionState.REJECTED}), 121)


def test_at_wait_until_the_default_action_answers_what_is_still_waiting() -> None:
    event = respond(opened(), Response({0: ActionState.APPROVED}), 110)
    assert event.settled(159.9) == event
    settled = event.settled(160)
    assert settled.state is EventState.COMPLETED
    assert settled.with_state(ActionState.APPROVED) == (0,) and settled.with_state(ActionState.REJECTED) == (3,)
    with pytest.raises(EventNotActive):
        respond(event, Response({3: ActionState.APPROVED}), 160)


def test_a_response_may_put_the_event_off_up_to_max_wait_until() -> None:
    event = opened()
    later = respond(event, Response({}, wait_until=5000), 110)
    assert later.wait_until == 5000 and later.settled(4999).state is EventState.ACTIVE
    with pytest.raises(ModelError) as caught:
        respond(event, Response({}, wait_until=event.max_wait_until + 1), 110)
    assert caught.value.path == "properties.waitUntil"
    with pytest.raises(ModelError):
        respond(event, Response({}, wait_until=50), 110)  # in the past


@pytest.mark.parametrize(
    ("states", "path"),
    [
        ({7: ActionState.APPROVED}, "properties.targetResources[0].resource.id"),
        ({None: ActionState.APPROVED}, "properties.targetResources[0].resource.id"),
        ({0: ActionState.APPROVED, 3: ActionState.WAITING}, "properties.targetResources[1].actionState"),
    ],
)
def test_a_response_the_event_cannot_take_names_the_field(states: dict[int | None, ActionState], path: str) -> None:
    with pytest.raises(ModelError) as caught:
        respond(opened(), Response(states), 110)
    assert caught.value.path == path


def test_a_decided_target_keeps_its_answer() -> None:
    event = respond(opened(), Response({0: ActionState.APPROVED}), 110)
    assert respond(event, Response({0: ActionState.APPROVED}), 111) == event  # the same answer again
    with pytest.raises(ModelError, match="already Approved"):
        respond(event, Response({0: ActionState.REJECTED}), 111)


def test_event_names_are_guids_fixed_by_what_they_gate_and_events_round_trip() -> None:
    assert (
        opened().name
        == opened(now=999).name
        != batch_event(BATCH, scale_set="web", version="2.0.0", attempt_id="a1", batch=2, ids=(1,), now=100).name
    )
    hook = LifecycleHook(HookType.SCHEDULING, 30)
    scheduled = scheduling_event(hook, "web", "2.0.0", since=50.0, now=100.0)
    assert scheduled.targets == {None: ActionState.WAITING} and len(scheduled.name) == 36
    assert scheduled.settled(130).with_state(ActionState.APPROVED) == ()  # the scale set itself is no instance
    assert scheduled.settled(130).targets == {None: ActionState.APPROVED}
    for event in (opened(), scheduled, opened().close("the rolling upgrade was cancelled")):
        assert HookEvent.from_json(event.to_json()) == event
    assert opened().close("cancelled").state is EventState.COMPLETED


VMSS_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web"


def test_a_response_body_names_targets_by_resource_id() -> None:
    body = {
        "properties": {
            "waitUntil": "2026-12-03T10:00:00Z",
            "targetResources": [
                {"resource": {"id": VMSS_ID.upper() + "/virtualMachines/3"}, "actionState": "approved"},
                {"resource": {"id": VMSS_ID}, "actionState": "Rejected"},
            ],
            "state": "Completed",  # read-only: ignored
        }
    }
    response = parse_response(body, VMSS_ID)
    assert response.states == {3: ActionState.APPROVED, None: ActionState.REJECTED}
    assert response.wait_until == 1796292000.0


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"properties": {"targetResources": {}}}, "properties.targetResources"),
        (
            {"properties": {"targetResources": [{"actionState": "Approved"}]}},
            "properties.targetResources[0].resource.id",
        ),
        (
            {"properties": {"targetResources": [{"resource": {"id": VMSS_ID + "x/virtualMachines/0"}}]}},
            "properties.targetResources[0].resource.id",
        ),
        (
            {"properties": {"targetResources": [{"resource": {"id": VMSS_ID + "/virtualMachines/0"}}]}},
            "properties.targetResources[0].actionState",
        ),
        (
            {"properties": {"targetResources": [{"resource": {"id": VMSS_ID}, "actionState": "Maybe"}]}},
            "properties.targetResources[0].actionState",
        ),
        ({"properties": {"waitUntil": "tomorrow"}}, "properties.waitUntil"),
        ({"properties": "x"}, "properties"),
    ],
)
def test_a_wrong_response_body_is_refused_naming_the_field(body: object, path: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_response(body, VMSS_ID)
    assert caught.value.path == path
