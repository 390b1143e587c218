"""Names the engine sees, made in one place: instances, their previous OS disks and their data disks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
