"""HostRouter (adapters/drivers/hosts.py): the driver protocol over one driver per host. Instances go to the host
their spec names; a scale set is observed on every host at once, each instance with where it was found; a host
that cannot be listed, or an instance on two hosts, is named. Memory drivers for the rules, then two real Podman
services with stores of their own, each publishing on its own loopback address."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from demo import busybox_images
from overhaul.adapters.drivers.engine import EngineDriver, EngineSettings, config_drive_tar
from overhaul.adapters.drivers.hosts import HostRouter, engine_drivers, forward_directory
from overhaul.adapters.drivers.memory import MemoryDriver
from overhaul.core.hosts import Host, parse_host
from overhaul.core.triage import Fault
from overhaul.localhost import free_port
from overhaul.ports.driver import Driver, DriverError, EngineUnavailable, InstanceSpec
from tests.e2e.hosts import inside
from tests.engines import podman_host, sshd

IMAGE = "localhost/overhaul-hosts:1.0.0"
Placed = Sequence[tuple[Host, frozenset[int]]]


def host(name: str, engine: str = "", **ours: object) -> Host:
    body = {"properties": {"platformFaultDomain": 0, "overhaul": {"engine": engine, **ours}}}
    return parse_host(body, group="rack", name=name, resource_group="rg", subscription="s")


def spec(instance_id: int, on: Host | None, ports: dict[int, int] | None = None) -> InstanceSpec:
    return InstanceSpec("web", instance_id, IMAGE, "1.0.0", ports=ports or {}, stop_timeout=1, host=on)


class Made:
    """A factory of memory drivers that counts what it made and can be told a host is down."""

    def __init__(self) -> None:
        self.drivers: dict[str, MemoryDriver] = {}
        self.made = 0
        self.down: set[str] = set()

    async def __call__(self, made_for: Host) -> Driver:
        if made_for.name in self.down:
            raise DriverError(f"no container engine answers at {made_for.engine.url}")
        self.made += 1
        self.drivers[made_for.name] = MemoryDriver()
        return self.drivers[made_for.name]


async def test_instances_go_to_their_host_and_are_observed_with_it() -> None:
    a, b = host("a", "unix:///a.sock"), host("b", "unix:///b.sock")
    local, made = MemoryDriver(), Made()

    async def hosts(scale_set: str) -> Placed:
        return [(a, frozenset({1})), (b, frozenset({2}))]

    router = HostRouter(local, made, hosts)
    await router.ensure_running(spec(0, None))
    await router.ensure_running(spec(1, a))
    await router.ensure_running(spec(2, b))
    assert set(made.drivers["a"].instances["web"]) == {1} and set(made.drivers["b"].instances["web"]) == {2}
    assert set(local.instances["web"]) == {0}
    seen = await router.observe("web")
    assert {i: s.host for i, s in seen.items()} == {0: "", 1: a.id, 2: b.id}
    await router.reimage(spec(1, a))
    await router.delete(spec(2, b), keep_data=False)
    assert made.made == 2  # one driver per host, kept
    assert ("reimage", "web_1") in made.drivers["a"].calls
    assert await router.observe("web") == {0: seen[0], 1: seen[1]}
    await router.close()


async def test_a_host_that_does_not_answer_leaves_its_instances_unreachable_and_two_hosts_for_one_are_named() -> None:
    a, b = host("a", "unix:///a.sock"), host("b", "unix:///b.sock")
    made = Made()

    async def hosts(scale_set: str) -> Placed:
        return [(a, frozenset({3})), (b, frozenset({3, 4}))]

    router = HostRouter(MemoryDriver(), made, hosts)
    await router.ensure_running(spec(3, a))
    made.down.add("b")
    # Its instances are there, unreachable, with the reason; the rest is as the engines say.
    seen = await router.observe("web")
    assert seen[3].unreachable is None and seen[3].host == a.id
    assert seen[4].current is None and seen[4].host == b.id and seen[4].address == b.publish_address
    assert seen[4].unreachable is not None and re.search(
        r"host rack/b does not answer: .*unix:///b\.sock", seen[4].unreachable
    )
    made.down.clear()  # back: the next call makes its driver
    await router.ensure_running(spec(3, b))
    with pytest.raises(DriverError, match=re.escape(f"instance 3 of web is on two hosts: {a.id} and {b.id}")):
        await router.observe("web")
    await router.close()


async def test_an_error_on_a_host_names_it_and_keeps_what_it_blames() -> None:
    a = host("a", "unix:///a.sock")
    made = Made()

    async def hosts(scale_set: str) -> Placed:
        return [(a, frozenset({0}))]

    router = HostRouter(MemoryDriver(), made, hosts)
    await router.ensure_running(spec(0, a))
    made.drivers["a"].fail_reimage = lambda s: True
    with pytest.raises(DriverError) as caught:
        await router.reimage(replace(spec(0, a), version="2.0.0"))
    assert str(caught.value).startswith("host rack/a: ")
    assert caught.value.fault is not None and not caught.value.transient  # the image's, as the engine said
    original = made.drivers["a"]
    made.drivers["a"].fail_reimage = lambda s: False
    made.drivers["a"].missing_images.add(IMAGE)
    await router.delete(spec(0, a), keep_data=False)
    with pytest.raises(DriverError) as missing:
        await router.ensure_running(spec(1, a))
    assert str(missing.value).startswith("host rack/a: ") and missing.value.transient  # an image missing: retried
    assert made.drivers["a"] is original
    await router.close()


async def test_a_changed_host_record_gets_a_new_driver() -> None:
    a = host("a", "unix:///a.sock")
    made = Made()

    async def hosts(scale_set: str) -> Placed:
        return [(a, frozenset())]

    router = HostRouter(MemoryDriver(), made, hosts)
    first = await router.driver_of(a)
    assert await router.driver_of(a) is first
    moved = host("a", "unix:///a2.sock")
    assert await router.driver_of(moved) is not first and made.made == 2
    await router.close()


@pytest.mark.engine
@pytest.mark.slow
async def test_two_podman_hosts_each_run_and_publish_their_own_instances(tmp_path: Path) -> None:
    def images(store: list[str]) -> None:
        busybox_images.build("podman", IMAGE, "1.0.0", store=store)

    with podman_host(images) as url2, podman_host(images) as url3:
        two = host("h2", url2, publishAddress="127.0.0.2", hostPorts="31000-31099")
        three = host("h3", url3, publishAddress="127.0.0.3", hostPorts="31000-31099")

        async def hosts(scale_set: str) -> Placed:
            return [(two, frozenset({0})), (three, frozenset({1}))]

        base = EngineSettings(config_root=tmp_path / "config", call_timeout=60)
        router = HostRouter(MemoryDriver(), engine_drivers(base), hosts)
        try:
            for instance_id, on in ((0, two), (1, three)):
                port = await (await router.driver_of(on)).host_port(set())
                assert port == 31000  # the first of each host's own range: the two hosts share no port space
                await router.ensure_running(spec(instance_id, on, {8080: port}))
            seen = await router.observe("web")
            assert {i: (s.host, s.address, s.ports) for i, s in seen.items()} == {
                0: (two.id, "127.0.0.2", {8080: 31000}),
                1: (three.id, "127.0.0.3", {8080: 31000}),
            }
            for address in ("127.0.0.2", "127.0.0.3"):
                await health(address, 31000)
            # Each engine has only its own instance.
            assert list(await (await router.driver_of(two)).observe("web")) == [0]
            await router.delete(spec(0, two), keep_data=False)
            await router.delete(spec(1, three), keep_data=False)
            assert await router.observe("web") == {}
        finally:
            await router.close()


@pytest.mark.engine
@pytest.mark.slow
async def test_an_image_is_streamed_from_the_gallerys_engine_into_a_hosts(tmp_path: Path) -> None:
    def images(store: list[str]) -> None:
        busybox_images.build("podman", IMAGE, "1.0.0", store=store)

    with podman_host(images) as gallery_url, podman_host() as url:
        empty = host("h5", url, publishAddress="127.0.0.5", hostPorts="34000-34099")

        async def hosts(scale_set: str) -> Placed:
            return [(empty, frozenset({0}))]

        base = EngineSettings(config_root=tmp_path / "config", call_timeout=60)
        gallery = EngineDriver(replace(base, url=gallery_url))
        await gallery.start()
        router = HostRouter(MemoryDriver(), engine_drivers(base), hosts, source=gallery)
        try:
            assert not await router.image_on(empty, IMAGE)
            seen: list[int] = []
            await router.copy_image(IMAGE, empty, seen.append)
            assert await router.image_on(empty, IMAGE)
            assert seen[-1] == 100 and seen == sorted(seen), seen
            await router.ensure_running(spec(0, empty, {8080: 34000}))  # the copy runs there
            await health("127.0.0.5", 34000)
            with pytest.raises(DriverError, match=r"(?i)image localhost/nowhere:1\.0\.0: .*no such image"):
                await router.copy_image("localhost/nowhere:1.0.0", empty, seen.append)
            await router.delete(spec(0, empty), keep_data=False)
        finally:
            await router.close()
            await gallery.close()


@pytest.mark.engine
@pytest.mark.slow
async def test_a_container_made_but_never_started_is_made_again_with_its_config_drive_and_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host's engine broke the copy after the create (a broken pipe), or refused the container's host port at its
    start: the step is retried and finds the container made. It is made again, or the instance would run with no
    config drive, or fail on the refused port for ever."""

    def images(store: list[str]) -> None:
        busybox_images.build("podman", IMAGE, "1.0.0", store=store)

    with podman_host(images) as url:
        driver = EngineDriver(EngineSettings(url=url, config_root=tmp_path / "config", call_timeout=60, remote=True))
        await driver.start()
        copy = EngineDriver._copy_config_drive
        calls: list[str] = []

        async def broken_once(self: EngineDriver, spec: InstanceSpec) -> None:
            calls.append(spec.name)
            if len(calls) == 1:
                raise DriverError(f"copy the config drive into {spec.name}: write |1: broken pipe")
            await copy(self, spec)

        monkeypatch.setattr(EngineDriver, "_copy_config_drive", broken_once)
        one = spec(0, None, {8080: free_port()})
        try:
            with pytest.raises(DriverError, match="broken pipe") as failed:
                await driver.ensure_running(one)
            assert failed.value.transient  # retried by the step, not blamed on the image
            await driver.ensure_running(one)
            assert calls == ["web_0", "web_0"]
            shown = await asyncio.to_thread(inside, url, "web_0", "cat", "/etc/overhaul/metadata.json")
            assert json.loads(shown)["platformToken"]

            with socket.socket() as squatter:  # something else listens on the port instance 1 is given first
                squatter.bind(("127.0.0.1", 0))
                squatter.listen()
                two = spec(1, None, {8080: squatter.getsockname()[1]})
                with pytest.raises(DriverError) as refused:
                    await driver.ensure_running(two)
                assert refused.value.fault is Fault.HOST_PORT_TAKEN, refused.value
                two = replace(two, ports={8080: free_port()})  # what the caller chooses next
                await driver.ensure_running(two)
                await health("127.0.0.1", two.ports[8080])
        finally:
            await driver.delete(one, keep_data=False)
            await driver.delete(spec(1, None), keep_data=False)
            await driver.close()


