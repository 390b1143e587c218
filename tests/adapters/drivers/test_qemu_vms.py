"""VM scale sets on real QEMU VMs (TCG here): the driver's steps are idempotent and its VMs outlive it, and through
`overhaul serve` two VMs move v1 -> v2 health-gated on the agent inside each, the data disk and the extension's
work are seen from inside, a SIGKILL of `serve` mid-batch is resumed, and a delete leaves nothing behind. A rollback
restores the previous overlay (the driver's steps here); that a bad version is rolled back is the runtime's rule,
proven over every driver in the runtime and Podman tests."""

from __future__ import annotations

import functools
import json
import re
import socket
import sqlite3
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from demo import os_image
from demo.fleet_model import vm_fleet_model
from overhaul.adapters.drivers.qemu import QemuDriver, QemuSettings
from overhaul.core.model import Accel, VmOptions
from overhaul.core.naming import data_disk_name
from overhaul.localhost import free_port
from overhaul.ports.driver import DriverError, InstanceSpec
from tests import builders
from tests.serve import API, Served, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(1800)]
RG = "/subscriptions/local/resourceGroups/vms"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/vmos"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/os"
BOOT_TIMEOUT = 300  # TCG on 2 cores: 30-50 s, with room for a loaded machine
MARKER = re.compile(r"marker=(\d+) data=(\S+)")


@pytest.fixture(scope="module")
def artefacts() -> dict[str, Path]:
    return {v: os_image.build_vm(v, bad=False) for v in ("1.0.0", "2.0.0")}


