"""Load balancers (``Microsoft.Network/loadBalancers``) as far as scale sets use them: their health probes, which
a scale set names in ``networkProfile.healthProbe.id`` (pure).

Only the probes act; every other field (frontends, rules, SKU, ...) round-trips verbatim."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overhaul.core.arm_json import NAME_PATTERN, ModelError, overlay, resource_envelope
from overhaul.core.model import HealthProbe, parse_health_probe_settings


def load_balancer_id(subscription: str, resource_group: str, name: str) -> str:
    group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    return f"{group}/providers/Microsoft.Network/loadBalancers/{name}"


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    resource_group: str
    subscription: str
    location: str
    probes: Mapping[str, HealthProbe]  # by name, as sent
    sent: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        return load_balancer_id(self.subscription, self.resource_group, self.name)

    def probe(self, name: str) -> HealthProbe | None:
        return next((p for n, p in self.probes.items() if n.lower() == name.lower()), None)

    def to_json(self) -> dict[str, Any]:
        probes = [
            {
                "name": name,
                "id": f"{self.id}/probes/{name}",
                "type": "Microsoft.Network/loadBalancers/probes",
                "properties": {**probe.settings_json(), "provisioningState": "Succeeded"},
            }
            for name, probe in self.probes.items()
        ]
        own = {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Network/loadBalancers",
            "location": self.location,
            "properties": {"probes": probes, "provisioningState": "Succeeded"},
        }
        doc: dict[str, Any] = overlay(self.sent, own)
        return doc


def parse_load_balancer(doc: Any, *, name: str, resource_group: str, subscription: str) -> LoadBalancer:
    """The body of a load balancer PUT; errors name the field (``properties.probes[0].properties.port``)."""
    doc, location, props = resource_envelope(doc, name)
    raw = props.get("probes") or []
    if not isinstance(raw, list):
        raise ModelError("properties.probes", "must be a list")
    probes: dict[str, HealthProbe] = {}
    for i, item in enumerate(raw):
        path = f"properties.probes[{i}]"
        if not isinstance(item, Mapping):
            raise ModelError(path, "must be a JSON object")
        probe_name = item.get("name")
        if not isinstance(probe_name, str) or not NAME_PATTERN.match(probe_name):
            raise ModelError(f"{path}.name", f"must be 1-64 letters, digits, '_', '.' or '-', got {probe_name!r}")
        if probe_name.lower() in (n.lower() for n in probes):
            raise ModelError(f"{path}.name", f"duplicate probe name {probe_name!r}")
        probes[probe_name] = parse_health_probe_settings(item.get("properties"), f"{path}.properties")
    return LoadBalancer(name, resource_group, subscription, location, probes, dict(doc))
