"""Hints (ports/hints.py) over PostgreSQL's LISTEN/NOTIFY: one connection of its own listens on the store's channel;
a NOTIFY sent inside a write's transaction arrives when it commits. A lost connection is made again (after a
back-off), and every topic is then said to have changed: what was sent meanwhile was lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from overhaul.adapters.store.postgresql import CHANNEL
from overhaul.aio import Backoff, Changes

log = logging.getLogger(__name__)
# Seconds of silence after which the listening connection is asked whether it still works.
PING_EVERY = 10.0


class PostgresHints:
    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._topics: dict[str, Changes] = {}
        self.connected = asyncio.Event()

    def _changes(self, topic: str) -> Changes:
        return self._topics.setdefault(topic, Changes())

    async def wait(self, topic: str, timeout: float) -> None:
        changes = self._changes(topic)
        await changes.wait(changes.version, timeout)

    async def run(self) -> None:
        """Listens until cancelled, connecting again whenever the connection is lost."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self._listen(backoff)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self.connected.clear()
                log.debug("hints: %s; listening again in %.1fs", exc, backoff.delay)
            for changes in self._topics.values():  # anything may have been said meanwhile
                changes.bump()
            await backoff.wait()

    async def _listen(self, backoff: Backoff) -> None:
        async with asyncio.timeout(self.connect_timeout):
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            )
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.connected.set()
            backoff.reset()
            while True:
                async for notice in conn.notifies(timeout=PING_EVERY):
                    self._changes(notice.payload).bump()
                async with asyncio.timeout(self.connect_timeout):  # a connection cut off says nothing: asked
                    await conn.execute("SELECT 1")
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
