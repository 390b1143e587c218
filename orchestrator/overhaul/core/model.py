"""The scale set model: Azure-shaped JSON <-> frozen dataclasses, with Azure's defaults and field-path errors.

Pure: no I/O. What overhaul adds to Azure's shape sits under keys named ``overhaul`` so it is never mistaken
for Azure's own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from overhaul.core.arm_json import (
    NAME_PATTERN,
    ModelError,
    Reader,
    format_duration,
    overlay,
    parse_duration,
)
from overhaul.core.lifecycle_hooks import HookType, LifecycleHook, parse_lifecycle_hooks
from overhaul.core.naming import PREVIOUS_SUFFIX, instance_name, scale_set_id

UPGRADE_MODES = ("Automatic", "Manual", "Rolling")
MAX_CAPACITY = 10000


@dataclass(frozen=True)
class RollingUpgradePolicy:
    max_batch_instance_percent: int = 20
    max_unhealthy_instance_percent: int = 20
    max_unhealthy_upgraded_instance_percent: int = 20
    pause_time_between_batches: float = 0.0
    prioritize_unhealthy_instances: bool = False
    # Instances that failed keep their previous OS disk until the attempt ends, and get it back if it ends by a
    # breach of the policy (without it, an attempt that does not roll back leaves them as they are).
    rollback_failed_instances_on_policy_breach: bool = False
    # The new OS disk starts beside the running one, which keeps serving until the new one is healthy.
    max_surge: bool = False
    # Ours: how long a reimaged instance has to become Healthy before it counts as failed.
    instance_health_timeout: float = 300.0
    # Ours: a sick fleet is fixed forward. Instances unhealthy before the attempt count neither in the pre-check
    # nor before a later batch, and go first; each batch still needs its upgraded instances Healthy.
    fix_forward: bool = False
    # Batches may take instances of several zones at once; off (Azure's default), the zones go one after another.
    enable_cross_zone_upgrade: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "maxBatchInstancePercent": self.max_batch_instance_percent,
            "maxUnhealthyInstancePercent": self.max_unhealthy_instance_percent,
            "maxUnhealthyUpgradedInstancePercent": self.max_unhealthy_upgraded_instance_percent,
            "pauseTimeBetweenBatches": format_duration(self.pause_time_between_batches),
            "prioritizeUnhealthyInstances": self.prioritize_unhealthy_instances,
            "rollbackFailedInstancesOnPolicyBreach": self.rollback_failed_instances_on_policy_breach,
            "maxSurge": self.max_surge,
            "enableCrossZoneUpgrade": self.enable_cross_zone_upgrade,
            "overhaul": {
                "instanceHealthTimeout": format_duration(self.instance_health_timeout),
                "fixForward": self.fix_forward,
            },
        }


@dataclass(frozen=True)
class AutomaticOSUpgradePolicy:
    enable_automatic_os_upgrade: bool = False
    disable_automatic_rollback: bool = False
    use_rolling_upgrade_policy: bool = False
    # Each instance is told its OS upgrade is pending (Platform.PendingOSUpgrade) and waits for an approval.
    os_rolling_upgrade_deferral: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "enableAutomaticOSUpgrade": self.enable_automatic_os_upgrade,
            "disableAutomaticRollback": self.disable_automatic_rollback,
            "useRollingUpgradePolicy": self.use_rolling_upgrade_policy,
            "osRollingUpgradeDeferral": self.os_rolling_upgrade_deferral,
        }


@dataclass(frozen=True)
class UpgradePolicy:
    mode: str = "Manual"
    rolling: RollingUpgradePolicy = field(default_factory=RollingUpgradePolicy)
    automatic: AutomaticOSUpgradePolicy = field(default_factory=AutomaticOSUpgradePolicy)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rollingUpgradePolicy": self.rolling.to_json(),
            "automaticOSUpgradePolicy": self.automatic.to_json(),
        }


@dataclass(frozen=True)
class ImageReference:
    """Either publisher/offer/sku/version, or a gallery image id (optionally with /versions/V)."""

    publisher: str | None = None
    offer: str | None = None
    sku: str | None = None
    version: str = "latest"
    id: str | None = None

    @property
    def is_latest(self) -> bool:
        return self.version.lower() == "latest"

    def with_version(self, version: str) -> ImageReference:
        return replace(self, version=version)

    def to_json(self) -> dict[str, Any]:
        if self.id is not None:
            return {"id": self.id}
        return {"publisher": self.publisher, "offer": self.offer, "sku": self.sku, "version": self.version}


GALLERY_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/galleries/(?P<gallery>[^/]+)"
    r"/images/(?P<image>[^/]+)(?:/versions/(?P<version>[^/]+))?$",
    re.IGNORECASE,
)


def _image_reference(r: Reader) -> ImageReference:
    image_id = r.text("id")
    if image_id is not None:
        match = GALLERY_ID.match(image_id)
        if match is None:
            raise ModelError(
                r.at("id"),
                "must be a gallery image id: /subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/"
                "galleries/GALLERY/images/IMAGE[/versions/VERSION]",
            )
        return ImageReference(id=image_id, version=match.group("version") or "latest")
    version = r.text("version", "latest") or "latest"
    if version.lower() != "latest" and not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ModelError(r.at("version"), f"must be 'latest' or MAJOR.MINOR.PATCH, got {version!r}")
    return ImageReference(
        publisher=r.required_text("publisher"),
        offer=r.required_text("offer"),
        sku=r.required_text("sku"),
        version=version,
    )


@dataclass(frozen=True)
class DataDisk:
    lun: int
    name: str | None = None
    disk_size_gb: int | None = None
    # Ours: where the disk appears inside a container instance.
    mount_path: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "lun": self.lun,
            "createOption": "Empty",
            "overhaul": {"mountPath": self.mount_path},
        }
        if self.name:
            doc["name"] = self.name
        if self.disk_size_gb is not None:
            doc["diskSizeGB"] = self.disk_size_gb
        return doc


@dataclass(frozen=True)
class HealthProbe:
    """A load-balancer style probe straight to the application's published port: written inline (ours), or a
    load balancer's probe that ``id`` names (Azure's), whose settings are copied here when the model is written."""

    protocol: str  # "Http" or "Tcp"
    port: int
    request_path: str = "/"
    # Azure's intervalInSeconds (None: the orchestrator's health.probe_interval) and numberOfProbes (consecutive
    # failures of a Healthy instance before it counts as Unhealthy).
    interval: float | None = None
    number_of_probes: int = 1
    id: str | None = None

    @property
    def resolved(self) -> bool:
        return self.port > 0

    def settings_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"protocol": self.protocol, "port": self.port}
        if self.protocol == "Http":
            doc["requestPath"] = self.request_path
        if self.interval is not None:
            doc["intervalInSeconds"] = int(self.interval)
        if self.number_of_probes != 1:
            doc["numberOfProbes"] = self.number_of_probes
        return doc

    def to_json(self) -> dict[str, Any]:
        if self.id is None:
            return self.settings_json()
        # The settings it was written with ride along (read-only), so a reload needs no load balancer lookup.
        return {"id": self.id, "properties": self.settings_json() if self.resolved else {}}


@dataclass(frozen=True)
class Extension:
    name: str
    type: str
    raw: Mapping[str, Any]

    @property
    def is_application_health(self) -> bool:
        return self.type.lower() in ("applicationhealthlinux", "applicationhealthwindows")


class Accel(StrEnum):
    """How a VM's CPU runs: KVM, TCG (QEMU's emulator), or KVM when the host's works and TCG otherwise."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class VmOptions:
    """Ours (``virtualMachineProfile.overhaul.vm``): the instances are QEMU VMs, not containers."""

    memory_mb: int = 512
    vcpus: int = 2
    accel: Accel = Accel.AUTO

    def to_json(self) -> dict[str, Any]:
        return {"memoryMB": self.memory_mb, "vCPUs": self.vcpus, "accel": self.accel.value}


