"""Instances of a scale set as the engine should have them: specs from the model and the gallery, the host ports
they keep across reimages, the metadata of their config drive, and the health watch each one gets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from overhaul.core.arm_json import ModelError
from overhaul.core.errors import InvalidInput, OverhaulError
from overhaul.core.gallery import ImageVersion, resolve
from overhaul.core.model import HealthSourceKind, ScaleSet, model_digest
from overhaul.core.naming import data_disk_name
from overhaul.ports.driver import Driver, InstanceSpec, InstanceState, PortsExhausted
from overhaul.ports.health import HealthSource
from overhaul.ports.store import Store


def where_it_listens(allocated: Mapping[int, int], state: InstanceState | None) -> tuple[str, dict[int, int]]:
    """The address and host ports of an instance: what the engine reports wins over what was allocated, as it is
    where the instance really listens."""
    if state is None:
        return "127.0.0.1", dict(allocated)
    return state.address, {**allocated, **state.ports}


class Instances:
    def __init__(self, store: Store, driver: Driver, health: HealthSource) -> None:
        self.store = store
        self.driver = driver
        self.health = health

    async def allocate_port(self, taken: set[int]) -> int:
        """A host port the driver finds free and no other instance holds; it joins ``taken``."""
        try:
            port = await self.driver.host_port(taken)
        except PortsExhausted as exc:
            raise OverhaulError(str(exc), "PortsExhausted") from exc
        taken.add(port)
        return port

    async def resolve(self, model: ScaleSet, version: str | None = None) -> ImageVersion:
        """The gallery version the model's image reference (or ``version`` of it) stands for."""
        ref = model.image_reference if version is None else model.image_reference.with_version(version)
        try:
            return resolve(
                ref,
                await self.store.image_definitions(),
                await self.store.image_versions(),
                model.location,
                vm=model.is_vm,
            )
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc

    @staticmethod
    def metadata(model: ScaleSet, instance_id: int, version: ImageVersion) -> dict[str, Any]:
        """The config drive's metadata.json, which the agent inside the instance reads."""
        image = model.image_reference.to_json()
        image["exactVersion"] = version.version
        if "id" not in image:
            image["version"] = version.version
        return {
            "instanceId": str(instance_id),
            "scaleSet": model.name,
            "resourceGroup": model.resource_group,
            "subscriptionId": model.subscription,
            "location": model.location,
            "imageReference": image,
            "extensionProfile": {"extensions": [dict(e.raw) for e in model.extensions]},
            "customData": model.custom_data,
        }

    async def ports(self, model: ScaleSet, instance_id: int, *, fresh: bool = False) -> dict[int, int]:
        """Container port -> host port; an instance keeps its host ports across reimages in place. ``fresh``: new
        ones, for an OS disk that starts while the previous one still holds the old ones (maxSurge)."""
        if not model.published_ports:
            return {}
        known = (await self.store.instance_ports(model.name)).get(instance_id, {})
        taken = await self.store.all_host_ports()
        keep = {} if fresh else known
        ports = {cport: keep.get(cport) or await self.allocate_port(taken) for cport in model.published_ports}
        if ports != known:
            await self.store.put_instance_ports(model.name, instance_id, ports)
        return ports

    async def follow(self, model: ScaleSet, states: Mapping[int, InstanceState], ids: Iterable[int]) -> None:
        """The store and the health watch follow the engine's word on the host ports of ``ids`` (a surged OS disk,
        or the one a rollback restored, listens on its own; a VM on others when one was taken at boot)."""
        known = await self.store.instance_ports(model.name)
        for instance_id in ids:
            state = states.get(instance_id)
            if state is not None and state.ports and dict(state.ports) != known.get(instance_id):
                await self.store.put_instance_ports(model.name, instance_id, dict(state.ports))
        await self.watch(model, states)

    @staticmethod
    def volumes(model: ScaleSet, instance_id: int) -> tuple[tuple[str, str], ...]:
        return tuple((data_disk_name(model.name, instance_id, d.lun), d.mount_path) for d in model.data_disks)

    @staticmethod
    def data_disk_sizes(model: ScaleSet, instance_id: int) -> dict[str, int]:
        return {
            data_disk_name(model.name, instance_id, d.lun): d.disk_size_gb
            for d in model.data_disks
            if d.disk_size_gb is not None
        }

    async def spec(
        self,
        model: ScaleSet,
        instance_id: int,
        version: str,
        image: ImageVersion | None = None,
        *,
        surge: bool = False,
    ) -> InstanceSpec:
        """Everything the driver needs to make this instance's OS disk from ``version`` (``surge``: beside the
        running one)."""
        if image is None or image.version != version:
            image = await self.resolve(model, version)
        return InstanceSpec(
            scale_set=model.name,
            instance_id=instance_id,
            image=image.source_for(model.is_vm),
            version=image.version,
            ports=await self.ports(model, instance_id, fresh=surge),
            surge=surge,
            model_digest=model_digest(model),
            volumes=self.volumes(model, instance_id),
            metadata=self.metadata(model, instance_id, image),
            command=model.engine.command,
            stop_timeout=model.engine.stop_timeout,
            systemd=model.engine.systemd,
            vm=model.engine.vm,
            data_disk_gb=self.data_disk_sizes(model, instance_id),
            agent_port=model.engine.agent_port,
            network=model.engine.network,
        )

    def handle(
        self, model: ScaleSet, instance_id: int, version: str | None = None, *, surge: bool = False
    ) -> InstanceSpec:
        """Enough to name an instance and its disks (commit, rollback, delete): no gallery lookup, which may
        no longer know the version."""
        return InstanceSpec(
            scale_set=model.name,
            instance_id=instance_id,
            image="",
            version=version or "",
            volumes=self.volumes(model, instance_id),
            stop_timeout=model.engine.stop_timeout,
            surge=surge,
            vm=model.engine.vm,
            agent_port=model.engine.agent_port,
        )

    async def watch(self, model: ScaleSet, states: Mapping[int, InstanceState] | None = None) -> None:
        """Starts the health watch of every instance (no-op for those already watched)."""
        ports = await self.store.instance_ports(model.name)
        source = model.health_source
        for instance_id in range(model.capacity):
            state = states.get(instance_id) if states else None
            address, host = where_it_listens(ports.get(instance_id, {}), state)
            key = (model.name, instance_id)
            if source is HealthSourceKind.AGENT and model.engine.agent_port in host:
                self.health.watch_agent(key, address, host[model.engine.agent_port])
            elif (
                source is HealthSourceKind.PROBE and model.health_probe is not None and model.health_probe.port in host
            ):
                self.health.watch_probe(key, model.health_probe, address, host[model.health_probe.port])

    async def forget(self, scale_set: str, instance_id: int) -> None:
        await self.health.unwatch((scale_set, instance_id))
        await self.store.delete_instance(scale_set, instance_id)
