"""Microsoft.Compute/galleries: galleries, image definitions and versions, and the `vm image list` view of them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overhaul.adapters.http import arm
from overhaul.adapters.http.requests import RG, Route, body_object, deleted, orchestrator_of, scope, written
from overhaul.adapters.http.routes.named import named_routes
from overhaul.core.gallery import ImageVersion, parse_gallery, parse_image_definition

PROVIDER = "Microsoft.Compute/galleries"
GALLERY = RG + f"/providers/{PROVIDER}/{{gallery}}"
IMAGE = GALLERY + "/images/{image}"
VERSION = IMAGE + "/versions/{version}"


def where(request: web.Request) -> tuple[str, str]:
    """The subscription and resource group a gallery document's ids name."""
    return request.match_info["sub"], request.match_info["rg"]


def version_key(request: web.Request) -> tuple[str, str, str]:
    m = request.match_info
    return m["gallery"], m["image"], m["version"]


async def put_image_definition(request: web.Request) -> web.Response:
    m = request.match_info
    definition = parse_image_definition(await body_object(request), gallery=m["gallery"], image=m["image"])
    created = await orchestrator_of(request).galleries.put_definition(
        definition, resource_group=m["rg"], subscription=m["sub"]
    )
    return written(arm.image_definition_doc(*where(request), definition), created)


async def get_image_definition(request: web.Request) -> web.Response:
    m = request.match_info
    definition = await orchestrator_of(request).galleries.definition(m["gallery"], m["image"], scope(request))
    return web.json_response(arm.image_definition_doc(*where(request), definition))


async def list_image_definitions(request: web.Request) -> web.Response:
    definitions = await orchestrator_of(request).galleries.definitions(request.match_info["gallery"], scope(request))
    return web.json_response({"value": [arm.image_definition_doc(*where(request), d) for d in definitions]})


async def delete_image_definition(request: web.Request) -> web.Response:
    m = request.match_info
    return await deleted(orchestrator_of(request).galleries.delete_definition(m["gallery"], m["image"], scope(request)))


async def put_image_version(request: web.Request, *, patch: bool = False) -> web.Response:
    body = await body_object(request)
    galleries = orchestrator_of(request).galleries
    version, created = await galleries.put_version(*version_key(request), body, patch=patch, scope=scope(request))
    return written(arm.image_version_doc(*where(request), version), created)


async def patch_image_version(request: web.Request) -> web.Response:
    return await put_image_version(request, patch=True)


def version_doc(request: web.Request, version: ImageVersion) -> dict[str, Any]:
    """Its document; with ``$expand=ReplicationStatus``, its copies on the hosts too: Azure's summary per target
    location, and each host's under ``properties.overhaul.replicas``."""
    doc = arm.image_version_doc(*where(request), version)
    if request.query.get("$expand", "").lower() == "replicationstatus":
        doc["properties"]["replicationStatus"] = version.replication_json()
        doc["properties"]["overhaul"]["replicas"] = [r.to_json() for r in version.replicas]
    return doc


async def get_image_version(request: web.Request) -> web.Response:
    found = await orchestrator_of(request).galleries.version(*version_key(request), scope(request))
    return web.json_response(version_doc(request, found))


async def list_image_versions(request: web.Request) -> web.Response:
    m = request.match_info
    versions = await orchestrator_of(request).galleries.versions(m["gallery"], m["image"], scope(request))
    return web.json_response({"value": [version_doc(request, v) for v in versions]})


async def delete_image_version(request: web.Request) -> web.Response:
    galleries = orchestrator_of(request).galleries
    return await deleted(galleries.delete_version(*version_key(request), scope(request)))


ROUTES: list[Route] = [
    *named_routes(PROVIDER, "gallery", lambda o: o.galleries, parse_gallery),
    ("GET", GALLERY + "/images", list_image_definitions),
    ("PUT", IMAGE, put_image_definition),
    ("DELETE", IMAGE, delete_image_definition),
    ("GET", IMAGE, get_image_definition),
    ("GET", IMAGE + "/versions", list_image_versions),
    ("PUT", VERSION, put_image_version),
    ("PATCH", VERSION, patch_image_version),
    ("GET", VERSION, get_image_version),
    ("DELETE", VERSION, delete_image_version),
]
