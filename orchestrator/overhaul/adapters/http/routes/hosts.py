"""Microsoft.Compute/hostGroups and their hosts: the machines whose container engines instances run on."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overhaul.adapters.http.requests import RG, Route, body_object, deleted, orchestrator_of, scope, written
from overhaul.adapters.http.routes.named import named_routes
from overhaul.core.hosts import HostGroup, parse_host, parse_host_group
from overhaul.runtime.orchestrator import Orchestrator

PROVIDER = "Microsoft.Compute/hostGroups"
HOSTS = RG + f"/providers/{PROVIDER}/{{hostGroup}}/hosts"


async def group_doc(orchestrator: Orchestrator, group: HostGroup) -> dict[str, Any]:
    """A group lists its hosts' ids, as Azure's does."""
    return group.to_json([h.id for h in await orchestrator.host_groups.hosts(group.name)])


async def list_hosts(request: web.Request) -> web.Response:
    found = await orchestrator_of(request).host_groups.hosts(request.match_info["hostGroup"], scope(request))
    return web.json_response({"value": [h.to_json() for h in found]})


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
    return web.json_response(found.to_json())


async def delete_host(request: web.Request) -> web.Response:
    m = request.match_info
    return await deleted(orchestrator_of(request).host_groups.delete_host(m["hostGroup"], m["host"], scope(request)))


ROUTES: list[Route] = [
    *named_routes(PROVIDER, "hostGroup", lambda o: o.host_groups, parse_host_group, group_doc),
    ("GET", HOSTS, list_hosts),
    ("PUT", HOSTS + "/{host}", put_host),
    ("GET", HOSTS + "/{host}", get_host),
    ("DELETE", HOSTS + "/{host}", delete_host),
]
