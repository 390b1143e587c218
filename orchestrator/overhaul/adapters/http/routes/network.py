"""Microsoft.Network/loadBalancers: load balancers and their probes (a scale set's health source)."""

from __future__ import annotations

from aiohttp import web

from overhaul.adapters.http.requests import RG, Route, orchestrator_of, scope
from overhaul.adapters.http.routes.named import named_routes
from overhaul.core.errors import NotFound
from overhaul.core.network import parse_load_balancer

PROVIDER = "Microsoft.Network/loadBalancers"
LB = RG + f"/providers/{PROVIDER}/{{lb}}"


async def list_probes(request: web.Request) -> web.Response:
    doc = (await orchestrator_of(request).load_balancers.get(request.match_info["lb"], scope(request))).to_json()
    return web.json_response({"value": doc["properties"]["probes"]})


async def get_probe(request: web.Request) -> web.Response:
    doc = (await orchestrator_of(request).load_balancers.get(request.match_info["lb"], scope(request))).to_json()
    wanted = request.match_info["probe"].lower()
    found = next((p for p in doc["properties"]["probes"] if p["name"].lower() == wanted), None)
    if found is None:
        raise NotFound(f"load balancer {doc['name']} has no probe {request.match_info['probe']}", "NotFound")
    return web.json_response(found)


ROUTES: list[Route] = [
    *named_routes(PROVIDER, "lb", lambda o: o.load_balancers, parse_load_balancer),
    ("GET", LB + "/probes", list_probes),
    ("GET", LB + "/probes/{probe}", get_probe),
]
