"""The driver protocol over many hosts: one driver per host (made when first needed, made again when the host's
record changes), the orchestrator's own engine for instances with no host. A spec names its host
(``InstanceSpec.host``); observing a scale set asks every host at once and says where each instance was found."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.drivers.ssh import SshForward, explain
from overhaul.core.hosts import Host
from overhaul.ports.driver import (
    Driver,
    DriverError,
    EngineUnavailable,
    HostStatus,
    InstanceOnTwoHosts,
    InstanceSpec,
    InstanceState,
)
from overhaul.ports.store import Store

log = logging.getLogger(__name__)

# How a host's driver is made (and started) from its record: EngineDriver over its engine URL, in serve.
DriverFactory = Callable[[Host], Awaitable[Driver]]
# The hosts a scale set's instances were placed on, with the ids of those on each: the store's word, in serve.
HostList = Callable[[str], Awaitable[Sequence[tuple[Host, frozenset[int]]]]]
# A host's engine that does not answer a listing within this is reported unreachable rather than waited on.
OBSERVE_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0


class ImageSource(Protocol):
    """The engine holding the gallery's images (the orchestrator's own)."""

    async def copy_image_to(self, image: str, target: object, progress: Callable[[int], None]) -> None: ...


class HostRouter:
    def __init__(self, local: Driver, make: DriverFactory, hosts: HostList, source: ImageSource | None = None) -> None:
        self.local = local
        self.source = source
        self._make = make
        self._hosts = hosts
        self._drivers: dict[str, tuple[Host, Driver]] = {}
        self._making: dict[str, asyncio.Lock] = {}
        self._status: dict[str, HostStatus] = {}

    def _saw(self, host: Host, error: BaseException | None = None) -> None:
        key, before = host.id.lower(), self._status.get(host.id.lower())
        if error is None:
            self._status[key] = HostStatus(True, None, time.time())
        else:
            self._status[key] = HostStatus(
                False, str(error) or type(error).__name__, before.last_seen if before else None
            )

    async def probe(self, host: Host) -> HostStatus:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await (await self.driver_of(host)).ping()
        except TimeoutError:
            self._saw(host, EngineUnavailable(f"no answer within {PROBE_TIMEOUT:g}s"))
        except DriverError as exc:
            self._saw(host, exc)
        else:
            self._saw(host)
        return self._status[host.id.lower()]

    def known(self) -> Mapping[str, HostStatus]:
        return dict(self._status)

    async def driver_of(self, host: Host | None) -> Driver:
        """The host's driver (the local engine's for None); made afresh when the host's record changed."""
        if host is None:
            return self.local
        key = host.id.lower()
        async with self._making.setdefault(key, asyncio.Lock()):
            cached = self._drivers.get(key)
            if cached is not None and cached[0] == host:
                return cached[1]
            if cached is not None:
                del self._drivers[key]
                await cached[1].close()
            try:
                made = await self._make(host)
            except DriverError as exc:
                raise EngineUnavailable(f"host {host.group}/{host.name}: {exc}") from exc
            self._drivers[key] = (host, made)
            return made

    async def ping(self) -> None:
        await self.local.ping()

    async def host_port(self, taken: Collection[int]) -> int:
        return await self.local.host_port(taken)

    async def image_present(self, image: str, *, vm: bool = False) -> bool:
        return await self.local.image_present(image, vm=vm)

    async def image_on(self, host: Host, image: str) -> bool:
        async with asyncio.timeout(PROBE_TIMEOUT):
            driver = await self.driver_of(host)
        return await driver.image_present(image)

    async def copy_image(self, image: str, host: Host, progress: Callable[[int], None]) -> None:
        if self.source is None:
            raise DriverError(f"copy image {image}: this orchestrator has no engine to copy it from")
        await self.source.copy_image_to(image, await self.driver_of(host), progress)

    async def observe(self, scale_set: str) -> dict[int, InstanceState]:
        """Every instance of the scale set on the orchestrator's engine and the hosts it was placed on, each with
        the host it was found on. The instances of a host that does not answer within OBSERVE_TIMEOUT are there,
        unreachable, with the reason; an instance found on two hosts fails the observation, naming both."""
        placed = list(await self._hosts(scale_set))
        found = await asyncio.gather(
            self.local.observe(scale_set), *(self._observe_on(h, scale_set) for h, _ in placed), return_exceptions=True
        )
        local = found[0]
        if isinstance(local, BaseException):
            raise local
        merged: dict[int, InstanceState] = dict(local)
        for (host, ids), result in zip(placed, found[1:], strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, DriverError):
                    raise result
                reason = f"host {host.group}/{host.name} does not answer: {result}"
                for instance_id in ids:
                    merged.setdefault(
                        instance_id,
                        InstanceState(
                            instance_id,
                            None,
                            address=host.publish_address,
                            host=host.id,
                            zone=host.zone,
                            unreachable=reason,
                        ),
                    )
                continue
            for instance_id, state in result.items():
                found_on = replace(state, host=host.id, zone=host.zone)
                other = merged.get(instance_id)
                if other is not None and other.unreachable is None:
                    raise InstanceOnTwoHosts(
                        f"instance {instance_id} of {scale_set} is on two hosts: {other.host or 'local'} and"
                        f" {found_on.host}"
                    )
                merged[instance_id] = found_on
        return dict(sorted(merged.items()))

    async def _observe_on(self, host: Host, scale_set: str) -> dict[int, InstanceState]:
        try:
            async with asyncio.timeout(OBSERVE_TIMEOUT):
                found = await (await self.driver_of(host)).observe(scale_set)
        except TimeoutError:
            error = EngineUnavailable(f"no answer to a listing within {OBSERVE_TIMEOUT:g}s")
            self._saw(host, error)
            raise error from None
        except DriverError as exc:
            self._saw(host, exc)
            raise
        self._saw(host)
        return found

    async def ensure_running(self, spec: InstanceSpec) -> None:
        await self._on(spec, lambda d: d.ensure_running(spec))

    async def reimage(self, spec: InstanceSpec) -> None:
        await self._on(spec, lambda d: d.reimage(spec))

    async def commit(self, spec: InstanceSpec) -> None:
        await self._on(spec, lambda d: d.commit(spec))

    async def rollback(self, spec: InstanceSpec) -> None:
        await self._on(spec, lambda d: d.rollback(spec))

    async def notify(self, spec: InstanceSpec, tags: Mapping[str, str]) -> None:
        await self._on(spec, lambda d: d.notify(spec, tags))

    async def delete(self, spec: InstanceSpec, *, keep_data: bool = True) -> None:
        await self._on(spec, lambda d: d.delete(spec, keep_data=keep_data))

    async def _on(self, spec: InstanceSpec, call: Callable[[Driver], Awaitable[None]]) -> None:
        """The call on the spec's host; an error names the host (what it blames is kept)."""
        driver = await self.driver_of(spec.host)
        if spec.host is None:
            await call(driver)
            return
        try:
            await call(driver)
        except DriverError as exc:
            named = copy.copy(exc)
            named.args = (f"host {spec.host.group}/{spec.host.name}: {exc}",)
            raise named from exc

    async def close(self) -> None:
        await asyncio.gather(self.local.close(), self.close_hosts())

    async def close_hosts(self) -> None:
        """Closes the hosts' drivers (their instances go on running), not the local one."""
        drivers = [d for _, d in self._drivers.values()]
        self._drivers.clear()
        for result in await asyncio.gather(*(d.close() for d in drivers), return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("closing a host's driver failed: %s", result)


def engine_drivers(base: EngineSettings) -> DriverFactory:
    """Makes a host's EngineDriver: the orchestrator's engine settings, with the host's engine, timeout, publish
    address, port range and TLS files."""

    async def make(host: Host) -> Driver:
        tls = (host.tls.ca, host.tls.cert, host.tls.key) if host.tls is not None else None
        settings = replace(
            base,
            url=host.engine.url,
            call_timeout=host.call_timeout,
            publish_address=host.publish_address,
            port_range=host.ports,
            tls=tls,
            remote=host.engine.scheme != "unix",
            service_dir=None,
        )
        # Made when an ssh host's driver first is (a serve with no ssh host leaves nothing in /tmp).
        forward = SshForward(host, forward_directory(forwards)) if host.engine.scheme == "ssh" else None
        driver = EngineDriver(settings, through=forward)
        try:
            await driver.start()
        except DriverError as exc:
            await driver.close()
            raise explain(exc) from exc
        except BaseException:
            await driver.close()  # a listing that gave up on it: no forward is left behind
            raise
        return driver

    forwards = base.config_root.parent / "ssh"
    return make


def forward_directory(wanted: Path) -> Path:
    """Where SSH forwards put their sockets: ``wanted`` unless its path leaves a socket's name too little room (107
    bytes in all), then a private directory of /tmp named after it (the same at every start: none is left behind
    per start), or a fresh one when that name is held by something not ours alone."""
    if len(str(wanted)) <= 80:
        return wanted
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"overhaul-ssh-{os.getuid()}-{digest}"
    with contextlib.suppress(FileExistsError):
        short.mkdir(mode=0o700)
    info = short.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return Path(tempfile.mkdtemp(prefix="overhaul-ssh-"))
    return short


def placed_hosts(store: Store) -> HostList:
    """The hosts a scale set's instances are placed on, as the store says, each with its group's zone."""

    async def hosts_of(scale_set: str) -> list[tuple[Host, frozenset[int]]]:
        ids: dict[str, set[int]] = {}
        for instance_id, host_id in (await store.instance_hosts(scale_set)).items():
            if host_id:
                ids.setdefault(host_id.lower(), set()).add(instance_id)
        if not ids:
            return []
        zones = {g.name.lower(): g.zone for g in await store.host_groups()}
        return [
            (replace(h, zone=zones.get(h.group.lower())), frozenset(ids[h.id.lower()]))
            for h in await store.hosts()
            if h.id.lower() in ids
        ]

    return hosts_of


def memory_drivers() -> DriverFactory:
    """Simulated hosts (`--engine memory`): a memory driver each."""

    async def make(host: Host) -> Driver:
        return MemoryDriver(address=host.publish_address)

    return make
