"""The Docker Engine API (through aiodocker) for Docker and Podman.

An instance is a container named ``{scaleSet}_{id}``. A reimage stops it and renames it ``{name}.prev`` (the
previous OS disk), then creates and starts a new container from the target image with the same data volumes,
host ports and a config drive of its own; commit removes ``.prev``, rollback puts it back. With maxSurge the
previous container keeps running beside the new one (which has host ports of its own) until the commit. Every method
inspects the engine first, so repeating a step after a crash finishes or undoes what was half done.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import tarfile
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from overhaul.adapters.drivers.images import stream_image
from overhaul.adapters.drivers.notices import push_notice
from overhaul.adapters.drivers.podman_service import PodmanService, SocketProcess
from overhaul.core.model import InstanceNetwork
from overhaul.core.naming import instance_name, is_data_disk_of, previous_name
from overhaul.core.triage import Fault
from overhaul.localhost import free_port, port_in_range
from overhaul.ports.driver import DriverError, EngineUnavailable, InstanceSpec, InstanceState, NotFound, OsDisk
from overhaul.ports.lease import Fence, LeaseLost

log = logging.getLogger(__name__)

LABEL_SCALE_SET = "overhaul.scale-set"
LABEL_INSTANCE = "overhaul.instance-id"
LABEL_VERSION = "overhaul.image-version"
LABEL_OS_DISK = "overhaul.os-disk"
LABEL_MODEL = "overhaul.model"
CONFIG_MOUNT = "/etc/overhaul"
# A container's status before its first start: Docker's, and Podman's (its libpod state before init).
NEVER_STARTED = ("created", "configured")
PLATFORM_FILE = "platform.json"  # platform notices beside metadata.json; the agent reads them


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int

    def to_api(self) -> dict[str, Any]:
        return {"Name": self.name, "Soft": self.soft, "Hard": self.hard}


@dataclass(frozen=True)
class EngineSettings:
    """How to reach the engine and how containers run on it."""

    # unix:///path/to.sock of Docker or Podman; None starts a private `podman system service`.
    url: str | None = None
    # Podman here needs runc (crun fails in cgroups hybrid mode); None keeps the engine's default.
    runtime: str | None = "runc"
    # Passed on every container: they replace containers.conf's defaults, so both are set.
    ulimits: tuple[Ulimit, ...] = (Ulimit("nofile", 20000, 20000), Ulimit("nproc", 1000, 1000))
    # Where each OS disk's config drive (metadata.json) is written on the host.
    config_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "overhaul-config")
    call_timeout: float = 60.0
    docker_systemd: bool = False  # Docker (not Podman) needs extra settings for systemd containers
    # The address instances publish their ports on: loopback for the local host, the host's own for another.
    publish_address: str = "127.0.0.1"
    # Where the private podman service keeps its socket (url None); a directory of the state directory.
    service_dir: Path | None = None
    # Back-off between restarts of a private podman service that died.
    service_restart_min: float = 0.2
    service_restart_max: float = 10.0
    # The engine API version spoken: Docker 20.10+ and Podman 4 both serve 1.41. Pinned, because "auto" asks the
    # engine's /version first (0.4 s on Podman, seconds on a busy machine, and once more per reconnect).
    api_version: str = "v1.41"
    # The host ports instances publish on (FIRST, LAST); None: any this machine has free.
    port_range: tuple[int, int] | None = None
    # An engine over tcp:// with TLS: (CA file, certificate file, key file).
    tls: tuple[str, str, str] | None = None
    # On another machine: nothing of this one is mounted into its containers. The config drive is copied into each
    # container before it first starts, and platform notices are pushed to the instance's agent.
    remote: bool = False
    notice_timeout: float = 30.0
    # Asked before each request that changes something (several orchestrators: only the lease's holder acts).
    fence: Fence = field(default_factory=Fence, compare=False)


# The container an engine says holds a name ("... is already in use by 4737652eee2b...").
HELD_BY = re.compile(r"in use by ([0-9a-f]{12,64})")
LEFT_IN_DATABASE = re.compile(r'getting container from store "([0-9a-f]{64})": container not known')

# aiodocker's status for "could not connect to the engine at all".
NO_CONNECTION = 900


# Engine requests that change nothing (a standby reads the engine as the leader does); every other is fenced.
READ_CALLS = ("inspect ", "list ", "ping ")


def _engine_error(what: str, exc: aiodocker.DockerError) -> DriverError:
    """The engine answered with an error: permanent, unless it could not be reached or says it cannot serve now."""
    if exc.status in (NO_CONNECTION, 502, 503, 504):
        return EngineUnavailable(f"{what}: {exc.message}")
    if exc.status == 404:
        return NotFound(f"{what}: {exc.message}")
    return DriverError(f"{what}: {exc.message}")


def _published_ports(container: Mapping[str, Any]) -> dict[int, int]:
    """Container port -> host port from a container listing's ``Ports`` (TCP only)."""
    ports: dict[int, int] = {}
    for entry in container.get("Ports") or []:
        private, public = entry.get("PrivatePort"), entry.get("PublicPort")
        if entry.get("Type", "tcp") == "tcp" and isinstance(private, int) and isinstance(public, int) and public:
            ports[private] = public
    return ports


