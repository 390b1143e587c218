"""The shared lease, for several orchestrators on one PostgreSQL store: one row (holder, address, token,
expires_at by the database's clock) in the store's ``lease`` table.

Not a session advisory lock: a holder stopped by SIGSTOP keeps its connection, hence such a lock, for as long as
it is stopped, and advisory locks vanish when the server restarts. A row expires whatever its holder does. A
takeover adds 1 to the token; the store's writes check it (postgresql.py), so a holder woken after its lease ended
has its writes refused even before it notices.

The holder's own deadline is its monotonic clock at the moment it *sent* its last successful renewal, plus the TTL,
less a margin: the database counted the TTL from a later moment, so the holder stops acting before anyone else
may take the lease. Expiry is judged by the database's clock alone; a replica's wall clock still matters (an
attempt's deadlines are wall-clock times one replica writes and another reads), so a replica whose clock is more
than ``max_skew`` from the database's does not take the lease, and says why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg

from overhaul.adapters.store.postgresql import CHANNEL, LEASE_NAME, Pool
from overhaul.ports.hints import LEASE
from overhaul.ports.lease import Holder


class PostgresLease:
    """The Lease port on the store's database. ``refusal`` says why the last ``acquire`` did not take it when the
    reason is this replica's (its clock, the database unreachable); ``takeovers`` counts leases it took from
    another holder."""

    def __init__(
        self,
        url: str,
        me: Holder,
        *,
        ttl: float = 10.0,
        renew_every: float = 2.0,
        max_skew: float = 1.0,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 3 * renew_every:
            raise ValueError(f"lease.ttl ({ttl:g} s) must be at least 3 times lease.renew_every ({renew_every:g} s)")
        self.me = me
        self.ttl = ttl
        self.renew_every = renew_every
        self.max_skew = max_skew
        self.margin = min(1.0, ttl / 10)
        self.lost = asyncio.Event()
        self.refusal: str | None = None
        self.takeovers = 0
        self._wall = wall
        self._monotonic = monotonic
        self._pool = Pool(url, 1, renew_every)
        self._token: int | None = None
        self._deadline = 0.0
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def token(self) -> int | None:
        return self._token

    def valid(self) -> bool:
        if self._token is None or self.lost.is_set():
            return False
        if self._monotonic() >= self._deadline:
            self.lost.set()  # not renewed in time: another may take it from now on
            return False
        return True

    def _held_until(self, deadline: float) -> None:
        """``lost`` is set at ``deadline`` unless a renewal moves it: waiters learn it then, not at the next call."""
        self._deadline = deadline
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(max(0.0, deadline - self._monotonic()), self._expire)

    def _expire(self) -> None:
        if self.valid() and self._token is not None:  # woken a little early: again at the deadline
            self._held_until(self._deadline)

    async def acquire(self) -> int | None:
        if self.valid() and await self.renew():
            return self._token
        sent = self._monotonic()
        try:
            async with asyncio.timeout(self.renew_every), self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO lease VALUES (%s, '', '', 0, '-infinity') ON CONFLICT DO NOTHING", (LEASE_NAME,)
                )
                before = self._wall()
                found = await conn.execute(
                    "SELECT holder, address, token, expires_at > clock_timestamp() AS live,"
                    " extract(epoch FROM clock_timestamp()) AS db_now FROM lease WHERE name = %s FOR UPDATE",
                    (LEASE_NAME,),
                )
                row = await found.fetchone()
                after = self._wall()
                if row is None or row["live"]:
                    self.refusal = None
                    return None
                skew = abs(float(row["db_now"]) - (before + after) / 2) - (after - before) / 2
                if skew > self.max_skew:
                    self.refusal = (
                        f"this machine's clock is {skew:.1f} s from the database's (lease.max_skew is "
                        f"{self.max_skew:g} s): set its time (NTP) before it may lead"
                    )
                    return None
                token, previous = int(row["token"]) + 1, str(row["holder"])
                await conn.execute(
                    "UPDATE lease SET holder = %s, address = %s, token = %s,"
                    " expires_at = clock_timestamp() + make_interval(secs => %s) WHERE name = %s",
                    (self.me.name, self.me.address, token, self.ttl, LEASE_NAME),
                )
        except (psycopg.Error, TimeoutError, OSError) as exc:
            why = str(exc) or f"no answer within {self.renew_every:g}s"
            self.refusal = f"the lease cannot be read: {why}"
            return None
        self.refusal = None
        if previous:
            self.takeovers += 1
        self._token = token
        self.lost.clear()
        self._held_until(sent + self.ttl - self.margin)
        return token

    async def renew(self) -> bool:
        if not self.valid():
            return False
        sent = self._monotonic()
        try:
            async with asyncio.timeout(self.renew_every), self._pool.connection() as conn:
                found = await conn.execute(
                    "UPDATE lease SET expires_at = clock_timestamp() + make_interval(secs => %s)"
                    " WHERE name = %s AND token = %s AND holder = %s RETURNING token",
                    (self.ttl, LEASE_NAME, self._token, self.me.name),
                )
                kept = await found.fetchone() is not None
        except (psycopg.Error, TimeoutError, OSError):
            return self.valid()  # unreachable: held until its own deadline, which a later renewal may move
        if not kept:
            self.lost.set()
            return False
        self._held_until(sent + self.ttl - self.margin)
        return self.valid()

    async def holder(self) -> Holder | None:
        try:
            async with asyncio.timeout(self.renew_every), self._pool.connection() as conn:
                found = await conn.execute(
                    "SELECT holder, address FROM lease WHERE name = %s AND expires_at > clock_timestamp()",
                    (LEASE_NAME,),
                )
                row = await found.fetchone()
        except (psycopg.Error, TimeoutError, OSError):
            return None
        return Holder(str(row["holder"]), str(row["address"])) if row else None

    async def release(self) -> None:
        """Ends the lease now (a standby need not wait for it to expire), then closes the connection."""
        token, self._token = self._token, None
        self.lost.set()
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            if token is not None:
                async with asyncio.timeout(self.renew_every), self._pool.connection() as conn:
                    await conn.execute(
                        "UPDATE lease SET expires_at = '-infinity' WHERE name = %s AND token = %s", (LEASE_NAME, token)
                    )
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, LEASE))  # standbys try at once
        except (psycopg.Error, TimeoutError, OSError):
            pass  # it expires by itself
        finally:
            await self._pool.close()