class InstanceNetwork(StrEnum):
    """Whom an instance's network reaches besides the host's published ports (ours: Azure names a VNet instead).
    ``isolated``: nobody — each container has a network stack of its own, so neither another instance of its scale
    set nor of another reaches it; ``shared``: the engine's default bridge, which every container on it shares."""

    ISOLATED = "isolated"
    SHARED = "shared"


@dataclass(frozen=True)
class EngineOptions:
    """Ours (``virtualMachineProfile.overhaul``): how an instance runs — a container on an engine, or a VM."""

    command: tuple[str, ...] | None = None
    stop_timeout: int = 10
    agent_port: int = 8090
    ports: tuple[int, ...] = ()
    systemd: bool = False
    # Ours: the explicit opt-out of Azure's rule that automatic upgrades need a health probe or the Application
    # Health extension; "running" is then the only health there is.
    health_from_power_state: bool = False
    vm: VmOptions | None = None
    network: InstanceNetwork = InstanceNetwork.ISOLATED

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm.to_json() if self.vm is not None else None,
            "network": self.network.value,
            "command": list(self.command) if self.command is not None else None,
            "stopTimeoutInSeconds": self.stop_timeout,
            "agentPort": self.agent_port,
            "ports": list(self.ports),
            "systemd": self.systemd,
            "healthFromPowerState": self.health_from_power_state,
        }


