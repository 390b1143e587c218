"""What the shared PostgreSQL store adds to the contract every store keeps (test_store_contract.py), on a real
throwaway cluster: replicas migrating one database at once, a schema newer than the code, one active attempt over
several replicas' pools, the server killed and back, writes fenced by the lease's token, the password never shown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from overhaul.adapters.store.postgresql import MIGRATIONS, PostgresStore, SchemaTooNew, redacted
from overhaul.adapters.store.postgresql_hints import PostgresHints
from overhaul.core.model import parse_scale_set
from overhaul.core.planner import Health
from overhaul.core.rollout import Action, ActionKind
from overhaul.ports.health import HealthReport
from overhaul.ports.hints import LEASE, VERDICTS
from overhaul.ports.lease import LeaseLost
from overhaul.ports.store import StoreUnavailable
from tests.adapters.store.test_store_contract import REFERENCE, attempt
from tests.builders import RUNTIME_MODEL
from tests.postgres import Postgres


async def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(statement.encode(), params or None)
        return await cursor.fetchall() if cursor.description else []


async def test_replicas_starting_together_migrate_the_database_once(postgres: Postgres) -> None:
    url = postgres.create_database()
    stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(3)))
    try:
        assert await sql(url, "SELECT version FROM overhaul_migrations") == [
            (v,) for v in range(1, len(MIGRATIONS) + 1)
        ]
        assert [await s.schema_version() for s in stores] == [len(MIGRATIONS)] * 3
    finally:
        for store in stores:
            await store.close()


async def test_a_schema_newer_than_the_code_is_refused_naming_both_versions(postgres: Postgres) -> None:
    url = postgres.create_database()
    await (await PostgresStore.open(url)).close()
    newer = len(MIGRATIONS) + 1
    await sql(url, "INSERT INTO overhaul_migrations (version) VALUES (%s)", newer)
    with pytest.raises(SchemaTooNew, match=f"version {newer}, newer than this overhaul's \\({len(MIGRATIONS)}\\)"):
        await PostgresStore.open(url)


@pytest.fixture
async def two_replicas(postgres: Postgres) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    url = postgres.create_database()
    first, second = await PostgresStore.open(url), await PostgresStore.open(url)
    yield first, second
    await first.close()
    await second.close()


async def test_one_active_attempt_per_scale_set_over_two_replicas(two_replicas: tuple[PostgresStore, ...]) -> None:
    starts = [two_replicas[i % 2].start_attempt(attempt("Web", f"a{i}"), REFERENCE) for i in range(40)]
    outcomes = await asyncio.gather(*starts)
    winners = [f"a{i}" for i, busy in enumerate(outcomes) if busy is None]
    assert len(winners) == 1 and {busy for busy in outcomes if busy} == set(winners)
    assert [s.attempt.id for s in await two_replicas[1].unfinished_attempts()] == winners


async def test_a_write_under_an_old_lease_token_is_refused_and_nothing_is_written(
    two_replicas: tuple[PostgresStore, ...],
) -> None:
    old, new = two_replicas
    url = old.url
    await sql(url, "INSERT INTO lease VALUES ('leader', 'a', '', 1, now() + interval '10 seconds')")
    old.fence_with(lambda: 1)
    model = parse_scale_set(RUNTIME_MODEL, name="web", resource_group="rg", subscription="sub")
    await old.put_scale_set(model, 1.0)  # its token is the lease's: written
    await sql(url, "UPDATE lease SET holder = 'b', token = 2")  # taken over
    new.fence_with(lambda: 2)
    with pytest.raises(LeaseLost, match="made under lease token 1, the lease's is 2"):
        await old.start_attempt(attempt("web", "late"), REFERENCE)
    with pytest.raises(LeaseLost):
        await old.delete_scale_set("web")
    assert await old.get_attempt("late") is None and await old.get_scale_set("web") == model  # reads still answer
    assert await new.start_attempt(attempt("web", "a1"), REFERENCE) is None
    await new.journal_begin("a1", [Action(ActionKind.REIMAGE, 0)], 2.0)
    assert [e.token for e in await new.journal("a1")] == [2]  # who wrote it, as the lease then said
    with pytest.raises(LeaseLost):
        await old.journal_begin("a1", [Action(ActionKind.REIMAGE, 1)], 3.0)


async def test_a_killed_server_makes_calls_unavailable_until_it_is_back() -> None:
    cluster = Postgres()
    try:
        cluster.start()
        store = await PostgresStore.open(cluster.url(), call_timeout=3.0)
        try:
            model = parse_scale_set(RUNTIME_MODEL, name="web", resource_group="rg", subscription="sub")
            await store.put_scale_set(model, 1.0)
            cluster.kill()
            with pytest.raises(StoreUnavailable, match="the PostgreSQL store cannot be reached"):
                await store.list_scale_sets()
            with pytest.raises(StoreUnavailable):
                await store.put_scale_set(model, 2.0)
            assert "cannot be reached" in (store.problem() or "")
            await asyncio.to_thread(cluster.start)
            assert await store.list_scale_sets() == [model]  # the pool's connections are checked before use
            assert store.problem() is None
        finally:
            await store.close()
    finally:
        cluster.remove()


def test_the_store_url_is_shown_without_its_password() -> None:
    assert redacted("postgresql://ovh:s3cret@db:5432/fleet") == "postgresql://ovh:***@db:5432/fleet"
    assert redacted("postgresql://ovh@db/fleet") == "postgresql://ovh@db/fleet"


async def test_hints_arrive_when_the_write_commits_and_again_after_the_server_restarts() -> None:
    cluster = Postgres()
    try:
        cluster.start()
        store = await PostgresStore.open(cluster.url())
        hints = PostgresHints(cluster.url(), connect_timeout=3.0)
        listening = asyncio.create_task(hints.run())
        try:
            async with asyncio.timeout(10):
                await hints.connected.wait()
            heard = asyncio.create_task(hints.wait(VERDICTS, 30))
            await asyncio.sleep(0)
            await store.put_health_verdicts({("web", 0): HealthReport(Health.HEALTHY, 1.0)})
            async with asyncio.timeout(5):
                await heard  # well before its 30 s
            heard = asyncio.create_task(hints.wait(LEASE, 60))
            await asyncio.sleep(0)
            await asyncio.to_thread(cluster.kill)  # what is said while it is gone is lost: every topic is hinted
            async with asyncio.timeout(10):
                await heard
            await asyncio.to_thread(cluster.start)
            async with asyncio.timeout(20):
                while not hints.connected.is_set():
                    await hints.wait(VERDICTS, 0.2)
            heard = asyncio.create_task(hints.wait(VERDICTS, 30))
            await asyncio.sleep(0)
            await store.put_health_verdicts({("web", 0): HealthReport(Health.UNHEALTHY, 2.0)})
            async with asyncio.timeout(5):
                await heard
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
            await store.close()
    finally:
        cluster.remove()
