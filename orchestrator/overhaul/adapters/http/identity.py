"""Signing in as Azure clients do: the cloud's metadata (``/metadata/endpoints``, public, as Azure's), a
managed-identity token endpoint speaking App Service's protocol (``/msi/token``: MSAL and azure-identity use it when
``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set; answered only to loopback callers holding the secret in
STATE_DIR/identity.secret), and the subscriptions and tenant a token gives access to."""

from __future__ import annotations

import hmac
import ipaddress
import time
from typing import Any

from aiohttp import web

from overhaul.adapters.http.auth import TOKENS_KEY
from overhaul.adapters.http.origin import TRUSTED_PROXIES_KEY
from overhaul.adapters.http.requests import Route, orchestrator_of
from overhaul.adapters.http.tokens import AUDIENCES, Tokens

IDENTITY_SECRET_KEY = web.AppKey("identity_secret", str)
IDENTITY_HEADER = "X-IDENTITY-HEADER"
# Subscriptions are namespaces here: this one always exists (the overhaul CLI's default).
DEFAULT_SUBSCRIPTION = "local"
CLOUD_NAME = "overhaul"


async def metadata_endpoints(request: web.Request) -> web.Response:
    """Azure's cloud metadata (api-version 2022-09-01 shape) on the address the caller used: `az cloud register
    --endpoint-resource-manager URL` reads it."""
    origin = str(request.url.origin()) + "/"
    doc = {
        "name": CLOUD_NAME,
        "resourceManager": origin,
        "portal": origin,
        "gallery": origin,
        "authentication": {
            "loginEndpoint": origin,
            "audiences": sorted(AUDIENCES, key=len, reverse=True),
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "suffixes": {"storage": "storage.overhaul", "keyVaultDns": "vault.overhaul", "acrLoginServer": "cr.overhaul"},
    }
    return web.json_response(doc)


def _identity_refusal(request: web.Request) -> tuple[int, str] | None:
    secret = request.app.get(IDENTITY_SECRET_KEY, "")
    if not secret:
        return 404, "the managed identity endpoint is off (http.managed_identity)"
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    address = peer[0] if isinstance(peer, tuple) else ""
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback or address in request.app.get(TRUSTED_PROXIES_KEY, frozenset()):
        return 403, "the managed identity endpoint answers callers on this machine only"
    presented = request.headers.get(IDENTITY_HEADER, "").encode("utf-8", "surrogateescape")
    if not presented or not hmac.compare_digest(presented, secret.encode()):
        return 401, f"the {IDENTITY_HEADER} header must hold the secret in STATE_DIR/identity.secret"
    return None


async def msi_token(request: web.Request) -> web.Response:
    """App Service's managed identity protocol (api-version 2019-08-01): GET ?resource=…, the secret in a header."""
    refusal = _identity_refusal(request)
    if refusal is not None:
        status, message = refusal
        return web.json_response({"statusCode": status, "message": message}, status=status)
    resource = request.query.get("resource", "")
    if resource.removesuffix("/.default") not in AUDIENCES and resource not in AUDIENCES:
        message = f"resource {resource[:200]!r} is not one overhaul issues tokens for: {sorted(AUDIENCES)[0]!r}"
        return web.json_response({"statusCode": 400, "message": message}, status=400)
    tokens = request.app[TOKENS_KEY]
    token, expires = tokens.issue(time.time(), resource.removesuffix("/.default"))
    doc = {
        "access_token": token,
        "expires_on": str(expires),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": tokens.identity.client_id,
    }
    return web.json_response(doc)


def subscription_doc(subscription: str, tokens: Tokens) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription}",
        "subscriptionId": subscription,
        "tenantId": tokens.identity.tenant,
        "displayName": subscription,
        "state": "Enabled",
        "subscriptionPolicies": {"locationPlacementId": "Internal_2014-09-01", "spendingLimit": "Off"},
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
    }


async def subscriptions_in_use(request: web.Request) -> list[str]:
    """The default subscription, then every other one a scale set is in."""
    names = {model.subscription for model in await orchestrator_of(request).scale_sets.list()}
    return [DEFAULT_SUBSCRIPTION, *sorted(names - {DEFAULT_SUBSCRIPTION}, key=str.lower)]


async def list_subscriptions(request: web.Request) -> web.Response:
    tokens = request.app[TOKENS_KEY]
    docs = [subscription_doc(s, tokens) for s in await subscriptions_in_use(request)]
    return web.json_response({"value": docs, "count": {"type": "Total", "value": len(docs)}})


async def get_subscription(request: web.Request) -> web.Response:
    """Any subscription id is a namespace overhaul keeps resources in (created by the first one put in it)."""
    return web.json_response(subscription_doc(request.match_info["subscription"], request.app[TOKENS_KEY]))


async def list_tenants(request: web.Request) -> web.Response:
    tenant = request.app[TOKENS_KEY].identity.tenant
    doc = {
        "id": f"/tenants/{tenant}",
        "tenantId": tenant,
        "tenantCategory": "Home",
        "displayName": CLOUD_NAME,
        "defaultDomain": "overhaul",
        "domains": ["overhaul"],
    }
    return web.json_response({"value": [doc]})


def add_routes(router: web.UrlDispatcher) -> None:
    """The routes outside ARM's paths."""
    router.add_get("/metadata/endpoints", metadata_endpoints)
    router.add_get("/msi/token", msi_token)


ROUTES: list[Route] = [
    ("GET", "/subscriptions", list_subscriptions),
    ("GET", "/subscriptions/{subscription}", get_subscription),
    ("GET", "/tenants", list_tenants),
]
