"""Resources kept as documents by type: managed images (what a gallery version may be made from) and the network
resources overhaul keeps as written without acting upon them."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from functools import partial
from typing import Any

from overhaul.core.errors import NotFound
from overhaul.core.resources import (
    KEPT_NETWORK_TYPES,
    MANAGED_IMAGE_TYPE,
    Resource,
    parse_kept,
    parse_managed_image,
    resource_id,
)
from overhaul.runtime.parts import Parts

Parser = Callable[..., Resource]
PARSERS: dict[str, Parser] = {
    MANAGED_IMAGE_TYPE: parse_managed_image,
    **{t: partial(parse_kept, type_=t) for t in KEPT_NETWORK_TYPES},
}


class KeptResources:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts

    async def put(self, type_: str, subscription: str, group: str, name: str, body: Any) -> tuple[Resource, bool]:
        """Creates or replaces it; True when it was created. Its name keeps the case it was first given."""
        resource = PARSERS[type_](body, subscription=subscription, group=group, name=name)
        async with self.parts.writing(f"/{type_}"):
            existing = await self.parts.store.get_resource(resource.id)
            if existing is not None and existing.name != name:
                resource = PARSERS[type_](body, subscription=subscription, group=group, name=existing.name)
            await self.parts.store.put_resource(resource)
        return resource, existing is None

    async def get(self, type_: str, subscription: str, group: str, name: str) -> Resource:
        found = await self.parts.store.get_resource(resource_id(subscription, group, type_, name))
        if found is None:
            raise NotFound(
                f"The Resource '{type_}/{name}' under resource group '{group}' was not found.", "ResourceNotFound"
            )
        return found

    async def list(self, type_: str, subscription: str, group: str | None = None) -> builtins.list[Resource]:
        return await self.parts.store.list_resources(type_, subscription, group)

    async def delete(self, type_: str, subscription: str, group: str, name: str) -> None:
        found = await self.get(type_, subscription, group, name)
        await self.parts.store.delete_resource(found.id)