class HealthSourceKind(StrEnum):
    """Where an instance's health comes from: the agent inside it (Application Health extension), a
    load-balancer probe of its port, or only whether it runs."""

    AGENT = "agent"
    PROBE = "probe"
    POWER = "power"


@dataclass(frozen=True)
class ScaleSetRef:
    """A scale set's ARM identity; compared case-insensitively, as ARM compares ids."""

    subscription: str
    resource_group: str
    name: str

    def matches(self, model: ScaleSet) -> bool:
        return (self.subscription.lower(), self.resource_group.lower(), self.name.lower()) == (
            model.subscription.lower(),
            model.resource_group.lower(),
            model.name.lower(),
        )

    @property
    def resource_id(self) -> str:
        return scale_set_id(self.subscription, self.resource_group, self.name)


@dataclass(frozen=True)
class ScaleSet:
    name: str
    resource_group: str
    subscription: str
    location: str
    sku_name: str
    capacity: int
    upgrade_policy: UpgradePolicy
    image_reference: ImageReference
    data_disks: tuple[DataDisk, ...] = ()
    extensions: tuple[Extension, ...] = ()
    health_probe: HealthProbe | None = None
    custom_data: str | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)
    tags: Mapping[str, str] = field(default_factory=dict)
    # Automatic OS upgrades wait for these (core/lifecycle_hooks.py).
    lifecycle_hooks: tuple[LifecycleHook, ...] = ()
    # Where instances are placed (docs/hosts.md): the zones of its location, a host group by id, and whether a
    # scale-out must keep the zones within one instance of each other.
    zones: tuple[str, ...] = ()
    host_group: str | None = None
    zone_balance: bool = False
    # The document as it was sent: Azure fields with no meaning here (osDisk.caching, adminUsername,
    # networkInterfaceConfigurations, ...) round-trip from it verbatim.
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def lifecycle_hook(self, kind: HookType) -> LifecycleHook | None:
        return next((h for h in self.lifecycle_hooks if h.type is kind), None)

    @property
    def is_vm(self) -> bool:
        return self.engine.vm is not None

    @property
    def uses_agent(self) -> bool:
        return any(e.is_application_health for e in self.extensions)

    @property
    def health_source(self) -> HealthSourceKind:
        if self.uses_agent:
            return HealthSourceKind.AGENT
        if self.health_probe is not None:
            return HealthSourceKind.PROBE
        return HealthSourceKind.POWER

    @property
    def ref(self) -> ScaleSetRef:
        return ScaleSetRef(self.subscription, self.resource_group, self.name)

    @property
    def published_ports(self) -> tuple[int, ...]:
        """Container ports published on 127.0.0.1: the agent's, the probe's, and those asked for."""
        ports: list[int] = []
        if self.uses_agent:
            ports.append(self.engine.agent_port)
        if self.health_probe is not None:
            ports.append(self.health_probe.port)
        ports.extend(self.engine.ports)
        return tuple(dict.fromkeys(ports))

    def instance_name(self, instance_id: int) -> str:
        return instance_name(self.name, instance_id)

    @property
    def resource_id(self) -> str:
        return scale_set_id(self.subscription, self.resource_group, self.name)

    def with_image_reference(self, image: ImageReference) -> ScaleSet:
        return replace(self, image_reference=image)

    def to_json(self) -> dict[str, Any]:
        profile: dict[str, Any] = {
            "storageProfile": {
                "imageReference": self.image_reference.to_json(),
                "osDisk": {"createOption": "FromImage"},
                "dataDisks": [d.to_json() for d in self.data_disks],
            },
            "extensionProfile": {"extensions": [dict(e.raw) for e in self.extensions]},
            "networkProfile": {"healthProbe": self.health_probe.to_json() if self.health_probe else None},
            "osProfile": {"customData": self.custom_data},
            "overhaul": self.engine.to_json(),
        }
        canonical = {
            "id": self.resource_id,
            "name": self.name,
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "location": self.location,
            "tags": dict(self.tags),
            "sku": {"name": self.sku_name, "tier": "Standard", "capacity": self.capacity},
            "properties": {
                "upgradePolicy": self.upgrade_policy.to_json(),
                "virtualMachineProfile": profile,
                "provisioningState": "Succeeded",
            },
        }
        doc: dict[str, Any] = overlay(self.sent, canonical)
        os_profile = doc["properties"]["virtualMachineProfile"]["osProfile"]
        os_profile.setdefault("computerNamePrefix", self.name)  # Azure's default; one that was sent stays
        return doc


