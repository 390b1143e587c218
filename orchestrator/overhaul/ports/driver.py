"""The driver protocol and the plain values it speaks."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from overhaul.core.hosts import Host
from overhaul.core.model import InstanceNetwork, VmOptions
from overhaul.core.naming import instance_name
from overhaul.core.triage import Blame, Fault, classify

# Azure's IMDS tag telling an instance an OS upgrade is coming (osRollingUpgradeDeferral); its value is the version.
PENDING_OS_UPGRADE = "Platform.PendingOSUpgrade"


class DriverError(RuntimeError):
    """An engine call failed; the message says which call and why, ``fault`` what it blames (core/triage.py).

    An infrastructure fault (the engine unreachable or restarting, a port taken, an image missing, a leftover of
    an engine restart) says nothing about the instance: the step is retried, never counted against it. Anything
    else (the image's command fails, a bad configuration) is the image's and fails the step it happened in."""

    def __init__(self, message: str, fault: Fault | None = None) -> None:
        super().__init__(message)
        self.fault = fault if fault is not None else classify(message)

    @property
    def transient(self) -> bool:
        return self.fault.blame is Blame.INFRASTRUCTURE


class EngineUnavailable(DriverError):
    """The engine could not be reached or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Fault.ENGINE_UNAVAILABLE)


class InstanceOnTwoHosts(DriverError):
    """Two hosts' engines both have an instance: nothing is done to it until one is removed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Fault.ENGINE_LEFTOVER)


class PortsExhausted(RuntimeError):
    """No host port is free for an instance to publish."""


class NotFound(DriverError):
    """The engine has no such object (a container, an image): often what the caller hoped."""


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to make an instance's OS disk from an image version."""

    scale_set: str
    instance_id: int
    image: str
    version: str
    ports: Mapping[int, int] = field(default_factory=dict)  # container port -> 127.0.0.1 host port
    volumes: tuple[tuple[str, str], ...] = ()  # (volume name, mount path): the data disks
    metadata: Mapping[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    stop_timeout: int = 10
    systemd: bool = False
    # Names this OS disk; empty means "the disk of this version". A reimage onto the same version asks for a
    # new disk by giving a new name.
    os_disk: str = ""
    # The digest of the model it is made with (model_digest): whether an instance runs the latest model.
    model_digest: str = ""
    # maxSurge: the new OS disk starts beside the running one (on ``ports``, host ports of its own) and the
    # previous one keeps serving until commit stops it; a rollback then costs nothing that ran.
    surge: bool = False
    # A VM (QEMU) rather than a container: its size and accelerator. ``image`` is then the directory of the
    # version's VM artefacts.
    vm: VmOptions | None = None
    data_disk_gb: Mapping[str, int] = field(default_factory=dict)  # data disk (volume) name -> size, when given
    agent_port: int = 8090  # where the agent inside listens (a VM's platform notices are pushed to it)
    network: InstanceNetwork = InstanceNetwork.ISOLATED  # whom it reaches besides its published ports
    host: Host | None = None  # the host whose engine runs it; None: the orchestrator's own engine

    @property
    def disk(self) -> str:
        """The OS disk's name: one per version and model, unless a reimage asked for a new one."""
        if self.os_disk:
            return self.os_disk
        return f"{self.version}+{self.model_digest}" if self.model_digest else self.version

    @property
    def name(self) -> str:
        return instance_name(self.scale_set, self.instance_id)


@dataclass(frozen=True)
class OsDisk:
    version: str | None
    image: str
    running: bool
    model_digest: str | None = None  # the model digest it was made with (None: not known)


@dataclass(frozen=True)
class InstanceState:
    """The instance as the engine has it: its current OS disk and, mid-reimage, the previous one."""

    instance_id: int
    current: OsDisk | None
    previous: OsDisk | None = None
    # Where the instance's published ports are reached (its host's publish address), and which host port
    # each container port is published on, as the engine reports them.
    address: str = "127.0.0.1"
    ports: Mapping[int, int] = field(default_factory=dict)
    host: str = ""  # the id of the host it was found on; "": the orchestrator's own engine
    zone: str | None = None  # that host's availability zone
    # Its host did not answer (why): nothing else is known of it now (``current`` is None, it is not "gone").
    unreachable: str | None = None

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.running


@dataclass(frozen=True)
class HostStatus:
    """Whether a host's engine answers, as last asked: the reason when it does not, when it last did."""

    up: bool
    reason: str | None = None
    last_seen: float | None = None  # wall-clock time of its last answer


class HostStatuses(Protocol):
    """What the drivers know of the hosts' engines (serve: the HostRouter)."""

    async def probe(self, host: Host) -> HostStatus:
        """Asks the host's engine now (within a few seconds)."""
        ...

    def known(self) -> Mapping[str, HostStatus]:
        """The last status of each host asked so far, by host id (lower case); asks nothing."""
        ...


class ImageCopies(Protocol):
    """Copies of the gallery's container images (held by the orchestrator's own engine) on the hosts' engines
    (serve: the HostRouter)."""

    async def image_on(self, host: Host, image: str) -> bool:
        """Whether the host's engine has the image now."""
        ...

    async def copy_image(self, image: str, host: Host, progress: Callable[[int], None]) -> None:
        """Streams the image from the orchestrator's engine into the host's (never whole in memory), saying how far
        it got in percent; DriverError with the engine's words when it cannot."""
        ...


class Driver(Protocol):
    async def ping(self) -> None:
        """Returns when the engine answers; EngineUnavailable when it does not."""
        ...

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        """Whether the engine has ``image`` (checked before an instance is touched); ``vm``: the directory of a
        version's VM artefacts."""
        ...

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        """Every instance of the scale set that the engine has."""
        ...

    async def host_port(self, taken: Collection[int]) -> int:
        """A port on the host this driver's instances run on, for an instance to publish: free now and none of
        ``taken`` (the ports the store says instances hold). PortsExhausted when there is none."""
        ...

    async def ensure_running(self, spec: InstanceSpec) -> None:
        """Create and start the instance from ``spec`` unless it exists; start it if stopped."""
        ...

    async def reimage(self, spec: InstanceSpec) -> None:
        """Keep the current OS disk as the previous one; make and start a new one from ``spec``. The previous
        one is stopped first, or with ``spec.surge`` left running beside the new one."""
        ...

    async def commit(self, spec: InstanceSpec) -> None:
        """Drop the previous OS disk (stopping it first, within ``spec.stop_timeout``, if it still runs)."""
        ...

    async def rollback(self, spec: InstanceSpec) -> None:
        """Drop the new OS disk and start the previous one again."""
        ...

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        """Platform tags the instance sees from now on (its agent reads them from the config drive), replacing
        those it had; none withdraws them. A new OS disk starts with none."""
        ...

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        """Remove the instance (both OS disks); its data disks too unless ``keep_data``."""
        ...

    async def close(self) -> None: ...
