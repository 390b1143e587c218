"""Hosts in the shape of Azure's Dedicated Hosts (pure): a host group (``Microsoft.Compute/hostGroups/{group}``: a
location, at most one zone, fault domains) holds hosts (``…/hosts/{host}``: a fault domain). What makes a host one
of ours is under ``properties.overhaul``: how its container engine is reached (a unix socket, an SSH-forwarded
socket with the host's key given, or TCP with TLS), where its instances publish and which host ports they take."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from overhaul.core.arm_json import ModelError, overlay, resource_envelope

OURS = "properties.overhaul"
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*$")
DEFAULT_PORTS = (20000, 29999)
MAX_FAULT_DOMAINS = 3  # as Azure's host groups

# Where the orchestrator's own engine is; any other location runs instances on the hosts in it.
LOCAL_LOCATION = "local"


def host_group_id(subscription: str, resource_group: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Compute/hostGroups/{name}"
    )


@dataclass(frozen=True)
class HostGroup:
    name: str
    resource_group: str
    subscription: str
    location: str
    zone: str | None  # one zone per group, as Azure's
    fault_domains: int
    automatic_placement: bool = False
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return host_group_id(self.subscription, self.resource_group, self.name)

    def to_json(self, hosts: list[str] | None = None) -> dict[str, Any]:
        own: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Compute/hostGroups",
            "location": self.location,
            "properties": {
                "platformFaultDomainCount": self.fault_domains,
                "supportAutomaticPlacement": self.automatic_placement,
                "hosts": [{"id": h} for h in hosts or []],
            },
        }
        if self.zone is not None:
            own["zones"] = [self.zone]
        doc: dict[str, Any] = overlay(self.sent, own)
        return doc


@dataclass(frozen=True)
class Engine:
    """How a host's container engine is reached."""

    url: str
    scheme: str  # unix | ssh | tcp
    address: str  # the ssh or tcp host name; "" for unix
    port: int | None  # the ssh or tcp port
    user: str | None  # ssh
    socket: str  # the engine's socket: local for unix, on the host for ssh; "" for tcp


@dataclass(frozen=True)
class Tls:
    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class Host:
    group: str
    name: str
    resource_group: str
    subscription: str
    location: str
    fault_domain: int | None  # None: the group's least used, chosen when it is created
    engine: Engine
    publish_address: str
    ports: tuple[int, int] = DEFAULT_PORTS  # the host ports its instances publish on, both ends included
    ssh_key: str | None = None  # the orchestrator's private key file for ssh
    host_key: str | None = None  # the host's public key line for ssh: given, never learnt
    tls: Tls | None = None
    call_timeout: float = 60.0
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)
    zone: str | None = field(default=None, compare=False)  # its group's, when known (not part of its document)

    @property
    def id(self) -> str:
        return f"{host_group_id(self.subscription, self.resource_group, self.group)}/hosts/{self.name}"

    def free_port(self, taken: Collection[int]) -> int | None:
        """The lowest port of its range that no instance on it holds (None: all are held)."""
        first, last = self.ports
        return next((p for p in range(first, last + 1) if p not in taken), None)

    def to_json(self) -> dict[str, Any]:
        ours: dict[str, Any] = {
            "engine": self.engine.url,
            "publishAddress": self.publish_address,
            "hostPorts": f"{self.ports[0]}-{self.ports[1]}",
            "callTimeout": self.call_timeout,
        }
        for key, value in (("sshKey", self.ssh_key), ("hostKey", self.host_key)):
            if value is not None:
                ours[key] = value
        if self.tls is not None:
            ours["tls"] = {"caCertificate": self.tls.ca, "certificate": self.tls.cert, "key": self.tls.key}
        own = {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Compute/hostGroups/hosts",
            "location": self.location,
            "properties": {
                "platformFaultDomain": self.fault_domain,
                "provisioningState": "Succeeded",
                "overhaul": ours,
            },
        }
        doc: dict[str, Any] = overlay(self.sent, own)
        return doc


def parse_host_group(doc: Any, *, name: str, resource_group: str, subscription: str) -> HostGroup:
    """The body of a host group PUT; errors name the field."""
    doc, location, props = resource_envelope(doc, name)
    zones = doc.get("zones") or []
    if not isinstance(zones, list) or not all(isinstance(z, str) and z for z in zones):
        raise ModelError("zones", f"must be a list of zone names, got {zones!r}")
    if len(zones) > 1:
        raise ModelError("zones", f"a host group is in one zone at most, got {len(zones)}")
    count = props.get("platformFaultDomainCount")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FAULT_DOMAINS:
        raise ModelError(
            "properties.platformFaultDomainCount",
            f"must be a whole number from 1 to {MAX_FAULT_DOMAINS}, got {count!r}",
        )
    automatic = props.get("supportAutomaticPlacement", False)
    if not isinstance(automatic, bool):
        raise ModelError("properties.supportAutomaticPlacement", f"must be true or false, got {automatic!r}")
    zone = zones[0] if zones else None
    return HostGroup(name, resource_group, subscription, location, zone, count, automatic, dict(doc))


