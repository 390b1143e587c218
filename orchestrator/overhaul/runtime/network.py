"""Load balancers, whose probes can be a scale set's health source."""

from __future__ import annotations

from overhaul.core.errors import Conflict
from overhaul.core.model import ScaleSet
from overhaul.core.network import LoadBalancer
from overhaul.core.probes import check_probe_change, probe_name, resolve_probe
from overhaul.runtime.parts import Parts
from overhaul.runtime.resources import Kind, NamedResources

LOAD_BALANCER = Kind("load balancer", "ResourceNotFound", "LoadBalancerNameTaken", "/loadBalancers")


class LoadBalancers(NamedResources[LoadBalancer]):
    def __init__(self, parts: Parts) -> None:
        store = parts.store
        super().__init__(
            parts, LOAD_BALANCER, store.load_balancers, store.put_load_balancer, store.delete_load_balancer
        )

    async def users(self, balancer: LoadBalancer) -> list[ScaleSet]:
        """The scale sets whose health source is one of its probes."""
        return [m for m in await self.parts.store.list_scale_sets() if probe_name(m, balancer) is not None]

    async def check_put(self, resource: LoadBalancer) -> None:
        """A probe in use keeps its port and protocol."""
        check_probe_change(resource, await self.users(resource))

    async def after_put(self, resource: LoadBalancer) -> None:
        """Scale sets that use one of its probes follow a new path, interval or count at once."""
        parts = self.parts
        for user in await self.users(resource):
            async with parts.writing(user.name):
                current = await parts.store.get_scale_set(user.name)
                if current is None or probe_name(current, resource) is None:
                    continue
                resolved = resolve_probe(current, [resource])
                if resolved.health_probe != current.health_probe:
                    await parts.store.put_scale_set(resolved, parts.clock())
                    await self._watch_afresh(resolved)

    async def _watch_afresh(self, model: ScaleSet) -> None:
        """Its health source's settings changed: every instance is watched again with the new ones."""
        for instance_id in range(model.capacity):
            await self.parts.health.unwatch((model.name, instance_id))
        await self.parts.instances.watch(model, await self.parts.observe(model.name))

    async def check_delete(self, resource: LoadBalancer) -> None:
        """Refused while a scale set uses one of its probes, as Azure refuses it."""
        users = [m.name for m in await self.users(resource)]
        if users:
            raise Conflict(
                f"load balancer {resource.name} is in use by scale set(s) {', '.join(users)}",
                "LoadBalancerInUseByVirtualMachineScaleSet",
            )
