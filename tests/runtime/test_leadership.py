"""Leadership (runtime/leadership.py) over a lease the test controls: the leader's duties run only while it holds
the lease and stop the moment it is lost (the supervisor's attempts with them), a standby's duties run only while
it stands by, each new term starts afresh, and a term that fails to start is not retried in a tight loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.ports.lease import Holder
from overhaul.runtime.leadership import Leadership, LeadershipSettings
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST

SETTINGS = LeadershipSettings(renew_every=0.01, retry=0.05, restart_min=0.01, restart_max=0.05)


class Lease:
    """Free or taken by another as the test says; lost when the test says."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.free = asyncio.Event()
        self.token: int | None = None
        self.tokens = 0
        self.asked = 0

    async def acquire(self) -> int | None:
        self.asked += 1
        if not self.free.is_set():
            return None
        self.free.clear()
        self.tokens += 1
        self.token = self.tokens
        self.lost.clear()
        return self.token

    async def renew(self) -> bool:
        return not self.lost.is_set()

    def valid(self) -> bool:
        return self.token is not None and not self.lost.is_set()

    async def holder(self) -> Holder | None:
        return None

    async def release(self) -> None:
        self.lost.set()


class Duty:
    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.starts = 0

    async def __call__(self) -> None:
        self.starts += 1
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.running.clear()


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = SqliteStore(tmp_path / "overhaul.db")
    made = Orchestrator(store, MemoryDriver(), HealthMonitor(), settings=FAST)
    yield made
    await made.close()
    await store.close()


async def test_duties_follow_the_lease_and_stop_the_moment_it_is_lost(orchestrator: Orchestrator) -> None:
    lease, leading, standing_by = Lease(), Duty(), Duty()
    terms: list[int] = []
    leadership = Leadership(
        lease,
        orchestrator,
        [("leading", leading)],
        SETTINGS,
        standby_duties=[("standing by", standing_by)],
        before_leading=lambda: terms.append(lease.tokens),
    )
    task = asyncio.create_task(leadership.run())
    try:
        async with asyncio.timeout(5):
            await standing_by.running.wait()
            assert not leadership.leader and not leading.running.is_set()
            lease.free.set()
            await leading.running.wait()
            assert leadership.leader and not standing_by.running.is_set() and lease.token == 1
            lease.lost.set()  # taken over (or not renewed in time)
            await standing_by.running.wait()
            assert not leadership.leader and not leading.running.is_set()
            lease.free.set()
            await leading.running.wait()
        assert leadership.terms == 2 and leading.starts == 2 and lease.token == 2
        assert terms == [1, 2]  # before each term, once the lease was taken
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not leading.running.is_set() and not standing_by.running.is_set()


class FailingStart(Orchestrator):
    starts = 0

    async def start(self) -> None:
        self.starts += 1
        raise RuntimeError("the store cannot be reached")


async def test_a_term_that_fails_to_start_is_tried_again_after_a_pause(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "overhaul.db")
    orchestrator = FailingStart(store, MemoryDriver(), HealthMonitor(), settings=FAST)
    lease = Lease()
    lease.free.set()
    lease.acquire = lambda: _held(lease)  # type: ignore[method-assign]  # held all along: every try leads again
    leadership = Leadership(lease, orchestrator, [], SETTINGS)
    task = asyncio.create_task(leadership.run())
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await orchestrator.close()
    await store.close()
    assert 1 <= orchestrator.starts <= 10, orchestrator.starts  # a retry (0.05 s) apart at least, not thousands


async def _held(lease: Lease) -> int:
    lease.token = 1
    return 1
