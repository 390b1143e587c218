"""Event subscriptions in Event Grid's shape (``{scope}/providers/Microsoft.EventGrid/eventSubscriptions/{name}`` on a
scale set or a resource group): create (after the webhook's validation handshake), read, list, delete, and the
dead-lettered deliveries (ours: ``…/{name}/deadLetteredEvents``; Event Grid writes them to a storage blob)."""

from __future__ import annotations

from aiohttp import web

from overhaul.adapters.http.arm import iso
from overhaul.adapters.http.requests import (
    HANDSHAKE_TIMEOUT_KEY,
    RG,
    Route,
    body_object,
    deleted,
    orchestrator_of,
    ref,
    written,
)
from overhaul.adapters.http.routes.scale_sets import VMSS
from overhaul.adapters.webhook import handshake
from overhaul.core.cloud_events import parse_event_subscription
from overhaul.core.errors import InvalidInput
from overhaul.core.naming import scale_set_id

PROVIDER = "/providers/Microsoft.EventGrid/eventSubscriptions"


async def scope_of(request: web.Request) -> str:
    """The resource the subscriptions are on; a scale set must exist."""
    m = request.match_info
    if "name" in m:
        model = await orchestrator_of(request).scale_sets.get(ref(request))
        return scale_set_id(model.subscription, model.resource_group, model.name)
    return f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}"


async def subscription_id(request: web.Request) -> str:
    return f"{await scope_of(request)}{PROVIDER}/{request.match_info['subscription']}"


async def put_subscription(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    subscription = parse_event_subscription(
        await body_object(request), name=request.match_info["subscription"], scope=await scope_of(request)
    )
    refused = await handshake(subscription.endpoint_url, request.app[HANDSHAKE_TIMEOUT_KEY])
    if refused is not None:
        field = "properties.destination.properties.endpointUrl"
        raise InvalidInput(f"{field}: {refused}", "UrlValidationFailed", field)
    created = await orchestrator.event_subscriptions.put(subscription)
    return written(subscription.to_json(), created)


async def get_subscription(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    return web.json_response((await orchestrator.event_subscriptions.get(await subscription_id(request))).to_json())


async def list_subscriptions(request: web.Request) -> web.Response:
    found = await orchestrator_of(request).event_subscriptions.list(await scope_of(request))
    return web.json_response({"value": [s.to_json() for s in found]})


async def delete_subscription(request: web.Request) -> web.Response:
    return await deleted(orchestrator_of(request).event_subscriptions.delete(await subscription_id(request)))


async def dead_lettered(request: web.Request) -> web.Response:
    """Ours: the events that could not be delivered, with the attempts made and the last error."""
    letters = await orchestrator_of(request).event_subscriptions.dead_letters(await subscription_id(request))
    return web.json_response(
        {
            "value": [
                {
                    "event": d.event.to_json(),
                    "deliveryAttempts": d.attempts,
                    "lastError": d.last_error,
                    "deadLetteredAt": iso(d.next_at),
                }
                for d in letters
            ]
        }
    )


ROUTES: list[Route] = [
    route
    for scope in (RG, VMSS + "/{name}")
    for route in (
        ("GET", scope + PROVIDER, list_subscriptions),
        ("PUT", scope + PROVIDER + "/{subscription}", put_subscription),
        ("GET", scope + PROVIDER + "/{subscription}", get_subscription),
        ("DELETE", scope + PROVIDER + "/{subscription}", delete_subscription),
        ("GET", scope + PROVIDER + "/{subscription}/deadLetteredEvents", dead_lettered),
    )
]
