"""Host ports as the store's rows (one holder per host and port): an instance's ports are chosen from what its host's
instances do not hold, and chosen again when another writer takes one between the choice and the write."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


class Racing(SqliteStore):
    """Another writer takes the port this one chose, once, just before its write."""

    raced = False

    async def put_instance_ports(
        self, scale_set: str, instance_id: int, ports: Any, *, take_over: bool = False
    ) -> None:
        if scale_set == "web" and instance_id == 1 and not self.raced:
            self.raced = True
            await self.put_instance_host("other", 0, "")
            await super().put_instance_ports("other", 0, dict(ports))
        await super().put_instance_ports(scale_set, instance_id, ports, take_over=take_over)


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = Racing(tmp_path / "overhaul.db")
    made = Orchestrator(store, MemoryDriver(), HealthMonitor(), settings=FAST)
    await made.start()
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await made.galleries.publish(version("1.0.0"))
    yield made
    await made.close()
    await store.close()


async def test_a_port_taken_between_the_choice_and_the_write_is_chosen_again(orchestrator: Orchestrator) -> None:
    await orchestrator.scale_sets.put("web", small(2))
    store = orchestrator.store
    assert isinstance(store, Racing) and store.raced
    web = await store.instance_ports("web")
    other = await store.instance_ports_of("other", 0)
    held = [p for ports in (*web.values(), other) for p in ports.values()]
    assert len(held) == len(set(held)) == 3, (web, other)  # nobody shares a port
