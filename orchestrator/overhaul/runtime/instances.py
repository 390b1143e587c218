"""Instances of a scale set as the engine should have them: specs from the model and the gallery, the host ports
they keep across reimages, the metadata of their config drive, and the health watch each one gets."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from overhaul.aio import Changes
from overhaul.core.arm_json import ModelError
from overhaul.core.errors import Conflict, InvalidInput, OverhaulError
from overhaul.core.gallery import ImageVersion, resolve
from overhaul.core.hosts import LOCAL_LOCATION, Host
from overhaul.core.model import HealthSourceKind, ScaleSet, model_digest
from overhaul.core.naming import data_disk_name
from overhaul.core.planner import PlacementError, Slot
from overhaul.core.planner import place as place_instances
from overhaul.ports.driver import Driver, InstanceSpec, InstanceState, PortsExhausted
from overhaul.ports.health import HealthSource
from overhaul.ports.store import Store


def where_it_listens(
    allocated: Mapping[int, int], state: InstanceState | None, host: Host | None = None
) -> tuple[str, dict[int, int]]:
    """The address and host ports of an instance: what the engine reports wins over what was allocated, as it is
    where the instance really listens; unobserved, it is where its host publishes."""
    if state is None:
        return host.publish_address if host else "127.0.0.1", dict(allocated)
    return state.address, {**allocated, **state.ports}


HOST_GROUP = "properties.hostGroup.id"


class Instances:
    def __init__(self, store: Store, driver: Driver, health: HealthSource, changes: Changes | None = None) -> None:
        self.store = store
        self.driver = driver
        self.health = health
        self.changes = changes  # bumped when hosts change (among others): the host records are read again then
        self._hosts: tuple[int, dict[str, Host]] | None = None

    async def hosts(self) -> dict[str, Host]:
        """Every host by id (lower case); read once per change, as every instance's spec asks."""
        version = self.changes.version if self.changes is not None else -1
        if self._hosts is None or self._hosts[0] != version or version < 0:
            self._hosts = (version, {h.id.lower(): h for h in await self.store.hosts()})
        return self._hosts[1]

    async def allocate_port(self, taken: set[int], host: Host | None = None) -> int:
        """A host port no other instance on the host holds (on the orchestrator's own engine, one the driver finds
        free); it joins ``taken``."""
        try:
            port = await self.driver.host_port(taken) if host is None else host.free_port(taken)
        except PortsExhausted as exc:
            raise Conflict(str(exc), "PortsExhausted") from exc
        if port is None and host is not None:
            first, last = host.ports
            raise Conflict(f"host {host.group}/{host.name} has no free port in {first}-{last}", "PortsExhausted")
        assert port is not None
        taken.add(port)
        return port

    async def candidates(self, model: ScaleSet) -> list[Host]:
        """The hosts the scale set's new instances may go on: its host group's, else those of its location in its
        zones; none: the orchestrator's own engine, in location local. A group, location or zone no host serves
        is refused (400 naming the field)."""
        if model.is_vm:
            if model.host_group:
                raise InvalidInput("properties.hostGroup.id: VM scale sets run on this machine", target=HOST_GROUP)
            return []
        hosts = list((await self.hosts()).values())
        groups = {g.name.lower(): g for g in await self.store.host_groups()}
        if model.host_group:
            name = model.host_group.rstrip("/").rsplit("/", 1)[-1].lower()
            in_group = [h for h in hosts if h.group.lower() == name]
            if not in_group:
                what = "has no host" if name in groups else "does not exist"
                raise InvalidInput(f"{HOST_GROUP}: host group {model.host_group} {what}", target=HOST_GROUP)
            return in_group
        located = [h for h in hosts if groups[h.group.lower()].location.lower() == model.location.lower()]
        if not located:
            if model.location.lower() != LOCAL_LOCATION:
                raise InvalidInput(
                    f"location: no host is in {model.location} (this machine's engine is location {LOCAL_LOCATION}):"
                    " add a host group there first",
                    target="location",
                )
            return []
        if model.zones:
            located = [h for h in located if groups[h.group.lower()].zone in model.zones]
            if not located:
                raise InvalidInput(
                    f"zones: no host of {model.location} is in zones {', '.join(model.zones)}", target="zones"
                )
        return located

    async def placement(self, model: ScaleSet) -> dict[int, str]:
        """Where each instance the model adds goes (host ids; "": the orchestrator's own engine), all at once; what
        no host can take is refused here, before anything is kept: a zone without room (400), no host port left in
        the hosts' ranges (409 PortsExhausted, naming them)."""
        stored = await self.store.instance_hosts(model.name)
        return await self._place(model, [i for i in range(model.capacity) if i not in stored], stored)

    async def keep(self, model: ScaleSet, placement: Mapping[int, str]) -> None:
        """Stores a placement before any of its instances is made: each instance keeps its host for good."""
        for instance_id, host_id in placement.items():
            await self.store.put_instance_host(model.name, instance_id, host_id)

    async def _place(self, model: ScaleSet, new: list[int], stored: Mapping[int, str]) -> dict[int, str]:
        """Hosts for ``new`` instances by id ("": the orchestrator's own engine), each host taking as many as its
        free host ports hold (core/planner.py place)."""
        candidates = await self.candidates(model)
        if not candidates or not new:
            return dict.fromkeys(new, "")
        zones = {g.name.lower(): g.zone for g in await self.store.host_groups()}
        per = len(model.published_ports)
        slots = []
        for h in candidates:
            room = None
            if per:
                free = h.ports[1] - h.ports[0] + 1 - len(await self.store.all_host_ports(h.id))
                room = max(0, free) // per
            slots.append(Slot(h.id.lower(), zones[h.group.lower()], h.fault_domain or 0, room, h.group.lower()))
        placed = {i: h.lower() for i, h in stored.items() if h}
        try:
            return place_instances(new, placed, slots, model.zones, zone_balance=model.zone_balance)
        except PlacementError as exc:
            if exc.field != "sku.capacity":
                raise InvalidInput(str(exc), target=exc.field) from exc
            ranges = ", ".join(f"{h.group}/{h.name} ({h.ports[0]}-{h.ports[1]})" for h in candidates)
            raise Conflict(f"{exc}: every host port of {ranges} is held", "PortsExhausted", "sku.capacity") from exc

    async def host_of(self, model: ScaleSet, instance_id: int, *, place: bool = False) -> Host | None:
        """The host the instance is on (None: the orchestrator's own engine). ``place``: a new instance is placed
        first (core/planner.py place) and its host stored before anything is made; an instance keeps its host."""
        host_id = await self.store.instance_host(model.name, instance_id)
        if host_id is None and place:
            stored = await self.store.instance_hosts(model.name)
            host_id = (await self._place(model, [instance_id], stored))[instance_id]
            await self.store.put_instance_host(model.name, instance_id, host_id)
        if not host_id:
            return None
        hosts = await self.hosts()
        found = hosts.get(host_id.lower())
        if found is None:
            raise OverhaulError(
                f"instance {instance_id} of {model.name} is on host {host_id}, which no longer exists", "HostNotFound"
            )
        return found

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

    async def ports(
        self, model: ScaleSet, instance_id: int, *, fresh: bool = False, avoid: Collection[int] = ()
    ) -> dict[int, int]:
        """Container port -> host port; an instance keeps its host ports across reimages in place. ``fresh``: new
        ones, for an OS disk that starts while the previous one still holds the old ones (maxSurge), or when the
        host refused those it had; ``avoid``: ports the host refused (something else listens there) while any other
        is free."""
        if not model.published_ports:
            return {}
        known = await self.store.instance_ports_of(model.name, instance_id)
        host = await self.host_of(model, instance_id, place=True)
        try:
            ports = await self._choose(model, host, {} if fresh else known, avoid)
        except Conflict:
            ports = await self._choose(model, host, {} if fresh else known)
        if ports == known:
            return ports
        for _ in range(2):
            try:
                await self.store.put_instance_ports(model.name, instance_id, ports)
                return ports
            except Conflict:  # another writer took one of them meanwhile: choose again
                ports = await self._choose(model, host, {})
        await self.store.put_instance_ports(model.name, instance_id, ports)
        return ports

    async def elsewhere(self, model: ScaleSet, spec: InstanceSpec, refused: set[int]) -> InstanceSpec:
        """The spec on other host ports than those its host refused (something else listens there): the spec's
        are added to ``refused``, never offered again while the caller's step lasts."""
        refused.update(spec.ports.values())
        return replace(spec, ports=await self.ports(model, spec.instance_id, fresh=True, avoid=refused))

    async def _choose(
        self, model: ScaleSet, host: Host | None, keep: Mapping[int, int], avoid: Collection[int] = ()
    ) -> dict[int, int]:
        taken = await self.store.all_host_ports(host.id if host else "") | set(avoid)
        return {cport: keep.get(cport) or await self.allocate_port(taken, host) for cport in model.published_ports}

    async def follow(self, model: ScaleSet, states: Mapping[int, InstanceState], ids: Iterable[int]) -> None:
        """The store and the health watch follow the engine's word on the host ports of ``ids`` (a surged OS disk,
        or the one a rollback restored, listens on its own; a VM on others when one was taken at boot)."""
        known = await self.store.instance_ports(model.name)
        for instance_id in ids:
            state = states.get(instance_id)
            if state is not None and state.ports and dict(state.ports) != known.get(instance_id):
                await self.store.put_instance_ports(model.name, instance_id, dict(state.ports), take_over=True)
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
        ports = await self.ports(model, instance_id, fresh=surge)  # placed first, when new
        return InstanceSpec(
            host=await self.host_of(model, instance_id, place=True),
            scale_set=model.name,
            instance_id=instance_id,
            image=image.source_for(model.is_vm),
            version=image.version,
            ports=ports,
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

    async def handle(
        self, model: ScaleSet, instance_id: int, version: str | None = None, *, surge: bool = False
    ) -> InstanceSpec:
        """Enough to name an instance, its host and its disks (commit, rollback, delete): no gallery lookup, which
        may no longer know the version."""
        return InstanceSpec(
            host=await self.host_of(model, instance_id),
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
        placed = await self.store.instance_hosts(model.name)
        hosts = await self.hosts()
        source = model.health_source
        for instance_id in range(model.capacity):
            state = states.get(instance_id) if states else None
            on = hosts.get(placed.get(instance_id, "").lower())
            address, host = where_it_listens(ports.get(instance_id, {}), state, on)
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
