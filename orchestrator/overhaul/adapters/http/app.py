"""The Azure-shaped REST API (aiohttp): the application, its middlewares (bearer-token auth, api-version, ARM
errors, the audit log) and the service's own endpoints (/healthz, /metrics, /openapi.json, Prometheus discovery).
The ARM resources' handlers are in ``routes``, one module per resource group."""

from __future__ import annotations

import logging
import re
import ssl
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from overhaul.adapters.http import identity
from overhaul.adapters.http.auth import TOKEN_KEY, TOKENS_KEY, bearer_auth
from overhaul.adapters.http.gate import GATE_KEY, GateHolder, gate_middleware
from overhaul.adapters.http.leader import (
    FORWARD_TLS_KEY,
    LEADERSHIP_KEY,
    forward_writes,
    leadership_doc,
    open_session,
)
from overhaul.adapters.http.metrics import OrchestratorMetrics
from overhaul.adapters.http.openapi import openapi_document
from overhaul.adapters.http.origin import TRUSTED_PROXIES_KEY, forwarded_origin
from overhaul.adapters.http.requests import (
    BODY_TIMEOUT_KEY,
    HANDSHAKE_TIMEOUT_KEY,
    ORCHESTRATOR_KEY,
    ClientGone,
    Handler,
    RequestTimeout,
    Route,
    error,
    orchestrator_of,
)
from overhaul.adapters.http.routes import (
    catalogue,
    deployments,
    event_subscriptions,
    gallery,
    groups,
    hosts,
    kept,
    lifecycle_hooks,
    listing,
    maintenance,
    network,
    scale_sets,
    upgrades,
)
from overhaul.adapters.http.routes.groups import require_group
from overhaul.adapters.http.tokens import Tokens
from overhaul.core.arm_json import ModelError
from overhaul.core.errors import Conflict, InvalidInput, NotFound, OverhaulError, Unavailable
from overhaul.runtime.leadership import Leadership
from overhaul.runtime.orchestrator import Orchestrator
from overhaul.runtime.parts import EngineFailed

log = logging.getLogger(__name__)
audit_log = logging.getLogger("overhaul.audit")
MAX_BODY_BYTES = 1024 * 1024
# A request body that has not arrived within this many seconds gets 408.
BODY_TIMEOUT = 30.0
# What a 503 tells a client to wait before trying again (the engine restarting, storage failing).
RETRY_AFTER_SECONDS = 5
WRITES = frozenset({"PUT", "PATCH", "POST", "DELETE"})
METRICS_KEY = web.AppKey("metrics", OrchestratorMetrics)
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)

STATUS: dict[type[OverhaulError], int] = {
    RequestTimeout: 408,
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    EngineFailed: 502,
    Unavailable: 503,
}
ARM_ROUTES: list[Route] = [
    *identity.ROUTES,
    *groups.ROUTES,
    *deployments.ROUTES,
    *kept.ROUTES,
    *listing.ROUTES,
    *scale_sets.ROUTES,
    *upgrades.ROUTES,
    *lifecycle_hooks.ROUTES,
    *network.ROUTES,
    *gallery.ROUTES,
    *catalogue.ROUTES,
    *hosts.ROUTES,
    *maintenance.ROUTES,
    *event_subscriptions.ROUTES,
]


def status_of(exc: OverhaulError) -> int:
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)


@web.middleware
async def arm_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in ARM's shape: {"error": {"code", "message", "target"}}."""
    try:
        return await handler(request)
    except ClientGone:
        # Nobody is left to answer: one debug line, no traceback, no 5xx counted.
        log.debug("%s %s: the client went away before its body arrived", request.method, request.path)
        return web.Response(status=499)
    except OverhaulError as exc:
        response = error(status_of(exc), exc.code, exc.message, exc.target, exc.details)
        if response.status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    except ModelError as exc:
        return error(400, "InvalidParameter", str(exc), exc.path)
    except web.HTTPRequestEntityTooLarge:
        return error(413, "RequestEntityTooLarge", f"the request body is larger than {request.app[MAX_BODY_KEY]} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status, exc.reason.replace(" ", ""))
        return error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "InternalServerError", "the request failed; the orchestrator's log says why")


