"""Microsoft.Compute/galleries: galleries, image definitions and versions, and the `vm image list` view of them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overhaul.adapters.http import arm
from overhaul.adapters.http.requests import RG, SUB, Route, body_object, deleted, orchestrator_of, scope, written
from overhaul.adapters.http.routes.named import named_routes
from overhaul.core.gallery import ImageVersion, parse_gallery, parse_image_definition

PROVIDER = "Microsoft.Compute/galleries"
GALLERY = RG + f"/providers/{PROVIDER}/{{gallery}}"
IMAGE = GALLERY + "/images/{image}"
VERSION = IMAGE + "/versions/{version}"
VM_IMAGE_VERSIONS = (
    SUB + "/providers/Microsoft.Compute/locations/{location}/publishers/{publisher}"
    "/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions"
)


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


async def list_vm_image_versions(request: web.Request) -> web.Response:
    """Azure's `vm image list` source: the versions of an offer's sku present in a location."""
    galleries = orchestrator_of(request).galleries
    m = request.match_info
    sku = (m["publisher"], m["offer"], m["sku"])
    wanted = tuple(part.lower() for part in sku)
    in_scope = {g.name.lower() for g in await galleries.list(scope(request))}
    keys = {
        (d.gallery, d.name)
        for d in await galleries.all_definitions()
        if d.gallery.lower() in in_scope and (d.publisher.lower(), d.offer.lower(), d.sku.lower()) == wanted
    }
    versions = [
        v for v in await galleries.all_versions() if (v.gallery, v.image) in keys and v.present_in(m["location"])
    ]
    return web.json_response([arm.vm_image_version_doc(m["sub"], m["location"], sku, v) for v in versions])


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
    ("GET", VM_IMAGE_VERSIONS, list_vm_image_versions),
]
