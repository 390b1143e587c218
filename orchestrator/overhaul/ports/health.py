"""The health source port: the latest report per instance, and a way to wait for the next change."""

from __future__ import annotations

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
