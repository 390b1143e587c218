"""The health source port: the latest report per instance, and a way to wait for the next change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from overhaul.core.model import HealthProbe
from overhaul.core.planner import Health

Key = tuple[str, int]  # (scale set, instance id)


@dataclass(frozen=True)
class HealthReport:
    health: Health
    observed_at: float
    detail: str = ""
    phase: int | None = None
    skip_upgrade: bool = False
    # The source committed this verdict and it cannot turn Healthy by itself (see InstanceView.final).
    final: bool = False
    # False while the source could not reach the instance at all: it may have exited, which only the
    # engine can tell.
    reachable: bool = True
    # osRollingUpgradeDeferral: the version whose pending OS upgrade the application approved.
    approved: str | None = None


class HealthSource(Protocol):
    @property
    def version(self) -> int:
        """Grows with every change of a report that matters."""
        ...

    @property
    def watch_errors(self) -> int:
        """Failed requests to agents, not counting those an expected outage explains."""
        ...

    def report(self, key: Key) -> HealthReport | None: ...

    async def wait_changed(self, seen: int, timeout: float | None) -> None:
        """Returns when ``version`` differs from ``seen``, or after ``timeout``."""
        ...

    def watch_agent(self, key: Key, address: str, port: int) -> None: ...

    def watch_probe(self, key: Key, probe: HealthProbe, address: str, port: int) -> None: ...

    def expect_outage(self, key: Key) -> None:
        """The instance is going down on purpose (a reimage, a rollback): until it answers again, failed requests
        are not watch errors."""
        ...

    def reset(self, key: Key) -> None:
        """After a reimage or rollback: forget what the previous OS disk said."""
        ...

    async def unwatch(self, key: Key) -> None: ...

    async def close(self) -> None: ...


class VerdictBook(Protocol):
    """What several orchestrators share of a health source: the leader's verdicts read out, a standby's set from
    the store."""

    @property
    def version(self) -> int: ...

    async def wait_changed(self, seen: int, timeout: float | None) -> None: ...

    def snapshot(self) -> dict[Key, HealthReport]:
        """Every report this source made itself (none it was given)."""
        ...

    def adopt(self, reports: Mapping[Key, HealthReport]) -> None:
        """Reports another source made (the leader's, from the store), for instances this one does not watch."""
        ...

    def forget_adopted(self) -> None:
        """Drops what it was given: a new leader hears each instance itself before it judges it."""
        ...
