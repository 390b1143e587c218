"""Starts platform rolling upgrades when the gallery's latest version is due for a scale set (Azure's
automatic OS image upgrades). Woken by changes (a publish, a model update, an attempt's end) and by the time the
next upgrade falls due; never by polling."""

from __future__ import annotations

import logging

from overhaul.core.auto_upgrade import AutoUpgradeSettings
from overhaul.core.errors import OverhaulError, Unavailable
from overhaul.ports.events import AutoUpgradesChecked
from overhaul.runtime.orchestrator import Orchestrator

log = logging.getLogger(__name__)
# A scale set whose engine could not be asked is looked at again after this long.
RETRY_AFTER = 5.0


class AutoUpgrader:
    def __init__(self, orchestrator: Orchestrator, settings: AutoUpgradeSettings) -> None:
        self.orchestrator = orchestrator
        self.settings = settings

    async def check(self) -> float | None:
        """Starts what is due; returns when something next becomes due (None: nothing waits)."""
        next_due: float | None = None
        for model in await self.orchestrator.scale_sets.list():
            try:
                due_at = await self.orchestrator.upgrades.start_due(model.ref, self.settings)
            except OverhaulError as exc:
                log.warning("automatic OS upgrade of %s not started: %s", model.name, exc.message)
                # The engine may be back soon; anything else waits for the next change.
                due_at = self.orchestrator.clock() + RETRY_AFTER if isinstance(exc, Unavailable) else None
            if due_at is not None:
                next_due = due_at if next_due is None else min(next_due, due_at)
        return next_due

    async def run(self) -> None:
        while True:
            seen = self.orchestrator.changes.version
            next_due = await self.check()
            self.orchestrator.events.emit(AutoUpgradesChecked(seen))
            timeout = None if next_due is None else max(0.05, next_due - self.orchestrator.clock())
            await self.orchestrator.changes.wait(seen, timeout)
