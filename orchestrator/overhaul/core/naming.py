"""Names, made and compared in one place: what the engine sees (instances, their previous OS disks and their data
disks), ARM ids, and ARM's rules for finding a resource by name within a scope."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from overhaul.core.errors import Conflict

PREVIOUS_SUFFIX = ".prev"


def instance_name(scale_set: str, instance_id: int) -> str:
    return f"{scale_set}_{instance_id}"


def previous_name(scale_set: str, instance_id: int) -> str:
    """The instance's previous OS disk while a reimage is not yet committed or rolled back."""
    return instance_name(scale_set, instance_id) + PREVIOUS_SUFFIX


def data_disk_name(scale_set: str, instance_id: int, lun: int) -> str:
    return f"{instance_name(scale_set, instance_id)}_lun{lun}"


def is_data_disk_of(scale_set: str, name: str) -> bool:
    """Whether ``name`` is a data disk ``data_disk_name`` made for an instance of ``scale_set`` (any id, any LUN)."""
    head, sep, lun = name.rpartition("_lun")
    owner, _, instance = head.rpartition("_")
    return bool(sep) and lun.isdigit() and instance.isdigit() and owner.lower() == scale_set.lower()


def gallery_id(subscription: str, resource_group: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Compute/galleries/{name}"


def image_definition_id(subscription: str, resource_group: str, gallery: str, image: str) -> str:
    return f"{gallery_id(subscription, resource_group, gallery)}/images/{image}"


def image_version_id(subscription: str, resource_group: str, gallery: str, image: str, version: str) -> str:
    return f"{image_definition_id(subscription, resource_group, gallery, image)}/versions/{version}"


def vm_image_version_id(subscription: str, location: str, sku: tuple[str, str, str], version: str) -> str:
    """As Azure spells the id of a platform image version (capitalised segments included); ``sku`` is (publisher,
    offer, sku)."""
    publisher, offer, sku_name = sku
    return (
        f"/Subscriptions/{subscription}/Providers/Microsoft.Compute/Locations/{location}/Publishers/{publisher}"
        f"/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku_name}/Versions/{version}"
    )


def operation_path(subscription: str, location: str, operation: str) -> str:
    return f"/subscriptions/{subscription}/providers/Microsoft.Compute/locations/{location}/operations/{operation}"


def scale_set_id(subscription: str, resource_group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )


class Scoped(Protocol):
    @property
    def subscription(self) -> str: ...
    @property
    def resource_group(self) -> str: ...


@dataclass(frozen=True)
class Scope:
    """Where a request reaches resources: a subscription, and one of its resource groups (None: all of them).
    ARM compares both case-insensitively; a resource outside the scope does not exist for that request."""

    subscription: str
    resource_group: str | None = None

    def contains(self, resource: Scoped) -> bool:
        if resource.subscription.lower() != self.subscription.lower():
            return False
        return self.resource_group is None or resource.resource_group.lower() == self.resource_group.lower()


class Resource(Scoped, Protocol):
    """An ARM resource the orchestrator keeps by name: a gallery, a load balancer."""

    @property
    def name(self) -> str: ...
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=Resource)


def named(resources: Iterable[R], name: str, scope: Scope | None = None) -> R | None:
    """The one of that name (ARM compares names case-insensitively) within ``scope`` (anywhere for None: the
    Python API's shorthand; the REST API always gives the request's scope)."""
    return next((r for r in resources if r.name.lower() == name.lower() and (scope is None or scope.contains(r))), None)


def same_name(existing: R | None, wanted: R, kind: str, code: str) -> str:
    """The name ``wanted`` is stored under: the first spelling of an existing one, as ARM keeps it. Names are unique
    on the host, so one held by a resource of another group is a conflict."""
    if existing is None:
        return wanted.name
    if existing.id.lower() != wanted.id.lower():
        raise Conflict(
            f"a {kind} named {existing.name} exists in resource group {existing.resource_group}: {kind} names are "
            "unique on this host",
            code,
        )
    return existing.name


def in_scope(resources: list[R], scope: Scope | None) -> list[R]:
    """Those within ``scope`` (all of them for None)."""
    return resources if scope is None else [r for r in resources if scope.contains(r)]


def where(scope: Scope | None) -> str:
    """How an error names the scope a resource was looked for in."""
    if scope is None:
        return ""
    group = f" in resource group {scope.resource_group}" if scope.resource_group else ""
    return f"{group} of subscription {scope.subscription}"
