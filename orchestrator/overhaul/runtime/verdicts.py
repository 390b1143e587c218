"""Health verdicts shared through the store, for several orchestrators: the leader writes each change of a verdict
(changes only: not every probe), a standby reads them to answer for the instances, and a new leader starts from
them for its views (it still hears each instance itself before it judges one: ``forget_adopted``)."""

from __future__ import annotations

import logging

from overhaul.ports.health import HealthReport, Key, VerdictBook
from overhaul.ports.hints import VERDICTS, Hints, NoHints
from overhaul.ports.store import Store

log = logging.getLogger(__name__)


def _signature(report: HealthReport) -> tuple[object, ...]:
    """What a verdict says (not when it was last confirmed)."""
    return (
        report.health,
        report.detail,
        report.phase,
        report.skip_upgrade,
        report.final,
        report.reachable,
        report.approved,
    )


async def record(book: VerdictBook, store: Store) -> None:
    """The leader's duty: every verdict that changed, written in one transaction per change of the source."""
    written: dict[Key, tuple[object, ...]] = {
        key: _signature(report) for key, report in (await store.health_verdicts()).items()
    }
    seen = -1
    while True:
        await book.wait_changed(seen, None)
        seen = book.version
        changed = {k: r for k, r in book.snapshot().items() if written.get(k) != _signature(r)}
        if changed:
            await store.put_health_verdicts(changed)
            written.update((k, _signature(r)) for k, r in changed.items())


async def follow(book: VerdictBook, store: Store, every: float, hints: Hints | None = None) -> None:
    """A standby's duty: the leader's verdicts, read when it says it wrote some, and every ``every`` seconds."""
    heard = hints or NoHints()
    while True:
        book.adopt(await store.health_verdicts())
        await heard.wait(VERDICTS, every)
