"""Lifecycle hooks through the runtime (in-memory driver, real SQLite, simulated clock): an automatic OS upgrade
waits for its UpgradeAutoOSScheduling event, each batch for its UpgradeAutoOSRollingBatchStarting event; a
response moves it on at once, the default action at waitUntil; a rejected instance keeps its version; a restart
waits on the same event; `why` says what it waits for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from overhaul.core.auto_upgrade import AutoUpgradeSettings
from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.gallery import ImageVersion
from overhaul.core.lifecycle_hooks import ActionState, EventState, HookEvent, HookType, Response
from overhaul.core.model import ScaleSetRef
from overhaul.core.rollout import AttemptStatus, Step
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import SIMULATED, Fleet, automatic_model, fleet_with, wait_for_async

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
SETTINGS = AutoUpgradeSettings(first_delay=0.0, delay=0.0)
REF = ScaleSetRef("local", "default", "web")


def hooked(*hooks: dict[str, Any]) -> dict[str, Any]:
    doc = automatic_model()
    doc["properties"]["lifecycleHooksProfile"] = {"lifecycleHooks": list(hooks)}
    return doc


SCHEDULING = {"type": "UpgradeAutoOSScheduling", "waitDuration": "PT10M", "defaultAction": "Reject"}
BATCH = {"type": "UpgradeAutoOSRollingBatchStarting", "waitDuration": "PT5M", "defaultAction": "Approve"}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with fleet_with(tmp_path, SIMULATED) as each:
        each.clock.now = NOW
        yield each


async def put(fleet: Fleet, doc: dict[str, Any]) -> None:
    await fleet.orchestrator.scale_sets.put("web", doc)
    changed = await fleet.orchestrator.upgrades.latest("web")  # the model change moves every instance at once
    if changed is not None:
        await fleet.orchestrator.upgrades.wait(changed.attempt.id, 60)


async def publish(fleet: Fleet, number: str) -> None:
    tiny = ImageVersion("g", "tiny", number, f"localhost/tiny:{number}", published_at=fleet.clock.now)
    await fleet.orchestrator.galleries.publish(tiny)


async def events(fleet: Fleet, kind: HookType) -> list[HookEvent]:
    return [e for e in await fleet.orchestrator.lifecycle_hook_events.list("web") if e.type is kind]


async def active_batch_event(fleet: Fleet, batch: int) -> HookEvent:
    async def opened() -> bool:
        return any(e.batch == batch for e in await events(fleet, HookType.BATCH_STARTING))

    await wait_for_async(opened)
    return next(e for e in await events(fleet, HookType.BATCH_STARTING) if e.batch == batch)


async def test_the_scheduling_event_gates_the_start_and_its_default_rejects(fleet: Fleet) -> None:
    await put(fleet, hooked(SCHEDULING))
    orchestrator = fleet.orchestrator
    before = await orchestrator.upgrades.latest("web")
    await publish(fleet, "2.0.0")
    waits_until = await orchestrator.upgrades.start_due(REF, SETTINGS)
    [event] = await events(fleet, HookType.SCHEDULING)
    assert waits_until == event.wait_until == NOW + 600 and event.state is EventState.ACTIVE
    assert event.targets == {None: ActionState.WAITING} and event.target_version == "2.0.0"
    assert await orchestrator.upgrades.latest("web") == before  # nothing started
    assert [c.code for c in await orchestrator.upgrades.why("web")] == ["LifecycleHookWaiting"]
    # Asked again, the same event; at waitUntil its default action (Reject) answers: no upgrade to 2.0.0.
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) == event.wait_until
    fleet.clock.now = event.wait_until
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) is None
    assert await orchestrator.upgrades.latest("web") == before
    [rejected] = await events(fleet, HookType.SCHEDULING)
    assert rejected.state is EventState.COMPLETED and rejected.targets == {None: ActionState.REJECTED}
    with pytest.raises(Conflict):
        await orchestrator.lifecycle_hook_events.respond("web", event.name, Response({None: ActionState.APPROVED}))
    # A newer version opens a new event; approved, the upgrade starts at once.
    await publish(fleet, "3.0.0")
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) is not None
    newer = next(e for e in await events(fleet, HookType.SCHEDULING) if e.target_version == "3.0.0")
    answered = await orchestrator.lifecycle_hook_events.respond(
        "web", newer.name, Response({None: ActionState.APPROVED})
    )
    assert answered.state is EventState.COMPLETED
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) is None
    started = await orchestrator.upgrades.latest("web")
    assert started is not None and started.attempt.target_version == "3.0.0"


async def test_each_batch_waits_for_its_event_and_a_rejected_instance_keeps_its_version(fleet: Fleet) -> None:
    await put(fleet, hooked(BATCH))
    orchestrator = fleet.orchestrator
    await publish(fleet, "2.0.0")
    calls = len(fleet.driver.calls)
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) is None
    stored = await orchestrator.upgrades.latest("web")
    assert stored is not None and stored.attempt.batch_hook is not None
    attempt_id = stored.attempt.id
    first = await active_batch_event(fleet, 1)
    assert first.instance_ids == (0, 1) and first.attempt_id == attempt_id and first.state is EventState.ACTIVE
    assert [c for c in fleet.driver.calls[calls:] if c[0] == "reimage"] == []  # nothing touched yet
    why = await orchestrator.upgrades.why("web")
    assert [c.code for c in why] == ["LifecycleHookWaiting"] and why[0].instances == (0, 1)
    assert why[0].next_at == first.wait_until
    # Bad responses are refused naming the field, and change nothing.
    with pytest.raises(InvalidInput) as caught:
        await orchestrator.lifecycle_hook_events.respond("web", first.name, Response({7: ActionState.APPROVED}))
    assert caught.value.target == "properties.targetResources[0].resource.id"
    with pytest.raises(NotFound):
        await orchestrator.lifecycle_hook_events.respond("web", "nope", Response({0: ActionState.APPROVED}))
    await orchestrator.lifecycle_hook_events.respond(
        "web", first.name, Response({0: ActionState.APPROVED, 1: ActionState.REJECTED})
    )

    async def first_batch_done() -> bool:
        found = await orchestrator.upgrades.find(attempt_id)
        return found is not None and found.successful == 1 and not found.batch

    await wait_for_async(first_batch_done)
    fleet.clock.now += 20 * 60  # the pause between batches
    orchestrator.reconciler.wake(attempt_id)
    second = await active_batch_event(fleet, 2)
    assert second.instance_ids == (2, 3)
    after_first = await orchestrator.upgrades.find(attempt_id)
    assert after_first is not None and after_first.instances[1].step is Step.NOT_UPGRADED
    # A restart waits on the same event; past its waitUntil the default action (Approve) lets the batch go.
    await orchestrator.close()
    fleet.orchestrator = orchestrator = Orchestrator(
        fleet.store, fleet.driver, orchestrator.health, clock=fleet.clock, settings=orchestrator.settings
    )
    await orchestrator.start()
    assert [e.name for e in await events(fleet, HookType.BATCH_STARTING) if e.batch == 2] == [second.name]
    fleet.clock.now = second.wait_until
    orchestrator.reconciler.wake(attempt_id)
    done = await orchestrator.upgrades.wait(attempt_id, 60)
    assert done.status is AttemptStatus.COMPLETED and done.successful == 3 and done.failed == 0
    versions = {i: s.version for i, s in (await fleet.driver.observe("web")).items()}
    assert versions == {0: "2.0.0", 1: "1.0.0", 2: "2.0.0", 3: "2.0.0"}
    completed = await events(fleet, HookType.BATCH_STARTING)
    assert [e.state for e in completed] == [EventState.COMPLETED, EventState.COMPLETED]
    assert completed[0].targets == {2: ActionState.APPROVED, 3: ActionState.APPROVED}


async def test_a_manual_start_has_no_lifecycle_hooks(fleet: Fleet) -> None:
    await put(fleet, hooked(SCHEDULING, BATCH))
    await publish(fleet, "2.0.0")
    attempt = await fleet.orchestrator.upgrades.start("web")
    assert attempt.batch_hook is None
    assert await fleet.orchestrator.lifecycle_hook_events.list("web") == []