def vm_processes(prefix: str) -> dict[str, int]:
    """QEMU processes whose -name starts with overhaul:PREFIX (overhaul:SCALESET/ID/OSDISK), by that name."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and b"-name" in args:
            name = args[args.index(b"-name") + 1].decode()
            if name.startswith(f"overhaul:{prefix}"):
                found[name] = int(proc.name)
    return found


def spec(scale_set: str, image: Path, version: str, **changes: Any) -> InstanceSpec:
    return InstanceSpec(
        scale_set=scale_set,
        instance_id=0,
        image=str(image),
        version=version,
        ports={8090: free_port()},
        volumes=((data_disk_name(scale_set, 0, 0), "/datadisks/lun0"),),
        metadata={"instanceId": "0", "scaleSet": scale_set},
        stop_timeout=1,  # the guest is still booting: it drops the power button, and QEMU is told to quit
        vm=VmOptions(memory_mb=256, vcpus=1, accel=Accel.TCG),
        **changes,
    )


async def test_a_vm_boots_on_another_port_when_its_own_is_taken_and_an_interrupted_reimage_finishes(
    artefacts: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "a-state-directory-deep-enough-that-a-qmp-socket-path-would-pass-108-bytes" / "vms"
    driver = QemuDriver(QemuSettings(root=root))
    v1, v2 = spec("idem", artefacts["1.0.0"], "1.0.0"), spec("idem", artefacts["2.0.0"], "2.0.0")
    other = spec("idem_0", artefacts["1.0.0"], "1.0.0")  # named like idem's instance 0: never confused with it
    blocker = socket.socket()  # the host port chosen for v1 is taken before it boots: QEMU cannot forward it
    blocker.bind(("127.0.0.1", v1.ports[8090]))
    blocker.listen()
    try:
        await driver.ensure_running(v1)
        await driver.ensure_running(v1)
        await driver.ensure_running(other)
        moved = (await driver.observe("idem"))[0].ports
        assert set(moved) == {8090} and moved[8090] != v1.ports[8090]  # booted on another port, reported
        assert set(vm_processes("idem/")) == {"overhaul:idem/0/1.0.0"}
        assert set(vm_processes("idem_0/")) == {"overhaul:idem_0/0/1.0.0"}
        state = (await driver.observe("idem"))[0]
        assert state.version == "1.0.0" and state.running and state.previous is None
        assert state.ports == moved and set(await driver.observe("idem_0")) == {0}
        data = root / "idem" / "0" / "data" / f"{data_disk_name('idem', 0, 0)}.qcow2"
        assert data.exists()

        # The steps themselves, each repeated, are the driver contract's (test_driver_contract.py).
        await driver.reimage(v2)
        await driver.commit(v2)
        assert sorted(p.name for p in (root / "idem" / "0" / "disks").iterdir()) == ["2.0.0"]

        # A reimage interrupted after it named the new OS disk, before it made it: repeated, it finishes.
        v3 = spec("idem", artefacts["1.0.0"], "1.0.0", os_disk="1.0.0+again")
        (root / "idem" / "0" / "state.json").write_text(json.dumps({"current": v3.disk, "previous": "2.0.0"}))
        state = (await driver.observe("idem"))[0]
        assert state.current is None and state.previous is not None  # as the reconciler then sees it
        await driver.reimage(v3)
        assert (await driver.observe("idem"))[0].version == "1.0.0"
        assert set(vm_processes("idem/")) == {"overhaul:idem/0/1.0.0+again"}
        assert data.exists()  # no step touched the data disk
    finally:
        blocker.close()
        await driver.delete(v1, keep_data=False)
        await driver.delete(other, keep_data=False)
    assert vm_processes("idem/") == {} and vm_processes("idem_0/") == {}
    assert list(root.iterdir()) == []


async def test_max_surge_boots_the_new_os_disk_beside_the_old_one(artefacts: dict[str, Path], tmp_path: Path) -> None:
    driver = QemuDriver(QemuSettings(root=tmp_path / "vms"))
    v1 = replace(spec("surge", artefacts["1.0.0"], "1.0.0"), volumes=())
    v2 = replace(spec("surge", artefacts["2.0.0"], "2.0.0"), volumes=(), surge=True)
    try:
        await driver.ensure_running(v1)
        with pytest.raises(DriverError, match="no maxSurge with data disks"):
            await driver.reimage(replace(spec("surge", artefacts["2.0.0"], "2.0.0"), surge=True))
        await driver.reimage(v2)
        state = (await driver.observe("surge"))[0]
        assert state.running and state.previous is not None and state.previous.running  # both serve
        assert state.ports == v2.ports  # the new one, on host ports of its own
        assert set(vm_processes("surge/")) == {"overhaul:surge/0/1.0.0", "overhaul:surge/0/2.0.0"}
        await driver.commit(v2)
        assert set(vm_processes("surge/")) == {"overhaul:surge/0/2.0.0"}
        await driver.reimage(replace(v1, surge=True))
        await driver.rollback(replace(v1, surge=True))  # the surged disk goes; the old one never stopped
        assert set(vm_processes("surge/")) == {"overhaul:surge/0/2.0.0"}
    finally:
        await driver.delete(v1, keep_data=False)
    assert vm_processes("surge/") == {}


# --- the story through `overhaul serve` ------------------------------------------------------------------------------


def publish(served: Served, version: str, artefact: Path) -> None:
    source = {"containerImage": f"{os_image.REPO}:{version}", "diskImage": str(artefact)}
    body = {"properties": {"storageProfile": {"source": {"overhaul": source}}}}
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


wait_for = functools.partial(builders.wait_for, timeout=600, every=1)


def setup_output(served: Served) -> list[tuple[str, str]]:
    """(extension marker, data disk marker) of each VM, as its CustomScript said them to the agent inside it."""
    seen = []
    for vm in served.instances(VMSS):
        port = vm["properties"]["overhaul"]["hostPorts"]["8090"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            doc = json.load(resp)
        setup = next(e for e in doc["extensions"] if e["name"] == "setup")
        match = MARKER.search(setup["stdoutTail"])
        assert match, setup
        seen.append((match.group(1), match.group(2)))
    return seen


DATA_FILE = "/first"  # DATA_MARKER, relative to the data disk's mount path


def data_disk_file(instance: Path, path: str) -> str:
    """A file of the instance's data disk, read on the host while the VM runs (a raw copy, then debugfs)."""
    (disk,) = (instance / "data").glob("*.qcow2")
    raw = instance.parent.parent.parent / "data-disk-copy.raw"
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(disk), str(raw)], check=True, timeout=120)
        out = subprocess.run(
            ["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True, check=True, timeout=60
        )
    finally:
        raw.unlink(missing_ok=True)
    return out.stdout.strip()


def journal(served: Served) -> list[tuple[int, str, str]]:
    with sqlite3.connect(served.state_dir / "overhaul.db") as db:
        return [tuple(r) for r in db.execute("SELECT instance_id, action, phase FROM journal ORDER BY seq")]


@pytest.fixture
def state_dir(artefacts: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    assert vm_processes("vmos/") == {}, "a VM outlived its scale set"


SERVE = ("--engine", "podman", "--auto-upgrade-first-delay", "0", "--auto-upgrade-delay", "0")


def test_two_vms_upgraded_health_gated_and_resumed_after_sigkill(artefacts: dict[str, Path], state_dir: Path) -> None:
    with overhaul_serve(state_dir, *SERVE) as served:
        identifier = {"publisher": "contoso", "offer": "os", "sku": "bookworm"}
        assert served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
        publish(served, "1.0.0", artefacts["1.0.0"])
        status, doc, _ = served.call("PUT", f"{VMSS}?{API}", vm_fleet_model(2, memory_mb=384))
        assert status == 201, doc
        assert doc["properties"]["virtualMachineProfile"]["overhaul"]["vm"]["memoryMB"] == 384
        wait_for(lambda: served.versions_and_health(VMSS) == [("1.0.0", "Healthy")] * 2)
        first = setup_output(served)
        assert {data for _, data in first} == {"1.0.0"}
        running = vm_processes("vmos/")
        assert len(running) == 2

        publish(served, "2.0.0", artefacts["2.0.0"])  # automatic: no other call
        wait_for(lambda: (0, "reimage", "begin") in journal(served) or (1, "reimage", "begin") in journal(served))
        served.process.kill()  # mid-batch
        served.process.wait()
    # The VMs outlived it: the one not in the batch runs on, untouched.
    after_kill = vm_processes("vmos/")
    untouched = {name: pid for name, pid in running.items() if after_kill.get(name) == pid}
    assert len(untouched) >= 1, (running, after_kill)

    with overhaul_serve(state_dir, *SERVE) as served:
        wait_for(lambda: served.latest_code(VMSS) == "Completed")
        assert served.versions_and_health(VMSS) == [("2.0.0", "Healthy")] * 2
        assert len(vm_processes("vmos/")) == 2  # one VM per instance: nothing booted twice
        second = setup_output(served)
        for (marker_before, _), (marker, data) in zip(first, second, strict=True):
            assert marker != marker_before, "the extension did not run again on the new OS disk"
            assert data == "1.0.0", "the data disk was not kept"
        steps = journal(served)
        for i in range(2):
            assert (i, "commit", "end") in steps
        running = vm_processes("vmos/")
    assert vm_processes("vmos/") == running  # a graceful stop of `serve` leaves its VMs alone

    with overhaul_serve(state_dir, *SERVE) as served:
        # Seen again from the instance directories; their agents answer the new watch at once.
        wait_for(lambda: served.versions_and_health(VMSS) == [("2.0.0", "Healthy")] * 2, timeout=60)
        for i in range(2):  # what is on each data disk now, read from the host
            assert data_disk_file(state_dir / "vms" / "vmos" / str(i), DATA_FILE) == "1.0.0"

        # Azure's long-running DELETE: it ends (Succeeded) only once every VM's process has ended.
        status, operation = served.delete(f"{VMSS}?{API}", timeout=120)
        assert status == 202 and operation["status"] == "Succeeded", operation
        assert vm_processes("vmos/") == {}
        assert served.call("GET", f"{VMSS}?{API}")[0] == 404
    assert not (state_dir / "vms" / "vmos").exists(), list((state_dir / "vms").rglob("*"))
