"""Microsoft.Resources/resourceGroups: PUT, PATCH (tags), GET, HEAD, DELETE (a long-running operation removing
what the group holds: runtime/groups.py), list; and Azure's ResourceGroupNotFound for a resource put in a group that
does not exist."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from aiohttp import web

from overhaul.adapters.http.requests import POLL_AFTER_SECONDS, Handler, Route, body_object, orchestrator_of, written
from overhaul.core.arm_json import Reader
from overhaul.core.errors import NotFound
from overhaul.core.resources import Resource, parse_resource_group, tags_of

GROUPS = "/subscriptions/{sub}/resourcegroups"
GROUP = GROUPS + "/{rg}"
OPERATION_RESULTS = "/subscriptions/{sub}/operationresults/{operation}"
# What a resource put under a group's providers path needs: the group.
IN_GROUP = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/", re.IGNORECASE)


def group_doc(group: Resource) -> dict[str, Any]:
    """Its document; after a deletion that stopped, why (properties.overhaul.lastDeleteError)."""
    doc = {k: v for k, v in group.doc.items() if k != "error"}
    if "error" in group.doc:
        doc["properties"] = dict(doc.get("properties") or {}) | {"overhaul": {"lastDeleteError": group.doc["error"]}}
    return doc


async def put_group(request: web.Request) -> web.Response:
    m = request.match_info
    group = parse_resource_group(await body_object(request), subscription=m["sub"], name=m["rg"])
    stored, created = await orchestrator_of(request).resource_groups.put(group)
    return written(group_doc(stored), created)


async def patch_group(request: web.Request) -> web.Response:
    """Tags (and managedBy) change; the location does not, as in Azure."""
    m = request.match_info
    groups = orchestrator_of(request).resource_groups
    existing = await groups.get(m["sub"], m["rg"])
    body = await body_object(request)
    merged = dict(existing.doc)
    if "tags" in body:
        merged["tags"] = tags_of(Reader(body, ""))
    if "managedBy" in body:
        merged["managedBy"] = body["managedBy"]
    changed = parse_resource_group(
        {k: merged[k] for k in ("location", "tags", "managedBy") if k in merged}, subscription=m["sub"], name=m["rg"]
    )
    stored, _ = await groups.put(changed)
    return web.json_response(group_doc(stored))


async def get_group(request: web.Request) -> web.Response:
    m = request.match_info
    return web.json_response(group_doc(await orchestrator_of(request).resource_groups.get(m["sub"], m["rg"])))


async def head_group(request: web.Request) -> web.Response:
    """Azure's CheckExistence: 204 when the group exists, 404 when it does not."""
    m = request.match_info
    found = await orchestrator_of(request).resource_groups.find(m["sub"], m["rg"])
    return web.Response(status=204 if found is not None else 404)


async def list_groups(request: web.Request) -> web.Response:
    groups = await orchestrator_of(request).resource_groups.list(request.match_info["sub"])
    return web.json_response({"value": [group_doc(g) for g in groups]})


def operation_token(group: Resource) -> str:
    return base64.urlsafe_b64encode(f"deleteGroup:{group.name}".encode()).decode().rstrip("=")


def group_of_operation(token: str) -> str:
    try:
        kind, _, name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        kind, name = "", ""
    if kind != "deleteGroup" or not name:
        raise NotFound(f"operation {token[:100]} does not exist", "OperationNotFound")
    return name


async def delete_group(request: web.Request) -> web.Response:
    """202 with a Location to poll: 202 while the group's resources are being removed, 200 once it is gone."""
    m = request.match_info
    group = await orchestrator_of(request).resource_groups.begin_delete(m["sub"], m["rg"])
    path = OPERATION_RESULTS.format(sub=m["sub"], operation=operation_token(group))
    url = f"{request.url.origin()}{path}?api-version={request.query.get('api-version')}"
    return web.Response(status=202, headers={"Location": url, "Retry-After": str(POLL_AFTER_SECONDS)})


async def operation_result(request: web.Request) -> web.Response:
    m = request.match_info
    name = group_of_operation(m["operation"])
    group = await orchestrator_of(request).resource_groups.find(m["sub"], name)
    if group is None:
        return web.Response(status=200)
    error = group.doc.get("error")
    if error:  # the delete failed: the group stays with what could not be deleted
        return web.json_response({"error": error}, status=409)
    location = str(request.url)
    return web.Response(status=202, headers={"Location": location, "Retry-After": str(POLL_AFTER_SECONDS)})


@web.middleware
async def require_group(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A resource put in a resource group that does not exist: Azure's 404 ResourceGroupNotFound."""
    if request.method == "PUT":
        found = IN_GROUP.match(request.path)
        if found is not None:
            await orchestrator_of(request).resource_groups.require(found["sub"], found["rg"])
    return await handler(request)


ROUTES: list[Route] = [
    ("GET", GROUPS, list_groups),
    ("PUT", GROUP, put_group),
    ("PATCH", GROUP, patch_group),
    ("GET", GROUP, get_group),
    ("HEAD", GROUP, head_group),
    ("DELETE", GROUP, delete_group),
    ("GET", OPERATION_RESULTS, operation_result),
]
