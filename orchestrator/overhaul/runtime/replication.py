"""The gallery's copies on the hosts, as Azure Compute Gallery replicates a version to its target regions: every
host of each target location gets the version's container image from the orchestrator's own engine, a few hosts at
a time. Woken by changes (a publish, a host added); a failed copy is tried again after ``replication_retry``."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import replace

from overhaul.aio import cancel_and_wait
from overhaul.core.gallery import ImageVersion
from overhaul.core.hosts import Host
from overhaul.core.replication import Replica, ReplicaState, copies_due, host_label
from overhaul.ports.driver import DriverError, ImageCopies
from overhaul.runtime.parts import Parts

log = logging.getLogger(__name__)
# A copy's progress is written at most this often.
PROGRESS_EVERY = 1.0

Key = tuple[str, str, str, str]  # gallery, image, version, host id (lower case)


def _key(version: ImageVersion, host: str) -> Key:
    return (version.gallery.lower(), version.image.lower(), version.version, host.lower())


class Replicator:
    def __init__(self, parts: Parts, copies: ImageCopies | None) -> None:
        self.parts = parts
        self.copies = copies
        self._copying: dict[Key, asyncio.Task[None]] = {}
        self._parallel = asyncio.Semaphore(max(1, parts.settings.replication_parallel))

    def publication(self, version: ImageVersion, hosts: list[Host], before: ImageVersion | None) -> ImageVersion:
        """The version with a copy to make on each host of its target locations (none without hosts to copy to,
        or with no container image: VM artefacts stay on this machine). A copy ``before`` made of the same image
        is kept."""
        if self.copies is None or not version.container_image:
            return replace(version, replicas=())
        made = {r.host.lower(): r for r in before.replicas} if before is not None else {}
        if before is not None and before.container_image != version.container_image:
            made = {}
        now = self.parts.clock()
        replicas = [
            made.get(h.id.lower()) or Replica(h.id, h.location, updated=now)
            for h in hosts
            if version.targets(h.location)
        ]
        return replace(version, replicas=tuple(replicas))

    async def run(self) -> None:
        try:
            while True:
                seen = self.parts.changes.version
                next_retry = await self.start_due()
                timeout = None if next_retry is None else max(0.05, next_retry - self.parts.clock())
                await self.parts.changes.wait(seen, timeout)
        finally:
            await cancel_and_wait(self._copying.values())

    async def start_due(self) -> float | None:
        """Starts the copies due (a new host's catch-up too); returns when a failed one is next due."""
        if self.copies is None:
            return None
        store, now, retry = self.parts.store, self.parts.clock(), self.parts.settings.replication_retry
        hosts = {h.id.lower(): h for h in await store.hosts()}
        next_retry: float | None = None
        for version in await store.image_versions():
            if not version.container_image:
                continue
            have = {r.host.lower() for r in version.replicas}
            added = [
                Replica(h.id, h.location, catch_up=True, updated=now)
                for key, h in hosts.items()
                if key not in have and version.targets(h.location)
            ]
            for replica in added:
                await store.put_replica(version.gallery, version.image, version.version, replica)
            for replica in copies_due([*version.replicas, *added], now, retry):
                host = hosts.get(replica.host.lower())
                key = _key(version, replica.host)
                if host is not None and key not in self._copying:
                    task = asyncio.create_task(self._copy(version, replica, host), name=f"copy {key}")
                    self._copying[key] = task
                    task.add_done_callback(functools.partial(self._done, key))
            failed = [r.updated + retry for r in version.replicas if r.state is ReplicaState.FAILED]
            next_retry = min([*failed, *([next_retry] if next_retry is not None else [])], default=None)
        return next_retry

    def _done(self, key: Key, task: asyncio.Task[None]) -> None:
        self._copying.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("copying %s stopped on an unexpected error", key, exc_info=task.exception())

    async def _copy(self, version: ImageVersion, replica: Replica, host: Host) -> None:
        async with self._parallel:
            await self._put(version, replica, ReplicaState.REPLICATING, 0)
            progress = Progress()
            reporter = asyncio.create_task(self._report(version, replica, progress))
            state, details = ReplicaState.COMPLETED, ""
            try:
                async with asyncio.timeout(self.parts.settings.replication_timeout):
                    await self._copy_to(version.container_image, host, progress)
            except DriverError as exc:
                state, details = ReplicaState.FAILED, str(exc)
            except TimeoutError:
                state, details = ReplicaState.FAILED, f"not copied within {self.parts.settings.replication_timeout:g}s"
            finally:
                await cancel_and_wait([reporter])  # before the outcome, which it must not overwrite
            await self._put(
                version, replica, state, 100 if state is ReplicaState.COMPLETED else progress.percent, details
            )
            log.info("copy of %s to host %s: %s %s", version.container_image, host_label(host.id), state.value, details)
            self.parts.changes.bump()  # 'latest' in its location may have changed

    async def _copy_to(self, image: str, host: Host, progress: Progress) -> None:
        assert self.copies is not None
        if not await self.copies.image_on(host, image):
            await self.copies.copy_image(image, host, progress.set)

    async def _report(self, version: ImageVersion, replica: Replica, progress: Progress) -> None:
        written = 0
        while True:
            await progress.changed.wait()
            progress.changed.clear()
            if progress.percent != written:
                written = progress.percent
                await self._put(version, replica, ReplicaState.REPLICATING, written)
            await asyncio.sleep(PROGRESS_EVERY)

    async def _put(
        self, version: ImageVersion, replica: Replica, state: ReplicaState, progress: int, details: str = ""
    ) -> None:
        changed = replace(replica, state=state, progress=progress, details=details, updated=self.parts.clock())
        await self.parts.store.put_replica(version.gallery, version.image, version.version, changed)


class Progress:
    """How far a copy got (percent), and an event set when it moves."""

    def __init__(self) -> None:
        self.percent = 0
        self.changed = asyncio.Event()

    def set(self, percent: int) -> None:
        self.percent = percent
        self.changed.set()
