"""The supervisor owns every attempt's task: one per scale set, running its unfinished attempts oldest first,
restarted with back-off when a reconciler stops on an unexpected error, and cancelled on close.

What to run is read from the store, never from memory: an attempt left unfinished by a crash, an error or a
restart is found and finished the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from overhaul.aio import Backoff, cancel_and_wait
from overhaul.core.why import Restarting
from overhaul.ports.driver import InstanceState
from overhaul.ports.events import AttemptChanged, Event
from overhaul.ports.store import Store, StoreUnavailable
from overhaul.runtime.reconciler import Reconciler
from overhaul.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, store: Store, reconciler: Reconciler, settings: RuntimeSettings | None = None) -> None:
        self.store = store
        self.reconciler = reconciler
        self.settings = settings or RuntimeSettings()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts = 0
        # Scale sets whose reconciler stopped on an error, until its next save (why reads it).
        self.stopped: dict[str, Restarting] = {}
        reconciler.events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, AttemptChanged):
            self.stopped.pop(event.attempt.scale_set.lower(), None)

    async def start(self) -> None:
        """Resumes every unfinished attempt the store holds."""
        for stored in await self.store.unfinished_attempts():
            log.info("resuming attempt %s of %s", stored.attempt.id, stored.attempt.scale_set)
            self.ensure(stored.attempt.scale_set)

    def ensure(self, scale_set: str, observed: Mapping[int, InstanceState] | None = None) -> None:
        """Runs the scale set's unfinished attempts unless that is already happening."""
        key = scale_set.lower()
        task = self._tasks.get(key)
        if task is not None and not task.done():
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(
            self._run(scale_set, observed), name=f"rollout-{scale_set}"
        )

    async def wait_idle(self, scale_set: str, timeout: float) -> bool:
        """Waits for the scale set's task to end; False if it still runs after ``timeout``."""
        task = self._tasks.get(scale_set.lower())
        if task is None or task.done():
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout)
        return bool(done)

    async def _run(self, scale_set: str, observed: Mapping[int, InstanceState] | None) -> None:
        backoff = Backoff(self.settings.restart_min, self.settings.restart_max)
        while True:
            attempt = None
            try:  # reading what to resume fails as running it does (the store unreachable): resumed the same way
                pending = [
                    s.attempt
                    for s in await self.store.unfinished_attempts()
                    if s.attempt.scale_set.lower() == scale_set.lower()
                ]
                if not pending:
                    return
                attempt = pending[0]
                model = await self.store.get_scale_set(attempt.scale_set)
                if model is None:
                    log.error("attempt %s: scale set %s no longer exists", attempt.id, attempt.scale_set)
                    return
                await self.reconciler.run(model, attempt, observed)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                now = self.reconciler.clock()
                self.stopped[scale_set.lower()] = Restarting(
                    str(exc) or type(exc).__name__, isinstance(exc, StoreUnavailable), now, now + backoff.delay
                )
                log.exception(
                    "attempt %s of %s stopped on an error; resuming it in %.1fs",
                    attempt.id if attempt else "(not read yet)",
                    scale_set,
                    backoff.delay,
                )
                await backoff.wait()
            observed = None  # from here on the engine is asked afresh

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(tasks)
