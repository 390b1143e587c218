"""The orchestrator orchestrator end to end over the in-memory driver (power-state health) and real SQLite."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.gallery import ImageDefinition
from overhaul.core.rollout import AttemptStatus, StartedBy, Step
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import RUNTIME_MODEL, version

Setup = tuple[Orchestrator, MemoryDriver, SqliteStore]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    store = SqliteStore(tmp_path / "overhaul.db")
    driver = MemoryDriver()
    orchestrator = Orchestrator(store, driver, HealthMonitor())
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await orchestrator.galleries.publish(version("1.0.0"))
    yield orchestrator, driver, store
    await orchestrator.close()
    await store.close()


async def test_create_then_upgrade_in_batches(setup: Setup) -> None:
    orchestrator, driver, store = setup
    await orchestrator.scale_sets.put("web", RUNTIME_MODEL)
    ports_before = await store.instance_ports("web")
    assert len(ports_before) == 10 and all(8080 in p for p in ports_before.values())
    assert {s.version for s in (await driver.observe("web")).values()} == {"1.0.0"}
    await orchestrator.galleries.publish(version("2.0.0"))
    attempt = await orchestrator.upgrades.start("web")
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.COMPLETED
    assert done.batches_started == 5  # 20 % of 10
    assert {s.version for s in (await driver.observe("web")).values()} == {"2.0.0"}
    assert await store.instance_ports("web") == ports_before
    journal = await store.journal(attempt.id)
    assert [(e.action, e.phase) for e in journal[:4]] == [
        ("reimage", "begin"),
        ("reimage", "begin"),
        ("reimage", "end"),
        ("reimage", "end"),
    ]
    assert all(e.ok for e in journal if e.phase == "end")
    history = await orchestrator.upgrades.history("web")
    assert history[0].attempt.id == attempt.id
    assert history[0].image_reference == {"publisher": "overhaul", "offer": "test", "sku": "tiny", "version": "2.0.0"}


async def test_failed_reimage_rolls_back_and_faults(
    setup: Setup,
) -> None:
    orchestrator, driver, _ = setup
    await orchestrator.scale_sets.put("web", RUNTIME_MODEL)
    await orchestrator.galleries.publish(version("2.0.0"))
    driver.fail_reimage = lambda spec: spec.instance_id == 0
    attempt = await orchestrator.upgrades.start("web", started_by=StartedBy.PLATFORM)
    done = await orchestrator.upgrades.wait(attempt.id, 10)
    assert done.status is AttemptStatus.FAULTED
    assert done.instances[0].step is Step.ROLLED_BACK
    states = await driver.observe("web")
    assert states[0].version == "1.0.0" and states[0].previous is None


async def test_conflict_and_errors(setup: Setup) -> None:
    orchestrator, _, _ = setup
    with pytest.raises(NotFound):
        await orchestrator.upgrades.start("nope")
    bad = copy.deepcopy(RUNTIME_MODEL)
    bad["properties"]["upgradePolicy"]["rollingUpgradePolicy"] = {"maxBatchInstancePercent": 101}
    with pytest.raises(InvalidInput, match=r"maxBatchInstancePercent: must be 5\.\.100"):
        await orchestrator.scale_sets.put("web", bad)
    await orchestrator.scale_sets.put("web", RUNTIME_MODEL)
    await orchestrator.galleries.publish(version("2.0.0"))
    attempt = await orchestrator.upgrades.start("web")
    with pytest.raises(Conflict):
        await orchestrator.upgrades.start("web")
    await orchestrator.upgrades.wait(attempt.id, 10)
    with pytest.raises(Conflict):
        await orchestrator.upgrades.cancel("web")


async def test_scale_in_keeps_data_and_frees_ports(
    setup: Setup,
) -> None:
    orchestrator, driver, store = setup
    await orchestrator.scale_sets.put("web", RUNTIME_MODEL)
    smaller = copy.deepcopy(RUNTIME_MODEL)
    smaller["sku"]["capacity"] = 3
    await orchestrator.scale_sets.put("web", smaller)
    assert sorted(await driver.observe("web")) == [0, 1, 2]
    assert sorted(await store.instance_ports("web")) == [0, 1, 2]
    assert ("delete", "web_9") in driver.calls


async def test_history_keeps_the_last_five(setup: Setup) -> None:
    orchestrator, _, store = setup
    await orchestrator.scale_sets.put("web", RUNTIME_MODEL)
    for minor in range(1, 8):
        await orchestrator.galleries.publish(version(f"1.{minor}.0"))
        attempt = await orchestrator.upgrades.start("web")
        await orchestrator.upgrades.wait(attempt.id, 10)
    history = await orchestrator.upgrades.history("web")
    assert [h.attempt.target_version for h in history] == [f"1.{m}.0" for m in range(7, 2, -1)]
    assert all(h.attempt.status is AttemptStatus.COMPLETED for h in history)
    assert store.db.execute("SELECT COUNT(DISTINCT attempt_id) FROM journal").fetchone()[0] == 5
