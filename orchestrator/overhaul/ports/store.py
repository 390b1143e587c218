"""The store port: scale set models, the gallery, instance ports, attempts with their journal, history.

The store is where "one active attempt per scale set" is enforced (``start_attempt`` is a compare-and-set),
so it holds whatever runs above it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from overhaul.core.cloud_events import Delivery, EventSubscription
from overhaul.core.errors import Unavailable
from overhaul.core.gallery import Gallery, ImageDefinition, ImageVersion
from overhaul.core.hosts import Host, HostGroup
from overhaul.core.lifecycle_hooks import HookEvent
from overhaul.core.maintenance import ConfigurationAssignment, MaintenanceConfiguration
from overhaul.core.model import ScaleSet
from overhaul.core.network import LoadBalancer
from overhaul.core.replication import Replica
from overhaul.core.resources import Resource
from overhaul.core.rollout import Action, ActionResult, Attempt
from overhaul.ports.health import HealthReport, Key


@dataclass(frozen=True)
class HistoryRetention:
    """Azure keeps the last 5 attempts within 2 months."""

    keep: int = 5
    max_age: float = 60 * 86400.0


@dataclass(frozen=True)
class StoredAttempt:
    attempt: Attempt
    image_reference: Mapping[str, Any]


@dataclass(frozen=True)
class JournalEntry:
    attempt_id: str
    instance_id: int
    action: str
    phase: str
    ok: bool | None
    error: str | None
    at: float
    token: int | None = None  # the lease token it was written under (several orchestrators; None: one)


class ScaleSetStore(Protocol):
    """Scale set models, looked up by name case-insensitively (names are unique on a host: they name its
    containers), and the host ports each instance keeps across reimages."""

    async def put_scale_set(self, model: ScaleSet, now: float) -> None: ...
    async def get_scale_set(self, name: str) -> ScaleSet | None: ...
    async def list_scale_sets(self) -> list[ScaleSet]: ...
    async def delete_scale_set(self, name: str) -> None: ...
    async def instance_ports(self, scale_set: str) -> dict[int, dict[int, int]]: ...
    async def instance_ports_of(self, scale_set: str, instance_id: int) -> dict[int, int]:
        """One instance's container port -> host port ({}: none kept)."""
        ...

    async def all_host_ports(self, host: str = "") -> set[int]:
        """The host ports instances on ``host`` hold (its id; "": the orchestrator's own engine)."""
        ...

    async def instance_hosts(self, scale_set: str) -> dict[int, str]:
        """The host each instance was placed on (its id; "": the orchestrator's own engine)."""
        ...

    async def instance_host(self, scale_set: str, instance_id: int) -> str | None:
        """The host one instance was placed on; None: it was not placed yet."""
        ...

    async def put_instance_host(self, scale_set: str, instance_id: int, host: str) -> None: ...
    async def put_instance_ports(
        self, scale_set: str, instance_id: int, ports: Mapping[int, int], *, take_over: bool = False
    ) -> None:
        """The instance's host ports from now on (those it held before are let go). A port another instance of its
        host holds: Conflict HostPortTaken, and nothing is written; ``take_over`` (the engine's word on where it
        listens): the other record lets it go."""
        ...

    async def delete_instance(self, scale_set: str, instance_id: int) -> None: ...


class NetworkStore(Protocol):
    async def put_load_balancer(self, balancer: LoadBalancer) -> None: ...
    async def load_balancers(self) -> list[LoadBalancer]: ...
    async def delete_load_balancer(self, name: str) -> None: ...


class HostStore(Protocol):
    """Host groups by name (unique on the orchestrator, as galleries), hosts by (group, name); a host's engine URL
    is unique."""

    async def put_host_group(self, group: HostGroup) -> None: ...
    async def host_groups(self) -> list[HostGroup]: ...
    async def delete_host_group(self, name: str) -> None: ...
    async def put_host(self, host: Host) -> None: ...
    async def hosts(self) -> list[Host]: ...
    async def delete_host(self, group: str, name: str) -> None: ...


class MaintenanceStore(Protocol):
    async def put_maintenance_configuration(self, configuration: MaintenanceConfiguration) -> None: ...
    async def maintenance_configurations(self) -> list[MaintenanceConfiguration]: ...
    async def delete_maintenance_configuration(self, name: str) -> None: ...
    async def put_configuration_assignment(self, assignment: ConfigurationAssignment) -> None: ...
    async def configuration_assignments(self, scale_set: str | None = None) -> list[ConfigurationAssignment]: ...
    async def delete_configuration_assignment(self, scale_set: str, name: str) -> None: ...


class LifecycleHookStore(Protocol):
    async def hook_event(self, name: str) -> HookEvent | None: ...
    async def hook_events(self, scale_set: str) -> list[HookEvent]:
        """Newest first."""
        ...

    async def put_hook_event(self, event: HookEvent, expected: HookEvent | None) -> bool:
        """Writes ``event`` if the stored one is still ``expected`` (None: if there is none): a compare-and-set, so
        a response and the platform's own settling never overwrite each other. False when it was not written."""
        ...


