"""The outbox through the runtime (in-memory driver, real SQLite): events are written before the state they
describe, and a restart puts back whatever a crash kept out, under the same ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from overhaul.core.cloud_events import CloudEvent, EventType, parse_event_subscription
from overhaul.core.rollout import AttemptStatus, StartedBy
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import Fleet, fleet_with, version

RG = "/subscriptions/local/resourceGroups/default"
HOOK = {"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://127.0.0.1:9/hook"}}}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with fleet_with(tmp_path) as each:
        subscription = parse_event_subscription({"properties": HOOK}, name="ops", scope=RG)
        await each.orchestrator.event_subscriptions.put(subscription)
        yield each


async def outbox_types(fleet: Fleet) -> list[EventType]:
    [subscription] = await fleet.store.event_subscriptions()
    due = await fleet.store.due_deliveries(subscription.id, float("inf"), 100)
    return [d.event.type for d in due]


async def test_a_rollout_fills_the_outbox_as_it_goes(fleet: Fleet) -> None:
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.COMPLETED
    kinds = await outbox_types(fleet)
    assert kinds[0] is EventType.ATTEMPT_STARTED and kinds[-1] is EventType.ATTEMPT_COMPLETED
    assert kinds.count(EventType.INSTANCE_UPGRADED) == 5


async def test_events_a_crash_kept_out_of_the_outbox_are_put_back_at_the_restart(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crashed(events: Sequence[CloudEvent]) -> None:
        return None  # as if the process died between recording the attempt and writing its events

    monkeypatch.setattr(fleet.orchestrator.outbox, "publish", crashed)
    await fleet.orchestrator.galleries.publish(version("2.0.0"))
    for instance_id in (0, 1, 2):  # 3 of 5 stopped: the pre-check refuses, the attempt ends at its start
        state = fleet.driver.instances["web"][instance_id]
        assert state.current is not None
        fleet.driver.instances["web"][instance_id] = replace(state, current=replace(state.current, running=False))
    refused = await fleet.orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    assert refused.status is AttemptStatus.FAULTED and await outbox_types(fleet) == []
    monkeypatch.undo()
    await fleet.orchestrator.close()
    fleet.orchestrator = Orchestrator(
        fleet.store, fleet.driver, fleet.orchestrator.health, clock=fleet.clock, settings=fleet.orchestrator.settings
    )
    await fleet.orchestrator.start()
    assert await outbox_types(fleet) == [EventType.ATTEMPT_STARTED, EventType.ATTEMPT_FAULTED]
    await fleet.orchestrator.close()
    await fleet.orchestrator.start()  # again: nothing twice
    assert await outbox_types(fleet) == [EventType.ATTEMPT_STARTED, EventType.ATTEMPT_FAULTED]
