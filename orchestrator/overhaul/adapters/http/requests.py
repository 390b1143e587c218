"""What every handler reads from a request (its body, the orchestrator, the scope, a scale set's reference, the
instance ids) and the answers ARM shapes alike (DELETE's 200/204, a long-running operation's 202)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import ClientConnectionError, web

from overhaul.adapters.http import arm
from overhaul.core.errors import InvalidInput, NotFound, OverhaulError
from overhaul.core.model import ScaleSet, ScaleSetRef
from overhaul.core.naming import Scope, operation_path
from overhaul.core.rollout import Attempt, AttemptStatus
from overhaul.runtime.orchestrator import Orchestrator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]  # (method, ARM path template, handler)

ORCHESTRATOR_KEY = web.AppKey("orchestrator", Orchestrator)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
HANDSHAKE_TIMEOUT_KEY = web.AppKey("handshake_timeout", float)  # a webhook's validation handshake, seconds
# ARM documents nest a dozen levels at most; deeper ones are refused before anything walks them.
MAX_JSON_DEPTH = 64
INSTANCE_ID = re.compile(r"[0-9]{1,6}")
CANCEL_SUFFIX = ".cancel"

SUB = "/subscriptions/{sub}"
RG = SUB + "/resourceGroups/{rg}"


class RequestTimeout(OverhaulError):
    code = "RequestTimeout"


class ClientGone(Exception):
    """The client closed its connection while its request body was on the way."""


def json_depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests deeper than ``limit`` (walked without recursion)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


async def body_json(request: web.Request) -> Any:
    timeout = request.app[BODY_TIMEOUT_KEY]
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g}s") from None
    except (ConnectionError, ClientConnectionError) as exc:
        raise ClientGone from exc
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {str(exc)[:200]}", "InvalidRequestContent") from exc
    if json_depth_exceeds(doc, MAX_JSON_DEPTH):
        raise InvalidInput(
            f"the request body nests deeper than {MAX_JSON_DEPTH} levels: it is not an ARM document",
            "InvalidRequestContent",
        )
    return doc


async def body_object(request: web.Request) -> Mapping[str, Any]:
    """A body Azure sends as a JSON object (or none at all): anything else is a 400 naming the body."""
    body = await body_json(request)
    if not isinstance(body, Mapping):
        raise InvalidInput(f"the request body must be a JSON object, got {type(body).__name__}", target="")
    return body


def orchestrator_of(request: web.Request) -> Orchestrator:
    return request.app[ORCHESTRATOR_KEY]


def scope(request: web.Request) -> Scope:
    """The subscription and resource group (when the path names one) a request reaches resources through."""
    return Scope(request.match_info["sub"], request.match_info.get("rg"))


def ref(request: web.Request) -> ScaleSetRef:
    m = request.match_info
    return ScaleSetRef(m["sub"], m["rg"], m["name"])


async def instance_ids(request: web.Request, model: ScaleSet, *, required: bool = False) -> list[int]:
    """The body's ``instanceIds`` (Azure's VirtualMachineScaleSetVMInstanceIDs); none means every instance, unless
    they are ``required`` (VirtualMachineScaleSetVMInstanceRequiredIDs)."""
    body = await body_object(request)
    raw_ids = body.get("instanceIds")
    if raw_ids is None and required:
        raise InvalidInput('instanceIds: is required, e.g. ["0", "3"]', target="instanceIds")
    if raw_ids is None or raw_ids == ["*"]:  # Azure takes "*" for every instance (az vmss update-instances '*')
        return list(range(model.capacity))
    if isinstance(raw_ids, list) and all(
        (isinstance(i, int) and not isinstance(i, bool)) or (isinstance(i, str) and INSTANCE_ID.fullmatch(i))
        for i in raw_ids
    ):
        return [int(i) for i in raw_ids]
    raise InvalidInput('instanceIds: must be a list of instance ids such as ["0", "3"]', target="instanceIds")


def error(
    status: int, code: str, message: str, target: str | None = None, details: tuple[Mapping[str, str], ...] = ()
) -> web.Response:
    return web.json_response(arm.error_doc(code, message, target, details), status=status)


def written(doc: Mapping[str, Any], created: bool) -> web.Response:
    """A PUT's answer: 201 when it created the resource, 200 when it updated one."""
    return web.json_response(doc, status=201 if created else 200)


async def deleted(deletion: Awaitable[None]) -> web.Response:
    """ARM: 200 when it was deleted, 204 when there was nothing to delete (here, through this id)."""
    try:
        await deletion
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=200)


# What a long-running operation's answers tell a client to wait before polling again (az and the SDK otherwise wait
# their default, 30 s, between polls).
POLL_AFTER_SECONDS = 1


def operation_headers(request: web.Request, model: ScaleSet, operation: str) -> dict[str, str]:
    """ARM's long-running-operation protocol: absolute URLs of an operation resource a client polls."""
    path = operation_path(model.subscription, model.location, operation)
    url = f"{request.url.origin()}{path}?api-version={request.query.get('api-version')}"
    return {"Azure-AsyncOperation": url, "Location": url, "Retry-After": str(POLL_AFTER_SECONDS)}


def accepted(request: web.Request, model: ScaleSet, attempt: Attempt, *, operation: str | None = None) -> web.Response:
    """202 with the attempt's record and the operation to poll (the attempt's own, unless ``operation`` names
    another); an attempt refused before it began (too many unhealthy instances) is Azure's 409 with its code."""
    if operation is None and attempt.status is AttemptStatus.FAULTED and attempt.error_code:
        return error(409, attempt.error_code, attempt.error_message or attempt.error_code)
    headers = operation_headers(request, model, operation or attempt.id)
    return web.json_response(arm.latest_record(attempt, model), status=202, headers=headers)
