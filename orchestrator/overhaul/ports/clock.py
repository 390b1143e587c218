"""The clock port: wall-clock seconds, so times persisted before a crash mean the same after it."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