def _name(container: Mapping[str, Any]) -> str:
    names = container.get("Names") or [container.get("Name", "")]
    return str(names[0]).lstrip("/")


def platform_token(metadata: Path) -> str:
    """The platformToken of the OS disk whose metadata this is: the one it has, or a new one."""
    try:
        doc = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    token = doc.get("platformToken") if isinstance(doc, dict) else None
    return token if isinstance(token, str) and token else secrets.token_urlsafe(32)


def config_drive_tar(metadata: bytes) -> bytes:
    """A tar of the config drive's directory and its metadata.json, readable by root only, as the bind-mounted one.

    It ends with the two zero blocks that end an archive, without the record padding tarfile adds after them:
    Podman's copier stops reading at those blocks and closes its pipe, and a body still sending padding then gets a
    500 "broken pipe" (containers/buildah#6573)."""
    buffer = io.BytesIO()
    drive = Path(CONFIG_MOUNT.lstrip("/"))
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in (*reversed(drive.parents[:-1]), drive):
            entry = tarfile.TarInfo(str(path))
            entry.type, entry.mode = tarfile.DIRTYPE, 0o700 if path == drive else 0o755
            tar.addfile(entry)
        entry = tarfile.TarInfo(str(drive / "metadata.json"))
        entry.size, entry.mode = len(metadata), 0o600
        tar.addfile(entry, io.BytesIO(metadata))
        end = tar.offset
    return buffer.getvalue()[: end + 2 * tarfile.BLOCKSIZE]


def isolated_network_name(scale_set: str) -> str:
    return f"overhaul-{scale_set}"


