"""ARM resources kept by name alone (galleries, load balancers): find, get, list, put and delete, written once."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Generic

from overhaul.core.errors import NotFound
from overhaul.core.naming import R, Scope, in_scope, named, same_name, where
from overhaul.runtime.parts import Parts


@dataclass(frozen=True)
class Kind:
    """How a kind of resource is named in errors, and the lock its writes take."""

    noun: str  # "gallery"
    not_found: str  # the ARM error code of a missing one
    name_taken: str  # the code when its name is held in another resource group
    lock: str  # a name no scale set can have


class NamedResources(Generic[R]):
    def __init__(
        self,
        parts: Parts,
        kind: Kind,
        load: Callable[[], Awaitable[builtins.list[R]]],
        save: Callable[[R], Awaitable[None]],
        remove: Callable[[str], Awaitable[None]],
    ) -> None:
        self.parts = parts
        self.kind = kind
        self._load, self._save, self._remove = load, save, remove

    async def find(self, name: str, scope: Scope | None = None) -> R | None:
        return named(await self._load(), name, scope)

    async def get(self, name: str, scope: Scope | None = None) -> R:
        found = await self.find(name, scope)
        if found is None:
            raise NotFound(f"{self.kind.noun} {name} does not exist{where(scope)}", self.kind.not_found)
        return found

    async def list(self, scope: Scope | None = None) -> builtins.list[R]:
        return in_scope(await self._load(), scope)

    async def put(self, resource: R) -> bool:
        """Creates or updates it; True when it was created. Its name is unique on the host."""
        async with self.parts.writing(self.kind.lock):
            return await self.put_locked(resource)

    async def put_locked(self, resource: R) -> bool:
        existing = await self.find(resource.name)
        resource = replace(resource, name=same_name(existing, resource, self.kind.noun, self.kind.name_taken))  # type: ignore[type-var]
        await self.check_put(resource)
        await self._save(resource)
        await self.after_put(resource)
        return existing is None

    async def delete(self, name: str, scope: Scope | None = None) -> None:
        async with self.parts.writing(self.kind.lock):
            found = await self.get(name, scope)
            await self.check_delete(found)
            await self._remove(found.name)

    # What a kind adds: a check before a write (a Conflict refuses it) and what follows a put.
    async def check_put(self, resource: R) -> None:
        return None

    async def after_put(self, resource: R) -> None:
        return None

    async def check_delete(self, resource: R) -> None:
        return None
