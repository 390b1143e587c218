"""The VM artefacts of an OS image version (the same root file system as its container image) boot under QEMU, the
agent inside answers on a forwarded port with what its config drive told it, and QMP powers the VM off gracefully.
Bare QEMU: the first steps towards VM instances; the driver comes on top of these artefacts and of QMP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo import os_image
from demo.fleet_model import health_extension
from overhaul.adapters.drivers.qmp import Qmp, power_off
from overhaul.localhost import free_port

# The first build of the image recipe (mmdebstrap) and a TCG boot take minutes, not the usual two.
pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(900)]
BOOT_TIMEOUT = 300  # TCG on 2 cores: 31-52 s measured, with room for a loaded machine


def config_drive(path: Path, metadata: dict[str, Any]) -> None:
    """A 1 MiB vfat disk labelled CFGDRIVE holding metadata.json, made without mounting anything."""
    source = path.with_suffix(".json")
    source.write_text(json.dumps(metadata))
    subprocess.run(
        ["mkfs.vfat", "-n", "CFGDRIVE", "-C", str(path), "1024"], check=True, capture_output=True, timeout=60
    )
    subprocess.run(["mcopy", "-i", str(path), str(source), "::metadata.json"], check=True, timeout=60)


@contextlib.contextmanager
def booted(artefacts: Path, work: Path, forwards: dict[int, int]) -> Iterator[int]:
    """Boots an overlay of the version's base, daemonized; yields QEMU's pid and stops it at the end."""
    overlay = work / "os.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(artefacts / "base.qcow2"), "-F", "qcow2", str(overlay)],
        check=True,
        timeout=60,
    )
    hostfwd = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in forwards.items())
    pidfile = work / "qemu.pid"
    subprocess.run(
        [
            "qemu-system-x86_64",
            "-machine", "pc", "-accel", "tcg,tb-size=64", "-m", "512", "-smp", "2",
            "-display", "none", "-monitor", "none", "-serial", f"file:{work / 'serial.log'}",
            "-kernel", str(artefacts / "vmlinuz"), "-initrd", str(artefacts / "initrd.img"),
            "-append", (artefacts / "cmdline").read_text().strip(),
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={work / 'cfg.img'},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0,{hostfwd}", "-device", "virtio-net-pci,netdev=n0",
            "-qmp", f"unix:{work / 'qmp.sock'},server=on,wait=off",
            "-daemonize", "-pidfile", str(pidfile),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    pid = int(pidfile.read_text())
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def test_a_version_boots_as_a_vm_and_its_agent_answers(tmp_path: Path) -> None:
    artefacts = os_image.build_vm("1.0.0", bad=False)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in artefacts.iterdir()} == dict.fromkeys(
        ["base.qcow2", "vmlinuz", "initrd.img", "cmdline", "recipe"], "0o444"
    )  # immutable: every overlay names the base by its path
    health = {"protocol": "http", "port": 8080, "requestPath": "/health", "intervalInSeconds": 5, "gracePeriod": 120}
    metadata = {
        "instanceId": "0",
        "scaleSet": "vmtest",
        "imageReference": {"publisher": "overhaul", "offer": "os", "sku": "vm", "exactVersion": "1.0.0"},
        "extensionProfile": {"extensions": [health_extension(health)]},
    }
    config_drive(tmp_path / "cfg.img", metadata)
    agent, app = free_port(), free_port()
    with booted(artefacts, tmp_path, {8090: agent, 8080: app}) as pid:
        deadline = time.monotonic() + BOOT_TIMEOUT
        doc: Any = None
        while doc is None or doc.get("applicationHealthState") != "Healthy":
            assert time.monotonic() < deadline, (doc, (tmp_path / "serial.log").read_text()[-3000:])
            with contextlib.suppress(OSError, ValueError):
                doc = get_json(agent, "/health")
            time.sleep(1)  # a booting VM has nothing to wait on but time
        # The agent read the config drive, and probes the sample application of this version.
        assert doc["instanceId"] == "0" and doc["imageReference"]["exactVersion"] == "1.0.0"
        with urllib.request.urlopen(f"http://127.0.0.1:{app}/", timeout=5) as resp:
            assert resp.read().decode().strip() == "hello from sample app 1.0.0"
        # QMP, as the VM driver speaks it: the VM runs, and a power-off is the guest's own shutdown.
        assert asyncio.run(query_status(tmp_path / "qmp.sock"))["status"] == "running"
        started = time.monotonic()
        assert asyncio.run(power_off(tmp_path / "qmp.sock", pid, stop_timeout=120))
        print(f"graceful power-off in {time.monotonic() - started:.1f}s")
        assert "reboot: Power down" in (tmp_path / "serial.log").read_text()


async def query_status(path: Path) -> Any:
    async with Qmp(path) as qmp:
        return await qmp.execute("query-status")


def test_a_guest_that_cannot_shut_down_in_time_is_ended(tmp_path: Path) -> None:
    """Early in its boot a guest drops the power button: after the stop timeout QEMU is told to quit."""
    artefacts = os_image.build_vm("1.0.0", bad=False)
    config_drive(tmp_path / "cfg.img", {"instanceId": "0"})
    with booted(artefacts, tmp_path, {8090: free_port()}) as pid:
        started = time.monotonic()
        assert not asyncio.run(power_off(tmp_path / "qmp.sock", pid, stop_timeout=2, retry_every=0.5))
        assert time.monotonic() - started < 30
        assert ended(pid)


def ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet (QEMU daemonizes, so it is not ours to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
