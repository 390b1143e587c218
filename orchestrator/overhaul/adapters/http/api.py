"""The Azure-shaped REST API (aiohttp): Azure's paths and documents, bearer-token auth, ARM errors."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import ClientConnectionError, web
from prometheus_client import CONTENT_TYPE_LATEST

from overhaul.adapters.http import arm
from overhaul.adapters.http.gate import GATE_KEY, GateHolder, gate_middleware
from overhaul.adapters.http.metrics import OrchestratorMetrics
from overhaul.adapters.http.openapi import openapi_document
from overhaul.core.errors import Conflict, InvalidInput, NotFound, OverhaulError, Unavailable
from overhaul.core.gallery import ImageDefinition, ImageVersion, parse_gallery, parse_image_version
from overhaul.core.model import ModelError, ScaleSet, ScaleSetRef, merge_patch, overlay, without_secrets
from overhaul.core.naming import Scope
from overhaul.core.network import parse_load_balancer
from overhaul.core.rollout import AttemptStatus, StartedBy
from overhaul.runtime.service import EngineFailed, Orchestrator

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1024 * 1024
# A request body that has not arrived within this many seconds gets 408.
BODY_TIMEOUT = 30.0
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
# Automatic OS image upgrades need api-version 2018-10-01 or later; every later dated version speaks the same shapes.
OLDEST_API_VERSION = "2018-10-01"
API_VERSION = re.compile(r"20[0-9]{2}-[01][0-9]-[0-3][0-9](-preview)?")


class RequestTimeout(OverhaulError):
    code = "RequestTimeout"


class ClientGone(Exception):
    """The client closed its connection while its request body was on the way."""


# What a 503 tells a client to wait before trying again (the engine restarting, storage failing).
RETRY_AFTER_SECONDS = 5
# ARM documents nest a dozen levels at most; deeper ones are refused before anything walks them.
MAX_JSON_DEPTH = 64


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


STATUS: dict[type[OverhaulError], int] = {
    RequestTimeout: 408,
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    EngineFailed: 502,
    Unavailable: 503,
}


def status_of(exc: OverhaulError) -> int:
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)


PUBLIC_PATHS = frozenset({"/metrics", "/healthz"})
SERVICE_KEY = web.AppKey("service", Orchestrator)
TOKEN_KEY = web.AppKey("token", str)
METRICS_KEY = web.AppKey("metrics", OrchestratorMetrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SUB = "/subscriptions/{sub}"
VMSS = SUB + "/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets"
GALLERY = SUB + "/resourceGroups/{rg}/providers/Microsoft.Compute/galleries/{gallery}"
LB = SUB + "/resourceGroups/{rg}/providers/Microsoft.Network/loadBalancers/{lb}"
OPERATIONS = SUB + "/providers/Microsoft.Compute/locations/{location}/operations/{operation}"
IMAGE_VERSIONS = (
    SUB + "/providers/Microsoft.Compute/locations/{location}/publishers/{publisher}"
    "/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
)


def error(status: int, code: str, message: str, target: str | None = None) -> web.Response:
    return web.json_response(arm.error_doc(code, message, target), status=status)


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
        response = error(status_of(exc), exc.code, exc.message, exc.target)
        if response.status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    except ModelError as exc:
        return error(400, "InvalidParameter", str(exc), exc.path)
    except web.HTTPRequestEntityTooLarge:
        return error(413, "RequestEntityTooLarge", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status, exc.reason.replace(" ", ""))
        return error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "InternalServerError", "the request failed; the orchestrator's log says why")


async def prometheus_targets(request: web.Request) -> web.Response:
    """Every agent's metrics address in Prometheus' HTTP service-discovery format (``http_sd_configs``)."""
    orchestrator = service(request)
    groups: list[dict[str, Any]] = []
    for model in await orchestrator.list_scale_sets():
        if not model.uses_agent:
            continue
        for info in await orchestrator.instances_of(model.ref):
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


audit_log = logging.getLogger("overhaul.audit")
WRITES = frozenset({"PUT", "PATCH", "POST", "DELETE"})


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


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # Bytes, so a token of any characters is compared (compare_digest refuses non-ASCII str).
    presented = token.strip().encode("utf-8", "surrogateescape")
    expected = request.app[TOKEN_KEY].encode()
    # An empty credential never matches, whatever the server holds (serve refuses an empty token file anyway).
    if scheme.lower() != "bearer" or not presented or not expected or not hmac.compare_digest(presented, expected):
        response = error(401, "AuthenticationFailed", "a valid 'Authorization: Bearer <token>' header is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if request.path.lower().startswith("/subscriptions/"):
        version = request.query.get("api-version")
        if not version:
            return error(
                400, "MissingApiVersionParameter", "the api-version query parameter is required", "api-version"
            )
        if not API_VERSION.fullmatch(version) or version[:10] < OLDEST_API_VERSION:
            return error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version[:40]}' is invalid. The supported versions are '{OLDEST_API_VERSION}' and "
                "later dated versions (YYYY-MM-DD, optionally -preview), as Azure's automatic OS upgrades require.",
                "api-version",
            )
    return await handler(request)


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


def service(request: web.Request) -> Orchestrator:
    return request.app[SERVICE_KEY]


def scope(request: web.Request) -> Scope:
    """The subscription and resource group (when the path names one) a request reaches resources through."""
    return Scope(request.match_info["sub"], request.match_info.get("rg"))


def ref(request: web.Request) -> ScaleSetRef:
    m = request.match_info
    return ScaleSetRef(m["sub"], m["rg"], m["name"])


# --- scale sets ---------------------------------------------------------------------------------------------


async def list_scale_sets(request: web.Request) -> web.Response:
    models = await service(request).list_scale_sets(request.match_info["sub"], request.match_info.get("rg"))
    return web.json_response({"value": [without_secrets(m.to_json()) for m in models]})


async def put_scale_set(request: web.Request) -> web.Response:
    """Create, or update an existing scale set: as Azure's PUT, properties left out keep their values."""
    model, created = await service(request).put_scale_set(ref(request), await body_object(request))
    return web.json_response(without_secrets(model.to_json()), status=201 if created else 200)


