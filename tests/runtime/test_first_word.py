"""An orchestrator that just began acting (a restart, a new leader's term) has heard nothing yet from the
instances: the automatic upgrade waits for its health source's first word on each (FIRST_LOOK at most) rather than
fault the upgrade at its start on instances it merely has not heard from."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.auto_upgrade import AutoUpgradeSettings
from overhaul.core.gallery import ImageDefinition
from overhaul.core.model import HealthProbe, ScaleSetRef
from overhaul.core.planner import Health
from overhaul.core.rollout import FIRST_LOOK, AttemptStatus
from overhaul.ports.health import HealthReport, Key
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, SimulatedClock, automatic_model, version

SETTINGS = AutoUpgradeSettings(first_delay=0.0, delay=0.0)
REF = ScaleSetRef("local", "default", "web")


class Silent(HealthMonitor):
    """A health source whose watches have not said a word yet (the test gives their first words)."""

    def watch_probe(self, key: Key, probe: HealthProbe, address: str, port: int) -> None:
        return None

    def hear(self, key: Key, health: Health, now: float) -> None:
        self._update(key, HealthReport(health, now))


def probed_model() -> dict[str, Any]:
    doc = copy.deepcopy(automatic_model(4))
    del doc["properties"]["virtualMachineProfile"]["overhaul"]["healthFromPowerState"]
    probe = {"protocol": "Http", "port": 8080, "requestPath": "/health"}
    doc["properties"]["virtualMachineProfile"]["networkProfile"] = {"healthProbe": probe}
    return doc


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, Silent, SimulatedClock]]:
    clock = SimulatedClock()
    store = SqliteStore(tmp_path / "overhaul.db")
    health = Silent(clock=clock)
    orchestrator = Orchestrator(store, MemoryDriver(), health, clock=clock, settings=FAST)
    await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await orchestrator.galleries.publish(version("1.0.0"))
    await orchestrator.scale_sets.put("web", probed_model())
    await orchestrator.galleries.publish(version("2.0.0"))
    await orchestrator.start()  # began acting now: nothing heard yet
    yield orchestrator, health, clock
    await orchestrator.close()
    await store.close()


async def test_the_automatic_upgrade_waits_for_the_first_word_on_each_instance(
    fleet: tuple[Orchestrator, Silent, SimulatedClock],
) -> None:
    orchestrator, health, clock = fleet
    wake = await orchestrator.upgrades.start_due(REF, SETTINGS)
    assert wake is not None and clock.now < wake <= clock.now + FIRST_LOOK
    assert await orchestrator.upgrades.latest("web") is None  # nothing started, nothing Faulted
    for instance_id in range(4):
        health.hear(("web", instance_id), Health.HEALTHY, clock.now)
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) is None
    started = await orchestrator.upgrades.latest("web")
    assert started is not None and started.attempt.status is AttemptStatus.ROLLING_FORWARD


async def test_past_the_first_look_the_unheard_count_as_they_always_did(
    fleet: tuple[Orchestrator, Silent, SimulatedClock],
) -> None:
    orchestrator, _, clock = fleet
    clock.now += FIRST_LOOK + 1
    assert await orchestrator.upgrades.start_due(REF, SETTINGS) is None
    started = await orchestrator.upgrades.latest("web")
    assert started is not None and started.attempt.status is AttemptStatus.FAULTED  # too unhealthy to start
