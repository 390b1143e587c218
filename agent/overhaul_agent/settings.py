"""Application Health extension settings, validated with Azure's rules.

The accepted keys are exactly those of Azure's ApplicationHealthLinux ``settings`` object. What overhaul adds
lives under one extra key, ``overhaul``, so an Azure settings document is valid here unchanged and our extras
are never mistaken for Azure's.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class SettingsError(ValueError):
    """Invalid settings. ``field`` is the dotted path of the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Protocol(StrEnum):
    TCP = "tcp"
    HTTP = "http"
    HTTPS = "https"


AZURE_KEYS = frozenset({"protocol", "port", "requestPath", "intervalInSeconds", "numberOfProbes", "gracePeriod"})
EXTRA_KEYS = frozenset({"probeTimeoutInSeconds", "verifyTls", "caFile", "fastProbes", "host"})
DEFAULT_PORTS = {Protocol.HTTP: 80, Protocol.HTTPS: 443}

INTERVAL_RANGE = (5, 60)
PROBES_RANGE = (1, 24)
MAX_INTERVAL_TIMES_PROBES = 240
GRACE_RANGE = (5, 14400)
# With ``overhaul.fastProbes`` the interval may go down to this many seconds (and need not be whole).
FAST_MIN_INTERVAL = 0.05


@dataclass(frozen=True)
class ProbeSettings:
    protocol: Protocol
    port: int
    request_path: str | None
    interval: float
    number_of_probes: int
    grace_period: float
    # Ours (under "overhaul"): a probe never outlives its period, so the schedule stays stable.
    probe_timeout: float
    verify_tls: bool
    ca_file: str | None
    fast_probes: bool
    host: str

    @property
    def fallback_is_unhealthy(self) -> bool:
        """TCP has no Unknown state: silence means Unhealthy there."""
        return self.protocol is Protocol.TCP

    def url(self) -> str:
        return f"{self.protocol.value}://{self.host}:{self.port}{self.request_path or '/'}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "protocol": self.protocol.value,
            "port": self.port,
            "intervalInSeconds": self.interval,
            "numberOfProbes": self.number_of_probes,
            "gracePeriod": self.grace_period,
            "overhaul": {
                "probeTimeoutInSeconds": self.probe_timeout,
                "verifyTls": self.verify_tls,
                "caFile": self.ca_file,
                "fastProbes": self.fast_probes,
                "host": self.host,
            },
        }
        if self.request_path is not None:
            doc["requestPath"] = self.request_path
        return doc


# Integers beyond this are refused before any arithmetic (they cannot be ports, counts or seconds anyway).
MAX_EXACT_INTEGER = 2**53
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def valid_host(host: str) -> bool:
    """An IPv4 or IPv6 address, or a DNS name of letters, digits and hyphens (RFC 1123)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(HOST_LABEL.fullmatch(label) for label in name.split("."))


def _number(doc: Mapping[str, Any], key: str, field: str, *, integer: bool) -> float | None:
    if key not in doc:
        return None
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(field, f"must be a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
        raise SettingsError(field, f"is out of range ({len(str(abs(value)))} digits)")
    if not math.isfinite(value):
        raise SettingsError(field, "must be a finite number")
    if integer and value != int(value):
        raise SettingsError(field, f"must be a whole number, got {value}")
    return float(value)


def _in_range(value: float, low: float, high: float, field: str) -> None:
    if not low <= value <= high:
        raise SettingsError(field, f"must be {low:g}..{high:g}, got {value:g}")


def _bool(doc: Mapping[str, Any], key: str, field: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise SettingsError(field, f"must be true or false, got {value!r}")
    return value


def _unknown_keys(doc: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise SettingsError(f"{prefix}{unknown[0]}", f"unknown setting; allowed: {', '.join(sorted(allowed))}")


def _protocol(doc: Mapping[str, Any], prefix: str) -> Protocol:
    raw = doc.get("protocol")
    if raw is None:
        raise SettingsError(f"{prefix}protocol", "is required (tcp, http or https)")
    try:
        return Protocol(raw.lower() if isinstance(raw, str) else "")
    except ValueError:
        raise SettingsError(f"{prefix}protocol", f"must be tcp, http or https, got {raw!r}") from None


def _target(doc: Mapping[str, Any], protocol: Protocol, prefix: str) -> tuple[int, str | None]:
    """The port and requestPath, with Azure's tcp-versus-http rules."""
    port_value = _number(doc, "port", f"{prefix}port", integer=True)
    if port_value is None:
        if protocol is Protocol.TCP:
            raise SettingsError(f"{prefix}port", "is required when protocol is tcp")
        port = DEFAULT_PORTS[protocol]
    else:
        _in_range(port_value, 1, 65535, f"{prefix}port")
        port = int(port_value)
    path = doc.get("requestPath")
    if protocol is Protocol.TCP:
        if path is not None:
            raise SettingsError(f"{prefix}requestPath", "must not be set when protocol is tcp")
        return port, None
    if path is None:
        raise SettingsError(f"{prefix}requestPath", f"is required when protocol is {protocol.value}")
    if not isinstance(path, str):
        raise SettingsError(f"{prefix}requestPath", "must be a string")
    return port, path if path.startswith("/") else "/" + path


