"""The shared lease (adapters/lease_postgresql.py) on a real PostgreSQL: one holder at a time, the token growing
with every takeover, a holder that stops renewing losing it by its own clock before another may take it, a release
handing it over at once, a replica whose clock is off refused, and the database unreachable: held until the
holder's own deadline, then lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from overhaul.adapters.lease_postgresql import PostgresLease
from overhaul.adapters.store.postgresql import PostgresStore
from overhaul.ports.lease import Holder
from tests.postgres import Postgres, TcpProxy

A = Holder("node-a pid 1", "http://127.0.0.1:8071")
B = Holder("node-b pid 2", "http://127.0.0.1:8072")


@pytest.fixture
async def url(postgres: Postgres) -> AsyncIterator[str]:
    url = postgres.create_database()
    await (await PostgresStore.open(url)).close()  # the store's migrations make the lease table
    yield url


async def test_one_holder_at_a_time_and_the_token_grows_with_every_takeover(url: str) -> None:
    first, second = PostgresLease(url, A, ttl=3, renew_every=0.5), PostgresLease(url, B, ttl=3, renew_every=0.5)
    try:
        assert await first.acquire() == 1 and first.valid()
        assert await second.acquire() is None and second.refusal is None  # held: nothing wrong with it
        assert await second.holder() == A
        for _ in range(8):  # renewed past several TTLs: still its own
            await asyncio.sleep(0.5)
            assert await first.renew()
            assert await second.acquire() is None
        assert first.token == 1 and first.valid()
        # The holder stops renewing (paused): by its own clock it stops before the database lets another take it.
        stopped = time.monotonic()
        for _ in range(200):  # valid() is the holder's clock read now: there is no event to wait on
            if not first.valid():
                break
            await asyncio.sleep(0.02)
        assert first.lost.is_set()
        assert time.monotonic() - stopped < 3
        token = None
        while token is None:
            token = await second.acquire()
            await asyncio.sleep(0.05)
        assert token == 2 and second.takeovers == 1 and await second.holder() == B
        assert not await first.renew()  # woken: its renewal finds another's token, and it stays lost
        await second.release()
        assert not second.valid()
        assert await first.acquire() == 3  # released: taken at once, no waiting for the TTL
    finally:
        await first.release()
        await second.release()


async def test_a_replica_whose_clock_is_off_does_not_take_the_lease(url: str) -> None:
    skewed = PostgresLease(url, A, max_skew=1.0, wall=lambda: time.time() + 5)
    try:
        assert await skewed.acquire() is None
        assert "clock is 5.0 s from the database's" in (skewed.refusal or "")
        assert await skewed.holder() is None
    finally:
        await skewed.release()


def test_a_ttl_under_three_renewals_is_refused() -> None:
    with pytest.raises(ValueError, match=r"lease.ttl \(5 s\) must be at least 3 times lease.renew_every \(2 s\)"):
        PostgresLease("postgresql://x@127.0.0.1/x", A, ttl=5, renew_every=2)


async def test_the_database_unreachable_the_lease_is_held_until_the_holders_own_deadline() -> None:
    cluster = Postgres()
    try:
        cluster.start()
        await (await PostgresStore.open(cluster.url())).close()
        lease = PostgresLease(cluster.url(), A, ttl=3.0, renew_every=0.5)
        try:
            assert await lease.acquire() == 1
            renewed = time.monotonic()
            assert await lease.renew()
            await asyncio.to_thread(cluster.kill)
            held = True
            while held:
                held = await lease.renew()
                await asyncio.sleep(0.1)
            gone = time.monotonic() - renewed
            assert 1.5 < gone < 3.0, gone  # the TTL less its margin, from the last renewal's sending
            assert lease.lost.is_set()
            await asyncio.to_thread(cluster.start)
            token = None
            async with asyncio.timeout(10):
                while token is None:  # the row expires by the database's clock: taken again with a new token
                    token = await lease.acquire()
                    await asyncio.sleep(0.1)
            assert token == 2
        finally:
            await lease.release()
    finally:
        cluster.remove()


async def test_a_holder_cut_off_mid_transaction_does_not_keep_the_lease_row_locked(url: str) -> None:
    """Its open transaction (a fenced write holds the lease row FOR SHARE) is ended by the server once idle, so a
    standby can take the expired lease; else the row stays locked until the server notices the dead connection."""
    port = int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    proxy = TcpProxy(port)
    cut_off = url.replace(f":{port}/", f":{proxy.port}/")
    holder, standby = PostgresLease(cut_off, A, ttl=3, renew_every=0.5), PostgresLease(url, B, ttl=3, renew_every=0.5)
    store = await PostgresStore.open(cut_off)
    try:
        assert await holder.acquire() == 1
        conn = await store.database.pool._connect()  # a write's fence holds the lease row, then the cut
        await conn.execute("SELECT token FROM lease WHERE name = 'leader' FOR SHARE")
        proxy.cut()
        token = None
        async with asyncio.timeout(15):
            while token is None:
                token = await standby.acquire()
                await asyncio.sleep(0.2)
        assert token == 2
        await conn.close()
    finally:
        proxy.close()
        await standby.release()
        await holder.release()
        await store.close()
