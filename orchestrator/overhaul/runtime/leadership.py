"""Leadership over a shared store: one orchestrator acts (watches, attempts, automatic upgrades, deliveries, the
gallery's copies); the others stand by, answer reads and forward writes to it.

A standby tries to take the lease every ``retry`` seconds. On taking it, it starts the orchestrator (repair,
watches, every unfinished attempt resumed: a resumed attempt starts no batch before its health source has heard
from each instance, runtime/reconciler.py) and the leader's duties; it renews the lease while it holds it. When
the lease is lost (not renewed in time, or taken over) every duty is cancelled and the orchestrator's supervisor
and watches stop, at once: ``lost`` is an event set at the holder's own deadline, not at its next renewal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from overhaul.aio import Backoff, cancel_and_wait, restarting
from overhaul.ports.hints import LEASE, Hints, NoHints
from overhaul.ports.lease import Lease
from overhaul.runtime.orchestrator import Orchestrator

log = logging.getLogger(__name__)

Duty = tuple[str, Callable[[], Awaitable[None]]]


@dataclass(frozen=True)
class LeadershipSettings:
    renew_every: float = 2.0  # seconds between renewals of a held lease
    retry: float = 2.0  # seconds between a standby's tries to take it
    restart_min: float = 0.2  # back-off of a duty that stopped on an error
    restart_max: float = 30.0


class Leadership:
    """``leader`` while this orchestrator holds the lease; ``terms`` counts the leases it took."""

    def __init__(
        self,
        lease: Lease,
        orchestrator: Orchestrator,
        duties: Sequence[Duty],
        settings: LeadershipSettings | None = None,
        *,
        standby_duties: Sequence[Duty] = (),
        before_leading: Callable[[], None] = lambda: None,
        hints: Hints | None = None,
    ) -> None:
        """``duties`` run while it leads, ``standby_duties`` while it does not; ``before_leading`` at every new
        term, before the orchestrator starts."""
        self.lease = lease
        self.orchestrator = orchestrator
        self.duties = list(duties)
        self.standby_duties = list(standby_duties)
        self.before_leading = before_leading
        self.hints = hints or NoHints()  # a released lease is taken at once, not at the next try
        self.settings = settings or LeadershipSettings()
        self.leader = False
        self.terms = 0
        self._refusal: str | None = None

    async def run(self) -> None:
        """Stands by until it takes the lease, leads until it loses it, and again (until cancelled)."""
        standing_by = self._start(self.standby_duties)
        try:
            while True:
                token = await self.lease.acquire()
                if token is None:
                    self._say_why_not()
                    await self.hints.wait(LEASE, self.settings.retry)  # released, or expired: asked again
                    continue
                await cancel_and_wait(standing_by)
                self.before_leading()
                lost = await self._lead(token)
                standing_by = self._start(self.standby_duties)
                if not lost:  # it stopped on an error (the store unreachable at start): not again at once
                    await asyncio.sleep(self.settings.retry)
        finally:
            await cancel_and_wait(standing_by)

    def _start(self, duties: Sequence[Duty]) -> list[asyncio.Task[None]]:
        backoff = Backoff(self.settings.restart_min, self.settings.restart_max)
        return [asyncio.create_task(restarting(name, duty, backoff), name=name) for name, duty in duties]

    def _say_why_not(self) -> None:
        refusal = getattr(self.lease, "refusal", None)
        if refusal and refusal != self._refusal:
            log.warning("standing by: %s", refusal)
        self._refusal = refusal

    async def _lead(self, token: int) -> bool:
        """Leads until the lease is lost (True) or leading fails (False)."""
        self.terms += 1
        log.info("leading the fleet (lease token %d)", token)
        self.leader = True
        tasks = [asyncio.create_task(self._renew(), name="lease-renewal")]
        try:
            await self.orchestrator.start()
            tasks += self._start(self.duties)
            await self.lease.lost.wait()
            log.warning("the lease (token %d) is lost: standing down", token)
            return True
        except Exception:
            # Starting under a lease that ended (its writes and engine calls are refused) lands here too.
            log.exception("leading under lease token %d stopped on an error: standing down", token)
            return False
        finally:
            await self._stand_down(tasks)

    async def _renew(self) -> None:
        while True:  # a periodic write, not a wait on a flag: a failed renewal sets ``lost`` itself
            if not await self.lease.renew():
                return
            await asyncio.sleep(self.settings.renew_every)

    async def _stand_down(self, tasks: list[asyncio.Task[None]]) -> None:
        self.leader = False
        await cancel_and_wait(tasks)
        await self.orchestrator.close()  # its supervisor and watches stop; it can start again in a later term
