"""Galleries, their image definitions and image versions (Azure Compute Gallery's shape)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overhaul.core.arm_json import ModelError, merge_patch
from overhaul.core.errors import Conflict, InvalidInput, NotFound
from overhaul.core.gallery import Gallery, ImageDefinition, ImageVersion, parse_image_version
from overhaul.core.hosts import LOCAL_LOCATION, Host
from overhaul.core.naming import Scope, same_name
from overhaul.core.resources import MANAGED_IMAGE_TYPE, image_source
from overhaul.runtime.parts import DEFAULT_RESOURCE_GROUP, DEFAULT_SUBSCRIPTION, Parts
from overhaul.runtime.replication import Replicator
from overhaul.runtime.resources import Kind, NamedResources

GALLERY = Kind("gallery", "GalleryNotFound", "GalleryNameTaken", "/galleries")
SOURCE = "properties.storageProfile.source.overhaul"


class Galleries(NamedResources[Gallery]):
    def __init__(self, parts: Parts, replicator: Replicator) -> None:
        store = parts.store
        super().__init__(parts, GALLERY, store.galleries, store.put_gallery, store.delete_gallery)
        self.replicator = replicator

    async def check_delete(self, resource: Gallery) -> None:
        """As Azure: refused while it holds image definitions (delete them first)."""
        held = [
            d.name for d in await self.parts.store.image_definitions() if d.gallery.lower() == resource.name.lower()
        ]
        if held:
            raise Conflict(
                f"gallery {resource.name} holds image definition(s) {', '.join(held)}: delete them first",
                "CannotDeleteResource",
            )

    # --- image definitions --------------------------------------------------------------------------------

    async def put_definition(
        self,
        definition: ImageDefinition,
        *,
        resource_group: str = DEFAULT_RESOURCE_GROUP,
        subscription: str = DEFAULT_SUBSCRIPTION,
    ) -> bool:
        """Creates or updates an image definition; True when it was created. Its gallery is made with it when it
        does not exist yet (a gallery of that name in another group is a conflict, as for any gallery name)."""
        wanted = Gallery(definition.gallery, resource_group, subscription)
        existing = await self.find(definition.gallery)
        if existing is None:
            await self.put(wanted)
        else:
            same_name(existing, wanted, GALLERY.noun, GALLERY.name_taken)
        created = await self._find_definition(definition.gallery, definition.name) is None
        await self.parts.store.put_image_definition(definition)
        self.parts.changes.bump()
        return created

    async def delete_definition(self, gallery: str, image: str, scope: Scope | None = None) -> None:
        """As Azure: refused while it has versions (delete them first)."""
        definition = await self.definition(gallery, image, scope)
        versions = await self.versions(definition.gallery, definition.name)
        if versions:
            raise Conflict(
                f"image definition {definition.gallery}/{definition.name} has {len(versions)} version(s): delete them "
                "first",
                "CannotDeleteResource",
            )
        await self.parts.store.delete_image_definition(definition.gallery, definition.name)
        self.parts.changes.bump()

    async def all_definitions(self) -> list[ImageDefinition]:
        return await self.parts.store.image_definitions()

    async def definitions(self, gallery: str, scope: Scope | None = None) -> list[ImageDefinition]:
        found = await self.get(gallery, scope)
        return [d for d in await self.parts.store.image_definitions() if d.gallery.lower() == found.name.lower()]

    async def _find_definition(self, gallery: str, image: str) -> ImageDefinition | None:
        wanted = (gallery.lower(), image.lower())
        definitions = await self.parts.store.image_definitions()
        return next((d for d in definitions if (d.gallery.lower(), d.name.lower()) == wanted), None)

    async def definition(self, gallery: str, image: str, scope: Scope | None = None) -> ImageDefinition:
        if scope is not None:
            await self.get(gallery, scope)
        found = await self._find_definition(gallery, image)
        if found is None:
            raise NotFound(f"image definition {gallery}/{image} does not exist", "GalleryImageNotFound")
        return found

    # --- image versions -----------------------------------------------------------------------------------

    async def publish(self, version: ImageVersion, scope: Scope | None = None) -> None:
        """Keeps the version once its artefacts are on this machine; copies of its container image are then made
        on the hosts of its target locations (a copy already made of the same image is kept)."""
        await self.definition(version.gallery, version.image, scope)
        # A misspelt artefact would otherwise become 'latest' and fail every instance it reaches.
        if version.container_image:
            await self.parts.require_image(version, f"{SOURCE}.containerImage")
        if version.disk_image:
            await self.parts.require_image(version, f"{SOURCE}.diskImage", vm=True)
        store = self.parts.store
        hosts = await store.hosts()
        _check_regions(version, hosts)
        key = version.key[0].lower(), version.key[1].lower(), version.version
        before = next(
            (v for v in await store.image_versions() if (v.gallery.lower(), v.image.lower(), v.version) == key), None
        )
        published = self.replicator.publication(version, hosts, before)
        await store.put_image_version(published, replicas=True)
        self.parts.changes.bump()

    async def put_version(
        self, gallery: str, image: str, version: str, body: Any, *, patch: bool = False, scope: Scope | None = None
    ) -> tuple[ImageVersion, bool]:
        """Azure's PUT (a new version is published now) or PATCH (a JSON merge patch over the stored one). Returns
        the version and whether it was created."""
        existing = next((v for v in await self.versions(gallery, image, scope) if v.version == version), None)
        if patch:
            existing = await self.version(gallery, image, version, scope)
            body = merge_patch(existing.to_json(), body)
        body = await self.resolved_source(body, existing)
        published = existing.published_at if existing else self.parts.clock()
        try:
            parsed = parse_image_version(body, gallery=gallery, image=image, version=version, published_at=published)
        except ModelError as exc:
            raise InvalidInput(str(exc), target=exc.path) from exc
        await self.publish(parsed, scope)
        return parsed, existing is None

    async def resolved_source(self, body: Any, existing: ImageVersion | None) -> Any:
        """The body with what the version is made from under source.overhaul: as written; else the managed image
        its ``source.id`` names (copied now, as Azure copies it); else, for a version re-PUT without it (az's
        models drop keys they do not know), the existing version's."""
        if not isinstance(body, Mapping) or not isinstance(body.get("properties", {}), Mapping):
            return body  # refused by the parser, naming the field
        storage = body.get("properties", {}).get("storageProfile") or {}
        source = storage.get("source") or {} if isinstance(storage, Mapping) else None
        if not isinstance(source, Mapping) or source.get("overhaul"):
            return body
        found: dict[str, str] | None = None
        named = source.get("id")
        if isinstance(named, str) and named:
            image = await self.parts.store.get_resource(named)
            if image is None or image.type.lower() != MANAGED_IMAGE_TYPE.lower():
                raise InvalidInput(
                    f"properties.storageProfile.source.id: {named[:300]!r} names no managed image "
                    "(PUT …/providers/Microsoft.Compute/images/NAME with properties.overhaul.containerImage first)",
                    target="properties.storageProfile.source.id",
                )
            found = image_source(image)
        elif existing is not None:
            found = dict(existing.source())
        if not found:
            return body
        props = dict(body.get("properties", {}))
        props["storageProfile"] = dict(storage) | {"source": dict(source) | {"overhaul": found}}
        return dict(body) | {"properties": props}

    async def all_versions(self) -> list[ImageVersion]:
        return await self.parts.store.image_versions()

    async def versions(self, gallery: str, image: str, scope: Scope | None = None) -> list[ImageVersion]:
        definition = await self.definition(gallery, image, scope)
        key = (definition.gallery, definition.name)
        return [v for v in await self.parts.store.image_versions() if (v.gallery, v.image) == key]

    async def version(self, gallery: str, image: str, version: str, scope: Scope | None = None) -> ImageVersion:
        found = next((v for v in await self.versions(gallery, image, scope) if v.version == version), None)
        if found is None:
            raise NotFound(f"image version {gallery}/{image}/{version} does not exist", "GalleryImageVersionNotFound")
        return found

    async def delete_version(self, gallery: str, image: str, version: str, scope: Scope | None = None) -> None:
        found = await self.version(gallery, image, version, scope)
        await self.parts.store.delete_image_version(found.gallery, found.image, found.version)
        self.parts.changes.bump()


def _check_regions(version: ImageVersion, hosts: list[Host]) -> None:
    """Each target region is this machine's engine's location or one with hosts (the copies go there)."""
    located = {h.location.lower() for h in hosts} | {LOCAL_LOCATION}
    for i, location in enumerate(version.target_locations):
        if location.lower() not in located:
            raise InvalidInput(
                f"properties.publishingProfile.targetRegions[{i}].name: no host is in {location} (this machine's"
                f" engine is location {LOCAL_LOCATION})",
                target=f"properties.publishingProfile.targetRegions[{i}].name",
            )