def parse_host(doc: Any, *, group: str, name: str, resource_group: str, subscription: str) -> Host:
    """The body of a host PUT; errors name the field. What needs the group (its location, its fault domains) is
    checked where the group is known."""
    doc, location, props = resource_envelope(doc, name)
    domain = props.get("platformFaultDomain")
    if domain is not None and (isinstance(domain, bool) or not isinstance(domain, int) or domain < 0):
        raise ModelError("properties.platformFaultDomain", f"must be a whole number from 0, got {domain!r}")
    ours = props.get("overhaul")
    if not isinstance(ours, Mapping):
        raise ModelError(OURS, "must be a JSON object with at least the host's engine URL")
    engine = parse_engine_url(ours.get("engine"))
    ssh_key = _path(ours, "sshKey", required=engine.scheme == "ssh")
    host_key = parse_host_key(ours.get("hostKey")) if engine.scheme == "ssh" else None
    tls = _tls(ours.get("tls"), engine)
    publish = ours.get("publishAddress", engine.address or "127.0.0.1")
    if not isinstance(publish, str) or not _is_address(publish):
        raise ModelError(f"{OURS}.publishAddress", f"must be an IP address or a host name, got {publish!r}")
    timeout = ours.get("callTimeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 1 <= timeout <= 3600:
        raise ModelError(f"{OURS}.callTimeout", f"must be seconds from 1 to 3600, got {timeout!r}")
    return Host(
        group,
        name,
        resource_group,
        subscription,
        location,
        domain,
        engine,
        publish,
        parse_port_range(ours.get("hostPorts")),
        ssh_key,
        host_key,
        tls,
        float(timeout),
        dict(doc),
    )


def parse_engine_url(url: Any) -> Engine:
    """``unix:///path/engine.sock``, ``ssh://user@host[:port]/path/engine.sock`` or ``tcp://host:port``."""
    path = f"{OURS}.engine"
    if not isinstance(url, str) or not url:
        raise ModelError(path, "is required: unix:///path.sock, ssh://user@host[:port]/path.sock or tcp://host:port")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ModelError(path, f"{url!r} is not a URL: {exc}") from None
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ModelError(path, f"a unix URL names an absolute socket path (unix:///run/podman.sock), got {url!r}")
        return Engine(url, "unix", "", None, None, parts.path)
    if parts.scheme not in ("ssh", "tcp"):
        raise ModelError(path, f"must be a unix://, ssh:// or tcp:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname or not _is_address(parts.hostname):
        raise ModelError(path, f"names no host: {url!r}")
    if parts.scheme == "tcp":
        if port is None or parts.path not in ("", "/"):
            raise ModelError(path, f"a tcp URL is tcp://host:port, got {url!r}")
        return Engine(url, "tcp", parts.hostname, port, None, "")
    if not parts.username:
        raise ModelError(path, f"an ssh URL names the user: ssh://user@host/path.sock, got {url!r}")
    if len(parts.path) < 2:
        raise ModelError(path, f"an ssh URL ends with the engine's socket path on the host, got {url!r}")
    return Engine(url, "ssh", parts.hostname, port or 22, parts.username, parts.path)


def parse_host_key(line: Any) -> str:
    """An OpenSSH public key line (``ssh-ed25519 AAAA…``, as in the host's ``/etc/ssh/ssh_host_*_key.pub``)."""
    path = f"{OURS}.hostKey"
    if not isinstance(line, str) or not line.strip():
        raise ModelError(path, "is required for ssh: the host's public key line (never learnt on first use)")
    fields = line.split()
    if len(fields) < 2 or fields[0] not in HOST_KEY_TYPES:
        raise ModelError(path, f"must start with one of {', '.join(HOST_KEY_TYPES)} and the key, got {line[:40]!r}")
    try:
        blob = base64.b64decode(fields[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        named = blob[4 : 4 + length].decode()
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise ModelError(path, "the key is not base64 of an SSH public key") from None
    if named != fields[0]:
        raise ModelError(path, f"the key is an {named!r} key, the line says {fields[0]!r}")
    return f"{fields[0]} {fields[1]}"


def parse_port_range(value: Any) -> tuple[int, int]:
    """``"20000-29999"``: the host ports instances publish on, within 1024-65535."""
    path = f"{OURS}.hostPorts"
    if value is None:
        return DEFAULT_PORTS
    match = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value) if isinstance(value, str) else None
    low, high = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not match or not 1024 <= low <= high <= 65535:
        raise ModelError(path, f"must be FIRST-LAST within 1024-65535, got {value!r}")
    return low, high


def _path(ours: Mapping[str, Any], key: str, *, required: bool, within: str = OURS) -> str | None:
    value = ours.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ModelError(f"{within}.{key}", f"must be an absolute file path on the orchestrator, got {value!r}")
    return value


def _tls(value: Any, engine: Engine) -> Tls | None:
    path = f"{OURS}.tls"
    if value is None:
        if engine.scheme == "tcp" and not _is_loopback(engine.address):
            raise ModelError(path, "is required for tcp:// to another machine: the engine API gives root on it")
        return None
    if engine.scheme != "tcp":
        raise ModelError(path, "is for tcp:// engines only")
    if not isinstance(value, Mapping):
        raise ModelError(path, "must be a JSON object: caCertificate, certificate, key")
    files = {k: _path(value, k, required=True, within=path) for k in ("caCertificate", "certificate", "key")}
    return Tls(str(files["caCertificate"]), str(files["certificate"]), str(files["key"]))


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(HOSTNAME.match(value))
    return True


def _is_loopback(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).is_loopback
    except ValueError:
        return value == "localhost"
