"""Host ports as the store's rows (one holder per host and port): an instance's ports are chosen from what its host's
instances do not hold, chosen again when another writer takes one between the choice and the write, and a port the
host refused (something else listens there) is not offered again while the step lasts."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overhaul.adapters.drivers.hosts import HostRouter, placed_hosts
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.adapters.health.monitor import HealthMonitor
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition
from overhaul.core.hosts import Host, parse_host, parse_host_group
from overhaul.core.rollout import AttemptStatus
from overhaul.localhost import port_in_range
from overhaul.ports.driver import Driver, DriverError, InstanceSpec, PortsExhausted
from overhaul.runtime.orchestrator import Orchestrator
from tests.builders import FAST, small, version


class Racing(SqliteStore):
    """Another writer takes the port this one chose, once, just before its write."""

    raced = False

    async def put_instance_ports(
        self, scale_set: str, instance_id: int, ports: Any, *, take_over: bool = False
    ) -> None:
        if scale_set == "web" and instance_id == 1 and not self.raced:
            self.raced = True
            await self.put_instance_host("other", 0, "")
            await super().put_instance_ports("other", 0, dict(ports))
        await super().put_instance_ports(scale_set, instance_id, ports, take_over=take_over)


@pytest.fixture
async def orchestrator(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    store = Racing(tmp_path / "overhaul.db")
    made = Orchestrator(store, MemoryDriver(), HealthMonitor(), settings=FAST)
    await made.start()
    await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    await made.galleries.publish(version("1.0.0"))
    yield made
    await made.close()
    await store.close()


async def test_a_port_taken_between_the_choice_and_the_write_is_chosen_again(orchestrator: Orchestrator) -> None:
    await orchestrator.scale_sets.put("web", small(2))
    store = orchestrator.store
    assert isinstance(store, Racing) and store.raced
    web = await store.instance_ports("web")
    other = await store.instance_ports_of("other", 0)
    held = [p for ports in (*web.values(), other) for p in ports.values()]
    assert len(held) == len(set(held)) == 3, (web, other)  # nobody shares a port


class Crowded(MemoryDriver):
    """A simulated host where something else listens on ``foreign`` ports once the instances are made."""

    foreign: frozenset[int] = frozenset()

    def _refuse(self, spec: InstanceSpec) -> None:
        held = sorted(set(spec.ports.values()) & self.foreign)
        if held:
            raise DriverError(f"start {spec.name}: Bind for 127.0.0.2:{held[0]} failed: port is already allocated")

    async def reimage(self, spec: InstanceSpec) -> None:
        self._refuse(spec)
        await super().reimage(spec)

    async def ensure_running(self, spec: InstanceSpec) -> None:
        self._refuse(spec)
        await super().ensure_running(spec)


async def test_ports_a_host_refuses_are_not_offered_again_in_that_step(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "overhaul.db")
    crowded = Crowded(address="127.0.0.2")
    crowded.foreign = frozenset({20001})  # something else listens there from the start (a remote host: unchecked)

    async def only(host: Host) -> Driver:
        return crowded

    router = HostRouter(MemoryDriver(), only, placed_hosts(store))
    made = Orchestrator(store, router, HealthMonitor(), settings=FAST)
    try:
        await made.start()
        await made.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
        await made.galleries.publish(version("1.0.0"))
        group = {"properties": {"platformFaultDomainCount": 1}}
        await made.host_groups.put(parse_host_group(group, name="rack", resource_group="rg", subscription="s"))
        ours = {"engine": "unix:///run/rack.sock", "publishAddress": "127.0.0.2", "hostPorts": "20000-20009"}
        body = {"properties": {"overhaul": ours}}
        await made.host_groups.put_host(parse_host(body, group="rack", name="h", resource_group="rg", subscription="s"))
        # The scale set's PUT makes instance 1 on the next port the host takes, as a rollout's step would.
        await made.scale_sets.put("web", small(2))
        assert await store.instance_ports("web") == {0: {8080: 20000}, 1: {8080: 20002}}
        # While instance 0 is reimaged, something else takes its port, and the next free one too.
        crowded.foreign = frozenset({20000, 20001, 20003})
        await made.galleries.publish(version("2.0.0"))
        attempt = await made.upgrades.start("web")
        done = await made.upgrades.wait(attempt.id, 20)
        assert done.status is AttemptStatus.COMPLETED, done
        assert (await store.instance_ports("web"))[0] == {8080: 20004}  # not 20000 again, nor 20001 or 20003
    finally:
        await made.close()
        await router.close()
        await store.close()


def test_a_port_whose_last_connection_lingers_in_time_wait_is_free_to_publish() -> None:
    """An instance's old OS disk served on the port and closed its connections first: the port sits in TIME_WAIT
    for a minute. Engines listen with SO_REUSEADDR (Go's default), so they can publish there: it is free."""
    address = "127.0.0.6"
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as an engine's (rootlessport's) listens
        listener.bind((address, 0))
        port = int(listener.getsockname()[1])
        listener.listen()
        with socket.create_connection((address, port), timeout=5) as client:
            served, _ = listener.accept()
            served.close()  # the server side closes first: its end of the connection lingers in TIME_WAIT
            client.recv(1)
    assert port_in_range(port, port, (), address) == port
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((address, port))
        holder.listen()  # something listens there now: taken
        with pytest.raises(PortsExhausted, match=f"no free host port in {port}-{port} on {address}"):
            port_in_range(port, port, (), address)