class EventStore(Protocol):
    """Event subscriptions and the outbox of their deliveries (core/cloud_events.py)."""

    async def put_event_subscription(self, subscription: EventSubscription) -> None: ...
    async def event_subscriptions(self) -> list[EventSubscription]: ...
    async def delete_event_subscription(self, subscription_id: str) -> None:
        """With its deliveries, pending or dead."""
        ...

    async def enqueue(self, deliveries: Iterable[Delivery]) -> None:
        """Adds deliveries; one already there (the same event for the same subscription) is left as it is."""
        ...

    async def due_deliveries(self, subscription_id: str, now: float, limit: int) -> list[Delivery]: ...
    async def next_delivery(self) -> tuple[str, float] | None:
        """The subscription and time of the earliest pending delivery."""
        ...

    async def delivered(self, delivery: Delivery, now: float) -> None: ...
    async def retry_later(self, delivery: Delivery) -> None:
        """Saves a failed delivery's attempts, error and next time."""
        ...

    async def dead_letter(self, delivery: Delivery, error: str, now: float) -> None: ...
    async def dead_letters(self, subscription_id: str) -> list[Delivery]: ...
    async def pending_deliveries(self) -> int: ...


class GalleryStore(Protocol):
    async def put_gallery(self, gallery: Gallery) -> None:
        """Creates it, or updates its location and document (its resource group stays)."""
        ...

    async def galleries(self) -> list[Gallery]: ...
    async def delete_gallery(self, name: str) -> None: ...
    async def put_image_definition(self, definition: ImageDefinition) -> None: ...
    async def image_definitions(self) -> list[ImageDefinition]: ...
    async def delete_image_definition(self, gallery: str, name: str) -> None: ...
    async def put_image_version(self, version: ImageVersion, *, replicas: bool = False) -> None:
        """Creates or updates it; ``replicas``: its copies become ``version.replicas`` (else they are kept)."""
        ...

    async def put_replica(self, gallery: str, image: str, version: str, replica: Replica) -> None:
        """One host's copy, kept only while the version and the host exist."""
        ...

    async def image_versions(self) -> list[ImageVersion]:
        """Every version, each with its copies."""
        ...

    async def delete_image_version(self, gallery: str, image: str, version: str) -> None: ...


class AttemptStore(Protocol):
    """Attempts with their journal; history is what they leave."""

    async def start_attempt(self, attempt: Attempt, image_reference: Mapping[str, Any]) -> str | None:
        """Records a new attempt unless another of its scale set is active; returns the active one's id."""
        ...

    async def save_attempt(self, attempt: Attempt, image_reference: Mapping[str, Any]) -> None: ...
    async def attempts(self, scale_set: str) -> list[StoredAttempt]: ...
    async def get_attempt(self, attempt_id: str) -> StoredAttempt | None: ...
    async def unfinished_attempts(self) -> list[StoredAttempt]: ...
    async def request_cancel(self, attempt_id: str) -> bool:
        """Marks an active attempt for cancelling (its reconciler reads the mark); False when none is active."""
        ...

    async def cancel_requested(self, attempt_id: str) -> bool: ...
    async def approve(self, attempt_id: str, instance_ids: Iterable[int]) -> bool:
        """Records approvals of deferred OS upgrades for an active attempt; False when none is active."""
        ...

    async def approvals(self, attempt_id: str) -> frozenset[int]: ...
    async def journal_begin(self, attempt_id: str, actions: Iterable[Action], now: float) -> None: ...
    async def journal_end(self, attempt_id: str, results: Iterable[ActionResult], now: float) -> None: ...
    async def journal(self, attempt_id: str) -> list[JournalEntry]: ...


class HealthStore(Protocol):
    """Each instance's last health verdict as the leader saw it (several orchestrators: a standby shows it, a new
    leader knows what its predecessor last heard)."""

    async def put_health_verdicts(self, verdicts: Mapping[Key, HealthReport]) -> None: ...
    async def health_verdicts(self) -> dict[Key, HealthReport]: ...


class ResourceStore(Protocol):
    """Resources kept as documents (core/resources.py), keyed by ARM id case-insensitively."""

    async def put_resource(self, resource: Resource) -> None: ...
    async def get_resource(self, resource_id: str) -> Resource | None: ...
    async def list_resources(
        self, type_: str | None = None, subscription: str | None = None, resource_group: str | None = None
    ) -> list[Resource]:
        """Those of a type (None: every type), in a subscription and resource group (None: any), by id."""
        ...

    async def delete_resource(self, resource_id: str) -> None: ...


class StoreUnavailable(Unavailable):
    """The store cannot take writes now (disk full, a read-only or failing file system, its directory removed):
    nothing was written; trying again later may work."""

    code = "StorageUnavailable"


class Store(
    ScaleSetStore,
    GalleryStore,
    NetworkStore,
    HostStore,
    MaintenanceStore,
    LifecycleHookStore,
    EventStore,
    AttemptStore,
    HealthStore,
    ResourceStore,
    Protocol,
):
    async def close(self) -> None: ...
    def problem(self) -> str | None:
        """What keeps the store from taking writes, as far as it knows now (None: nothing)."""
        ...

    async def check(self) -> str | None:
        """The same, asked of the store now (a round trip to a database server)."""
        ...
