"""A scale set's lifecycle hook events (Azure's ``virtualMachineScaleSets/{vmss}/lifecycleHookEvents``, api-version
2025-11-01): list, get, and the PATCH that approves or rejects targets or puts the event off."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overhaul.adapters.http.arm import iso
from overhaul.adapters.http.requests import Route, body_object, orchestrator_of, ref
from overhaul.adapters.http.routes.scale_sets import VMSS
from overhaul.core.lifecycle_hooks import HookEvent, parse_response
from overhaul.core.model import ScaleSet
from overhaul.core.naming import scale_set_id

EVENTS = VMSS + "/{name}/lifecycleHookEvents"


def event_doc(event: HookEvent, model: ScaleSet) -> dict[str, Any]:
    owner = scale_set_id(model.subscription, model.resource_group, model.name)
    targets = [
        {
            "resource": {"id": owner if target is None else f"{owner}/virtualMachines/{target}"},
            "actionState": state.value,
        }
        for target, state in sorted(event.targets.items(), key=lambda item: -1 if item[0] is None else item[0])
    ]
    ours: dict[str, Any] = {"targetVersion": event.target_version}
    if event.attempt_id is not None:
        ours |= {"rollingUpgradeId": event.attempt_id, "batch": event.batch}
    if event.closed is not None:
        ours["closedReason"] = event.closed
    return {
        "id": f"{owner}/lifecycleHookEvents/{event.name}",
        "name": event.name,
        "type": "Microsoft.Compute/virtualMachineScaleSets/lifecycleHookEvents",
        "properties": {
            "type": event.type.value,
            "state": event.state.value,
            "timeCreated": iso(event.time_created),
            "waitUntil": iso(event.wait_until),
            "maxWaitUntil": iso(event.max_wait_until),
            "defaultAction": event.default_action.value,
            "targetResources": targets,
            "overhaul": ours,
        },
    }


async def list_events(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    events = await orchestrator.lifecycle_hook_events.list(model.ref)
    return web.json_response({"value": [event_doc(e, model) for e in events]})


async def get_event(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    event = await orchestrator.lifecycle_hook_events.get(model.ref, request.match_info["event"])
    return web.json_response(event_doc(event, model))


async def update_event(request: web.Request) -> web.Response:
    """Approve or reject targets (``actionState``), or put the event off (``waitUntil``): 409 once Completed."""
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    owner = scale_set_id(model.subscription, model.resource_group, model.name)
    response = parse_response(await body_object(request), owner)
    event = await orchestrator.lifecycle_hook_events.respond(model.ref, request.match_info["event"], response)
    return web.json_response(event_doc(event, model))


ROUTES: list[Route] = [
    ("GET", EVENTS, list_events),
    ("GET", EVENTS + "/{event}", get_event),
    ("PATCH", EVENTS + "/{event}", update_event),
]