async def health(address: str, port: int) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            try:
                url = f"http://{address}:{port}/health"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)  # the container's httpd starting: nothing to wait on but time


@pytest.mark.engine
@pytest.mark.slow
async def test_an_ssh_host_is_reached_through_a_checked_forward_that_comes_back(tmp_path: Path) -> None:
    def images(store: list[str]) -> None:
        busybox_images.build("podman", IMAGE, "1.0.0", store=store)

    with podman_host(images) as url, sshd("127.0.0.4") as server:
        socket_path = url.removeprefix("unix://")
        ours = {
            "engine": f"ssh://root@{server.address}:{server.port}{socket_path}",
            "sshKey": str(server.client_key),
            "hostKey": server.host_key,
            "hostPorts": "33000-33099",
        }
        four = host("h4", **ours)
        wrong = host("h4x", **{**ours, "hostKey": key_line_of(tmp_path)})

        async def hosts(scale_set: str) -> Placed:
            return [(four, frozenset({0}))]

        router = HostRouter(MemoryDriver(), engine_drivers(EngineSettings(config_root=tmp_path / "config")), hosts)
        try:
            assert four.publish_address == "127.0.0.4"  # an ssh host publishes on its own address unless told
            await router.ensure_running(spec(0, four, {8080: 33000}))
            seen = await router.observe("web")
            assert (seen[0].host, seen[0].address, dict(seen[0].ports)) == (four.id, "127.0.0.4", {8080: 33000})
            await health("127.0.0.4", 33000)
            # A forward that drops is opened again; meanwhile the host's instances are unreachable, not gone.
            forward = (await router.driver_of(four)).service  # type: ignore[attr-defined]
            assert forward is not None and forward.pid is not None
            os.kill(forward.pid, signal.SIGKILL)
            reasons = set()
            async with asyncio.timeout(60):
                while (state := (await router.observe("web"))[0]).unreachable is not None or forward.restarts < 1:
                    reasons.add(state.unreachable)
                    await asyncio.sleep(0.1)  # the supervisor's back-off: nothing to wait on but time
            assert state.running and state.address == "127.0.0.4"
            assert any(r and "host rack/h4 does not answer" in r for r in reasons), reasons
            # The wrong key: nothing runs there, and it is never trusted.
            with pytest.raises(EngineUnavailable, match="host key mismatch"):
                await router.ensure_running(spec(1, wrong, {8080: 33001}))
            assert list(await (await router.driver_of(four)).observe("web")) == [0]
            await router.delete(spec(0, four), keep_data=False)
        finally:
            await router.close()


