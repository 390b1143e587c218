"""`why` through the runtime (in-memory driver, real SQLite, simulated clock): each cause is seen while it holds,
and what its `unblock` says to do does unblock it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overhaul.core.rollout import Attempt, AttemptStatus, StartedBy
from overhaul.core.why import Cause
from overhaul.ports.driver import DriverError, EngineUnavailable, InstanceSpec
from overhaul.ports.store import StoreUnavailable
from tests.builders import Fleet, fleet_with, small, version, wait_for_async


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with fleet_with(tmp_path) as each:
        yield each


def stop(fleet: Fleet, *instance_ids: int) -> None:
    for instance_id in instance_ids:
        state = fleet.driver.instances["web"][instance_id]
        assert state.current is not None
        fleet.driver.instances["web"][instance_id] = replace(state, current=replace(state.current, running=False))


async def why(fleet: Fleet) -> list[Cause]:
    return await fleet.orchestrator.upgrades.why("web")


def codes(causes: list[Cause]) -> list[str]:
    return [c.code for c in causes]


async def test_nothing_holds_an_up_to_date_scale_set_back(fleet: Fleet) -> None:
    assert await why(fleet) == []


async def test_a_quarantined_target_is_named_and_clearing_it_unblocks(fleet: Fleet) -> None:
    bad = replace(version("2.0.0"), quarantine="rolling upgrade x Faulted on this version")
    await fleet.orchestrator.galleries.publish(bad)
    [cause] = await why(fleet)
    assert cause.code == "TargetQuarantined" and "2.0.0" in cause.message
    assert "--gallery-image-version 2.0.0 --set overhaul.quarantined=false" in cause.unblock
    # The remedy: clear the quarantine (what the command does), and 'latest' means 2.0.0 again.
    await fleet.orchestrator.galleries.put_version(
        "g", "tiny", "2.0.0", {"properties": {"overhaul": {"quarantined": False}}}, patch=True
    )
    assert await why(fleet) == []
    done = await fleet.upgrade()
    assert done.status is AttemptStatus.COMPLETED and done.target_version == "2.0.0"


async def test_a_target_image_missing_from_the_engine_is_named_and_loading_it_unblocks(fleet: Fleet) -> None:
    await fleet.orchestrator.galleries.publish(version("2.0.0"))
    fleet.driver.missing_images.add(version("2.0.0").container_image)
    [cause] = await why(fleet)
    assert cause.code == "TargetImageMissing" and "localhost/tiny:2.0.0" in cause.message
    assert "podman load" in cause.unblock
    fleet.driver.missing_images.clear()  # the remedy: the image is back in the engine
    assert await why(fleet) == []


async def test_an_engine_retried_mid_attempt_is_the_why_until_it_answers(fleet: Fleet) -> None:
    await fleet.orchestrator.galleries.publish(version("2.0.0"))
    down = asyncio.Event()
    down.set()

    def failing(call: str, spec: InstanceSpec | None) -> DriverError | None:
        if call == "reimage" and down.is_set():
            return EngineUnavailable("reimage: engine unreachable: connection refused")
        return None

    fleet.driver.failing = failing
    attempt = await fleet.orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)

    async def retried() -> bool:
        return "EngineUnavailable" in codes(await why(fleet))

    await wait_for_async(retried)
    cause = next(c for c in await why(fleet) if c.code == "EngineUnavailable")
    assert cause.rule == "rollout.infra_deadline" and cause.next_at is not None and cause.instances
    assert "bring the container engine" in cause.unblock
    down.clear()  # the remedy: the engine answers again
    done = await fleet.orchestrator.upgrades.wait(attempt.id, 60)
    assert done.status is AttemptStatus.COMPLETED and await why(fleet) == []


async def test_a_pre_check_refusal_says_observed_against_threshold_and_the_threshold_unblocks(fleet: Fleet) -> None:
    await fleet.orchestrator.galleries.publish(version("2.0.0"))
    stop(fleet, 0, 1)  # 2 of 5 stopped: 40% unhealthy, more than 20%
    refused = await fleet.upgrade()
    assert refused.status is AttemptStatus.FAULTED
    [cause] = await why(fleet)
    assert cause.code == "PreCheckRefused" and cause.observed == 40.0 and cause.threshold == 20
    assert "maxUnhealthyInstancePercent" in cause.unblock
    model = small(5)
    model["properties"]["upgradePolicy"] = {
        "mode": "Rolling",
        "rollingUpgradePolicy": {"maxUnhealthyInstancePercent": 50},
    }
    await fleet.orchestrator.scale_sets.put("web", copy.deepcopy(model))
    stop(fleet, 0, 1)  # still stopped: only the threshold changed
    attempt = await fleet.orchestrator.upgrades.start("web", started_by=StartedBy.USER)  # it follows the policy
    assert (await fleet.orchestrator.upgrades.wait(attempt.id, 60)).status is AttemptStatus.COMPLETED


async def test_a_store_that_cannot_be_written_is_the_why_until_it_can(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fleet.orchestrator.galleries.publish(version("2.0.0"))
    full = asyncio.Event()
    full.set()
    save = fleet.store.save_attempt

    async def failing(attempt: Attempt, image_reference: Mapping[str, Any]) -> None:
        if full.is_set():
            raise StoreUnavailable("database or disk is full")
        await save(attempt, image_reference)

    monkeypatch.setattr(fleet.store, "save_attempt", failing)
    attempt = await fleet.orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)

    async def stopped() -> bool:
        return "StorageUnavailable" in codes(await why(fleet))

    await wait_for_async(stopped)
    cause = next(c for c in await why(fleet) if c.code == "StorageUnavailable")
    assert "disk is full" in cause.message and "free disk space" in cause.unblock and cause.next_at is not None
    full.clear()  # the remedy: the store takes writes again
    done = await fleet.orchestrator.upgrades.wait(attempt.id, 60)
    assert done.status is AttemptStatus.COMPLETED and await why(fleet) == []
