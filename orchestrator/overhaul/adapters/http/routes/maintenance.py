"""Microsoft.Maintenance: maintenance configurations, and their assignments to scale sets (when automatic OS
upgrades may run)."""

from __future__ import annotations

from aiohttp import web

from overhaul.adapters.http.requests import (
    RG,
    Route,
    body_object,
    deleted,
    orchestrator_of,
    ref,
    scope,
    written,
)
from overhaul.adapters.http.routes.named import named_routes
from overhaul.adapters.http.routes.scale_sets import VMSS
from overhaul.core.maintenance import parse_maintenance_configuration

PROVIDER = "Microsoft.Maintenance/maintenanceConfigurations"
ASSIGNMENTS = VMSS + "/{name}/providers/Microsoft.Maintenance/configurationAssignments"


async def put_configuration(request: web.Request) -> web.Response:
    """Checked against the shortest window this server allows (Azure's 5 hours unless lowered for a lab)."""
    m = request.match_info
    orchestrator = orchestrator_of(request)
    configuration = parse_maintenance_configuration(
        await body_object(request),
        name=m["config"],
        resource_group=m["rg"],
        subscription=m["sub"],
        min_duration=orchestrator.settings.min_maintenance_window,
    )
    created = await orchestrator.maintenance.put(configuration)
    return written((await orchestrator.maintenance.get(configuration.name, scope(request))).to_json(), created)


async def put_assignment(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    body = await body_object(request)
    assignment, created = await orchestrator.maintenance.assign(model, request.match_info["assignment"], body)
    return written(assignment.to_json(), created)


async def get_assignment(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    return web.json_response(
        (await orchestrator.maintenance.assignment(model, request.match_info["assignment"])).to_json()
    )


async def list_assignments(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    return web.json_response({"value": [a.to_json() for a in await orchestrator.maintenance.assignments(model)]})


async def delete_assignment(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    return await deleted(orchestrator.maintenance.unassign(model, request.match_info["assignment"]))


ROUTES: list[Route] = [
    *(
        r
        for r in named_routes(PROVIDER, "config", lambda o: o.maintenance, parse_maintenance_configuration)
        if r[0] != "PUT"
    ),
    ("PUT", f"{RG}/providers/{PROVIDER}/{{config}}", put_configuration),
    ("GET", ASSIGNMENTS, list_assignments),
    ("PUT", ASSIGNMENTS + "/{assignment}", put_assignment),
    ("GET", ASSIGNMENTS + "/{assignment}", get_assignment),
    ("DELETE", ASSIGNMENTS + "/{assignment}", delete_assignment),
]