def key_line_of(directory: Path) -> str:
    """A host key that is not the host's."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "other")], check=True, timeout=30
    )
    return (directory / "other.pub").read_text().strip()


def test_ssh_forwards_of_a_deep_state_directory_live_in_one_private_directory_of_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90) / "ssh"
    made = [forward_directory(deep)]
    try:
        first = made[0]
        assert len(str(first)) < 60 and first.is_dir() and (first.stat().st_mode & 0o777) == 0o700
        assert forward_directory(deep) == first  # the same one at every start: none left behind per start
        made.append(forward_directory(tmp_path / "other" / ("e" * 90)))
        assert made[-1] != first
        assert forward_directory(tmp_path / "ssh") == tmp_path / "ssh"  # short enough: where it was asked
        first.chmod(0o755)  # not private (made by someone else, say): a fresh private one instead
        made.append(forward_directory(deep))
        assert made[-1] != first
        before = sorted(Path(tempfile.gettempdir()).glob("overhaul-ssh-*"))
        engine_drivers(EngineSettings(config_root=tmp_path / ("f" * 90) / "config"))
        assert sorted(Path(tempfile.gettempdir()).glob("overhaul-ssh-*")) == before  # none until an ssh host is made
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


def test_a_config_drive_archive_ends_at_its_end_of_archive_blocks() -> None:
    """Podman's copier stops reading at the two zero blocks that end an archive and closes its pipe: a writer still
    sending the record padding after them gets a broken pipe (a 500; containers/buildah#6573). So nothing follows."""
    metadata = b'{"instanceId": "2"}' * 40
    archive = config_drive_tar(metadata)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["etc", "etc/overhaul", "etc/overhaul/metadata.json"]
        extracted = tar.extractfile(members[-1])
        assert extracted is not None and extracted.read() == metadata
        assert (members[-1].mode, members[1].mode) == (0o600, 0o700)
        end = tar.offset  # where the end-of-archive blocks begin
    assert len(archive) == end + 2 * tarfile.BLOCKSIZE and archive[end:] == bytes(2 * tarfile.BLOCKSIZE)