def _rolling_policy(r: Reader) -> RollingUpgradePolicy:
    ours = r.obj("overhaul")
    timeout_text = ours.text("instanceHealthTimeout")
    pause_text = r.text("pauseTimeBetweenBatches")
    pause = parse_duration(pause_text, r.at("pauseTimeBetweenBatches")) if pause_text is not None else 0.0
    if pause > 3600:
        raise ModelError(r.at("pauseTimeBetweenBatches"), "must be at most PT1H")
    timeout = parse_duration(timeout_text, ours.at("instanceHealthTimeout")) if timeout_text else 300.0
    if not 0 < timeout <= 86400:
        raise ModelError(ours.at("instanceHealthTimeout"), "must be above PT0S and at most P1D")
    return RollingUpgradePolicy(
        max_batch_instance_percent=r.integer("maxBatchInstancePercent", 20, 5, 100),
        max_unhealthy_instance_percent=r.integer("maxUnhealthyInstancePercent", 20, 5, 100),
        max_unhealthy_upgraded_instance_percent=r.integer("maxUnhealthyUpgradedInstancePercent", 20, 0, 100),
        pause_time_between_batches=pause,
        prioritize_unhealthy_instances=r.boolean("prioritizeUnhealthyInstances", False),
        rollback_failed_instances_on_policy_breach=r.boolean("rollbackFailedInstancesOnPolicyBreach", False),
        max_surge=r.boolean("maxSurge", False),
        instance_health_timeout=timeout,
        fix_forward=ours.boolean("fixForward", False),
        enable_cross_zone_upgrade=r.boolean("enableCrossZoneUpgrade", False),
    )


def parse_rolling_policy(doc: Any, path: str = "rollingUpgradePolicy") -> RollingUpgradePolicy:
    return _rolling_policy(Reader(doc, path))


def _upgrade_policy(r: Reader) -> UpgradePolicy:
    mode = r.text("mode", "Manual") or "Manual"
    canonical = next((m for m in UPGRADE_MODES if m.lower() == mode.lower()), None)
    if canonical is None:
        raise ModelError(r.at("mode"), f"must be one of {', '.join(UPGRADE_MODES)}, got {mode!r}")
    auto = r.obj("automaticOSUpgradePolicy")
    return UpgradePolicy(
        mode=canonical,
        rolling=_rolling_policy(r.obj("rollingUpgradePolicy")),
        automatic=AutomaticOSUpgradePolicy(
            enable_automatic_os_upgrade=auto.boolean("enableAutomaticOSUpgrade", False),
            disable_automatic_rollback=auto.boolean("disableAutomaticRollback", False),
            use_rolling_upgrade_policy=auto.boolean("useRollingUpgradePolicy", False),
            os_rolling_upgrade_deferral=auto.boolean("osRollingUpgradeDeferral", False),
        ),
    )


