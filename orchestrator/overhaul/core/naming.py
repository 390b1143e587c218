"""Names the engine sees, made in one place: instances, their previous OS disks and their data disks."""

from __future__ import annotations

PREVIOUS_SUFFIX = ".prev"


def instance_name(scale_set: str, instance_id: int) -> str:
    return f"{scale_set}_{instance_id}"


def previous_name(scale_set: str, instance_id: int) -> str:
    """The instance's previous OS disk while a reimage is not yet committed or rolled back."""
    return instance_name(scale_set, instance_id) + PREVIOUS_SUFFIX


def data_disk_name(scale_set: str, instance_id: int, lun: int) -> str:
    return f"{instance_name(scale_set, instance_id)}_lun{lun}"


def gallery_id(subscription: str, resource_group: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Compute/galleries/{name}"


def scale_set_id(subscription: str, resource_group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )
