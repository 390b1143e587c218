"""The VM image and extension catalogue of a location, as Azure's platform images are listed (`az vm image list
--all` walks publishers, offers, skus and versions; `az vmss create --image URN` reads one version; `az vmss
extension set` without --version reads an extension type's versions). Images are the gallery's versions present in
the location; extensions are the ones overhaul runs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overhaul.adapters.http import arm
from overhaul.adapters.http.requests import SUB, Route, orchestrator_of, scope
from overhaul.core.errors import NotFound
from overhaul.core.gallery import ImageDefinition, ImageVersion, latest_version

LOCATION = SUB + "/providers/Microsoft.Compute/locations/{location}"
PUBLISHERS = LOCATION + "/publishers"
OFFERS = PUBLISHERS + "/{publisher}/artifacttypes/vmimage/offers"
SKUS = OFFERS + "/{offer}/skus"
VERSIONS = SKUS + "/{sku}/versions"
EXTENSION_TYPES = PUBLISHERS + "/{publisher}/artifacttypes/vmextension/types"
EXTENSION_VERSIONS = EXTENSION_TYPES + "/{type}/versions"
# The extensions the agent runs, by publisher: type -> versions (the last is what az picks without --version).
EXTENSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "Microsoft.ManagedServices": {"ApplicationHealthLinux": ("1.0", "2.0")},
    "Microsoft.Azure.Extensions": {"CustomScript": ("2.0", "2.1")},
}


async def present(request: web.Request) -> list[tuple[ImageDefinition, ImageVersion]]:
    """The gallery's versions in the request's scope present in its location, each with its definition."""
    galleries = orchestrator_of(request).galleries
    in_scope = {g.name.lower() for g in await galleries.list(scope(request))}
    definitions = {(d.gallery, d.name): d for d in await galleries.all_definitions() if d.gallery.lower() in in_scope}
    location = request.match_info["location"]
    return [
        (definitions[(v.gallery, v.image)], v)
        for v in await galleries.all_versions()
        if (v.gallery, v.image) in definitions and v.present_in(location)
    ]


def _matches(request: web.Request, definition: ImageDefinition, *parts: str) -> bool:
    wanted = [request.match_info[p].lower() for p in parts]
    have = {"publisher": definition.publisher, "offer": definition.offer, "sku": definition.sku}
    return [have[p].lower() for p in parts] == wanted


def resources(request: web.Request, path: str, names: list[str]) -> web.Response:
    """Azure's VirtualMachineImageResource list: a bare array of {name, location, id}, sorted by name."""
    location = request.match_info["location"]
    unique = sorted({n.lower(): n for n in names}.values(), key=str.lower)
    return web.json_response([{"name": n, "location": location, "id": f"{path}/{n}"} for n in unique])


async def list_publishers(request: web.Request) -> web.Response:
    names = [d.publisher for d, _ in await present(request)] + list(EXTENSIONS)
    return resources(request, request.path, names)


async def list_offers(request: web.Request) -> web.Response:
    found = [d.offer for d, _ in await present(request) if _matches(request, d, "publisher")]
    return resources(request, request.path, found)


async def list_skus(request: web.Request) -> web.Response:
    found = [d.sku for d, _ in await present(request) if _matches(request, d, "publisher", "offer")]
    return resources(request, request.path, found)


async def matching_versions(request: web.Request) -> list[ImageVersion]:
    return [v for d, v in await present(request) if _matches(request, d, "publisher", "offer", "sku")]


async def list_versions(request: web.Request) -> web.Response:
    """Azure's `vm image list` source: the versions of an offer's sku present in a location."""
    m = request.match_info
    sku = (m["publisher"], m["offer"], m["sku"])
    versions = await matching_versions(request)
    return web.json_response([arm.vm_image_version_doc(m["sub"], m["location"], sku, v) for v in versions])


async def get_version(request: web.Request) -> web.Response:
    """One version, as Azure's VirtualMachineImage: its OS disk is Linux, it has no data disk images."""
    m = request.match_info
    wanted = m["version"]
    versions = await matching_versions(request)
    if wanted.lower() == "latest":
        found = latest_version(versions, m["location"])
    else:
        found = next((v for v in versions if v.version == wanted), None)
    if found is None:
        raise NotFound(
            f"Artifact: VMImage was not found: {m['publisher']}:{m['offer']}:{m['sku']}:{wanted} in {m['location']}",
            "ImageNotFound",
        )
    doc = arm.vm_image_version_doc(m["sub"], m["location"], (m["publisher"], m["offer"], m["sku"]), found)
    doc["properties"] |= {
        "osDiskImage": {"operatingSystem": "Linux"},
        "dataDiskImages": [],
        "hyperVGeneration": "V2",
        "architecture": "x64",
    }
    return web.json_response(doc)


def _extension_types(request: web.Request) -> dict[str, tuple[str, ...]]:
    wanted = request.match_info["publisher"].lower()
    return next((types for p, types in EXTENSIONS.items() if p.lower() == wanted), {})


async def list_extension_types(request: web.Request) -> web.Response:
    return resources(request, request.path, list(_extension_types(request)))


def _extension_versions(request: web.Request) -> tuple[str, ...]:
    wanted = request.match_info["type"].lower()
    versions = next((v for t, v in _extension_types(request).items() if t.lower() == wanted), None)
    if versions is None:
        m = request.match_info
        raise NotFound(f"extension {m['publisher']}.{m['type']} is not one overhaul runs", "ArtifactNotFound")
    return versions


async def list_extension_versions(request: web.Request) -> web.Response:
    return resources(request, request.path, list(_extension_versions(request)))


async def get_extension_version(request: web.Request) -> web.Response:
    """Azure's VirtualMachineExtensionImage for one version."""
    m = request.match_info
    if m["version"] not in _extension_versions(request):
        raise NotFound(f"extension {m['publisher']}.{m['type']} has no version {m['version']}", "ArtifactNotFound")
    doc: dict[str, Any] = {
        "name": m["version"],
        "location": m["location"],
        "id": request.path,
        "properties": {
            "operatingSystem": "Linux",
            "computeRole": "IaaS",
            "handlerSchema": "",
            "vmScaleSetEnabled": True,
            "supportsMultipleExtensions": False,
        },
    }
    return web.json_response(doc)


ROUTES: list[Route] = [
    ("GET", PUBLISHERS, list_publishers),
    ("GET", OFFERS, list_offers),
    ("GET", SKUS, list_skus),
    ("GET", VERSIONS, list_versions),
    ("GET", VERSIONS + "/{version}", get_version),
    ("GET", EXTENSION_TYPES, list_extension_types),
    ("GET", EXTENSION_VERSIONS, list_extension_versions),
    ("GET", EXTENSION_VERSIONS + "/{version}", get_extension_version),
]