async def patch_scale_set(request: web.Request) -> web.Response:
    model, _ = await service(request).put_scale_set(ref(request), await body_object(request), patch=True)
    return web.json_response(without_secrets(model.to_json()))


async def get_scale_set(request: web.Request) -> web.Response:
    return web.json_response(without_secrets((await service(request).get_scale_set(ref(request))).to_json()))


async def delete_scale_set(request: web.Request) -> web.Response:
    """ARM: 200 when it was deleted, 204 when there was nothing to delete (here, through this id)."""
    try:
        await service(request).delete_scale_set(ref(request))
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=200)


async def instance_docs(request: web.Request) -> tuple[ScaleSet, list[dict[str, Any]]]:
    orchestrator = service(request)
    model = await orchestrator.get_scale_set(ref(request))
    docs = [
        arm.instance_doc(
            model,
            info.view,
            running=info.running,
            ports=info.ports,
            has_previous_os_disk=info.has_previous_os_disk,
            health_detail=info.health_detail,
            address=info.address,
        )
        for info in await orchestrator.instances_of(model.ref)
    ]
    return model, docs


async def list_instances(request: web.Request) -> web.Response:
    _, docs = await instance_docs(request)
    return web.json_response({"value": docs})


async def scale_set_instance_view(request: web.Request) -> web.Response:
    model, docs = await instance_docs(request)
    return web.json_response(arm.scale_set_instance_view(model, docs))


async def instance_view(request: web.Request) -> web.Response:
    _, docs = await instance_docs(request)
    wanted = request.match_info["instance"]
    found = next((d for d in docs if d["instanceId"] == wanted), None)
    if found is None:
        raise NotFound(f"instance {wanted} does not exist", "NotFound")
    return web.json_response(found["properties"]["instanceView"])