class EngineDriver:
    """Driver over the Docker Engine API; works with Docker and with Podman's compatible API."""

    def __init__(self, settings: EngineSettings | None = None, *, through: SocketProcess | None = None) -> None:
        """``through``: a process this driver starts and reaches the engine through (a host's SSH forward)."""
        self.settings = settings or EngineSettings()
        self._docker: aiodocker.Docker | None = None
        self._service: SocketProcess | None = through
        self._podman: bool | None = None  # what the engine is, once asked

    async def start(self) -> None:
        url = self.settings.url
        if self._service is not None:
            try:
                await self._service.start()
            except DriverError as exc:
                raise EngineUnavailable(str(exc)) from exc
            url = self._service.url
        elif url is None:
            directory = self.settings.service_dir or self.settings.config_root.parent / "podman"
            self._service = PodmanService(
                self.settings.runtime, directory, self.settings.service_restart_min, self.settings.service_restart_max
            )
            await self._service.start()
            url = self._service.url
        tls = self._tls()
        if tls is not None:  # aiodocker speaks TLS to an https:// URL only
            url = re.sub(r"^tcp://", "https://", url)
        self._docker = aiodocker.Docker(url=url, api_version=self.settings.api_version, ssl_context=tls)
        if self._service is None or not isinstance(self._service, PodmanService):
            # A configured engine is asked at once: a wrong socket is found at start, not at the first reimage.
            try:
                await self.ping()
            except DriverError as exc:
                await self.close()
                raise DriverError(f"no container engine answers at {url}: {exc}") from exc

    def _tls(self) -> ssl.SSLContext | None:
        if self.settings.tls is None:
            return None
        ca, cert, key = self.settings.tls
        try:
            context = ssl.create_default_context(cafile=ca)
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise EngineUnavailable(f"the engine's TLS files cannot be used: {exc}") from exc
        return context

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
        if self._service is not None:
            await self._service.stop()
            self._service = None

    @property
    def service(self) -> SocketProcess | None:
        """The private podman service or the SSH forward, when this driver started one."""
        return self._service

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise DriverError("the engine driver is not started")
        return self._docker

    # --- engine calls, each bounded and with a typed error -----------------------------------------------

    async def _call(self, what: str, coro: Any, timeout: float | None = None) -> Any:
        if not what.startswith(READ_CALLS):
            try:
                self.settings.fence.check(what)
            except LeaseLost:
                coro.close()  # never sent
                raise
            log.debug("%s under lease token %s", what, self.settings.fence.token)
        try:
            async with asyncio.timeout(timeout or self.settings.call_timeout):
                return await coro
        except aiodocker.DockerError as exc:
            raise _engine_error(what, exc) from exc
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"{what}: no answer from the engine within {timeout or self.settings.call_timeout}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(f"{what}: engine unreachable: {exc}") from exc

    async def _find(self, name: str) -> Mapping[str, Any] | None:
        """Inspect a container by name; None when it does not exist."""
        try:
            container = await self._call(f"inspect {name}", self.docker.containers.get(name))
        except NotFound:
            return None
        return dict(container._container)

    async def _remove(self, name: str) -> None:
        """Remove a container; one that does not exist is already removed."""
        with contextlib.suppress(NotFound):
            await self._call(f"remove {name}", self.docker.containers.container(name).delete(force=True, v=False))

    @staticmethod
    def _running(info: Mapping[str, Any] | None) -> bool:
        """Running, or on its way out of it: a stop an engine restart cut short leaves a container "stopping"."""
        state = (info or {}).get("State") or {}
        return bool(state.get("Running")) or str(state.get("Status", "")).lower() in ("stopping", "paused")

    async def _stop(self, name: str, stop_timeout: int, info: Mapping[str, Any] | None) -> None:
        if not self._running(info):
            return
        container = self.docker.containers.container(name)
        await self._call(f"stop {name}", container.stop(t=stop_timeout), timeout=stop_timeout + 30)

    async def _start(self, name: str, info: Mapping[str, Any] | None) -> None:
        if info is not None and (info.get("State") or {}).get("Running"):
            return
        container = self.docker.containers.container(name)
        try:
            await self._call(f"start {name}", container.start())
        except DriverError as exc:
            if exc.fault is not Fault.ENGINE_LEFTOVER:
                raise
            # Left "stopping" (or running under a dead runtime) by an engine restart: stopped for good, then started.
            log.warning("start %s: %s; stopping what the engine left, then starting it", name, exc)
            with contextlib.suppress(DriverError):
                await self._call(f"stop {name}", container.stop(t=0))
            await self._call(f"start {name}", container.start())

    async def _create(self, spec: InstanceSpec) -> None:
        config = self._create_config(spec, await self._network_mode(spec))
        what = f"create {spec.name} from {spec.image}"
        try:
            await self._call(what, self.docker.containers.create(config, name=spec.name))
        except DriverError as exc:
            if exc.fault is not Fault.ENGINE_LEFTOVER or await self._find(spec.name) is not None:
                raise
            log.warning("%s: %s; freeing the name the engine left held", what, exc)
            await self._free_name(spec.name, str(exc))
            await self._call(what, self.docker.containers.create(config, name=spec.name))
        if self.settings.remote:
            await self._copy_config_drive(spec)

    async def _copy_config_drive(self, spec: InstanceSpec) -> None:
        """The config drive into a container of another machine, before it first starts (PUT .../archive)."""
        directory = self._config_dir(spec)
        archive = config_drive_tar((directory / "metadata.json").read_bytes())
        container = self.docker.containers.container(spec.name)
        copying = container.put_archive("/", archive)  # type: ignore[no-untyped-call]
        await self._call(f"copy the config drive into {spec.name}", copying)

    async def _free_name(self, name: str, error: str) -> None:
        """An engine restart cut short a create or a rename, and the engine's storage still holds ``name`` for a
        container it does not list under it. One it lists under another name (a rename cut short: the previous OS
        disk) gets its storage names set again by a rename there and back; one it does not list at all is removed
        by name (Podman's storage-only container)."""
        holder = HELD_BY.search(error)
        info = await self._find(holder.group(1)) if holder else None
        if info is None:
            await self._remove(name)
            return
        own = str(info.get("Name", "")).lstrip("/")
        await self._rename(own, f"{own}.renaming")
        await self._rename(f"{own}.renaming", own)

    async def _rename(self, name: str, new_name: str) -> None:
        await self._call(f"rename {name} to {new_name}", self.docker.containers.container(name).rename(new_name))

    @staticmethod
    def _write_private(directory: Path, name: str, doc: Any) -> None:
        """Atomically, readable by the owner only (root in the instance): a live config drive sees the whole file
        or the previous one."""
        target = directory / name
        tmp = directory / f"{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(doc, indent=2))
        os.replace(tmp, target)

    def _config_dir(self, spec: InstanceSpec) -> Path:
        """Each OS disk gets a config drive of its own: a rolled-back disk keeps the metadata it had."""
        directory = self.settings.config_root / spec.scale_set / str(spec.instance_id) / spec.disk
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Extensions' protectedSettings are in it, and the token the agent's platform endpoints want (the same for
        # the life of this OS disk: a step run again keeps it).
        token = platform_token(directory / "metadata.json")
        self._write_private(directory, "metadata.json", {**spec.metadata, "platformToken": token})
        (directory / PLATFORM_FILE).unlink(missing_ok=True)  # a new OS disk starts with no notice
        return directory

    def _create_config(self, spec: InstanceSpec, network_mode: str | None = None) -> dict[str, Any]:
        host_config: dict[str, Any] = {
            "PortBindings": {
                f"{cport}/tcp": [{"HostIp": self.settings.publish_address, "HostPort": str(hport)}]
                for cport, hport in spec.ports.items()
            },
            "Mounts": [{"Type": "volume", "Source": vol, "Target": path} for vol, path in spec.volumes],
            "Binds": [] if self.settings.remote else [f"{self._config_dir(spec)}:{CONFIG_MOUNT}:ro"],
            "Ulimits": [u.to_api() for u in self.settings.ulimits],
        }
        if network_mode is not None:
            host_config["NetworkMode"] = network_mode
        config: dict[str, Any] = {
            "Image": spec.image,
            "Hostname": spec.name.replace("_", "-"),
            "Labels": {
                LABEL_SCALE_SET: spec.scale_set,
                LABEL_INSTANCE: str(spec.instance_id),
                LABEL_VERSION: spec.version,
                LABEL_OS_DISK: spec.disk,
                LABEL_MODEL: spec.model_digest,
            },
            "ExposedPorts": {f"{cport}/tcp": {} for cport in spec.ports},
            "StopTimeout": spec.stop_timeout,
            "HostConfig": host_config,
        }
        if spec.command is not None:
            config["Cmd"] = list(spec.command)
        if spec.systemd:
            config["StopSignal"] = "SIGRTMIN+3"  # systemd's halt; Podman ignores the stop call's own signal
            if self.settings.docker_systemd:
                config["Env"] = ["container=docker"]
                host_config["Tmpfs"] = {"/run": "", "/run/lock": "", "/tmp": ""}
                host_config["Binds"].append("/sys/fs/cgroup/systemd:/sys/fs/cgroup/systemd:rw")
                host_config["CgroupnsMode"] = "host"
        return config

    async def _create_and_start(self, spec: InstanceSpec, info: Mapping[str, Any] | None) -> None:
        """Create (when ``info`` says there is no container yet) and start. A container made but never started is
        made again: the engine may have broken off its config drive's copy, or refused the host port it was made
        with (the spec now names another), and an OS disk that never ran holds nothing (data disks are volumes)."""
        if info is not None and str((info.get("State") or {}).get("Status", "")).lower() in NEVER_STARTED:
            await self._remove(spec.name)
            info = None
        if info is None:
            await self._create(spec)
        await self._start(spec.name, info)

    async def _network_mode(self, spec: InstanceSpec) -> str | None:
        """Where the container's network is (None: the engine's default bridge, which all its containers share).
        Isolated, on Podman each container gets a user-mode network stack of its own (slirp4netns: nothing else
        reaches it but its published ports); Docker has no such mode, so there each scale set gets a bridge of its
        own on which its containers cannot reach each other (inter-container traffic off)."""
        if spec.network is InstanceNetwork.SHARED:
            return None
        if await self._is_podman():
            return "slirp4netns"
        name = isolated_network_name(spec.scale_set)
        if not await self._has_network(name):
            config = {
                "Name": name,
                "Driver": "bridge",
                "Options": {"com.docker.network.bridge.enable_icc": "false"},
                "Labels": {LABEL_SCALE_SET: spec.scale_set},
            }
            try:
                await self._call(f"create network {name}", self.docker.networks.create(config))
            except DriverError:
                if not await self._has_network(name):
                    raise  # not a create that lost a race: a real failure
        return name

    async def _has_network(self, name: str) -> bool:
        """Whether the engine has a network of exactly that name (its filter matches parts of names)."""
        networks = await self._call("list networks", self.docker.networks.list(filters={"name": [name]}))
        return any(n.get("Name") == name for n in networks or [])

    async def _is_podman(self) -> bool:
        if self._podman is None:
            version = await self._call("version", self.docker.version())
            components = version.get("Components") or [] if isinstance(version, dict) else []
            self._podman = any("podman" in str(c.get("Name", "")).lower() for c in components)
        return self._podman

    # --- the driver protocol ------------------------------------------------------------------------------

    async def ping(self) -> None:
        if self._service is not None and not self._service.up:
            raise EngineUnavailable(f"{self._service.what} is down (it is being restarted)")
        await self._call("ping the engine", self._ping(), timeout=min(5.0, self.settings.call_timeout))

    async def host_port(self, taken: Collection[int]) -> int:
        if self.settings.port_range is None:
            # The engine runs on this machine: a port it can publish is one this machine can bind.
            return free_port(taken)
        # A host's range; a socket on this machine is an engine on this machine, whose ports can be checked here.
        local = self.settings.url is None or self.settings.url.startswith("unix://")
        return port_in_range(*self.settings.port_range, taken, self.settings.publish_address if local else None)

    async def _ping(self) -> None:
        """The engine API's /_ping: answered by the service itself (Podman's /version asks its runtime and storage
        first, 0.4 s idle and seconds on a busy machine)."""
        async with self.docker._query("_ping", versioned_api=False) as resp:
            await resp.read()

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        if vm:
            return False  # VM artefacts are not the engine's
        try:
            await self._call(f"inspect image {image}", self.docker.images.inspect(image))
        except NotFound:
            return False
        return True

    async def image_size(self, image: str) -> int:
        info = await self._call(f"inspect image {image}", self.docker.images.inspect(image))
        size = info.get("Size") if isinstance(info, Mapping) else None
        return size if isinstance(size, int) else 0

    async def copy_image_to(self, image: str, target: object, progress: Callable[[int], None]) -> None:
        """Streams the image into another engine (the gallery's replication to a host)."""
        if not isinstance(target, EngineDriver):
            raise DriverError(f"copy image {image}: the target is not a container engine")
        await stream_image(self, target, image, progress)

    async def _require_image(self, spec: InstanceSpec) -> None:
        """Before an instance is touched: a missing image must not cost it its running OS disk."""
        if not await self.image_present(spec.image):
            raise DriverError(f"create {spec.name}: no such image {spec.image} in the engine")

    async def _list(self, scale_set: str) -> list[Any]:
        filters = json.dumps({"label": [f"{LABEL_SCALE_SET}={scale_set}"]})
        listed: list[Any] = await self._call(
            f"list containers of {scale_set}", self.docker.containers.list(all=True, filters=filters)
        )
        return listed

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        try:
            containers = await self._list(scale_set)
        except DriverError as exc:
            # Podman killed in the middle of a removal keeps the container in its database ("Removing") with its
            # storage gone, and then fails every listing that meets it: remove what is left, then list again.
            broken = LEFT_IN_DATABASE.search(str(exc))
            if broken is None:
                raise
            log.warning("removing container %s, which an engine restart left without its storage", broken.group(1))
            await self._remove(broken.group(1))
            containers = await self._list(scale_set)
        current: dict[int, OsDisk] = {}
        previous: dict[int, OsDisk] = {}
        published: dict[int, dict[int, int]] = {}
        for container in containers:
            info = container._container
            labels = info.get("Labels") or {}
            try:
                instance_id = int(labels.get(LABEL_INSTANCE, ""))
            except ValueError:
                continue
            disk = OsDisk(
                labels.get(LABEL_VERSION),
                str(info.get("Image", "")),
                info.get("State") == "running",
                labels.get(LABEL_MODEL) or None,
            )
            name = _name(info)
            if name == instance_name(scale_set, instance_id):
                current[instance_id] = disk
                published[instance_id] = _published_ports(info)
            elif name == previous_name(scale_set, instance_id):
                previous[instance_id] = disk
        address = self.settings.publish_address
        return {
            i: InstanceState(i, current.get(i), previous.get(i), address, published.get(i, {}))
            for i in sorted(set(current) | set(previous))
        }

    async def ensure_running(self, spec: InstanceSpec) -> None:
        await self._create_and_start(spec, await self._find(spec.name))

    async def reimage(self, spec: InstanceSpec) -> None:
        name, prev = spec.name, previous_name(spec.scale_set, spec.instance_id)
        current = await self._find(name)
        if current is not None:
            labels = current.get("Config", {}).get("Labels") or {}
            if labels.get(LABEL_OS_DISK, labels.get(LABEL_VERSION)) == spec.disk:
                await self._repeat_reimage(spec, current)
                return
            await self._require_image(spec)
            try:
                await self._rename(name, prev)
            except DriverError:
                # A previous disk left from an older, finished step holds the name: drop it, then rename.
                # (Trying first saves an engine call on every ordinary reimage.)
                await self._remove(prev)
                await self._rename(name, prev)
            if spec.surge:
                # Beside the old one, on host ports of its own: the old one serves until the commit.
                await self._create_and_start(spec, None)
                return
            # The new container is created while the old one stops; it starts once the old one has let go
            # of the host ports.
            outcomes: tuple[Any, ...] = await asyncio.gather(
                self._stop(prev, spec.stop_timeout, current), self._create(spec), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            await self._start(name, None)
            return
        previous = await self._find(prev)
        if previous is not None and not spec.surge:
            await self._stop(prev, spec.stop_timeout, previous)  # renamed, then interrupted before it stopped
        await self._require_image(spec)
        await self._create_and_start(spec, None)

    async def _repeat_reimage(self, spec: InstanceSpec, current: Mapping[str, Any]) -> None:
        """The new OS disk exists already (a repeated step): the previous one is stopped (an engine restart may
        have cut its stop short, and it would hold the host ports), and the new one is made again. A step cut
        short by a kill of serve or of the engine's service can leave it half made — "running" with no port
        published, seen here — and a reimage's OS disk is new anyway."""
        prev = previous_name(spec.scale_set, spec.instance_id)
        if not spec.surge:
            previous = await self._find(prev)
            if previous is not None:
                await self._stop(prev, spec.stop_timeout, previous)
        await self._remove(spec.name)
        await self._create_and_start(spec, None)

    async def commit(self, spec: InstanceSpec) -> None:
        prev = previous_name(spec.scale_set, spec.instance_id)
        if spec.surge:
            # It still serves: stopped as a shutdown would stop it, so it can finish what it is doing.
            await self._stop(prev, spec.stop_timeout, await self._find(prev))
        await self._remove(prev)

    async def rollback(self, spec: InstanceSpec) -> None:
        name, prev = spec.name, previous_name(spec.scale_set, spec.instance_id)
        previous = await self._find(prev)
        if previous is None:
            current = await self._find(name)
            if current is None:
                raise DriverError(f"rollback {name}: neither {name} nor {prev} exists")
            await self._start(name, current)  # already rolled back
            return
        await self.notify(spec, {})  # the restored OS disk's upgrade is over: no notice of it is left
        await self._remove(name)
        await self._rename(prev, name)
        # Asked afresh: what was read before the rename may be stale (a stop that an engine restart delivered late).
        await self._start(name, await self._find(name))

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        if self.settings.remote:
            await self._push_notice(spec, tags)
            return
        # Every OS disk of the instance (the current one, and one a rollback may restore) sees the same notice:
        # the config drive is a bind-mounted directory, so a running instance sees the change.
        for directory in (self.settings.config_root / spec.scale_set / str(spec.instance_id)).glob("*/"):
            if tags:
                self._write_private(directory, PLATFORM_FILE, {"tags": dict(tags)})
            else:
                (directory / PLATFORM_FILE).unlink(missing_ok=True)

    async def _push_notice(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        """To the agent of the running OS disk, at the host's address: a stopped one boots with none."""
        info = await self._find(spec.name)
        if info is None or (info.get("State") or {}).get("Status") != "running":
            return
        labels = (info.get("Config") or {}).get("Labels") or {}
        disk = labels.get(LABEL_OS_DISK) or spec.disk
        token = platform_token(
            self.settings.config_root / spec.scale_set / str(spec.instance_id) / disk / "metadata.json"
        )
        port = spec.ports.get(spec.agent_port)
        if port is None and not tags:
            return  # no agent reachable there was ever told anything: nothing to withdraw (a rollback's)
        if port is None:
            raise DriverError(f"notify {spec.name}: its agent's port {spec.agent_port} is not published")
        try:
            await push_notice(self.settings.publish_address, port, token, tags, self.settings.notice_timeout)
        except DriverError as exc:
            if tags:
                raise
            log.warning("withdraw the notice of %s: %s", spec.name, exc)

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        await self._remove(previous_name(spec.scale_set, spec.instance_id))
        await self._remove(spec.name)
        if not keep_data:
            for volume, _ in spec.volumes:
                await self._remove_volume(volume)
            if not await self.observe(spec.scale_set):
                # The scale set's last instance: data disks of instances scaled in before go with it.
                listed = await self._call("list volumes", self.docker.volumes.list())  # type: ignore[no-untyped-call]
                for volume in (listed or {}).get("Volumes") or []:
                    name = str(volume.get("Name", ""))
                    if is_data_disk_of(spec.scale_set, name):
                        await self._remove_volume(name)
                await self._remove_network(isolated_network_name(spec.scale_set))
        shutil.rmtree(self.settings.config_root / spec.scale_set / str(spec.instance_id), ignore_errors=True)

    async def _remove_network(self, name: str) -> None:
        """The scale set's own bridge (Docker, isolated instances), once no container is on it."""
        if await self._has_network(name):
            with contextlib.suppress(DriverError):
                net = aiodocker.networks.DockerNetwork(self.docker, name)  # type: ignore[no-untyped-call]
                await self._call(f"remove network {name}", net.delete())

    async def _remove_volume(self, volume: str) -> None:
        with contextlib.suppress(DriverError):
            vol = aiodocker.docker.DockerVolume(self.docker, volume)  # type: ignore[no-untyped-call]
            await self._call(f"remove volume {volume}", vol.delete())  # type: ignore[no-untyped-call]
