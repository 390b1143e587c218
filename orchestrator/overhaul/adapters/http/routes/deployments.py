"""Microsoft.Resources/deployments: PUT (a long-running operation: 201, then poll Azure-AsyncOperation), GET with
provisioningState and outputs, list, operations, DELETE of the record (runtime/deployments.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overhaul.adapters.http.requests import POLL_AFTER_SECONDS, Route, body_object, deleted, orchestrator_of
from overhaul.core.resources import Resource

GROUP = "/subscriptions/{sub}/resourcegroups/{rg}"
DEPLOYMENTS = GROUP + "/providers/Microsoft.Resources/deployments"
DEPLOYMENT = DEPLOYMENTS + "/{name}"


def public(deployment: Resource) -> dict[str, Any]:
    return {k: v for k, v in deployment.doc.items() if k not in ("operations", "template")}


async def put_deployment(request: web.Request) -> web.Response:
    m = request.match_info
    deployment = await orchestrator_of(request).deployments.put(
        m["sub"], m["rg"], m["name"], await body_object(request)
    )
    status_url = (
        f"{request.url.origin()}{request.path}/operationStatuses/{deployment.name}"
        f"?api-version={request.query.get('api-version')}"
    )
    headers = {"Azure-AsyncOperation": status_url, "Retry-After": str(POLL_AFTER_SECONDS)}
    return web.json_response(public(deployment), status=201, headers=headers)


async def get_deployment(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(public(await orchestrator_of(request).deployments.get(m["sub"], m["rg"], m["name"])))


async def list_deployments(request: web.Request) -> web.Response:
    m = request.match_info
    found = await orchestrator_of(request).deployments.list(m["sub"], m["rg"])
    return web.json_response({"value": [public(d) for d in found]})


async def deployment_status(request: web.Request) -> web.Response:
    m = request.match_info
    deployment = await orchestrator_of(request).deployments.get(m["sub"], m["rg"], m["name"])
    props = deployment.doc["properties"]
    doc: dict[str, Any] = {"status": props["provisioningState"]}
    if "error" in props:
        doc["error"] = props["error"]
    running = doc["status"] in ("Running", "Accepted")
    return web.json_response(doc, headers={"Retry-After": str(POLL_AFTER_SECONDS)} if running else {})


async def deployment_operations(request: web.Request) -> web.Response:
    m = request.match_info
    deployment = await orchestrator_of(request).deployments.get(m["sub"], m["rg"], m["name"])
    return web.json_response({"value": list(deployment.doc.get("operations") or [])})


async def delete_deployment(request: web.Request) -> web.Response:
    m = request.match_info
    return await deleted(orchestrator_of(request).deployments.delete(m["sub"], m["rg"], m["name"]))


ROUTES: list[Route] = [
    ("GET", DEPLOYMENTS, list_deployments),
    ("GET", DEPLOYMENTS + "/", list_deployments),  # az deployment group list asks with the slash
    ("PUT", DEPLOYMENT, put_deployment),
    ("GET", DEPLOYMENT, get_deployment),
    ("DELETE", DEPLOYMENT, delete_deployment),
    ("GET", DEPLOYMENT + "/operationStatuses/{operation}", deployment_status),
    ("GET", DEPLOYMENT + "/operations", deployment_operations),
    ("GET", GROUP + "/deployments/{name}/operations", deployment_operations),  # the path az lists them by
]