# --- load balancers (their probes) -----------------------------------------------------------------------


async def put_load_balancer(request: web.Request) -> web.Response:
    m = request.match_info
    balancer = parse_load_balancer(
        await body_object(request), name=m["lb"], resource_group=m["rg"], subscription=m["sub"]
    )
    orchestrator = service(request)
    created = await orchestrator.put_load_balancer(balancer)
    return web.json_response(
        (await orchestrator.load_balancer(balancer.name, scope(request))).to_json(), status=201 if created else 200
    )


async def get_load_balancer(request: web.Request) -> web.Response:
    return web.json_response((await service(request).load_balancer(request.match_info["lb"], scope(request))).to_json())


async def list_load_balancers(request: web.Request) -> web.Response:
    balancers = await service(request).load_balancers(scope(request))
    return web.json_response({"value": [b.to_json() for b in balancers]})


async def delete_load_balancer(request: web.Request) -> web.Response:
    try:
        await service(request).delete_load_balancer(request.match_info["lb"], scope(request))
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=200)


async def list_probes(request: web.Request) -> web.Response:
    doc = (await service(request).load_balancer(request.match_info["lb"], scope(request))).to_json()
    return web.json_response({"value": doc["properties"]["probes"]})


async def get_probe(request: web.Request) -> web.Response:
    doc = (await service(request).load_balancer(request.match_info["lb"], scope(request))).to_json()
    wanted = request.match_info["probe"].lower()
    found = next((p for p in doc["properties"]["probes"] if p["name"].lower() == wanted), None)
    if found is None:
        raise NotFound(f"load balancer {doc['name']} has no probe {request.match_info['probe']}", "NotFound")
    return web.json_response(found)


# --- galleries ----------------------------------------------------------------------------------------------


async def put_gallery(request: web.Request) -> web.Response:
    m = request.match_info
    gallery = parse_gallery(
        await body_object(request), name=m["gallery"], resource_group=m["rg"], subscription=m["sub"]
    )
    orchestrator = service(request)
    created = await orchestrator.put_gallery(gallery)
    found = await orchestrator.gallery(gallery.name, scope(request))
    return web.json_response(found.to_json(), status=201 if created else 200)


async def get_gallery(request: web.Request) -> web.Response:
    return web.json_response((await service(request).gallery(request.match_info["gallery"], scope(request))).to_json())


async def list_galleries(request: web.Request) -> web.Response:
    galleries = await service(request).galleries(scope(request))
    return web.json_response({"value": [g.to_json() for g in galleries]})


async def delete_gallery(request: web.Request) -> web.Response:
    try:
        await service(request).delete_gallery(request.match_info["gallery"], scope(request))
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=200)


async def list_image_definitions(request: web.Request) -> web.Response:
    definitions = await service(request).image_definitions(request.match_info["gallery"], scope(request))
    return web.json_response({"value": [image_definition_doc(request, d) for d in definitions]})


async def delete_image_definition(request: web.Request) -> web.Response:
    try:
        await service(request).delete_image_definition(
            request.match_info["gallery"], request.match_info["image"], scope(request)
        )
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=200)


INSTANCE_ID = re.compile(r"[0-9]{1,6}")


async def instance_ids(request: web.Request, model: ScaleSet, *, required: bool = False) -> list[int]:
    """The body's ``instanceIds`` (Azure's VirtualMachineScaleSetVMInstanceIDs); none means every instance, unless
    they are ``required`` (VirtualMachineScaleSetVMInstanceRequiredIDs)."""
    body = await body_object(request)
    raw_ids = body.get("instanceIds")
    if raw_ids is None and required:
        raise InvalidInput('instanceIds: is required, e.g. ["0", "3"]', target="instanceIds")
    if raw_ids is None:
        return list(range(model.capacity))
    if isinstance(raw_ids, list) and all(
        (isinstance(i, int) and not isinstance(i, bool)) or (isinstance(i, str) and INSTANCE_ID.fullmatch(i))
        for i in raw_ids
    ):
        return [int(i) for i in raw_ids]
    raise InvalidInput('instanceIds: must be a list of instance ids such as ["0", "3"]', target="instanceIds")


