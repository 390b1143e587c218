"""Resources kept as documents (runtime/kept.py): managed images, and virtual networks, public IP addresses and
network security groups — kept as written and returned with provisioningState Succeeded, not acted upon."""

from __future__ import annotations

from aiohttp import web

from overhaul.adapters.http.requests import RG, SUB, Route, body_object, deleted, orchestrator_of, written
from overhaul.runtime.kept import PARSERS


def kept_routes(type_: str) -> list[Route]:
    item = f"{RG}/providers/{type_}/{{name}}"

    async def put(request: web.Request) -> web.Response:
        m = request.match_info
        body = await body_object(request)
        resource, created = await orchestrator_of(request).kept.put(type_, m["sub"], m["rg"], m["name"], body)
        return written(resource.doc, created)

    async def get(request: web.Request) -> web.Response:
        m = request.match_info
        return web.json_response((await orchestrator_of(request).kept.get(type_, m["sub"], m["rg"], m["name"])).doc)

    async def list_all(request: web.Request) -> web.Response:
        m = request.match_info
        found = await orchestrator_of(request).kept.list(type_, m["sub"], m.get("rg"))
        return web.json_response({"value": [r.doc for r in found]})

    async def delete(request: web.Request) -> web.Response:
        m = request.match_info
        return await deleted(orchestrator_of(request).kept.delete(type_, m["sub"], m["rg"], m["name"]))

    return [
        ("GET", f"{SUB}/providers/{type_}", list_all),
        ("GET", f"{RG}/providers/{type_}", list_all),
        ("PUT", item, put),
        ("GET", item, get),
        ("DELETE", item, delete),
    ]


ROUTES: list[Route] = [route for type_ in PARSERS for route in kept_routes(type_)]
