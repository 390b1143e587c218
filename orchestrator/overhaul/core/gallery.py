"""The local image gallery: image definitions and their semver versions (pure).

An image definition is found either by Azure's publisher/offer/sku or by its gallery and image name. A
version points to the artefacts an instance is made from: a container image reference for container scale sets,
a directory of VM artefacts (a qcow2 base, kernel and initrd) for VM scale sets, or both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overhaul.core.arm_json import ModelError, overlay, resource_envelope
from overhaul.core.model import GALLERY_ID, ImageReference
from overhaul.core.naming import gallery_id
from overhaul.core.replication import Replica, available_in, region_state, replication_status

# Azure's gallery image versions: MAJOR.MINOR.PATCH, each a 32-bit integer; no leading zeros, so that one version
# has one spelling ("01.0.0" beside "1.0.0" would be two names for one place in the order).
VERSION_PATTERN = re.compile(r"^(0|[1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,9})$")
MAX_VERSION_PART = 2**31 - 1


def semver_key(version: str) -> tuple[int, int, int]:
    match = VERSION_PATTERN.match(version)
    parts = tuple(int(x) for x in match.groups()) if match is not None else ()
    if len(parts) != 3 or max(parts) > MAX_VERSION_PART:
        raise ModelError(
            "version",
            f"must be MAJOR.MINOR.PATCH, each 0..{MAX_VERSION_PART} without leading zeros, got {version[:64]!r}",
        )
    major, minor, patch = parts
    return major, minor, patch


# The container engines' image reference grammar (distribution/reference): [domain/]path[:tag][@digest].
_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::[\w][\w.-]{{0,127}})?(?:@{_DIGEST})?")
IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{64}")


def _engine_name(name: str) -> bool:
    """As the engines read a name: its first part is a registry only with a '.' or ':' in it or as localhost;
    otherwise it is a path component, which is lower case."""
    first, _, rest = name.partition("/")
    registry = bool(rest) and ("." in first or ":" in first or first == "localhost")
    return len(name) <= 255 and (registry or re.fullmatch(_COMPONENT, first) is not None)


def check_image_reference(reference: str, path: str) -> None:
    """A container image reference as the engines parse it (or an image id), else a ModelError naming ``path``."""
    match = IMAGE_REFERENCE.fullmatch(reference)
    if IMAGE_ID.fullmatch(reference) or (match is not None and _engine_name(match.group("name"))):
        return
    raise ModelError(
        path,
        f"must be a container image reference such as localhost/os:1.0.0 ([registry/]name[:tag][@digest], name in "
        f"lower case), got {reference[:300]!r}",
    )


@dataclass(frozen=True)
class Gallery:
    """An image gallery (Azure Compute Gallery): a named home for image definitions. Its name is unique on the
    host, as a scale set's is."""

    name: str
    resource_group: str = "default"
    subscription: str = "local"
    location: str = "local"
    # The document as sent: description, tags, sharing profiles... come back verbatim.
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return gallery_id(self.subscription, self.resource_group, self.name)

    def to_json(self) -> dict[str, Any]:
        own = {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Compute/galleries",
            "location": self.location,
            "properties": {
                "identifier": {"uniqueName": f"{self.subscription}-{self.name.upper()}"},
                "provisioningState": "Succeeded",
            },
        }
        doc: dict[str, Any] = overlay(self.sent, own)
        return doc


def parse_gallery(doc: Any, *, name: str, resource_group: str, subscription: str) -> Gallery:
    doc, location, _ = resource_envelope(doc, name)
    return Gallery(name, resource_group, subscription, location, dict(doc))


@dataclass(frozen=True)
class ImageDefinition:
    gallery: str
    name: str
    publisher: str
    offer: str
    sku: str
    # The document as sent: Azure fields with no meaning here (description, hyperVGeneration, features, ...) come
    # back verbatim.
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def matches(self, ref: ImageReference) -> bool:
        if ref.id is not None:
            match = GALLERY_ID.match(ref.id)
            if match is None:
                return False
            return (match.group("gallery"), match.group("image")) == (self.gallery, self.name)
        key = (ref.publisher or "", ref.offer or "", ref.sku or "")
        return tuple(x.lower() for x in key) == (self.publisher.lower(), self.offer.lower(), self.sku.lower())


def parse_image_definition(doc: Any, *, gallery: str, image: str) -> ImageDefinition:
    """An image definition's document: its identifier (publisher, offer, sku) is required; its OS is Linux."""
    props = doc.get("properties") if isinstance(doc, Mapping) else None
    identifier = props.get("identifier") if isinstance(props, Mapping) else None
    if not isinstance(identifier, Mapping):
        raise ModelError("properties.identifier", "is required ({publisher, offer, sku})")
    values = {}
    for key in ("publisher", "offer", "sku"):
        value = identifier.get(key)
        if not isinstance(value, str) or not value:
            raise ModelError(f"properties.identifier.{key}", "is required")
        values[key] = value
    os_type = props.get("osType", "Linux") if isinstance(props, Mapping) else "Linux"
    if not isinstance(os_type, str) or os_type.lower() != "linux":
        raise ModelError("properties.osType", f"must be Linux (instances are Linux containers or VMs), got {os_type!r}")
    return ImageDefinition(gallery, image, **values, sent=doc)