async def reimage(request: web.Request) -> web.Response:
    orchestrator = service(request)
    model = await orchestrator.get_scale_set(ref(request))
    await orchestrator.reimage_instances(model.ref, await instance_ids(request, model))
    return web.Response(status=200)


async def manual_upgrade(request: web.Request) -> web.Response:
    """manualupgrade (`az vmss update-instances`): the instances get the latest model; an operation to follow."""
    orchestrator = service(request)
    model = await orchestrator.get_scale_set(ref(request))
    attempt = await orchestrator.manual_upgrade(model.ref, await instance_ids(request, model, required=True))
    if attempt.status is AttemptStatus.FAULTED and attempt.error_code:
        return error(409, attempt.error_code, attempt.error_message or attempt.error_code)
    return web.json_response(
        arm.latest_record(attempt, model), status=202, headers=operation_headers(request, model, attempt.id)
    )


async def approve_rolling_upgrade(request: web.Request) -> web.Response:
    """approveRollingUpgrade: deferred OS upgrades of the instances (all when none are named) may go ahead."""
    orchestrator = service(request)
    model = await orchestrator.get_scale_set(ref(request))
    await orchestrator.approve(model.ref, await instance_ids(request, model))
    return web.Response(status=200)


# --- rolling upgrades ---------------------------------------------------------------------------------------


async def os_upgrade_history(request: web.Request) -> web.Response:
    orchestrator = service(request)
    model = await orchestrator.get_scale_set(ref(request))
    records = [
        arm.history_record(s.attempt, s.image_reference, model.location) for s in await orchestrator.history(model.ref)
    ]
    return web.json_response({"value": records})


async def start_os_rolling_upgrade(request: web.Request) -> web.Response:
    orchestrator = service(request)
    attempt = await orchestrator.start_rolling_upgrade(ref(request), started_by=StartedBy.USER)
    model = await orchestrator.get_scale_set(ref(request))
    if attempt.status is AttemptStatus.FAULTED and attempt.error_code:
        # Refused before it began (too many unhealthy instances): Azure's 409 with the code; history has it too.
        return error(409, attempt.error_code, attempt.error_message or attempt.error_code)
    return web.json_response(
        arm.latest_record(attempt, model), status=202, headers=operation_headers(request, model, attempt.id)
    )


async def cancel_rolling_upgrade(request: web.Request) -> web.Response:
    orchestrator = service(request)
    attempt = await orchestrator.cancel(ref(request))
    model = await orchestrator.get_scale_set(ref(request))
    headers = operation_headers(request, model, attempt.id + CANCEL_SUFFIX)
    return web.json_response(arm.latest_record(attempt, model), status=202, headers=headers)


CANCEL_SUFFIX = ".cancel"


def operation_headers(request: web.Request, model: ScaleSet, operation: str) -> dict[str, str]:
    """ARM's long-running-operation protocol: absolute URLs of an operation resource a client polls."""
    url = (
        f"{request.url.origin()}/subscriptions/{model.subscription}/providers/Microsoft.Compute/locations/"
        f"{model.location}/operations/{operation}?api-version={request.query.get('api-version')}"
    )
    return {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "1"}


async def get_operation(request: web.Request) -> web.Response:
    """An operation resource: a rolling upgrade (its attempt), or the cancel of one."""
    name = request.match_info["operation"]
    attempt_id = name.removesuffix(CANCEL_SUFFIX)
    attempt = await service(request).find_attempt(attempt_id)
    if attempt is None:
        raise NotFound(f"operation {name} does not exist (or its history was pruned)", "OperationNotFound")
    return web.json_response(arm.operation_doc(name, attempt, cancel=name.endswith(CANCEL_SUFFIX)))