@web.middleware
async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per write (and per refused caller): method, resource, outcome, caller address."""
    response = await handler(request)
    if request.method in WRITES or response.status == 401:
        caller = request.remote or "unknown"
        level = logging.INFO if response.status < 400 else logging.WARNING
        fields = {"method": request.method, "resource": request.path, "status": response.status, "caller": caller}
        audit_log.log(
            level,
            "%s %s -> %s from %s",
            request.method,
            request.path,
            response.status,
            caller,
            extra={"fields": fields},
        )
    return response


async def healthz(request: web.Request) -> web.Response:
    """200 while the orchestrator can act; 503 naming the problem while its engine is down or its storage takes no
    writes. Hosts whose engines did not answer when last asked are named, and leave it 200."""
    orchestrator = orchestrator_of(request)
    engine = await orchestrator.engine_problem()
    storage = await orchestrator.storage_check()
    doc: dict[str, Any] = {"status": "ok" if engine is None and storage is None else "unavailable"}
    doc |= {"engine": engine or "ok", "storage": storage or "ok"}
    # A host that does not answer holds only its own instances: named here, and the orchestrator stays available.
    doc["hosts"] = {host: f"unavailable: {why}" for host, why in orchestrator.host_groups.down().items()} or "ok"
    doc |= await leadership_doc(request.app.get(LEADERSHIP_KEY))
    if engine is None and storage is None:
        return web.json_response(doc)
    return web.json_response(doc, status=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[METRICS_KEY].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def prometheus_targets(request: web.Request) -> web.Response:
    """Every agent's metrics address in Prometheus' HTTP service-discovery format (``http_sd_configs``)."""
    scale_sets = orchestrator_of(request).scale_sets
    groups: list[dict[str, Any]] = []
    for model in await scale_sets.list():
        if not model.uses_agent:
            continue
        for info in await scale_sets.instances(model.ref):
            port = info.ports.get(model.engine.agent_port)
            if port is None:
                continue
            labels = {
                "scale_set": model.name,
                "resource_group": model.resource_group,
                "instance": info.name,
                "instance_id": str(info.instance_id),
                "version": info.view.version or "",
            }
            groups.append({"targets": [f"{info.address}:{port}"], "labels": labels})
    return web.json_response(groups)


def arm_path(template: str) -> str:
    """ARM compares paths case-insensitively: each literal segment of the template matches in any case."""
    segments = []
    for number, segment in enumerate(template.split("/")):
        literal = segment and not segment.startswith("{")
        segments.append(f"{{_{number}:(?i:{re.escape(segment)})}}" if literal else segment)
    return "/".join(segments)


def build_app(
    orchestrator: Orchestrator,
    token: str,
    orchestrator_metrics: OrchestratorMetrics,
    *,
    body_timeout: float = BODY_TIMEOUT,
    max_body_bytes: int = MAX_BODY_BYTES,
    handshake_timeout: float = 10.0,
    leadership: Leadership | None = None,
    trusted_proxies: frozenset[str] = frozenset(),
    identity_secret: str = "",
    forward_tls: ssl.SSLContext | None = None,
) -> web.Application:
    """``leadership``: this orchestrator shares its store with others (a standby forwards writes to the leader).
    ``trusted_proxies``: addresses whose forwarding headers say how callers reached the API. ``identity_secret``:
    what a caller of the managed identity endpoint presents ("" turns the endpoint off). ``forward_tls``: what a
    standby's forward to the leader trusts (None: the system's CAs)."""
    middlewares = [gate_middleware, forwarded_origin, audit, arm_errors, bearer_auth, forward_writes, require_group]
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    if leadership is not None:
        app[LEADERSHIP_KEY] = leadership
        if forward_tls is not None:
            app[FORWARD_TLS_KEY] = forward_tls
        app.cleanup_ctx.append(open_session)
    app[GATE_KEY] = GateHolder()
    app[TRUSTED_PROXIES_KEY] = trusted_proxies
    app[ORCHESTRATOR_KEY] = orchestrator
    app[BODY_TIMEOUT_KEY] = body_timeout
    app[HANDSHAKE_TIMEOUT_KEY] = handshake_timeout
    app[TOKEN_KEY] = token
    app[TOKENS_KEY] = Tokens(token)
    app[identity.IDENTITY_SECRET_KEY] = identity_secret
    app[METRICS_KEY] = orchestrator_metrics
    app[MAX_BODY_KEY] = max_body_bytes
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/prometheus/targets", prometheus_targets)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    identity.add_routes(r)
    for method, path, handler in ARM_ROUTES:
        r.add_route(method, arm_path(path), handler)
    return app
