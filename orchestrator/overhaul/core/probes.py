"""Scale sets and the load balancer probes they name (pure): resolving ``healthProbe.id``, and what a load balancer
change would do to the scale sets that use it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from overhaul.core.errors import Conflict, InvalidInput
from overhaul.core.model import PROBE_ID, ScaleSet
from overhaul.core.network import LoadBalancer

PROBE_FIELD = "properties.virtualMachineProfile.networkProfile.healthProbe.id"


def probe_name(model: ScaleSet, balancer: LoadBalancer) -> str | None:
    """The name of ``balancer``'s probe that ``model`` uses, if it uses one of them."""
    probe = model.health_probe
    match = PROBE_ID.match(probe.id) if probe is not None and probe.id is not None else None
    if match is None:
        return None
    same = (match["sub"], match["rg"], match["lb"])
    if tuple(x.lower() for x in same) != tuple(
        x.lower() for x in (balancer.subscription, balancer.resource_group, balancer.name)
    ):
        return None
    return match["probe"]


def resolve_probe(model: ScaleSet, balancers: Iterable[LoadBalancer]) -> ScaleSet:
    """The model with the settings of the load balancer probe it names copied in (a model without one as it is)."""
    probe = model.health_probe
    if probe is None or probe.id is None:
        return model
    match = PROBE_ID.match(probe.id)
    assert match is not None  # the model's parser checked the id's shape
    for balancer in balancers:
        name = probe_name(model, balancer)
        if name is None:
            continue
        found = balancer.probe(name)
        if found is None:
            raise InvalidInput(
                f"{PROBE_FIELD}: load balancer {balancer.name} has no probe {name} (probes: "
                f"{', '.join(balancer.probes) or 'none'})",
                target=PROBE_FIELD,
            )
        return replace(model, health_probe=replace(found, id=probe.id))
    raise InvalidInput(
        f"{PROBE_FIELD}: no load balancer {match['lb']} in resource group {match['rg']} (create it first: "
        f"overhaul network lb create -g {match['rg']} -n {match['lb']})",
        target=PROBE_FIELD,
    )


def check_probe_change(balancer: LoadBalancer, users: Iterable[ScaleSet]) -> None:
    """A probe in use may change its path, interval and count, not what instances publish (protocol and port:
    they would need new OS disks), and may not go away."""
    for model in users:
        name = probe_name(model, balancer)
        current = model.health_probe
        if name is None or current is None:
            continue
        found = balancer.probe(name)
        if found is None:
            raise Conflict(
                f"probe {name} is in use by scale set {model.name}: point the scale set at another probe first",
                "InUseProbeCannotBeDeleted",
                "properties.probes",
            )
        if (found.protocol, found.port) != (current.protocol, current.port):
            raise Conflict(
                f"probe {name} is in use by scale set {model.name}, whose instances publish port {current.port} for "
                f"{current.protocol}: a new port or protocol needs a probe of its own (and the scale set pointed at "
                "it)",
                "InUseProbeCannotChange",
                "properties.probes",
            )
