"""How the caller reached the API: behind a reverse proxy the connection says the proxy's scheme and address, so a
trusted proxy's ``Forwarded`` (RFC 7239) or ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` / ``X-Forwarded-For``
headers say it instead — operation URLs (Azure-AsyncOperation, Location) are built on it. Headers from any other
address are ignored: a caller could otherwise send clients' polls anywhere."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from overhaul.adapters.http.requests import Handler

TRUSTED_PROXIES_KEY = web.AppKey("trusted_proxies", frozenset[str])
# host, host:port, [v6]:port — nothing that could carry a path or credentials into a URL.
HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def _last(value: str | None) -> str | None:
    """The value the nearest proxy added (each proxy appends to the list)."""
    if not value:
        return None
    return value.rsplit(",", 1)[-1].strip() or None


def forwarded_by_proxy(request: web.Request) -> dict[str, Any]:
    """What the trusted proxy in front says of the caller: scheme, host, remote (each only when valid)."""
    said: dict[str, str | None]
    if request.forwarded:
        last = request.forwarded[-1]
        said = {"scheme": last.get("proto"), "host": last.get("host"), "remote": last.get("for")}
    else:
        headers = request.headers
        said = {
            "scheme": _last(headers.get("X-Forwarded-Proto")),
            "host": _last(headers.get("X-Forwarded-Host")),
            "remote": _last(headers.get("X-Forwarded-For")),
        }
    changes: dict[str, Any] = {}
    if said["scheme"] and said["scheme"].lower() in ("http", "https"):
        changes["scheme"] = said["scheme"].lower()
    if said["host"] and HOST.fullmatch(said["host"]):
        changes["host"] = said["host"]
    if said["remote"]:
        changes["remote"] = said["remote"].strip('"[]')
    return changes


@web.middleware
async def forwarded_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    proxies = request.app.get(TRUSTED_PROXIES_KEY, frozenset())
    if proxies and request.remote in proxies:
        changes = forwarded_by_proxy(request)
        if changes:
            request = request.clone(**changes)
    return await handler(request)
