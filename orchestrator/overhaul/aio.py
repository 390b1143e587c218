"""Plain asyncio helpers every layer may use (outside the layers: no I/O of their own): a change counter to wait
on, stopping tasks the one way, and back-off between tries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


class Changes:
    """A version number that grows with every change of something, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seen: int, timeout: float | None) -> None:
        """Returns when ``version`` differs from ``seen`` (at once if it already does), or after ``timeout``.

        Taking the version the caller last looked at closes the gap between looking and waiting."""
        if self.version != seen:
            return
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Stopping background tasks the one way: cancel them all, then wait until each has really ended."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class Backoff:
    """Waits that double from ``minimum`` to ``maximum`` between tries; ``reset`` after a success."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.delay = minimum

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.maximum)

    def reset(self) -> None:
        self.delay = self.minimum


async def restarting(name: str, factory: Callable[[], Awaitable[None]], backoff: Backoff) -> None:
    """Runs ``factory()`` until it returns; restarts it after ``backoff`` when it raises."""
    while True:
        try:
            await factory()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s stopped on an error; restarting it in %.1fs", name, backoff.delay)
        await backoff.wait()
