"""A version number that grows with every change of something, and a way to wait for the next one."""

from __future__ import annotations

import asyncio
import contextlib


class Changes:
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