@dataclass(frozen=True)
class ImageVersion:
    gallery: str
    image: str
    version: str
    container_image: str
    exclude_from_latest: bool = False
    target_locations: tuple[str, ...] = ("local",)
    published_at: float = 0.0
    tags: Mapping[str, str] = field(default_factory=dict)
    # Why 'latest' skips this version (an attempt Faulted on it, or a person said so); None: it does not.
    quarantine: str | None = None
    # The document as sent: Azure fields with no meaning here (replica counts, storage account types, end of life
    # date, ...) come back verbatim.
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # The directory of its VM artefacts (base.qcow2, vmlinuz, initrd.img); empty: containers only.
    disk_image: str = ""
    # Its container image's copies on the hosts of its target locations (core/replication.py).
    replicas: tuple[Replica, ...] = field(default=(), compare=False)

    def source(self) -> dict[str, str]:
        """``storageProfile.source.overhaul``: the artefacts it names."""
        return ({"containerImage": self.container_image} if self.container_image else {}) | (
            {"diskImage": self.disk_image} if self.disk_image else {}
        )

    def source_for(self, vm: bool) -> str:
        """What an instance is made from: the disk image for a VM, the container image otherwise ("": none)."""
        return self.disk_image if vm else self.container_image

    @property
    def key(self) -> tuple[str, str, str]:
        return self.gallery, self.image, self.version

    @property
    def quarantined(self) -> bool:
        return self.quarantine is not None

    def targets(self, location: str) -> bool:
        return location.lower() in (loc.lower() for loc in self.target_locations)

    def present_in(self, location: str) -> bool:
        """A target location where every copy its publication made is Completed."""
        return self.targets(location) and available_in(self.replicas, location)

    def replication_in(self, location: str) -> str:
        """Why it is not yet in a target location (the copies' state there)."""
        mine = [r for r in self.replicas if r.location.lower() == location.lower() and not r.catch_up]
        return region_state(mine).value

    def replication_json(self) -> dict[str, Any]:
        """Azure's ``properties.replicationStatus`` (``$expand=ReplicationStatus``)."""
        return replication_status(self.target_locations, self.replicas)

    def to_json(self) -> dict[str, Any]:
        own: dict[str, Any] = {
            "name": self.version,
            "type": "Microsoft.Compute/galleries/images/versions",
            "location": self.target_locations[0] if self.target_locations else "local",
            "tags": dict(self.tags),
            "properties": {
                "publishingProfile": {
                    "excludeFromLatest": self.exclude_from_latest,
                    "targetRegions": [{"name": loc} for loc in self.target_locations],
                    "publishedDate": self.published_at,
                },
                "storageProfile": {"source": {"overhaul": self.source()}},
                "provisioningState": "Succeeded",
                "overhaul": {"quarantined": self.quarantined}
                | ({"quarantineReason": self.quarantine} if self.quarantine else {}),
            },
        }
        doc: dict[str, Any] = overlay(_without_read_only(self.sent), own)
        return doc


def _without_read_only(sent: Mapping[str, Any]) -> dict[str, Any]:
    """What a client sent, less what only the server says (a reason of a quarantine the client cleared, the
    replication a client read and sent back)."""
    doc = dict(sent)
    props = doc.get("properties")
    if isinstance(props, Mapping):
        props = {k: v for k, v in props.items() if k != "replicationStatus"}
        if isinstance(props.get("overhaul"), Mapping):
            own = {k: v for k, v in props["overhaul"].items() if k not in ("quarantineReason", "replicas")}
            props["overhaul"] = own
        doc["properties"] = props
    return doc


def _source(props: Mapping[str, Any]) -> tuple[str, str]:
    """properties.storageProfile.source.overhaul: (the container image, the directory of VM artefacts)."""
    source: Any = props
    path = "properties"
    for key in ("storageProfile", "source", "overhaul"):
        source = source.get(key) or {}
        path += f".{key}"
        if not isinstance(source, Mapping):
            raise ModelError(path, "must be a JSON object")
    return artefacts(source, path)


def artefacts(source: Mapping[str, Any], path: str) -> tuple[str, str]:
    """What instances are made from, as a version's source or a managed image names it: (the container image,
    the directory of VM artefacts), at least one of them."""
    container_image = source.get("containerImage") or ""
    disk_image = source.get("diskImage") or ""
    if not isinstance(container_image, str):
        raise ModelError(f"{path}.containerImage", "must be a container image reference")
    if container_image:
        check_image_reference(container_image, f"{path}.containerImage")
    if not isinstance(disk_image, str) or (disk_image and not disk_image.startswith("/")):
        raise ModelError(f"{path}.diskImage", "must be the absolute path of a directory of VM artefacts")
    if not container_image and not disk_image:
        raise ModelError(
            f"{path}.containerImage",
            "is required (or diskImage, the directory of VM artefacts, for VM scale sets)",
        )
    return container_image, disk_image