async def latest_rolling_upgrade(request: web.Request) -> web.Response:
    orchestrator = service(request)
    model = await orchestrator.get_scale_set(ref(request))
    latest = await orchestrator.latest(model.ref)
    if latest is None:
        raise NotFound(f"no rolling upgrade of {model.name} has run yet", "RollingUpgradeNotFound")
    attempt = latest.attempt
    reports = {i: orchestrator.health_report(model.name, i) for i in attempt.instances}
    health = {i: r for i, r in reports.items() if r is not None}
    return web.json_response(arm.latest_record(attempt, model, health, time.time()))


# --- gallery ------------------------------------------------------------------------------------------------


def image_definition_doc(request: web.Request, definition: ImageDefinition) -> dict[str, Any]:
    """Its ARM document: what was sent (Azure fields with no meaning here come back verbatim) under ours."""
    sub, rg = request.match_info["sub"], request.match_info["rg"]
    own = {
        "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/galleries/{definition.gallery}"
        f"/images/{definition.name}",
        "name": definition.name,
        "type": "Microsoft.Compute/galleries/images",
        "properties": {
            "provisioningState": "Succeeded",
            "osType": "Linux",
            "identifier": {"publisher": definition.publisher, "offer": definition.offer, "sku": definition.sku},
        },
    }
    doc: dict[str, Any] = overlay(definition.sent, own)
    return doc


def image_version_doc(request: web.Request, version: ImageVersion) -> dict[str, Any]:
    """The ARM document of an image version: its full id and an ISO 8601 publishedDate."""
    m = request.match_info
    doc = version.to_json()
    doc["id"] = (
        f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Compute/galleries/{version.gallery}"
        f"/images/{version.image}/versions/{version.version}"
    )
    doc["properties"]["publishingProfile"]["publishedDate"] = arm.iso(version.published_at)
    return doc


async def put_image_definition(request: web.Request) -> web.Response:
    body = await body_object(request)
    props = body.get("properties") if isinstance(body, Mapping) else None
    identifier = props.get("identifier") if isinstance(props, Mapping) else None
    if not isinstance(identifier, Mapping):
        raise InvalidInput(
            "properties.identifier: is required ({publisher, offer, sku})", target="properties.identifier"
        )
    values = {}
    for key in ("publisher", "offer", "sku"):
        value = identifier.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"properties.identifier.{key}: is required", target=f"properties.identifier.{key}")
        values[key] = value
    os_type = props.get("osType", "Linux") if isinstance(props, Mapping) else "Linux"
    if not isinstance(os_type, str) or os_type.lower() != "linux":
        raise InvalidInput(
            f"properties.osType: must be Linux (instances are Linux containers or VMs), got {os_type!r}",
            target="properties.osType",
        )
    definition = ImageDefinition(request.match_info["gallery"], request.match_info["image"], **values, sent=body)
    orchestrator = service(request)
    try:
        await orchestrator.image_definition(definition.gallery, definition.name, scope(request))
        created = False
    except NotFound:
        created = True
    m = request.match_info
    await orchestrator.put_image_definition(definition, resource_group=m["rg"], subscription=m["sub"])
    return web.json_response(image_definition_doc(request, definition), status=201 if created else 200)


async def get_image_definition(request: web.Request) -> web.Response:
    definition = await service(request).image_definition(
        request.match_info["gallery"], request.match_info["image"], scope(request)
    )
    return web.json_response(image_definition_doc(request, definition))


async def list_image_versions(request: web.Request) -> web.Response:
    versions = await service(request).image_versions(
        request.match_info["gallery"], request.match_info["image"], scope(request)
    )
    return web.json_response({"value": [image_version_doc(request, v) for v in versions]})


