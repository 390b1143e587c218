"""Maintenance windows through the runtime (in-memory driver, real SQLite, simulated clock): an automatic OS upgrade
starts only inside the assigned window, waits between batches when it closes (its `why` says until when), and
resumes in the next window where it stopped, across a restart; manual starts ignore windows, as in Azure."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from overhaul.core.auto_upgrade import AutoUpgradeSettings
from overhaul.core.errors import Conflict, InvalidInput
from overhaul.core.gallery import ImageVersion
from overhaul.core.maintenance import parse_maintenance_configuration
from overhaul.core.model import ScaleSetRef
from overhaul.core.rollout import AttemptStatus, StartedBy
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import SIMULATED, Fleet, automatic_model, fleet_with, version, wait_for_async

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
OPENS = datetime(2026, 12, 1, 22, 0, tzinfo=UTC).timestamp()
SETTINGS = AutoUpgradeSettings(first_delay=0.0, delay=0.0)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with fleet_with(tmp_path, replace(SIMULATED, min_maintenance_window=60.0)) as each:
        each.clock.now = NOW
        await each.orchestrator.scale_sets.put("web", automatic_model())
        changed = await each.orchestrator.upgrades.latest("web")  # the model change moves every instance at once
        if changed is not None:
            await each.orchestrator.upgrades.wait(changed.attempt.id, 60)
        yield each


async def assign_nightly(orchestrator: Orchestrator, duration: str = "00:10") -> None:
    window = {"startDateTime": "2026-11-01 22:00", "duration": duration, "timeZone": "UTC", "recurEvery": "Day"}
    doc = {"location": "local", "properties": {"maintenanceScope": "OSImage", "maintenanceWindow": window}}
    where = {"resource_group": "default", "subscription": "local"}
    configuration = parse_maintenance_configuration(doc, name="nightly", **where, min_duration=60)
    await orchestrator.maintenance.put(configuration)
    model = await orchestrator.scale_sets.get("web")
    body = {"location": "local", "properties": {"maintenanceConfigurationId": configuration.id}}
    await orchestrator.maintenance.assign(model, "nightly", body)


async def test_an_automatic_upgrade_waits_for_the_window_then_pauses_between_windows(fleet: Fleet) -> None:
    orchestrator = fleet.orchestrator
    await assign_nightly(orchestrator)
    published = ImageVersion("g", "tiny", "2.0.0", "localhost/tiny:2.0.0", published_at=NOW)
    await orchestrator.galleries.publish(published)
    ref = ScaleSetRef("local", "default", "web")
    # Due now, but outside the window: it falls due when the window opens.
    before = await orchestrator.upgrades.latest("web")
    assert await orchestrator.upgrades.start_due(ref, SETTINGS) == OPENS
    assert await orchestrator.upgrades.latest("web") == before  # nothing started
    [waiting] = await orchestrator.upgrades.why("web")
    assert waiting.code == "OutsideMaintenanceWindow" and waiting.next_at == OPENS and "2.0.0" in waiting.message
    fleet.clock.now = OPENS + 1
    assert await orchestrator.upgrades.start_due(ref, SETTINGS) is None
    attempt = await orchestrator.upgrades.latest("web")
    assert attempt is not None and attempt.attempt.window is not None

    async def first_batch_done() -> bool:
        stored = await orchestrator.upgrades.latest("web")
        return stored is not None and stored.attempt.successful == 2

    await wait_for_async(first_batch_done)
    # The 20-minute pause outlasts the 10-minute window: the second batch waits for the next night.
    fleet.clock.now = OPENS + 21 * 60
    orchestrator.reconciler.wake(attempt.attempt.id)

    async def outside() -> bool:
        return "OutsideMaintenanceWindow" in [c.code for c in await orchestrator.upgrades.why("web")]

    await wait_for_async(outside)
    cause = next(c for c in await orchestrator.upgrades.why("web") if c.code == "OutsideMaintenanceWindow")
    assert cause.next_at == OPENS + 86400
    stored = await orchestrator.upgrades.latest("web")
    assert stored is not None and stored.attempt.status is AttemptStatus.ROLLING_FORWARD
    assert stored.attempt.successful == 2 and not stored.attempt.batch
    # A restart keeps it waiting where it stopped; the next night it goes on.
    fleet.clock.now = OPENS + 86400 + 1
    await orchestrator.close()
    fleet.orchestrator = orchestrator = Orchestrator(
        fleet.store, fleet.driver, orchestrator.health, clock=fleet.clock, settings=orchestrator.settings
    )
    await orchestrator.start()
    done = await orchestrator.upgrades.wait(attempt.attempt.id, 60)
    assert done.status is AttemptStatus.COMPLETED and done.successful == 4 and done.batches_started == 2


async def test_a_manual_start_ignores_the_window(fleet: Fleet) -> None:
    await assign_nightly(fleet.orchestrator)
    await fleet.orchestrator.galleries.publish(version("2.0.0"))
    attempt = await fleet.orchestrator.upgrades.start("web", started_by=StartedBy.USER)  # at noon, far from 22:00
    assert attempt.window is None

    async def completed() -> bool:
        fleet.clock.now += 21 * 60  # past each pause between batches
        fleet.orchestrator.reconciler.wake(attempt.id)
        stored = await fleet.orchestrator.upgrades.find(attempt.id)
        return stored is not None and stored.done and stored.status is AttemptStatus.COMPLETED

    await wait_for_async(completed)


async def test_bad_assignments_and_deletes_in_use_are_refused(fleet: Fleet) -> None:
    orchestrator = fleet.orchestrator
    model = await orchestrator.scale_sets.get("web")
    missing = "/subscriptions/local/resourceGroups/default/providers/Microsoft.Maintenance/maintenanceConfigurations/x"
    with pytest.raises(InvalidInput) as refused:
        await orchestrator.maintenance.assign(model, "a", {"properties": {"maintenanceConfigurationId": missing}})
    assert refused.value.target == "properties.maintenanceConfigurationId"
    await assign_nightly(orchestrator)
    with pytest.raises(Conflict, match="assigned to scale set"):
        await orchestrator.maintenance.delete("nightly")
    await orchestrator.maintenance.unassign(model, "nightly")
    await orchestrator.maintenance.delete("nightly")
    assert await orchestrator.maintenance.list() == []
    assert copy.deepcopy(await orchestrator.maintenance.assignments(model)) == []
