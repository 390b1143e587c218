"""The state gauges a /metrics scrape renders (OrchestratorMetrics over the runtime on the memory driver, real
SQLite): instances by version and health, the engine listed for the versions only when they may have changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.http.metrics import OrchestratorMetrics
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.core.rollout import AttemptStatus
from overhaul.ports.driver import InstanceState
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


class Counting(MemoryDriver):
    listings = 0

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        self.listings += 1
        return await super().observe(scale_set)


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = SqliteStore(tmp_path / "overhaul.db")
    made = Orchestrator(store, Counting(), HealthMonitor(), settings=FAST)
    await made.start()
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await made.galleries.publish(version("1.0.0"))
    yield made
    await made.close()
    await store.close()


def instances_line(rendered: bytes, version: str) -> str:
    found = [line for line in rendered.decode().splitlines() if line.startswith("overhaul_instances{")]
    return next(line for line in found if f'version="{version}"' in line)


async def test_scrapes_list_the_engine_only_when_a_version_may_have_changed(orchestrator: Orchestrator) -> None:
    metrics = OrchestratorMetrics(orchestrator)
    driver = orchestrator.driver
    assert isinstance(driver, Counting)
    await orchestrator.scale_sets.put("web", small(3))
    first = await metrics.render()
    assert instances_line(first, "1.0.0").endswith(" 3.0")
    listed = driver.listings
    for _ in range(5):  # Prometheus every 15 s: the versions the engine last listed
        assert instances_line(await metrics.render(), "1.0.0").endswith(" 3.0")
    assert driver.listings == listed
    await orchestrator.galleries.publish(version("2.0.0"))
    attempt = await orchestrator.upgrades.start("web")
    assert (await orchestrator.upgrades.wait(attempt.id, 20)).status is AttemptStatus.COMPLETED
    assert instances_line(await metrics.render(), "2.0.0").endswith(" 3.0")  # the steps made it list again
