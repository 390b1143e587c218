"""Several orchestrators on one shared store: a standby answers reads itself (from the store) and forwards every
write to the leader (its API address from the lease), the caller's token passed on. Operation URLs in the leader's
answer are given back on the address the caller used. With no leader (mid-failover), or one that does not answer,
a write is 503 NoLeader with Retry-After: it was not made (a forward is never sent twice), and trying again later
reaches the new leader."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from overhaul.adapters.http.requests import BODY_TIMEOUT_KEY, Handler, RequestTimeout, error
from overhaul.runtime.leadership import Leadership

log = logging.getLogger(__name__)

LEADERSHIP_KEY = web.AppKey("leadership", Leadership)
FORWARD_SESSION_KEY = web.AppKey("forward_session", aiohttp.ClientSession)
# What the forward trusts when the leader speaks https: the replicas' shared local CA (--tls auto); None: the
# system's trust (an operator's certificate).
FORWARD_TLS_KEY = web.AppKey("forward_tls", ssl.SSLContext)
WRITES = frozenset({"PUT", "PATCH", "POST", "DELETE"})
FORWARDED = "X-Overhaul-Forwarded-By"
RETRY_AFTER_SECONDS = 2
# Seconds a forwarded write may take (the leader answers long work with 202 and an operation to poll).
FORWARD_TIMEOUT = 60.0
PASSED_ON = ("Authorization", "Content-Type", "Accept", "If-Match", "If-None-Match", "x-ms-client-request-id")
GIVEN_BACK = ("Content-Type", "Location", "Azure-AsyncOperation", "Retry-After", "ETag", "x-ms-request-id")


def no_leader(why: str) -> web.Response:
    response = error(503, "NoLeader", f"no orchestrator leads the fleet now ({why}): the write was not made")
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@web.middleware
async def forward_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    leadership = request.app.get(LEADERSHIP_KEY)
    if leadership is None or leadership.leader or request.method not in WRITES:
        return await handler(request)
    if FORWARDED in request.headers:  # sent by a replica that took this one for the leader: not sent on again
        return no_leader("the replica this was forwarded to no longer leads")
    holder = await leadership.lease.holder()
    if holder is None or not holder.address:
        return no_leader("the lease is free: a new leader is being chosen")
    return await forward(request, holder.address, holder.name)


async def forward(request: web.Request, leader: str, name: str) -> web.StreamResponse:
    session = request.app[FORWARD_SESSION_KEY]
    headers = {k: v for k in PASSED_ON if (v := request.headers.get(k)) is not None}
    headers[FORWARDED] = request.host
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            body = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {request.app[BODY_TIMEOUT_KEY]:g}s") from None
    try:
        async with (
            asyncio.timeout(FORWARD_TIMEOUT),
            session.request(
                request.method, leader + request.rel_url.raw_path_qs, data=body, headers=headers, allow_redirects=False
            ) as answer,
        ):
            payload = await answer.read()
            given: dict[str, Any] = {k: v for k in GIVEN_BACK if (v := answer.headers.get(k)) is not None}
            status = answer.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("forwarding %s %s to the leader %s failed: %s", request.method, request.path, name, exc)
        return no_leader(f"the leader {name} did not answer")
    origin = str(request.url.origin())
    for key in ("Location", "Azure-AsyncOperation"):
        if key in given and given[key].startswith(leader):
            given[key] = origin + given[key][len(leader) :]
    return web.Response(status=status, body=payload, headers=given)


async def open_session(app: web.Application) -> AsyncIterator[None]:
    trust = app.get(FORWARD_TLS_KEY)
    connector = aiohttp.TCPConnector(ssl=trust) if trust is not None else None
    app[FORWARD_SESSION_KEY] = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT), connector=connector
    )
    yield
    await app[FORWARD_SESSION_KEY].close()


async def leadership_doc(leadership: Leadership | None) -> dict[str, Any]:
    """What /healthz says of leadership: this replica's role, the lease's holder and token."""
    if leadership is None:
        return {}
    holder = await leadership.lease.holder()
    return {
        "role": "leader" if leadership.leader else "standby",
        "lease": {
            "holder": holder.name if holder else None,
            "address": holder.address if holder else None,
            "token": leadership.lease.token if leadership.leader else None,
            "state": "held" if leadership.leader else ("held by another" if holder else "free"),
        },
    }
