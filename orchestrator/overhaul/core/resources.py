"""ARM resources kept as documents: resource groups, managed images, and the network resources overhaul keeps but
does not act upon (virtual networks, public IP addresses, security groups). Each is keyed by its ARM id, compared
case-insensitively as ARM does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overhaul.core.arm_json import ModelError, Reader
from overhaul.core.gallery import artefacts

RESOURCE_GROUP_TYPE = "Microsoft.Resources/resourceGroups"
# A long-running operation's record (runtime/deletions.py): not a resource of its group — never listed, adopted or
# deleted with it, as Azure's operations outlive what they acted on.
OPERATION_TYPE = "Microsoft.Compute/locations/operations"
# Azure's rule for resource group names: 1-90 letters, digits, underscores, hyphens, periods and parentheses,
# not ending in a period.
GROUP_NAME = re.compile(r"[-\w._()]{1,90}", re.UNICODE)
TAG_LIMIT = 50


@dataclass(frozen=True)
class Resource:
    """One kept resource: where it is, its type and name, and its document as it is answered."""

    subscription: str
    resource_group: str
    type: str  # "Microsoft.Compute/images"; RESOURCE_GROUP_TYPE for a group
    name: str
    doc: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return resource_id(self.subscription, self.resource_group, self.type, self.name)

    @property
    def location(self) -> str:
        return str(self.doc.get("location") or "")


def group_id(subscription: str, group: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}"


def resource_id(subscription: str, group: str, type_: str, name: str) -> str:
    if type_.lower() == RESOURCE_GROUP_TYPE.lower():
        return group_id(subscription, group)
    return f"{group_id(subscription, group)}/providers/{type_}/{name}"


def check_group_name(name: str) -> None:
    if not GROUP_NAME.fullmatch(name) or name.endswith("."):
        raise ModelError(
            "name",
            f"resource group name {name[:100]!r} is invalid: 1-90 letters, digits, underscores, hyphens, periods "
            "and parentheses, not ending in a period",
        )


def tags_of(r: Reader) -> dict[str, str]:
    tags = r.doc.get("tags") or {}
    if not isinstance(tags, Mapping) or not all(isinstance(v, str) for v in tags.values()):
        raise ModelError(r.at("tags"), "must be an object of strings")
    if len(tags) > TAG_LIMIT:
        raise ModelError(r.at("tags"), f"at most {TAG_LIMIT} tags")
    return {str(k): str(v) for k, v in tags.items()}


def parse_resource_group(doc: Any, *, subscription: str, name: str) -> Resource:
    """Azure's resource group document: a location (required), tags, managedBy; the rest is refused."""
    check_group_name(name)
    r = Reader(doc, "")
    unknown = set(r.doc) - {"location", "tags", "managedBy", "properties", "id", "name", "type"}
    if unknown:
        key = sorted(unknown)[0]
        raise ModelError(key, "is not a field of a resource group (location, tags, managedBy)")
    location = r.required_text("location")
    out: dict[str, Any] = {
        "id": group_id(subscription, name),
        "name": name,
        "type": RESOURCE_GROUP_TYPE,
        "location": location,
        "tags": tags_of(r),
        "properties": {"provisioningState": "Succeeded"},
    }
    if r.doc.get("managedBy"):
        out["managedBy"] = r.required_text("managedBy")
    return Resource(subscription, name, RESOURCE_GROUP_TYPE, name, out)


def parse_kept(doc: Any, *, subscription: str, group: str, type_: str, name: str) -> Resource:
    """A resource overhaul keeps as written and does not act upon: its document back with ARM's read-only
    fields (id, name, type, provisioningState Succeeded)."""
    r = Reader(doc, "")
    properties = r.doc.get("properties")
    properties = {} if properties is None else properties
    if not isinstance(properties, Mapping):
        raise ModelError("properties", "must be an object")
    out = dict(r.doc) | {
        "id": resource_id(subscription, group, type_, name),
        "name": name,
        "type": type_,
        "tags": tags_of(r),
        "properties": dict(properties) | {"provisioningState": "Succeeded"},
    }
    return Resource(subscription, group, type_, name, out)


MANAGED_IMAGE_TYPE = "Microsoft.Compute/images"
# Network resources overhaul keeps as written and does not act upon (a load balancer's probes it does act on).
KEPT_NETWORK_TYPES = (
    "Microsoft.Network/virtualNetworks",
    "Microsoft.Network/publicIPAddresses",
    "Microsoft.Network/networkSecurityGroups",
)


def parse_managed_image(doc: Any, *, subscription: str, group: str, name: str) -> Resource:
    """Azure's managed image, holding what overhaul makes instances from under ``properties.overhaul``: a container
    image and/or a directory of VM artefacts (as a gallery version's source does); Azure's own fields are kept."""
    image = parse_kept(doc, subscription=subscription, group=group, type_=MANAGED_IMAGE_TYPE, name=name)
    props = image.doc["properties"]
    own = props.get("overhaul")
    path = "properties.overhaul"
    if not isinstance(own, Mapping):
        raise ModelError(path, "is required: the image's containerImage (and/or diskImage, VM artefacts)")
    artefacts(own, path)
    return image


def image_source(image: Resource) -> dict[str, str]:
    """What a gallery version made from ``image`` names as its source.overhaul."""
    own = image.doc["properties"]["overhaul"]
    return {k: own[k] for k in ("containerImage", "diskImage") if own.get(k)}
