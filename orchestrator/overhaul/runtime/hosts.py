"""Host groups and their hosts (Azure's Dedicated Hosts' shape): the machines whose container engines instances
run on."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.hosts import Host, HostGroup
from overhaul.core.naming import Scope, where
from overhaul.ports.driver import HostStatus, HostStatuses
from overhaul.runtime.parts import Parts
from overhaul.runtime.resources import Kind, NamedResources

HOST_GROUP = Kind("host group", "ResourceNotFound", "HostGroupNameTaken", "/hostGroups")


class HostGroups(NamedResources[HostGroup]):
    def __init__(self, parts: Parts, statuses: HostStatuses | None = None) -> None:
        store = parts.store
        super().__init__(parts, HOST_GROUP, store.host_groups, store.put_host_group, store.delete_host_group)
        self.statuses = statuses

    async def status(self, host: Host) -> HostStatus:
        """Whether its engine answers now (asked within a few seconds)."""
        if self.statuses is None:
            return HostStatus(False, "this orchestrator's drivers do not reach hosts")
        return await self.statuses.probe(host)

    def down(self) -> dict[str, str]:
        """The hosts whose engine did not answer when last asked, by id, with why; nothing is asked."""
        known = self.statuses.known() if self.statuses is not None else {}
        return {host: status.reason or "down" for host, status in known.items() if not status.up}

    def last_known(self) -> dict[str, HostStatus]:
        return dict(self.statuses.known()) if self.statuses is not None else {}

    async def check_put(self, resource: HostGroup) -> None:
        """A group's location, zone and fault domains hold its hosts: they change only while it has none."""
        existing = await self.find(resource.name)
        if existing is None or not await self.hosts(existing.name):
            return
        for field, before, after in (
            ("location", existing.location, resource.location),
            ("zones", existing.zone, resource.zone),
            ("properties.platformFaultDomainCount", existing.fault_domains, resource.fault_domains),
        ):
            if before != after:
                raise InvalidInput(
                    f"{field}: host group {existing.name} has hosts; it cannot move from {before!r} to {after!r}",
                    "PropertyChangeNotAllowed",
                    field,
                )

    async def check_delete(self, resource: HostGroup) -> None:
        """As Azure: refused while it holds hosts (delete them first)."""
        held = [h.name for h in await self.hosts(resource.name)]
        if held:
            raise Conflict(
                f"host group {resource.name} holds host(s) {', '.join(held)}: delete them first", "CannotDeleteResource"
            )

    async def hosts(self, group: str, scope: Scope | None = None) -> list[Host]:
        if scope is not None:
            group = (await self.get(group, scope)).name
        return [h for h in await self.parts.store.hosts() if h.group.lower() == group.lower()]

    async def all_hosts(self) -> list[Host]:
        return await self.parts.store.hosts()

    async def host(self, group: str, name: str, scope: Scope | None = None) -> Host:
        found = next((h for h in await self.hosts(group, scope) if h.name.lower() == name.lower()), None)
        if found is None:
            raise NotFound(f"host {group}/{name} does not exist{where(scope)}", "ResourceNotFound")
        return found

    async def put_host(self, host: Host, scope: Scope | None = None) -> tuple[Host, bool]:
        """Creates or updates a host of an existing group; returns it as kept and whether it was created."""
        async with self.parts.writing(HOST_GROUP.lock):
            group = await self.get(host.group, scope)
            siblings = await self.hosts(group.name)
            existing = next((h for h in siblings if h.name.lower() == host.name.lower()), None)
            host = replace(host, group=group.name, name=existing.name if existing else host.name)
            host = replace(
                host, location=_location(host, group), fault_domain=_fault_domain(host, group, existing, siblings)
            )
            held = next(
                (h for h in await self.all_hosts() if h.engine.url == host.engine.url and h.id != host.id), None
            )
            if held is not None:
                raise Conflict(
                    f"properties.overhaul.engine: {host.engine.url} is host {held.group}/{held.name}'s engine",
                    "EngineInUse",
                    "properties.overhaul.engine",
                )
            await self.parts.store.put_host(host)
            self.parts.changes.bump()
            return host, existing is None

    async def delete_host(self, group: str, name: str, scope: Scope | None = None) -> None:
        """Refused while instances are placed on it (their data disks live there)."""
        async with self.parts.writing(HOST_GROUP.lock):
            found = await self.host(group, name, scope)
            store = self.parts.store
            held = [
                f"{m.name}_{i}"
                for m in await store.list_scale_sets()
                for i, host in (await store.instance_hosts(m.name)).items()
                if host.lower() == found.id.lower()
            ]
            if held:
                raise Conflict(
                    f"host {found.group}/{found.name} holds instance(s) {', '.join(held)}: scale them in or delete"
                    " their scale sets first",
                    "HostInUse",
                )
            await store.delete_host(found.group, found.name)
            self.parts.changes.bump()


def _location(host: Host, group: HostGroup) -> str:
    """A host is where its group is; a body without a location takes the group's."""
    if "location" not in host.sent:
        return group.location
    if host.location.lower() != group.location.lower():
        raise InvalidInput(
            f"location: host group {group.name} is in {group.location}, the host says {host.location}",
            "InvalidParameter",
            "location",
        )
    return group.location


def _fault_domain(host: Host, group: HostGroup, existing: Host | None, siblings: list[Host]) -> int:
    """The one asked for (fixed once made, as Azure's); none asked: the group's least used, the lowest of those."""
    field = "properties.platformFaultDomain"
    if host.fault_domain is not None and host.fault_domain >= group.fault_domains:
        raise InvalidInput(
            f"{field}: host group {group.name} has {group.fault_domains} fault domain(s) (0-{group.fault_domains - 1}),"
            f" got {host.fault_domain}",
            "InvalidParameter",
            field,
        )
    if existing is not None:
        if host.fault_domain is not None and host.fault_domain != existing.fault_domain:
            raise InvalidInput(
                f"{field}: a host keeps its fault domain ({existing.fault_domain})", "PropertyChangeNotAllowed", field
            )
        return existing.fault_domain if existing.fault_domain is not None else 0
    if host.fault_domain is not None:
        return host.fault_domain
    used = Counter(h.fault_domain for h in siblings)
    return min(range(group.fault_domains), key=lambda d: (used[d], d))