def _data_disks(raw: Any, path: str) -> tuple[DataDisk, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ModelError(path, "must be a list")
    disks: list[DataDisk] = []
    for i, item in enumerate(raw):
        r = Reader(item, f"{path}[{i}]")
        lun = r.integer("lun", None, 0, 63)
        if any(d.lun == lun for d in disks):
            raise ModelError(r.at("lun"), f"duplicate lun {lun}")
        size = r.doc.get("diskSizeGB")
        if size is not None:
            size = r.integer("diskSizeGB", None, 1, 32767)
        mount = r.obj("overhaul").text("mountPath", f"/datadisks/lun{lun}") or f"/datadisks/lun{lun}"
        if not mount.startswith("/"):
            raise ModelError(r.obj("overhaul").at("mountPath"), "must be an absolute path")
        disks.append(DataDisk(lun=lun, name=r.text("name"), disk_size_gb=size, mount_path=mount))
    return tuple(disks)


def _extensions(raw: Any, path: str) -> tuple[Extension, ...]:
    r = Reader(raw, path)
    items = r.doc.get("extensions", [])
    if not isinstance(items, list):
        raise ModelError(r.at("extensions"), "must be a list")
    extensions: list[Extension] = []
    for i, item in enumerate(items):
        er = Reader(item, f"{r.at('extensions')}[{i}]")
        name = er.required_text("name")
        ext_type = er.obj("properties").required_text("type")
        if any(e.name == name for e in extensions):
            raise ModelError(er.at("name"), f"duplicate extension name {name!r}")
        extensions.append(Extension(name=name, type=ext_type, raw=dict(er.doc)))
    return tuple(extensions)


PROBE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Network/loadBalancers/"
    r"(?P<lb>[^/]+)/probes/(?P<probe>[^/]+)$",
    re.IGNORECASE,
)


def _probe_settings(r: Reader) -> HealthProbe:
    protocol = (r.text("protocol", "Http") or "Http").capitalize()
    if protocol not in ("Http", "Tcp"):
        raise ModelError(r.at("protocol"), f"must be Http or Tcp, got {r.doc.get('protocol')!r}")
    port = r.integer("port", None, 1, 65535)
    path = r.text("requestPath", "/") or "/"
    interval = r.integer("intervalInSeconds", 0, 0, 3600) or None  # Azure's minimum is 5; 0 or none: ours
    return HealthProbe(
        protocol=protocol,
        port=port,
        request_path=path if path.startswith("/") else "/" + path,
        interval=float(interval) if interval is not None else None,
        number_of_probes=r.integer("numberOfProbes", 1, 1, 100),
    )


def parse_health_probe_settings(doc: Any, path: str) -> HealthProbe:
    """A probe's settings (a load balancer probe's ``properties``, or our inline ``healthProbe``)."""
    return _probe_settings(Reader(doc, path))


def _health_probe(r: Reader) -> HealthProbe | None:
    if not r.doc:
        return None
    if "id" not in r.doc:
        return _probe_settings(r)
    probe_id = r.required_text("id")
    if not PROBE_ID.match(probe_id):
        raise ModelError(
            r.at("id"),
            "must be a load balancer probe id: /subscriptions/S/resourceGroups/G/providers/Microsoft.Network/"
            f"loadBalancers/LB/probes/PROBE, got {probe_id!r}",
        )
    cached = r.obj("properties")
    if cached.doc.get("port"):  # written by overhaul when the model was stored: the probe's settings then
        return replace(_probe_settings(cached), id=probe_id)
    return HealthProbe(protocol="Tcp", port=0, id=probe_id)  # resolved when the model is written


def _vm(r: Reader) -> VmOptions:
    accel = r.text("accel", "auto") or "auto"
    if accel.lower() not in {a.value for a in Accel}:
        raise ModelError(r.at("accel"), f"must be auto, kvm or tcg, got {accel!r}")
    return VmOptions(
        memory_mb=r.integer("memoryMB", 512, 128, 65536),
        vcpus=r.integer("vCPUs", 2, 1, 64),
        accel=Accel(accel.lower()),
    )