async def put_image_version(request: web.Request, *, patch: bool = False) -> web.Response:
    orchestrator = service(request)
    gallery, image, version = (request.match_info[k] for k in ("gallery", "image", "version"))
    body = await body_object(request)
    if patch:
        current = await orchestrator.image_version(gallery, image, version, scope(request))
        if not isinstance(body, Mapping):
            raise InvalidInput("the request body must be a JSON object", target="")
        body = merge_patch(current.to_json(), body)
        published = current.published_at
        created = False
    else:
        existing = [
            v for v in await orchestrator.image_versions(gallery, image, scope(request)) if v.version == version
        ]
        published = existing[0].published_at if existing else time.time()
        created = not existing
    parsed = parse_image_version(body, gallery=gallery, image=image, version=version, published_at=published)
    await orchestrator.publish_version(parsed, scope(request))
    return web.json_response(image_version_doc(request, parsed), status=201 if created else 200)


async def patch_image_version(request: web.Request) -> web.Response:
    return await put_image_version(request, patch=True)


async def get_image_version(request: web.Request) -> web.Response:
    gallery, image, version = (request.match_info[k] for k in ("gallery", "image", "version"))
    found = await service(request).image_version(gallery, image, version, scope(request))
    return web.json_response(image_version_doc(request, found))


async def delete_image_version(request: web.Request) -> web.Response:
    gallery, image, version = (request.match_info[k] for k in ("gallery", "image", "version"))
    try:
        await service(request).delete_image_version(gallery, image, version, scope(request))
    except NotFound:
        return web.Response(status=204)
    return web.Response(status=200)


async def list_vm_image_versions(request: web.Request) -> web.Response:
    """Azure's `vm image list` source: the versions of an offer's sku present in a location."""
    orchestrator = service(request)
    m = request.match_info
    galleries = {g.name.lower() for g in await orchestrator.galleries(scope(request))}
    definitions = [
        d
        for d in await orchestrator.all_image_definitions()
        if d.gallery.lower() in galleries
        and (d.publisher.lower(), d.offer.lower(), d.sku.lower())
        == (m["publisher"].lower(), m["offer"].lower(), m["sku"].lower())
    ]
    keys = {(d.gallery, d.name) for d in definitions}
    versions = [
        v
        for v in await orchestrator.all_image_versions()
        if (v.gallery, v.image) in keys and v.present_in(m["location"])
    ]
    docs = [
        {
            "location": m["location"],
            "name": v.version,
            "id": f"/Subscriptions/{m['sub']}/Providers/Microsoft.Compute/Locations/{m['location']}/Publishers/"
            f"{m['publisher']}/ArtifactTypes/VMImage/Offers/{m['offer']}/Skus/{m['sku']}/Versions/{v.version}",
            "properties": {"excludeFromLatest": v.exclude_from_latest} | v.source(),
        }
        for v in versions
    ]
    return web.json_response(docs)


