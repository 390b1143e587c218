"""Resource groups, as Azure keeps them: a location and tags, and everything put in them. Deleting one removes what
it holds — scale sets (their instances and data disks), event subscriptions, maintenance configurations, load
balancers, galleries with their images, host groups with their hosts, kept resources — then the group; it is
marked Deleting first, so a restart finishes what a crash interrupted and a reader sees it going. Groups were once
implicit: ``adopt`` makes one for every group a stored resource names that has none."""

from __future__ import annotations

import asyncio
import builtins
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from overhaul.aio import Background
from overhaul.core.errors import Conflict, NotFound
from overhaul.core.model import ScaleSetRef
from overhaul.core.naming import Scope
from overhaul.core.resources import OPERATION_TYPE, RESOURCE_GROUP_TYPE, Resource, group_id

if TYPE_CHECKING:
    from overhaul.runtime.orchestrator import Orchestrator

log = logging.getLogger(__name__)
LOCK = "/resourceGroups"


class ResourceGroups:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.store = orchestrator.parts.store
        self._deleting = Background()

    async def find(self, subscription: str, name: str) -> Resource | None:
        return await self.store.get_resource(group_id(subscription, name))

    async def get(self, subscription: str, name: str) -> Resource:
        found = await self.find(subscription, name)
        if found is None:
            raise NotFound(f"Resource group '{name}' could not be found.", "ResourceGroupNotFound")
        return found

    async def require(self, subscription: str, name: str) -> None:
        """ResourceGroupNotFound unless the group exists (and is not being deleted)."""
        group = await self.get(subscription, name)
        if deleting(group):
            raise Conflict(
                f"Resource group '{group.name}' is being deleted: nothing can be put in it.",
                "ResourceGroupBeingDeleted",
            )

    async def list(self, subscription: str) -> builtins.list[Resource]:
        return await self.store.list_resources(RESOURCE_GROUP_TYPE, subscription)

    async def put(self, group: Resource) -> tuple[Resource, bool]:
        """Creates or updates it (its location cannot change, as in Azure); True when it was created."""
        async with self.orchestrator.parts.writing(LOCK):
            existing = await self.find(group.subscription, group.name)
            if existing is not None:
                if deleting(existing):
                    raise Conflict(f"Resource group '{existing.name}' is being deleted.", "ResourceGroupBeingDeleted")
                if existing.location.lower() != group.location.lower():
                    raise Conflict(
                        f"Invalid resource group location '{group.location}'. The Resource group already exists in "
                        f"location '{existing.location}'.",
                        "InvalidResourceGroupLocation",
                    )
                group = replace(
                    group, name=existing.name, doc=dict(group.doc) | {"name": existing.name, "id": existing.id}
                )
            await self.store.put_resource(group)
            return group, existing is None

    async def begin_delete(self, subscription: str, name: str) -> Resource:
        """Marks it Deleting and removes what it holds in the background; NotFound when there is no such group."""
        async with self.orchestrator.parts.writing(LOCK):
            group = await self.get(subscription, name)
            if not deleting(group):
                props = dict(group.doc.get("properties") or {}) | {"provisioningState": "Deleting"}
                doc = {k: v for k, v in group.doc.items() if k != "error"} | {"properties": props}
                group = replace(group, doc=doc)
                await self.store.put_resource(group)
        self._start_deleting(group)
        return group

    def _start_deleting(self, group: Resource) -> None:
        self._deleting.start(group.id, lambda: self._delete(group), f"delete {group.id}")

    async def wait_deleted(self, subscription: str, name: str, timeout: float) -> None:
        """Until this orchestrator's deletion of the group ends (at once when none runs), at most ``timeout`` s."""
        await self._deleting.wait(group_id(subscription, name), timeout)

    async def resume(self) -> None:
        """Groups a previous run was deleting are deleted now."""
        for group in await self.store.list_resources(RESOURCE_GROUP_TYPE):
            if deleting(group):
                self._start_deleting(group)

    async def close(self) -> None:
        await self._deleting.close()

    async def _delete(self, group: Resource) -> None:
        try:
            await self.delete_contents(group.subscription, group.resource_group)
            await self.store.delete_resource(group.id)
            log.info("resource group %s deleted", group.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the group stays, with what could not be deleted, as in Azure
            log.warning("deleting resource group %s failed: %s", group.id, exc)
            props = dict(group.doc.get("properties") or {}) | {"provisioningState": "Succeeded"}
            error = {"code": getattr(exc, "code", "DeleteFailed"), "message": f"the group was not deleted: {exc}"}
            await self.store.put_resource(replace(group, doc=dict(group.doc) | {"properties": props, "error": error}))

    async def delete_contents(self, subscription: str, name: str) -> None:
        """Everything the group holds, those that use others first; nothing outside it is touched."""
        o = self.orchestrator
        scope = Scope(subscription, name)
        for model in await o.scale_sets.list(subscription, name):
            await o.scale_sets.delete(ScaleSetRef(model.subscription, model.resource_group, model.name))
        prefix = group_id(subscription, name).lower() + "/"
        for event_subscription in await self.store.event_subscriptions():
            if (event_subscription.scope.lower() + "/").startswith(prefix):
                await o.event_subscriptions.delete(event_subscription.id)
        for configuration in await o.maintenance.list(scope):
            await o.maintenance.delete(configuration.name, scope)
        for balancer in await o.load_balancers.list(scope):
            await o.load_balancers.delete(balancer.name, scope)
        for gallery in await o.galleries.list(scope):
            for definition in await o.galleries.definitions(gallery.name, scope):
                for version in await o.galleries.versions(gallery.name, definition.name, scope):
                    await o.galleries.delete_version(gallery.name, definition.name, version.version, scope)
                await o.galleries.delete_definition(gallery.name, definition.name, scope)
            await o.galleries.delete(gallery.name, scope)
        for host_group in await o.host_groups.list(scope):
            for host in await o.host_groups.hosts(host_group.name, scope):
                await o.host_groups.delete_host(host_group.name, host.name, scope)
            await o.host_groups.delete(host_group.name, scope)
        for kept in await self.store.list_resources(None, subscription, name):
            if kept.type.lower() not in (RESOURCE_GROUP_TYPE.lower(), OPERATION_TYPE.lower()):
                await self.store.delete_resource(kept.id)

    async def adopt(self) -> builtins.list[Resource]:
        """A group for every (subscription, group) a stored resource is in that has none (groups were implicit
        before): located where the first such resource is. Returns those made."""
        o = self.orchestrator
        holders: builtins.list[tuple[str, str, str]] = []
        holders += [(m.subscription, m.resource_group, m.location) for m in await o.scale_sets.list()]
        for kind in (o.galleries, o.load_balancers, o.maintenance, o.host_groups):
            holders += [(r.subscription, r.resource_group, getattr(r, "location", "") or "") for r in await kind.list()]
        holders += [
            (r.subscription, r.resource_group, r.location)
            for r in await self.store.list_resources()
            if r.type.lower() != OPERATION_TYPE.lower()
        ]
        made: builtins.list[Resource] = []
        seen: set[tuple[str, str]] = set()
        for subscription, name, location in holders:
            key = (subscription.lower(), name.lower())
            if key in seen:
                continue
            seen.add(key)
            if await self.find(subscription, name) is None:
                group = implicit_group(subscription, name, location or "local")
                await self.store.put_resource(group)
                made.append(group)
        if made:
            log.info("made %d resource groups for resources stored before groups were kept", len(made))
        return made


def deleting(group: Resource) -> bool:
    return (group.doc.get("properties") or {}).get("provisioningState") == "Deleting"


def implicit_group(subscription: str, name: str, location: str) -> Resource:
    doc = {
        "id": group_id(subscription, name),
        "name": name,
        "type": RESOURCE_GROUP_TYPE,
        "location": location,
        "tags": {},
        "properties": {"provisioningState": "Succeeded"},
    }
    return Resource(subscription, name, RESOURCE_GROUP_TYPE, name, doc)