def _engine(r: Reader) -> EngineOptions:
    command = r.doc.get("command")
    if command is not None and (not isinstance(command, list) or not all(isinstance(c, str) for c in command)):
        raise ModelError(r.at("command"), "must be a list of strings")
    ports = r.doc.get("ports", [])
    if not isinstance(ports, list):
        raise ModelError(r.at("ports"), "must be a list of container ports")
    for i, port in enumerate(ports):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ModelError(f"{r.at('ports')}[{i}]", f"must be a port 1..65535, got {port!r}")
    vm = _vm(r.obj("vm")) if r.doc.get("vm") is not None else None
    network_name = (r.text("network", InstanceNetwork.ISOLATED.value) or InstanceNetwork.ISOLATED.value).lower()
    if network_name not in {n.value for n in InstanceNetwork}:
        raise ModelError(r.at("network"), f"must be isolated or shared, got {network_name!r}")
    network = InstanceNetwork(network_name)
    if vm is not None:
        for key in ("command", "systemd"):
            if r.doc.get(key):
                raise ModelError(r.at(key), "has no meaning for a VM (virtualMachineProfile.overhaul.vm): leave it out")
        if network is InstanceNetwork.SHARED:
            raise ModelError(r.at("network"), "must be isolated for a VM: each VM has a user-mode network of its own")
    return EngineOptions(
        vm=vm,
        command=tuple(command) if command is not None else None,
        stop_timeout=r.integer("stopTimeoutInSeconds", 10, 0, 600),
        agent_port=r.integer("agentPort", 8090, 1, 65535),
        ports=tuple(ports),
        systemd=r.boolean("systemd", False),
        health_from_power_state=r.boolean("healthFromPowerState", False),
        network=network,
    )