# --- the rest -----------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """200 while the orchestrator can act; 503 naming the problem while its engine is down or its storage takes no
    writes."""
    orchestrator = service(request)
    engine = await orchestrator.engine_problem()
    storage = orchestrator.storage_problem()
    doc = {"status": "ok" if engine is None and storage is None else "unavailable"}
    doc |= {"engine": engine or "ok", "storage": storage or "ok"}
    if engine is None and storage is None:
        return web.json_response(doc)
    return web.json_response(doc, status=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[METRICS_KEY].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def arm_path(template: str) -> str:
    """ARM compares paths case-insensitively: each literal segment of the template matches in any case."""
    segments = []
    for number, segment in enumerate(template.split("/")):
        literal = segment and not segment.startswith("{")
        segments.append(f"{{_{number}:(?i:{re.escape(segment)})}}" if literal else segment)
    return "/".join(segments)


# (method, ARM path template, handler): the Azure-shaped REST API.
ARM_ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", SUB + "/providers/Microsoft.Compute/virtualMachineScaleSets", list_scale_sets),
    ("GET", VMSS, list_scale_sets),
    ("PUT", VMSS + "/{name}", put_scale_set),
    ("PATCH", VMSS + "/{name}", patch_scale_set),
    ("GET", VMSS + "/{name}", get_scale_set),
    ("DELETE", VMSS + "/{name}", delete_scale_set),
    ("GET", VMSS + "/{name}/virtualMachines", list_instances),
    ("GET", VMSS + "/{name}/instanceView", scale_set_instance_view),
    ("GET", VMSS + "/{name}/virtualMachines/{instance}/instanceView", instance_view),
    ("POST", VMSS + "/{name}/reimage", reimage),
    ("GET", VMSS + "/{name}/osUpgradeHistory", os_upgrade_history),
    ("POST", VMSS + "/{name}/osRollingUpgrade", start_os_rolling_upgrade),
    ("POST", VMSS + "/{name}/rollingUpgrades/cancel", cancel_rolling_upgrade),
    ("POST", VMSS + "/{name}/approveRollingUpgrade", approve_rolling_upgrade),
    ("POST", VMSS + "/{name}/manualupgrade", manual_upgrade),
    ("GET", VMSS + "/{name}/rollingUpgrades/latest", latest_rolling_upgrade),
    ("GET", SUB + "/providers/Microsoft.Network/loadBalancers", list_load_balancers),
    ("GET", SUB + "/resourceGroups/{rg}/providers/Microsoft.Network/loadBalancers", list_load_balancers),
    ("PUT", LB, put_load_balancer),
    ("GET", LB, get_load_balancer),
    ("DELETE", LB, delete_load_balancer),
    ("GET", LB + "/probes", list_probes),
    ("GET", LB + "/probes/{probe}", get_probe),
    ("GET", SUB + "/providers/Microsoft.Compute/galleries", list_galleries),
    ("GET", SUB + "/resourceGroups/{rg}/providers/Microsoft.Compute/galleries", list_galleries),
    ("PUT", GALLERY, put_gallery),
    ("GET", GALLERY, get_gallery),
    ("DELETE", GALLERY, delete_gallery),
    ("GET", GALLERY + "/images", list_image_definitions),
    ("PUT", GALLERY + "/images/{image}", put_image_definition),
    ("DELETE", GALLERY + "/images/{image}", delete_image_definition),
    ("GET", GALLERY + "/images/{image}", get_image_definition),
    ("GET", GALLERY + "/images/{image}/versions", list_image_versions),
    ("PUT", GALLERY + "/images/{image}/versions/{version}", put_image_version),
    ("PATCH", GALLERY + "/images/{image}/versions/{version}", patch_image_version),
    ("GET", GALLERY + "/images/{image}/versions/{version}", get_image_version),
    ("DELETE", GALLERY + "/images/{image}/versions/{version}", delete_image_version),
    ("GET", IMAGE_VERSIONS, list_vm_image_versions),
    ("GET", OPERATIONS, get_operation),
]


def build_app(
    orchestrator: Orchestrator,
    token: str,
    orchestrator_metrics: OrchestratorMetrics,
    *,
    body_timeout: float = BODY_TIMEOUT,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    app = web.Application(middlewares=[gate_middleware, audit, arm_errors, bearer_auth], client_max_size=max_body_bytes)
    app[GATE_KEY] = GateHolder()
    app[SERVICE_KEY] = orchestrator
    app[BODY_TIMEOUT_KEY] = body_timeout
    app[TOKEN_KEY] = token
    app[METRICS_KEY] = orchestrator_metrics
    r = app.router

    def route(method: str, path: str, handler: Handler) -> None:
        r.add_route(method, arm_path(path), handler)

    r.add_get("/healthz", healthz)
    r.add_get("/prometheus/targets", prometheus_targets)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi)
    for method, path, handler in ARM_ROUTES:
        route(method, path, handler)
    return app
