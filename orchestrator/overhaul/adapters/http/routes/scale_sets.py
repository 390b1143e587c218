"""Microsoft.Compute/virtualMachineScaleSets: the scale sets, their instances and views, reimage."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from overhaul.adapters.http import arm
from overhaul.adapters.http.requests import (
    RG,
    SUB,
    Route,
    body_object,
    instance_ids,
    operation_headers,
    orchestrator_of,
    ref,
    written,
)
from overhaul.core.errors import NotFound
from overhaul.core.model import ScaleSet, without_secrets

VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets"


async def shown(request: web.Request, models: list[ScaleSet]) -> list[dict[str, Any]]:
    """Their documents without secrets, Deleting while a deletion runs (runtime/deletions.py)."""
    docs = [without_secrets(m.to_json()) for m in models]
    return await orchestrator_of(request).scale_set_deletions.shown(docs, request.match_info["sub"])


async def list_scale_sets(request: web.Request) -> web.Response:
    models = await orchestrator_of(request).scale_sets.list(request.match_info["sub"], request.match_info.get("rg"))
    return web.json_response({"value": await shown(request, models)})


async def put_scale_set(request: web.Request) -> web.Response:
    """Create, or update an existing scale set: as Azure's PUT, properties left out keep their values."""
    model, created = await orchestrator_of(request).scale_sets.put(ref(request), await body_object(request))
    return written(without_secrets(model.to_json()), created)


async def patch_scale_set(request: web.Request) -> web.Response:
    model, _ = await orchestrator_of(request).scale_sets.put(ref(request), await body_object(request), patch=True)
    return web.json_response(without_secrets(model.to_json()))


async def get_scale_set(request: web.Request) -> web.Response:
    model = await orchestrator_of(request).scale_sets.get(ref(request))
    return web.json_response((await shown(request, [model]))[0])


async def delete_scale_set(request: web.Request) -> web.Response:
    """Azure's long-running DELETE: 202 and the operation to poll, InProgress until every instance is gone (204 when
    there is no such scale set)."""
    try:
        model, record = await orchestrator_of(request).scale_set_deletions.begin(ref(request))
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=202, headers=operation_headers(request, model, record.name))


async def instance_docs(request: web.Request) -> tuple[ScaleSet, list[dict[str, Any]]]:
    scale_sets = orchestrator_of(request).scale_sets
    model = await scale_sets.get(ref(request))
    docs = [
        arm.instance_doc(
            model,
            info.view,
            running=info.running,
            ports=info.ports,
            has_previous_os_disk=info.has_previous_os_disk,
            health_detail=info.health_detail,
            address=info.address,
            host=info.host,
        )
        for info in await scale_sets.instances(model.ref)
    ]
    # What holds each instance back while an attempt runs (the attempt's own recent listing serves: no extra cost).
    latest = await orchestrator_of(request).upgrades.latest(model.ref)
    if latest is not None and not latest.attempt.status.terminal:
        causes = await orchestrator_of(request).upgrades.why(model.ref)
        now = time.time()
        for doc in docs:
            mine = [arm.cause_doc(c, now) for c in causes if int(doc["instanceId"]) in c.instances]
            doc["properties"]["overhaul"]["why"] = mine
    return model, docs


async def list_instances(request: web.Request) -> web.Response:
    _, docs = await instance_docs(request)
    return web.json_response({"value": docs})


async def scale_set_instance_view(request: web.Request) -> web.Response:
    model, docs = await instance_docs(request)
    return web.json_response(arm.scale_set_instance_view(model, docs))


async def one_instance(request: web.Request) -> dict[str, Any]:
    _, docs = await instance_docs(request)
    wanted = request.match_info["instance"]
    found = next((d for d in docs if d["instanceId"] == wanted), None)
    if found is None:
        raise NotFound(f"instance {wanted} does not exist", "NotFound")
    return found


async def instance_view(request: web.Request) -> web.Response:
    return web.json_response((await one_instance(request))["properties"]["instanceView"])


async def get_instance(request: web.Request) -> web.Response:
    """One instance, as the list has it (`az vmss show --instance-id N`)."""
    return web.json_response(await one_instance(request))


async def reimage(request: web.Request) -> web.Response:
    """reimage, and reimageall (`az vmss reimage --instance-ids`): a new OS disk from the model's image. Azure's
    reimageall also makes the data disks anew; here a reimage never touches data disks (docs/azure.md)."""
    scale_sets = orchestrator_of(request).scale_sets
    model = await scale_sets.get(ref(request))
    await scale_sets.reimage(model.ref, await instance_ids(request, model))
    return web.Response(status=200)


ROUTES: list[Route] = [
    ("GET", SUB + "/providers/Microsoft.Compute/virtualMachineScaleSets", list_scale_sets),
    ("GET", VMSS, list_scale_sets),
    ("PUT", VMSS + "/{name}", put_scale_set),
    ("PATCH", VMSS + "/{name}", patch_scale_set),
    ("GET", VMSS + "/{name}", get_scale_set),
    ("DELETE", VMSS + "/{name}", delete_scale_set),
    ("GET", VMSS + "/{name}/virtualMachines", list_instances),
    ("GET", VMSS + "/{name}/instanceView", scale_set_instance_view),
    ("GET", VMSS + "/{name}/virtualMachines/{instance}", get_instance),
    ("GET", VMSS + "/{name}/virtualMachines/{instance}/instanceView", instance_view),
    ("POST", VMSS + "/{name}/reimage", reimage),
    ("POST", VMSS + "/{name}/reimageall", reimage),
]
