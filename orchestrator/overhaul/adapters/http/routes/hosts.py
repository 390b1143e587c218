"""Microsoft.Compute/hostGroups and their hosts: the machines whose container engines instances run on."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from overhaul.adapters.http.arm import iso
from overhaul.adapters.http.requests import RG, Route, body_object, deleted, orchestrator_of, scope, written
from overhaul.adapters.http.routes.named import named_routes
from overhaul.core.hosts import Host, HostGroup, parse_host, parse_host_group
from overhaul.runtime.orchestrator import Orchestrator

PROVIDER = "Microsoft.Compute/hostGroups"
HOSTS = RG + f"/providers/{PROVIDER}/{{hostGroup}}/hosts"


async def group_doc(orchestrator: Orchestrator, group: HostGroup) -> dict[str, Any]:
    """A group lists its hosts' ids, as Azure's does."""
    return group.to_json([h.id for h in await orchestrator.host_groups.hosts(group.name)])


async def host_doc(request: web.Request, host: Host) -> dict[str, Any]:
    """Its document; with ``$expand=instanceView``, whether its engine answers now (Azure's shape)."""
    doc = host.to_json()
    if request.query.get("$expand", "").lower() == "instanceview":
        doc["properties"]["instanceView"] = await instance_view(request, host)
    return doc


async def instance_view(request: web.Request, host: Host) -> dict[str, Any]:
    status = await orchestrator_of(request).host_groups.status(host)
    health: dict[str, Any] = {
        "code": f"HealthState/{'available' if status.up else 'unavailable'}",
        "level": "Info" if status.up else "Error",
        "displayStatus": "Host available" if status.up else "Host unavailable",
    }
    if status.reason:
        health["message"] = status.reason
    return {
        "assetId": host.id,
        "statuses": [{"code": "ProvisioningState/succeeded", "level": "Info"}, health],
        "overhaul": {"lastSeen": iso(status.last_seen) if status.last_seen is not None else None},
    }


async def list_hosts(request: web.Request) -> web.Response:
    found = await orchestrator_of(request).host_groups.hosts(request.match_info["hostGroup"], scope(request))
    docs = await asyncio.gather(*(host_doc(request, h) for h in found))
    return web.json_response({"value": list(docs)})


async def put_host(request: web.Request) -> web.Response:
    m = request.match_info
    host = parse_host(
        await body_object(request), group=m["hostGroup"], name=m["host"], resource_group=m["rg"], subscription=m["sub"]
    )
    kept, created = await orchestrator_of(request).host_groups.put_host(host, scope(request))
    return written(kept.to_json(), created)


async def get_host(request: web.Request) -> web.Response:
    m = request.match_info
    found = await orchestrator_of(request).host_groups.host(m["hostGroup"], m["host"], scope(request))
    return web.json_response(await host_doc(request, found))


async def get_instance_view(request: web.Request) -> web.Response:
    m = request.match_info
    found = await orchestrator_of(request).host_groups.host(m["hostGroup"], m["host"], scope(request))
    return web.json_response(await instance_view(request, found))


async def delete_host(request: web.Request) -> web.Response:
    m = request.match_info
    return await deleted(orchestrator_of(request).host_groups.delete_host(m["hostGroup"], m["host"], scope(request)))


ROUTES: list[Route] = [
    *named_routes(PROVIDER, "hostGroup", lambda o: o.host_groups, parse_host_group, group_doc),
    ("GET", HOSTS, list_hosts),
    ("PUT", HOSTS + "/{host}", put_host),
    ("GET", HOSTS + "/{host}", get_host),
    ("DELETE", HOSTS + "/{host}", delete_host),
    ("GET", HOSTS + "/{host}/instanceView", get_instance_view),
]
