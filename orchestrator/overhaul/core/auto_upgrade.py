"""Pure: when a scale set with automatic OS upgrades is due to roll to the gallery's latest version."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from overhaul.core.arm_json import ModelError
from overhaul.core.gallery import ImageDefinition, ImageVersion, resolve
from overhaul.core.model import ScaleSet
from overhaul.core.rollout import Attempt, StartedBy


@dataclass(frozen=True)
class AutoUpgradeSettings:
    """Ours: how long after a version is published the platform starts rolling it out."""

    first_delay: float = 30.0  # before a scale set's first automatic upgrade
    delay: float = 30.0  # before each later one


@dataclass(frozen=True)
class DueUpgrade:
    scale_set: str
    target: ImageVersion
    due_at: float


def due_upgrade(
    model: ScaleSet,
    *,
    definitions: Iterable[ImageDefinition],
    versions: Iterable[ImageVersion],
    instance_versions: Collection[str | None],
    attempts: Collection[Attempt],
    settings: AutoUpgradeSettings,
) -> DueUpgrade | None:
    """The automatic upgrade a scale set is due for, if any, and from when.

    Only with enableAutomaticOSUpgrade and version "latest"; only when some instance is not on the latest
    version for the scale set's location (excluded and unreplicated versions never count as latest); never
    while an attempt runs; and a target that Faulted is not retried until a newer version appears (or a person
    starts it)."""
    if not model.upgrade_policy.automatic.enable_automatic_os_upgrade or not model.image_reference.is_latest:
        return None
    try:
        latest = resolve(model.image_reference, definitions, versions, model.location, vm=model.is_vm)
    except ModelError:
        return None
    if len(instance_versions) >= model.capacity and all(v == latest.version for v in instance_versions):
        return None
    if any(not a.status.terminal for a in attempts):
        return None
    if any(a.target_version == latest.version and a.target_model_digest is None for a in attempts):
        # Already tried: a Faulted target is not retried by itself, nor one a person cancelled, nor one that
        # completed with some instances rolled back. A newer version, or a person, starts the next attempt.
        # (A model upgrade onto that version was no try of it.)
        return None
    had_automatic = any(a.started_by is StartedBy.PLATFORM for a in attempts)
    delay = settings.delay if had_automatic else settings.first_delay
    return DueUpgrade(model.name, latest, latest.published_at + delay)
