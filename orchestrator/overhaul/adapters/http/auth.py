"""Who may call: every path but the public ones needs ``Authorization: Bearer`` with the API token (compared in
constant time) or an access token overhaul signed (a JWT, tokens.py); ARM paths need a dated api-version."""

from __future__ import annotations

import hmac
import re
import time

from aiohttp import web

from overhaul.adapters.http.requests import Handler, error
from overhaul.adapters.http.tokens import TokenRefused, Tokens

# Automatic OS image upgrades need api-version 2018-10-01 or later; every later dated version speaks the same shapes.
OLDEST_API_VERSION = "2018-10-01"
API_VERSION = re.compile(r"20[0-9]{2}-[01][0-9]-[0-3][0-9](-preview)?")
# /metadata/endpoints is public as Azure's is (clients read where to sign in from it); /msi/token guards itself.
PUBLIC_PATHS = frozenset({"/metrics", "/healthz", "/metadata/endpoints", "/msi/token"})
TOKEN_KEY = web.AppKey("token", str)
TOKENS_KEY = web.AppKey("tokens", Tokens)


def refused(code: str, message: str) -> web.Response:
    response = error(401, code, message)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def authenticate(request: web.Request) -> web.Response | None:
    """None when the caller presented a good credential; else the 401 to answer."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return refused("AuthenticationFailed", "a valid 'Authorization: Bearer <token>' header is required")
    if token.count(".") == 2:
        try:
            request.app[TOKENS_KEY].verify(token, time.time())
        except TokenRefused as exc:
            return refused(exc.code, exc.message)
        return None
    # Bytes, so a token of any characters is compared (compare_digest refuses non-ASCII str).
    presented = token.encode("utf-8", "surrogateescape")
    expected = request.app[TOKEN_KEY].encode()
    # An empty credential never matches, whatever the server holds (serve refuses an empty token file anyway).
    if not expected or not hmac.compare_digest(presented, expected):
        return refused("AuthenticationFailed", "a valid 'Authorization: Bearer <token>' header is required")
    return None


def api_version_problem(request: web.Request) -> web.Response | None:
    version = request.query.get("api-version")
    if not version:
        return error(400, "MissingApiVersionParameter", "the api-version query parameter is required", "api-version")
    if not API_VERSION.fullmatch(version) or version[:10] < OLDEST_API_VERSION:
        return error(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version[:40]}' is invalid. The supported versions are '{OLDEST_API_VERSION}' and "
            "later dated versions (YYYY-MM-DD, optionally -preview), as Azure's automatic OS upgrades require.",
            "api-version",
        )
    return None


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    problem = authenticate(request)
    if problem is None and request.path.lower().startswith("/subscriptions/"):
        problem = api_version_problem(request)
    return problem if problem is not None else await handler(request)
