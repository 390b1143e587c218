"""The four handlers of a resource kept by name alone (a gallery, a load balancer): PUT, GET, list, DELETE."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from overhaul.adapters.http.requests import RG, SUB, Route, body_object, deleted, orchestrator_of, scope, written
from overhaul.runtime.orchestrator import Orchestrator
from overhaul.runtime.resources import NamedResources


class Parser(Protocol):
    def __call__(self, doc: Any, *, name: str, resource_group: str, subscription: str) -> Any: ...


Render = Callable[[Orchestrator, Any], Awaitable[Mapping[str, Any]]]


async def as_json(_: Orchestrator, resource: Any) -> Mapping[str, Any]:
    rendered: Mapping[str, Any] = resource.to_json()
    return rendered


def named_routes(
    provider: str,
    param: str,
    aggregate: Callable[[Orchestrator], NamedResources[Any]],
    parse: Parser,
    render: Render = as_json,
) -> list[Route]:
    """Routes for ``{provider}`` (e.g. "Microsoft.Compute/galleries"), its items named by the path's ``{param}``;
    ``render`` makes a resource's document (its ``to_json()`` unless it needs more than itself)."""
    item = f"{RG}/providers/{provider}/{{{param}}}"

    def resources(request: web.Request) -> NamedResources[Any]:
        return aggregate(orchestrator_of(request))

    async def doc(request: web.Request, resource: Any) -> Mapping[str, Any]:
        return await render(orchestrator_of(request), resource)

    async def put(request: web.Request) -> web.Response:
        m = request.match_info
        body = await body_object(request)
        resource = parse(body, name=m[param], resource_group=m["rg"], subscription=m["sub"])
        created = await resources(request).put(resource)
        return written(await doc(request, await resources(request).get(resource.name, scope(request))), created)

    async def get(request: web.Request) -> web.Response:
        return web.json_response(
            await doc(request, await resources(request).get(request.match_info[param], scope(request)))
        )

    async def list_all(request: web.Request) -> web.Response:
        return web.json_response(
            {"value": [await doc(request, r) for r in await resources(request).list(scope(request))]}
        )

    async def delete(request: web.Request) -> web.Response:
        return await deleted(resources(request).delete(request.match_info[param], scope(request)))

    return [
        ("GET", f"{SUB}/providers/{provider}", list_all),
        ("GET", f"{RG}/providers/{provider}", list_all),
        ("PUT", item, put),
        ("GET", item, get),
        ("DELETE", item, delete),
    ]
