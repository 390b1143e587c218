"""The hints port: news that something changed in a store several orchestrators share (the lease released, the
leader's health verdicts written). Hints carry no data and may be lost (a listener reconnecting says every topic
changed): whoever hears one reads the store again, and waits with a timeout besides."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

LEASE = "lease"  # the lease was released: a standby may take it now
VERDICTS = "verdicts"  # the leader wrote health verdicts


class Hints(Protocol):
    async def wait(self, topic: str, timeout: float) -> None:
        """Returns at the next hint on ``topic``, or after ``timeout``."""
        ...


class NoHints:
    """One orchestrator on its own store: nothing to hear, the timeout is all there is."""

    async def wait(self, topic: str, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.Event().wait()
