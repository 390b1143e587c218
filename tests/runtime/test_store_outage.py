"""A store that cannot be reached for a moment (a shared PostgreSQL restarting) stops an attempt's reconciler, which
the supervisor resumes after its back-off; reading which attempt to resume may fail the same way, and is retried
the same way rather than ending the scale set's supervision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.core.rollout import AttemptStatus, StartedBy
from overhaul.ports.store import StoredAttempt, StoreUnavailable
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


class Outage(SqliteStore):
    """Unreachable for the first journal end of the attempt and for the next read of what to resume."""

    journal_failures = 1
    read_failures = 0

    async def journal_end(self, attempt_id: str, results: Any, now: float) -> None:
        if self.journal_failures:
            self.journal_failures -= 1
            self.read_failures = 2
            raise StoreUnavailable("the PostgreSQL store cannot be reached: terminating connection (simulated)")
        await super().journal_end(attempt_id, results, now)

    async def unfinished_attempts(self) -> list[StoredAttempt]:
        if self.read_failures:
            self.read_failures -= 1
            raise StoreUnavailable("the PostgreSQL store cannot be reached: connection refused (simulated)")
        return await super().unfinished_attempts()


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = Outage(tmp_path / "overhaul.db")
    made = Orchestrator(store, MemoryDriver(), HealthMonitor(), settings=FAST)
    await made.start()
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await made.galleries.publish(version("1.0.0"))
    yield made
    await made.close()
    await store.close()


async def test_an_attempt_is_resumed_through_a_store_outage_that_also_fails_reading_what_to_resume(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.scale_sets.put("web", small(4))
    await orchestrator.galleries.publish(version("2.0.0"))
    begun = await orchestrator.upgrades.start("web", started_by=StartedBy.USER)
    ended = await orchestrator.upgrades.wait(begun.id, 20)
    assert ended.status is AttemptStatus.COMPLETED, ended
    store = orchestrator.store
    assert isinstance(store, Outage) and store.journal_failures == 0 and store.read_failures == 0
    assert orchestrator.supervisor.restarts >= 3  # the step, then each failed read of what to resume
