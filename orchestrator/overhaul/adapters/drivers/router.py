"""One driver for container scale sets and one for VM scale sets behind the driver protocol: a scale set's instances
are made by the driver its model names (``InstanceSpec.vm``), so one `overhaul serve` runs both side by side."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from overhaul.ports.driver import Driver, InstanceSpec, InstanceState


class KindRouter:
    def __init__(self, containers: Driver, vms: Driver) -> None:
        self.containers = containers
        self.vms = vms

    def _for(self, spec: InstanceSpec) -> Driver:
        return self.vms if spec.vm is not None else self.containers

    async def ping(self) -> None:
        # The container engine's liveness: VMs are processes of their own, with no engine to be down.
        await self.containers.ping()

    async def host_port(self, taken: Collection[int]) -> int:
        # Containers and VMs publish on the same machine's ports.
        return await self.containers.host_port(taken)

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        return await (self.vms if vm else self.containers).image_present(image, vm=vm)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        # The VM driver answers from its own directories: a VM scale set's view does not wait on the engine.
        found = await self.vms.observe(scale_set)
        return found or await self.containers.observe(scale_set)

    async def ensure_running(self, spec: InstanceSpec) -> None:
        await self._for(spec).ensure_running(spec)

    async def reimage(self, spec: InstanceSpec) -> None:
        await self._for(spec).reimage(spec)

    async def commit(self, spec: InstanceSpec) -> None:
        await self._for(spec).commit(spec)

    async def rollback(self, spec: InstanceSpec) -> None:
        await self._for(spec).rollback(spec)

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        await self._for(spec).notify(spec, tags)

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        await self._for(spec).delete(spec, keep_data=keep_data)

    async def close(self) -> None:
        await asyncio.gather(self.containers.close(), self.vms.close())
