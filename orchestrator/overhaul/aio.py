"""Plain asyncio helpers every layer may use (outside the layers: no I/O of their own): a change counter to wait
on, stopping tasks the one way, background work kept by key, and back-off between tries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
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


class Background:
    """Long work started by a request and finished in the background (a group's deletion, a deployment): one task
    per key at a time, forgotten once done, an unexpected error logged, all cancelled and awaited by ``close``."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, key: str, work: Callable[[], Coroutine[Any, Any, None]], name: str) -> bool:
        """Starts ``work()`` unless a task of ``key`` (case-insensitive) still runs; False when one does."""
        key = key.lower()
        if self.running(key):
            return False
        task = asyncio.create_task(work(), name=name)
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return True

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped on an error", task.get_name(), exc_info=task.exception())

    def running(self, key: str) -> bool:
        task = self._tasks.get(key.lower())
        return task is not None and not task.done()

    async def wait(self, key: str, timeout: float) -> None:
        """Until the task of ``key`` ends (at once when none runs), at most ``timeout`` s."""
        task = self._tasks.get(key.lower())
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks.values())


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