def parse_image_version(doc: Any, *, gallery: str, image: str, version: str, published_at: float) -> ImageVersion:
    """Parse the body of a gallery image version PUT (Azure's shape plus the container image)."""
    semver_key(version)
    if not isinstance(doc, Mapping):
        raise ModelError("", "must be a JSON object")
    props = doc.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ModelError("properties", "must be a JSON object")
    publishing = props.get("publishingProfile") or {}
    if not isinstance(publishing, Mapping):
        raise ModelError("properties.publishingProfile", "must be a JSON object")
    exclude = publishing.get("excludeFromLatest", False)
    if not isinstance(exclude, bool):
        raise ModelError("properties.publishingProfile.excludeFromLatest", "must be true or false")
    regions = publishing.get("targetRegions", [{"name": doc.get("location", "local")}])
    if not isinstance(regions, list) or not regions:
        raise ModelError("properties.publishingProfile.targetRegions", "must be a non-empty list")
    locations: list[str] = []
    for i, region in enumerate(regions):
        name = region.get("name") if isinstance(region, Mapping) else region
        if not isinstance(name, str) or not name:
            raise ModelError(f"properties.publishingProfile.targetRegions[{i}].name", "is required")
        locations.append(name)
    container_image, disk_image = _source(props)
    own = props.get("overhaul") or {}
    if not isinstance(own, Mapping):
        raise ModelError("properties.overhaul", "must be a JSON object")
    quarantined = own.get("quarantined", False)
    if not isinstance(quarantined, bool):
        raise ModelError("properties.overhaul.quarantined", "must be true or false")
    reason = own.get("quarantineReason")
    if reason is not None and not isinstance(reason, str):
        raise ModelError("properties.overhaul.quarantineReason", "must be a string")
    return ImageVersion(
        gallery=gallery,
        image=image,
        version=version,
        container_image=container_image,
        disk_image=disk_image,
        exclude_from_latest=exclude,
        target_locations=tuple(locations),
        published_at=published_at,
        quarantine=(reason or "quarantined by a person") if quarantined else None,
        sent=dict(doc),
    )


def latest_version(versions: Iterable[ImageVersion], location: str) -> ImageVersion | None:
    """Azure's "latest": the highest semver not excluded from latest and present in the location; overhaul
    also skips a quarantined version."""
    candidates = [v for v in versions if not v.exclude_from_latest and not v.quarantined and v.present_in(location)]
    return max(candidates, key=lambda v: semver_key(v.version), default=None)


def resolve(
    ref: ImageReference,
    definitions: Iterable[ImageDefinition],
    versions: Iterable[ImageVersion],
    location: str,
    *,
    vm: bool = False,
) -> ImageVersion:
    """The version a reference means in a location, for container or (``vm``) VM instances; ModelError naming
    what is missing. 'latest' skips versions without the artefact the instances are made from."""
    definition = next((d for d in definitions if d.matches(ref)), None)
    if definition is None:
        raise ModelError(
            "properties.virtualMachineProfile.storageProfile.imageReference", "no such image in the gallery"
        )
    mine = [v for v in versions if (v.gallery, v.image) == (definition.gallery, definition.name)]
    source = "diskImage (VM artefacts)" if vm else "containerImage"
    if ref.is_latest:
        found = latest_version([v for v in mine if v.source_for(vm)], location)
        if found is None:
            quarantined = ", ".join(v.version for v in mine if v.quarantined)
            copying = ", ".join(v.version for v in mine if v.targets(location) and not v.present_in(location))
            why = (f" (quarantined: {quarantined})" if quarantined else "") + (
                f" (still replicating to {location}: {copying})" if copying else ""
            )
            raise ModelError(
                "properties.virtualMachineProfile.storageProfile.imageReference.version",
                f"no version of {definition.gallery}/{definition.name} with a {source} is available as latest in "
                f"{location}{why}",
            )
        return found
    exact = next((v for v in mine if v.version == ref.version), None)
    if exact is None or not exact.present_in(location):
        copying = f" yet (replication: {exact.replication_in(location)})" if exact and exact.targets(location) else ""
        raise ModelError(
            "properties.virtualMachineProfile.storageProfile.imageReference.version",
            f"version {ref.version} of {definition.gallery}/{definition.name} is not available in {location}{copying}",
        )
    if not exact.source_for(vm):
        raise ModelError(
            "properties.virtualMachineProfile.storageProfile.imageReference.version",
            f"version {ref.version} of {definition.gallery}/{definition.name} names no {source}: "
            f"{'a VM' if vm else 'a container'} scale set is made from one",
        )
    return exact
