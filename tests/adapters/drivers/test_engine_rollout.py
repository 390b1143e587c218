"""Rolling upgrades of real containers on Podman (and v1 -> v2 on Docker): the design's rules, for real."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo import busybox_images as engine_images
from overhaul.adapters.drivers.engine import LABEL_SCALE_SET, EngineDriver, EngineSettings
from overhaul.adapters.health.monitor import HealthMonitor, HealthSettings
from overhaul.adapters.store.sqlite import SqliteStore
from overhaul.core.gallery import ImageDefinition, ImageVersion
from overhaul.core.model import model_digest
from overhaul.core.rollout import MAX_UNHEALTHY_UPGRADED, AttemptStatus, StartedBy, Step
from overhaul.ports.driver import InstanceSpec
from overhaul.ports.events import AttemptChanged, Event
from overhaul.runtime.orchestrator import Orchestrator
from tests.engines import containers, docker_daemon, get_text, podman_inspect, podman_service

pytestmark = [pytest.mark.slow, pytest.mark.engine]
REPO = "localhost/overhaul-test"
VERSIONS = {"1.0.0": True, "2.0.0": True, "3.0.0": False}  # 3.0.0 never becomes healthy
MODEL: dict[str, Any] = {
    "location": "local",
    "sku": {"capacity": 5},
    "properties": {
        "upgradePolicy": {
            "mode": "Automatic",
            "rollingUpgradePolicy": {"overhaul": {"instanceHealthTimeout": "PT8S"}},
        },
        "virtualMachineProfile": {
            "storageProfile": {
                "imageReference": {"publisher": "overhaul", "offer": "test", "sku": "tiny", "version": "latest"},
                "dataDisks": [{"lun": 0}],
            },
            "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
            "overhaul": {"stopTimeoutInSeconds": 2},
        },
    },
}
HEALTH = HealthSettings(probe_interval=0.2, probe_timeout=1.0, probe_grace_period=2.0)
EXITS = "9.0.0"  # a version whose container exits at once


RUNNER = Path(__file__).resolve().parents[2] / "orchestrator_runner.py"


async def run_command(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(proc.wait(), 60) == 0, args


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for version, healthy in VERSIONS.items():
        engine_images.build("podman", f"{REPO}:{version}", version, healthy=healthy)
    engine_images.build("podman", f"{REPO}:{EXITS}", EXITS, command="echo bad build >&2; exit 3")
    with podman_service(tmp_path_factory.mktemp("podman")) as url:
        yield url


@dataclass
class Fleet:
    orchestrator: Orchestrator
    store: SqliteStore
    driver: EngineDriver
    name: str
    engine: str
    http: aiohttp.ClientSession

    async def create(self, model: dict[str, Any] | None = None) -> None:
        await self.orchestrator.scale_sets.put(self.name, model or MODEL)
        await self.all_healthy()

    async def publish(self, version: str) -> None:
        await self.orchestrator.galleries.publish(
            ImageVersion("g", "tiny", version, f"{REPO}:{version}", published_at=time.time())
        )

    async def all_healthy(self, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while True:
                seen = self.orchestrator.health.version
                if all(i.view.healthy for i in await self.orchestrator.scale_sets.instances(self.name)):
                    break
                await self.orchestrator.health.wait_changed(seen, 5.0)

    async def versions(self) -> dict[int, str | None]:
        return {i: s.version for i, s in (await self.driver.observe(self.name)).items()}

    async def first_written(self) -> dict[int, str]:
        """The marker each instance wrote on its data disk when the disk was new."""
        ports = await self.store.instance_ports(self.name)
        return {i: (await get_text(self.http, p[8080], "/data/first"))[1].strip() for i, p in ports.items()}


async def second_batch_began(fleet: Fleet) -> bool:
    for stored in await fleet.store.attempts(fleet.name):
        for e in await fleet.store.journal(stored.attempt.id):
            if e.instance_id == 1 and e.action == "reimage" and e.phase == "begin":
                return True
    return False


async def make_fleet(tmp_path: Path, url: str, name: str, engine: str) -> AsyncIterator[Fleet]:
    store = SqliteStore(tmp_path / "overhaul.db")
    driver = EngineDriver(EngineSettings(url=url, config_root=tmp_path / "config"))
    await driver.start()
    orchestrator = Orchestrator(store, driver, HealthMonitor(HEALTH))
    await orchestrator.start()
    await orchestrator.galleries.put_definition(ImageDefinition("g", "tiny", "overhaul", "test", "tiny"))
    async with aiohttp.ClientSession() as http:
        fleet = Fleet(orchestrator, store, driver, name, engine, http)
        await fleet.publish("1.0.0")
        try:
            yield fleet
        finally:
            if await store.get_scale_set(name) is not None:
                await orchestrator.close()
                orchestrator = Orchestrator(store, driver, HealthMonitor(HEALTH))
                await orchestrator.scale_sets.delete(name)
            await orchestrator.close()
            await driver.close()
            await store.close()


@pytest.fixture
async def fleet(podman: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Fleet]:
    name = "t" + request.node.name.removeprefix("test_").replace("_", "")[:20]
    async for fleet in make_fleet(tmp_path, podman, name, "podman"):
        yield fleet


async def test_v1_to_v2_batches_of_one_data_and_ports_kept(fleet: Fleet) -> None:
    await fleet.create()
    ports = await fleet.store.instance_ports(fleet.name)
    assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")
    await fleet.publish("2.0.0")
    attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
    done = await fleet.orchestrator.upgrades.wait(attempt.id, 120)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert done.batches_started == 5  # 5 x 20 % = batches of 1
    assert (done.successful, done.failed) == (5, 0)
    assert await fleet.versions() == dict.fromkeys(range(5), "2.0.0")
    assert await fleet.store.instance_ports(fleet.name) == ports
    observed = await fleet.driver.observe(fleet.name)
    assert {i: dict(s.ports) for i, s in observed.items()} == ports  # the engine reports where each listens
    assert {s.address for s in observed.values()} == {"127.0.0.1"}
    for i, p in ports.items():
        assert (await get_text(fleet.http, p[8080], "/version"))[1].strip() == "2.0.0", i
    assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")  # data disks survived
    names = sorted(c["name"] for c in containers("podman", fleet.name))
    assert names == [f"{fleet.name}_{i}" for i in range(5)]  # no previous OS disk left behind
    # batches of one: each reimage began only after the previous instance was healthy (and being committed)
    journal = [(e.action, e.phase, e.instance_id) for e in await fleet.store.journal(attempt.id)]
    for i in range(1, 5):
        assert journal.index(("reimage", "begin", i)) > journal.index(("commit", "begin", i - 1))
        assert journal.index(("reimage", "begin", i)) > journal.index(("reimage", "end", i - 1))


async def test_failing_version_rolls_back_and_faults(fleet: Fleet) -> None:
    await fleet.create()
    await fleet.publish("2.0.0")
    first = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
    assert (await fleet.orchestrator.upgrades.wait(first.id, 120)).status is AttemptStatus.COMPLETED
    await fleet.publish("3.0.0")
    attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
    done = await fleet.orchestrator.upgrades.wait(attempt.id, 120)
    assert done.status is AttemptStatus.FAULTED
    assert done.error_code == MAX_UNHEALTHY_UPGRADED
    assert done.instances[0].step is Step.ROLLED_BACK
    assert set(done.instances) == {0}  # the others were never touched
    assert await fleet.versions() == dict.fromkeys(range(5), "2.0.0")
    await fleet.all_healthy()  # the restored instance is healthy again
    history = await fleet.orchestrator.upgrades.history(fleet.name)
    assert [h.attempt.status for h in history] == [AttemptStatus.FAULTED, AttemptStatus.COMPLETED]
    assert (history[0].attempt.successful, history[0].attempt.failed) == (0, 1)
    assert history[0].attempt.count(Step.ROLLED_BACK) == 1
    assert history[0].image_reference["version"] == "3.0.0"


async def test_a_known_verdict_is_acted_on_at_once_not_at_the_health_timeout(fleet: Fleet) -> None:
    """A probe failing past its grace period, or an instance that exited, cannot turn Healthy by itself: with a
    ten-minute health timeout both attempts still end within the test's two minutes, saying why."""
    model = copy.deepcopy(MODEL)
    model["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["overhaul"]["instanceHealthTimeout"] = "PT10M"
    await fleet.create(model)
    for version, why in (("3.0.0", "Unhealthy after the reimage: HTTP 404"), (EXITS, "not running (it exited)")):
        await fleet.publish(version)
        attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
        done = await fleet.orchestrator.upgrades.wait(attempt.id, 120)
        assert done.status is AttemptStatus.FAULTED
        assert done.instances[0].step is Step.ROLLED_BACK
        assert why in (done.instances[0].error or ""), done.instances[0].error
        assert await fleet.versions() == dict.fromkeys(range(5), "1.0.0")
        await fleet.all_healthy()


async def healthy_answers(fleet: Fleet) -> int:
    """How many running containers of the scale set answer their application's /health with 200, asked
    directly on the ports the engine publishes (not through the orchestrator's view)."""
    filters = json.dumps({"label": [f"{LABEL_SCALE_SET}={fleet.name}"]})
    listed = await fleet.driver.docker.containers.list(filters=filters)

    async def healthy(container: Any) -> bool:
        port = next(
            (p.get("PublicPort") for p in container._container.get("Ports") or [] if p.get("PrivatePort") == 8080),
            None,
        )
        if not port:
            return False
        try:
            return (await get_text(fleet.http, port, "/health"))[0] == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    return sum(await asyncio.gather(*(healthy(c) for c in listed)))


async def sample_during(fleet: Fleet, attempt_id: str) -> tuple[list[int], Any]:
    """Counts healthy answers over and over until the attempt is done; returns the counts and the attempt."""
    waiting = asyncio.ensure_future(fleet.orchestrator.upgrades.wait(attempt_id, 120))
    counts: list[int] = []
    while not waiting.done():
        counts.append(await healthy_answers(fleet))
        await asyncio.wait({waiting}, timeout=0.1)  # sampling is periodic by nature
    return counts, waiting.result()


async def test_max_surge_never_lowers_the_count_of_healthy_instances(fleet: Fleet) -> None:
    """maxSurge: each new OS disk starts beside the running one and is health-gated before the old one stops. A
    good rollout never has fewer than capacity instances answering healthy; a bad version's disks are dropped
    while the old ones never stopped; data disks are kept."""
    model = copy.deepcopy(MODEL)
    model["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxSurge"] = True
    model["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {"useRollingUpgradePolicy": True}
    await fleet.create(model)
    await fleet.publish("2.0.0")
    attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
    counts, done = await sample_during(fleet, attempt.id)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert await fleet.versions() == dict.fromkeys(range(5), "2.0.0")
    assert min(counts) >= 5, counts
    assert max(counts) > 5, counts  # a new OS disk answered beside the old one: the surge was real
    assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")  # data disks kept, ports followed
    assert sorted(c["name"] for c in containers("podman", fleet.name)) == [f"{fleet.name}_{i}" for i in range(5)]
    await fleet.publish("3.0.0")
    attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
    counts, done = await sample_during(fleet, attempt.id)
    assert done.status is AttemptStatus.FAULTED and done.instances[0].step is Step.ROLLED_BACK
    assert min(counts) >= 5, counts
    assert await fleet.versions() == dict.fromkeys(range(5), "2.0.0")
    assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")
    await fleet.all_healthy()


async def config_drive_file(fleet: Fleet, instance_id: int, name: str) -> str | None:
    """A file of the instance's config drive as the running container sees it (None: absent)."""
    proc = await asyncio.create_subprocess_exec(
        "podman",
        "exec",
        f"{fleet.name}_{instance_id}",
        "cat",
        f"/etc/overhaul/{name}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode() if proc.returncode == 0 else None


async def test_a_deferred_upgrade_tells_the_instance_and_waits_for_approval(fleet: Fleet) -> None:
    """osRollingUpgradeDeferral: the running instance sees Platform.PendingOSUpgrade on its config drive, and is
    not touched until approveRollingUpgrade; a cancel withdraws the notice of one still waiting."""
    model = copy.deepcopy(MODEL)
    model["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"] = {"osRollingUpgradeDeferral": True}
    await fleet.create(model)
    await fleet.publish("2.0.0")
    awaiting: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(5)}

    def watch(event: Event) -> None:
        if isinstance(event, AttemptChanged):
            for i in event.attempt.awaiting_approval:
                awaiting[i].set()

    fleet.orchestrator.events.subscribe(watch)
    attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
    await asyncio.wait_for(awaiting[0].wait(), 30)
    notice = await config_drive_file(fleet, 0, "platform.json")
    assert notice is not None and json.loads(notice) == {"tags": {"Platform.PendingOSUpgrade": "2.0.0"}}
    # Awaiting its approval, it is not reimaged; that no pass reimages it meanwhile shows below, where instance 2
    # awaits approval after every pass that moved 0 and 1, still on 1.0.0.
    assert (await fleet.versions())[0] == "1.0.0"
    await fleet.orchestrator.upgrades.approve(fleet.name, [0, 1])
    await asyncio.wait_for(awaiting[2].wait(), 60)  # 0 and 1 went ahead; 2 waits
    versions = await fleet.versions()
    assert (versions[0], versions[1], versions[2]) == ("2.0.0", "2.0.0", "1.0.0")
    assert await config_drive_file(fleet, 0, "platform.json") is None  # a new OS disk starts with no notice
    await fleet.orchestrator.upgrades.cancel(fleet.name)
    done = await fleet.orchestrator.upgrades.wait(attempt.id, 60)
    assert done.status is AttemptStatus.CANCELLED and done.instances[2].step is Step.NOT_UPGRADED
    assert await config_drive_file(fleet, 2, "platform.json") is None  # withdrawn
    assert await fleet.versions() == {0: "2.0.0", 1: "2.0.0", 2: "1.0.0", 3: "1.0.0", 4: "1.0.0"}


async def test_a_model_change_rolls_out_health_gated_in_rolling_mode(fleet: Fleet) -> None:
    """upgradePolicy.mode Rolling: a new customData reaches every instance on a new OS disk, batch by batch and
    health-gated, on the version it runs; data disks stay; latestModelApplied is true again at the end."""
    model = copy.deepcopy(MODEL)
    model["properties"]["upgradePolicy"]["mode"] = "Rolling"
    model["properties"]["virtualMachineProfile"]["osProfile"] = {"customData": "first"}
    await fleet.create(model)
    await fleet.publish("2.0.0")  # 'latest' moves on: a model upgrade keeps the version instances run
    model["properties"]["virtualMachineProfile"]["osProfile"] = {"customData": "second"}
    await fleet.orchestrator.scale_sets.put(fleet.name, model)
    (stored,) = await fleet.orchestrator.upgrades.history(fleet.name)
    done = await fleet.orchestrator.upgrades.wait(stored.attempt.id, 120)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    assert done.batches_started == 5 and (done.successful, done.failed) == (5, 0)
    assert await fleet.versions() == dict.fromkeys(range(5), "1.0.0")
    for i in range(5):
        drive = await config_drive_file(fleet, i, "metadata.json")
        assert drive is not None and json.loads(drive)["customData"] == "second", i
    assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")
    digest = model_digest(await fleet.orchestrator.scale_sets.get(fleet.name))
    assert all(i.view.model_digest == digest for i in await fleet.orchestrator.scale_sets.instances(fleet.name))
    journal = [(e.action, e.phase, e.instance_id) for e in await fleet.store.journal(done.id)]
    for i in range(1, 5):  # health-gated: each batch began after the previous instance was healthy
        assert journal.index(("reimage", "begin", i)) > journal.index(("commit", "begin", i - 1))


async def test_sigkill_mid_batch_then_resume(fleet: Fleet, tmp_path: Path, podman: str) -> None:
    # The batch's health deadline runs on through the kill and the new process's start: room for a busy machine.
    model = copy.deepcopy(MODEL)
    model["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["overhaul"]["instanceHealthTimeout"] = "PT60S"
    await fleet.create(model)
    await fleet.publish("2.0.0")
    db = tmp_path / "overhaul.db"
    args = [
        sys.executable,
        str(RUNNER),
        "--db",
        str(db),
        "--engine",
        podman,
        "--config",
        str(tmp_path / "config"),
        "--scale-set",
        fleet.name,
    ]
    await fleet.orchestrator.close()  # the runner process is the orchestrator now
    killed = await asyncio.create_subprocess_exec(*args, "--start")
    try:
        deadline = time.monotonic() + 60
        # Another process writes the journal: reading it is the only way to see where it is.
        while not await second_batch_began(fleet):
            assert time.monotonic() < deadline, "the attempt never reached its second batch"
            assert killed.returncode is None, "the runner ended before it was killed"
            await asyncio.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        await asyncio.wait_for(killed.wait(), 10)
    finally:
        if killed.returncode is None:
            killed.kill()
            await killed.wait()
    latest = await fleet.orchestrator.upgrades.latest(fleet.name)
    assert latest is not None and latest.attempt.status is AttemptStatus.ROLLING_FORWARD
    resumed = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(resumed.communicate(), 180)
    assert resumed.returncode == 0, stderr.decode()
    latest = await fleet.orchestrator.upgrades.latest(fleet.name)
    assert latest is not None
    assert latest.attempt.status is AttemptStatus.COMPLETED, (latest.attempt.error_message, stderr.decode()[-3000:])
    assert await fleet.versions() == dict.fromkeys(range(5), "2.0.0")
    rows = containers("podman", fleet.name)
    assert sorted(r["name"] for r in rows) == [f"{fleet.name}_{i}" for i in range(5)]
    assert all(r["state"] == "running" for r in rows), rows
    assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")
    fleet.orchestrator = Orchestrator(fleet.store, fleet.driver, HealthMonitor(HEALTH))  # for the fixture's clean-up


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with docker_daemon(tmp_path_factory.mktemp("docker") / "dockerd.log") as url:
        for version in ("1.0.0", "2.0.0"):
            engine_images.build("docker", f"{REPO}:{version}", version)
        yield url


async def test_v1_to_v2_on_docker(docker: str, tmp_path: Path) -> None:
    async for fleet in make_fleet(tmp_path, docker, "tdocker", "docker"):
        await fleet.create()
        ports = await fleet.store.instance_ports(fleet.name)
        await fleet.publish("2.0.0")
        attempt = await fleet.orchestrator.upgrades.start(fleet.name, started_by=StartedBy.PLATFORM)
        done = await fleet.orchestrator.upgrades.wait(attempt.id, 120)
        assert done.status is AttemptStatus.COMPLETED, done.error_message
        assert await fleet.versions() == dict.fromkeys(range(5), "2.0.0")
        assert await fleet.store.instance_ports(fleet.name) == ports
        assert await fleet.first_written() == dict.fromkeys(range(5), "1.0.0")
        assert sorted(c["name"] for c in containers("docker", fleet.name)) == [f"tdocker_{i}" for i in range(5)]
        # Isolated by default: Docker has no network stack per container, so the scale set has a bridge of its
        # own with inter-container traffic off (the busybox images have wget: instance 1 cannot reach instance 0).
        network = inspect("docker", "network", "overhaul-tdocker")
        assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        assert sorted(c["Name"] for c in network["Containers"].values()) == [f"tdocker_{i}" for i in range(5)]
        address = network["Containers"][inspect("docker", "container", "tdocker_0")["Id"]]["IPv4Address"]
        assert reaches("docker", "tdocker_1", "127.0.0.1")  # the way of asking works in there
        assert not reaches("docker", "tdocker_1", address.split("/")[0])
        await fleet.orchestrator.scale_sets.delete(fleet.name)
        assert not exists("docker", "network", "overhaul-tdocker")


async def test_a_rolled_back_instance_serves_its_previous_version_and_config_drives_are_private(fleet: Fleet) -> None:
    """What the driver contract (test_driver_contract.py) cannot see from observe: the application that answers
    after a rollback, and the config drives' modes."""
    await fleet.create()
    model = await fleet.orchestrator.scale_sets.get(fleet.name)
    await fleet.publish("2.0.0")
    v2 = await fleet.orchestrator.instances.spec(model, 0, "2.0.0")
    await fleet.driver.reimage(v2)
    await fleet.driver.rollback(v2)
    port = (await fleet.store.instance_ports(fleet.name))[0][8080]
    assert (await get_text(fleet.http, port, "/version"))[1].strip() == "1.0.0"
    # Config drives hold the extensions' protectedSettings: owner only.
    drives = list(fleet.driver.settings.config_root.rglob("metadata.json"))
    assert drives and all(stat.S_IMODE(d.stat().st_mode) == 0o600 for d in drives)


def reaches(engine: str, container: str, host: str, port: int = 8080) -> bool:
    """Whether ``container`` gets an HTTP answer from ``host:port`` (busybox's nc inside it)."""
    request = f"printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {host} {port}"
    done = subprocess.run(
        [engine, "exec", container, "sh", "-c", request], capture_output=True, timeout=60, check=False
    )
    return done.returncode == 0 and b" 200 " in done.stdout


def exists(engine: str, kind: str, name: str) -> bool:
    return subprocess.run([engine, kind, "inspect", name], capture_output=True, timeout=30, check=False).returncode == 0


def inspect(engine: str, kind: str, name: str) -> dict[str, Any]:
    out = subprocess.run([engine, kind, "inspect", name], capture_output=True, text=True, check=True, timeout=30)
    found: dict[str, Any] = json.loads(out.stdout)[0]
    return found


async def test_instances_are_isolated_unless_the_model_shares_the_bridge(fleet: Fleet) -> None:
    """Podman: each container a network stack of its own (nothing but its published ports reaches it); with
    overhaul.network shared, the engine's bridge as before."""
    model = copy.deepcopy(MODEL)
    model["sku"]["capacity"] = 2
    await fleet.create(model)
    isolated = inspect("podman", "container", f"{fleet.name}_0")
    assert isolated["HostConfig"]["NetworkMode"] == "slirp4netns"
    assert not isolated["NetworkSettings"]["IPAddress"]  # no address another container could reach
    assert (await get_text(fleet.http, (await fleet.store.instance_ports(fleet.name))[0][8080], "/version"))[0] == 200
    model["properties"]["virtualMachineProfile"]["overhaul"]["network"] = "shared"
    model["properties"]["upgradePolicy"]["mode"] = "Automatic"  # the model change reaches both at once
    await fleet.orchestrator.scale_sets.put(fleet.name, model)
    latest = await fleet.orchestrator.upgrades.latest(fleet.name)
    assert latest is not None
    done = await fleet.orchestrator.upgrades.wait(latest.attempt.id, 120)
    assert done.status is AttemptStatus.COMPLETED, done.error_message
    shared = inspect("podman", "container", f"{fleet.name}_0")
    address = shared["NetworkSettings"]["IPAddress"]
    assert address, shared["NetworkSettings"]
    assert reaches("podman", f"{fleet.name}_1", address)  # neighbours, as asked


def volumes(engine: str, scale_set: str) -> list[str]:
    out = subprocess.run(
        [engine, "volume", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return sorted(n for n in out.split() if n.startswith(f"{scale_set}_"))


async def test_deleting_a_scale_set_removes_the_data_disks_of_instances_scaled_in_before(fleet: Fleet) -> None:
    await fleet.create()
    assert volumes("podman", fleet.name) == [f"{fleet.name}_{i}_lun0" for i in range(5)]
    smaller = copy.deepcopy(MODEL)
    smaller["sku"]["capacity"] = 2
    await fleet.orchestrator.scale_sets.put(fleet.name, smaller)
    # Scaled in: the removed instances' data disks are kept (a scale-out may bring them back) ...
    assert volumes("podman", fleet.name) == [f"{fleet.name}_{i}_lun0" for i in range(5)]
    await fleet.orchestrator.scale_sets.delete(fleet.name)
    # ... until the scale set goes: then every data disk it ever made goes with it.
    assert volumes("podman", fleet.name) == []
    assert containers("podman", fleet.name) == []


async def test_a_repeated_reimage_makes_the_new_os_disk_again_and_it_serves(podman: str, tmp_path: Path) -> None:
    """A reimage step cut short by a kill of serve or of the engine's service can leave the new container half
    made (seen: "running" with no port published); the repeated step makes it again instead of trusting it."""
    driver = EngineDriver(EngineSettings(url=podman, config_root=tmp_path / "config"))
    await driver.start()
    app = await driver.host_port(set())
    ports = {8080: app, 8090: await driver.host_port({app})}

    def spec(version: str) -> InstanceSpec:
        return InstanceSpec("trepeat", 0, f"{REPO}:{version}", version, ports=ports, stop_timeout=1)

    try:
        await driver.ensure_running(spec("1.0.0"))
        await driver.reimage(spec("2.0.0"))
        first = podman_inspect("trepeat_0", "{{.Id}}")
        await driver.reimage(spec("2.0.0"))  # the step again, as after a crash that lost its outcome
        assert podman_inspect("trepeat_0", "{{.Id}}") != first
        state = (await driver.observe("trepeat"))[0]
        assert state.version == "2.0.0" and state.running and state.previous is not None
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        if (await get_text(http, app, "/health"))[0] == 200:
                            break
                    await asyncio.sleep(0.2)
    finally:
        await driver.delete(spec("2.0.0"), keep_data=False)
        await driver.close()