def _timing(doc: Mapping[str, Any], fast: bool, prefix: str) -> tuple[float, int, float]:
    """intervalInSeconds, numberOfProbes and gracePeriod, with their ranges and defaults."""
    interval = _number(doc, "intervalInSeconds", f"{prefix}intervalInSeconds", integer=not fast)
    if interval is None:
        interval = 5.0
    if interval < INTERVAL_RANGE[0] and not fast:
        raise SettingsError(
            f"{prefix}intervalInSeconds",
            f"must be 5..60, got {interval:g} (set overhaul.fastProbes=true to probe faster, e.g. in tests)",
        )
    low_interval = FAST_MIN_INTERVAL if fast else INTERVAL_RANGE[0]
    _in_range(interval, low_interval, INTERVAL_RANGE[1], f"{prefix}intervalInSeconds")

    probes_value = _number(doc, "numberOfProbes", f"{prefix}numberOfProbes", integer=True)
    probes = 1 if probes_value is None else int(probes_value)
    _in_range(probes, *PROBES_RANGE, f"{prefix}numberOfProbes")
    if interval * probes > MAX_INTERVAL_TIMES_PROBES:
        raise SettingsError(
            f"{prefix}numberOfProbes",
            f"intervalInSeconds x numberOfProbes must be at most {MAX_INTERVAL_TIMES_PROBES}, "
            f"got {interval:g} x {probes} = {interval * probes:g}",
        )

    grace = _number(doc, "gracePeriod", f"{prefix}gracePeriod", integer=not fast)
    if grace is None:
        grace = interval * probes
    else:
        _in_range(grace, 0 if fast else GRACE_RANGE[0], GRACE_RANGE[1], f"{prefix}gracePeriod")
    return interval, probes, grace


def parse_settings(doc: Any, *, prefix: str = "settings.") -> ProbeSettings:
    """Validate an Application Health ``settings`` object; errors name the field (``settings.port``)."""
    if not isinstance(doc, Mapping):
        raise SettingsError(prefix.rstrip("."), "must be a JSON object")
    _unknown_keys(doc, AZURE_KEYS | {"overhaul"}, prefix)
    extras = doc.get("overhaul", {})
    xprefix = f"{prefix}overhaul."
    if not isinstance(extras, Mapping):
        raise SettingsError(xprefix.rstrip("."), "must be a JSON object")
    _unknown_keys(extras, EXTRA_KEYS, xprefix)
    fast = _bool(extras, "fastProbes", f"{xprefix}fastProbes", False)
    protocol = _protocol(doc, prefix)
    port, request_path = _target(doc, protocol, prefix)
    interval, probes, grace = _timing(doc, fast, prefix)

    timeout = _number(extras, "probeTimeoutInSeconds", f"{xprefix}probeTimeoutInSeconds", integer=False)
    if timeout is None:
        timeout = min(interval * 0.8, 30.0)
    elif not 0 < timeout < interval:
        raise SettingsError(
            f"{xprefix}probeTimeoutInSeconds",
            f"must be above 0 and below intervalInSeconds ({interval:g}), got {timeout:g}",
        )
    ca_file = extras.get("caFile")
    if ca_file is not None and not isinstance(ca_file, str):
        raise SettingsError(f"{xprefix}caFile", "must be a path string")
    host = extras.get("host", "127.0.0.1")
    if not isinstance(host, str) or not valid_host(host):
        raise SettingsError(f"{xprefix}host", f"must be a host name or an IP address, got {host!r}"[:200])

    return ProbeSettings(
        protocol=protocol,
        port=port,
        request_path=request_path,
        interval=interval,
        number_of_probes=probes,
        grace_period=grace,
        probe_timeout=timeout,
        verify_tls=_bool(extras, "verifyTls", f"{xprefix}verifyTls", False),
        ca_file=ca_file,
        fast_probes=fast,
        host=host,
    )
