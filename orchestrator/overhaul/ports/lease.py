"""The lease port: the right to act on a fleet, held by one orchestrator at a time.

``token`` is a fencing token: it grows with every new holder, so a write made under an old lease can be told
from one made under the current lease. A holder checks ``valid()`` (its own clock's word, no round trip) before
it acts, renews the lease while it holds it, and stops acting once ``lost`` is set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from overhaul.core.errors import Unavailable


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a name (host and process) and where its API answers ("" when unknown)."""

    name: str
    address: str = ""


class LeaseLost(Unavailable):
    """The lease is held by another now (or could not be renewed in time): nothing more is done under it. The API
    answers 503 NoLeader: the write was not made, and the next leader takes it."""

    code = "NoLeader"


class Lease(Protocol):
    lost: asyncio.Event  # set once the lease is no longer held

    @property
    def token(self) -> int | None:
        """The fencing token while held (None before it is taken)."""
        ...

    async def acquire(self) -> int | None:
        """Takes the lease: its fencing token, or None while another holds it (``holder`` says who)."""
        ...

    async def renew(self) -> bool:
        """True while the lease is still held; False, with ``lost`` set, once it is not."""
        ...

    def valid(self) -> bool:
        """Whether the holder may act now, by its own clock (held, renewed in time, not lost)."""
        ...

    async def holder(self) -> Holder | None:
        """The current holder, as the lease records it (None: nobody)."""
        ...

    async def release(self) -> None: ...


class Fence:
    """Where an adapter asks, before each call that changes something outside the process (one engine request of
    the several a reimage makes), whether this orchestrator may still act. It allows everything until bound to a
    lease (one orchestrator on its own store has nothing to fence)."""

    def __init__(self) -> None:
        self._valid: Callable[[], bool] = lambda: True
        self._token: Callable[[], int | None] = lambda: None

    def bind(self, valid: Callable[[], bool], token: Callable[[], int | None]) -> None:
        self._valid, self._token = valid, token

    @property
    def token(self) -> int | None:
        return self._token()

    def check(self, what: str) -> None:
        """LeaseLost, naming ``what``, unless the lease is held now (by the holder's own clock)."""
        if not self._valid():
            raise LeaseLost(f"{what}: not made, this orchestrator holds no lease")