def parse_scale_set(doc: Any, *, name: str, resource_group: str = "default", subscription: str = "local") -> ScaleSet:
    """Parse an Azure-shaped scale set document (the body of a PUT)."""
    if not NAME_PATTERN.match(name):
        raise ModelError("name", f"must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
    if name.lower().endswith(PREVIOUS_SUFFIX):
        raise ModelError("name", f"must not end in {PREVIOUS_SUFFIX!r}: instances' previous OS disks are named with it")
    root = Reader(doc, "")
    location = root.text("location", "local") or "local"
    sku = root.obj("sku")
    props = root.obj("properties")
    vm = props.obj("virtualMachineProfile")
    storage = vm.obj("storageProfile")
    if "imageReference" not in storage.doc:
        raise ModelError(storage.at("imageReference"), "is required")
    tags = root.doc.get("tags") or {}
    if not isinstance(tags, Mapping) or not all(isinstance(v, str) for v in tags.values()):
        raise ModelError("tags", "must be an object of strings")
    return ScaleSet(
        name=name,
        resource_group=resource_group,
        subscription=subscription,
        location=location,
        sku_name=sku.text("name", "Standard_Container") or "Standard_Container",
        capacity=sku.integer("capacity", None, 0, MAX_CAPACITY),
        upgrade_policy=_upgrade_policy(props.obj("upgradePolicy")),
        image_reference=_image_reference(storage.obj("imageReference")),
        data_disks=_data_disks(storage.doc.get("dataDisks"), storage.at("dataDisks")),
        extensions=_extensions(vm.doc.get("extensionProfile"), vm.at("extensionProfile")),
        health_probe=_health_probe(vm.obj("networkProfile").obj("healthProbe")),
        custom_data=vm.obj("osProfile").text("customData"),
        engine=_engine(vm.obj("overhaul")),
        tags=dict(tags),
        lifecycle_hooks=parse_lifecycle_hooks(props.obj("lifecycleHooksProfile")),
        zones=_zones(root.doc.get("zones")),
        host_group=props.obj("hostGroup").text("id"),
        zone_balance=props.boolean("zoneBalance", False),
        sent=copy.deepcopy(dict(root.doc)),
    )


def _zones(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(z, str) and z for z in value) or len(set(value)) < len(value):
        raise ModelError("zones", f"must be a list of distinct zone names, got {value!r}")
    return tuple(value)


def model_digest(model: ScaleSet) -> str:
    """Names what an OS disk is made from besides its image: extensions, customData, data disks and how the instance
    runs. Two models with the same digest make the same instances; a changed one calls for a model upgrade
    (``latestModelApplied`` is whether an instance's OS disk was made with the current digest)."""
    engine = model.engine.to_json()
    if engine["network"] == InstanceNetwork.ISOLATED:
        del engine["network"]  # the default leaves digests as they were before the setting existed
    what = {
        "extensions": [dict(e.raw) for e in model.extensions],
        "customData": model.custom_data,
        "dataDisks": [d.to_json() for d in model.data_disks],
        "engine": engine,
        "ports": list(model.published_ports),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def check_new_model(model: ScaleSet) -> None:
    """Azure's rules for a model being written (not for one read back from the store, which was checked then)."""
    if model.is_vm:
        _check_vm_model(model)
    if model.upgrade_policy.automatic.enable_automatic_os_upgrade and not model.image_reference.is_latest:
        # A fixed version never has a newer one to move to: Azure refuses it rather than never upgrading.
        raise ModelError(
            "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
            "Automatic OS Upgrade requires the scale set to use a Platform or Gallery Image with version set to "
            f"'latest'; storageProfile.imageReference names version {model.image_reference.version!r}",
        )
    if (
        model.upgrade_policy.automatic.enable_automatic_os_upgrade
        and model.health_source is HealthSourceKind.POWER
        and not model.engine.health_from_power_state
    ):
        raise ModelError(
            "properties.upgradePolicy.automaticOSUpgradePolicy.enableAutomaticOSUpgrade",
            "Automatic OS Upgrade requires an application health probe (virtualMachineProfile.networkProfile."
            "healthProbe) or the Application Health extension (virtualMachineProfile.extensionProfile); to upgrade "
            "on power state alone, set virtualMachineProfile.overhaul.healthFromPowerState to true",
        )


def _check_vm_model(model: ScaleSet) -> None:
    """What VM instances cannot do (yet), refused rather than silently not done."""
    if model.upgrade_policy.rolling.max_surge and model.data_disks:
        raise ModelError(
            "properties.upgradePolicy.rollingUpgradePolicy.maxSurge",
            "must be false for a VM scale set with data disks: a data disk is attached to one VM at a time",
        )


def check_kind_change(old: ScaleSet, new: ScaleSet) -> None:
    """A scale set stays made of containers or of VMs: its instances cannot change what they are."""
    if old.is_vm != new.is_vm:
        raise ModelError(
            "properties.virtualMachineProfile.overhaul.vm",
            f"cannot be {'removed from' if old.is_vm else 'added to'} an existing scale set: its instances are "
            f"{'VMs' if old.is_vm else 'containers'}; make a new scale set",
        )


# Azure writes these and never reads them back: an extension's secrets.
WRITE_ONLY = "protectedSettings"


def _extension_list(doc: Any) -> list[Any]:
    """The document's extensions (``[]`` when it has none, or not in Azure's shape: the parser names that)."""
    profile = doc.get("properties", {}) if isinstance(doc, Mapping) else {}
    for key in ("virtualMachineProfile", "extensionProfile", "extensions"):
        profile = profile.get(key) if isinstance(profile, Mapping) else None
    return profile if isinstance(profile, list) else []


def without_secrets(doc: dict[str, Any]) -> dict[str, Any]:
    """A scale set's document as the API answers it: every extension's protectedSettings left out."""
    public = copy.deepcopy(doc)
    for extension in _extension_list(public):
        props = extension.get("properties") if isinstance(extension, dict) else None
        if isinstance(props, dict):
            props.pop(WRITE_ONLY, None)
    return public


def keep_secrets(previous: Mapping[str, Any], doc: Any) -> Any:
    """``doc`` with the protectedSettings of ``previous``'s extensions of the same name where it sends none: a
    document read back (which never holds them) and written again keeps them, as in Azure."""
    kept = {
        str(e.get("name", "")).lower(): e["properties"][WRITE_ONLY]
        for e in _extension_list(previous)
        if isinstance(e, Mapping) and isinstance(e.get("properties"), Mapping) and WRITE_ONLY in e["properties"]
    }
    if not kept:
        return doc
    doc = copy.deepcopy(doc)
    for extension in _extension_list(doc):
        props = extension.get("properties") if isinstance(extension, dict) else None
        name = str(extension.get("name", "")).lower() if isinstance(extension, dict) else ""
        if isinstance(props, dict) and WRITE_ONLY not in props and name in kept:
            props[WRITE_ONLY] = copy.deepcopy(kept[name])
    return doc
