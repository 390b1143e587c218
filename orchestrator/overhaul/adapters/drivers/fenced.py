"""A driver wrapper that lets an engine call that changes something through only while this orchestrator holds
the lease (reads go through: a standby lists instances from the engine as the leader does).

The store refuses a write made under an old token, but an engine call carries no token: a leader stopped (SIGSTOP,
a long pause) and woken after another took over would go on reimaging. Every call here first asks the lease's own
clock (``Fence.check``: no round trip), so the runtime (the reconciler, the supervisor, start's repair, the
automatic upgrades, the API's own reimages) never reaches an engine once the lease has ended; the engine driver
asks the same fence before each of the several requests one reimage makes. What neither can stop is a request
already sent when the pause began: the engine carries it out, each step is idempotent (a reimage of an instance
already on the version, a commit of a committed one, do nothing), and the next leader observes the engine before
it acts."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from overhaul.ports.driver import Driver, InstanceSpec, InstanceState
from overhaul.ports.lease import Fence

log = logging.getLogger("overhaul.fence")


@dataclass
class FencedDriver:
    inner: Driver
    fence: Fence

    def _check(self, call: str, spec: InstanceSpec) -> None:
        self.fence.check(f"{call} {spec.name}")
        log.debug("%s %s under lease token %s", call, spec.name, self.fence.token)

    async def ping(self) -> None:
        await self.inner.ping()

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        return await self.inner.image_present(image, vm=vm)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        log.debug("observe %s under lease token %s", scale_set, self.fence.token)
        return await self.inner.observe(scale_set)

    async def host_port(self, taken: Collection[int]) -> int:
        return await self.inner.host_port(taken)

    async def ensure_running(self, spec: InstanceSpec) -> None:
        self._check("ensure_running", spec)
        await self.inner.ensure_running(spec)

    async def reimage(self, spec: InstanceSpec) -> None:
        self._check("reimage", spec)
        await self.inner.reimage(spec)

    async def commit(self, spec: InstanceSpec) -> None:
        self._check("commit", spec)
        await self.inner.commit(spec)

    async def rollback(self, spec: InstanceSpec) -> None:
        self._check("rollback", spec)
        await self.inner.rollback(spec)

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        self._check("notify", spec)
        await self.inner.notify(spec, tags)

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        self._check("delete", spec)
        await self.inner.delete(spec, keep_data=keep_data)

    async def close(self) -> None:
        await self.inner.close()
