"""The lease port: the right to act on a fleet, held by one orchestrator at a time.

``token`` is a fencing token: it grows with every new holder, so a write made under an old lease can be told
from one made under the current lease."""

from __future__ import annotations

from typing import Protocol


class LeaseHeld(Exception):
    """Another holder has the lease; the message names it."""


class Lease(Protocol):
    @property
    def token(self) -> int: ...

    def acquire(self) -> None:
        """Takes the lease or raises LeaseHeld."""
        ...

    def release(self) -> None: ...
