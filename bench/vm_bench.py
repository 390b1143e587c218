"""VM instances on QEMU: a reimage against the floor of bare power-off and boot, QEMU's memory, a 3-VM rollout.

- floor, as for containers (bare stop + start + first answer): a bare boot — the overlay and config drive made and
  QEMU launched, from there to the agent's first HTTP answer inside the VM — plus a bare graceful power-off of a
  booted VM (QMP system_powerdown until QEMU exits).
- reimage: the driver's reimage of a booted VM onto the other version (graceful power-off, new overlay, boot), from
  the call to the new OS disk's agent's first answer.
  Each VM has booted (Healthy, then 10 s) before it is powered off; 5 rounds, each measuring both; the medians are
  compared (a TCG boot varies by seconds). Target: reimage <= 1.15 x the floor.
- RSS: QEMU's resident memory per VM once its agent answers (TCG's translation cache capped at 64 MiB).
- makespan: `overhaul serve` moving 3 VMs from 1.0.0 to 2.0.0 at one per batch, health-gated on the agent, from
  publishing 2.0.0 to Completed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import os_image  # noqa: E402
from demo.fleet_model import health_extension, vm_fleet_model  # noqa: E402
from overhaul.adapters.drivers.qemu import QemuDriver, QemuSettings  # noqa: E402
from overhaul.adapters.drivers.qmp import power_off  # noqa: E402
from overhaul.core.model import Accel, VmOptions  # noqa: E402
from overhaul.core.naming import data_disk_name  # noqa: E402
from overhaul.localhost import free_port  # noqa: E402
from overhaul.ports.driver import InstanceSpec  # noqa: E402
from tests.serve import API, overhaul_serve  # noqa: E402

ROUNDS = 5
SETTLE = 10.0  # seconds a booted VM runs before its reimage
# The agent's probe of the sample application (Application Health extension settings, at their defaults).
HEALTH = {"protocol": "http", "port": 8080, "requestPath": "/health"}
TARGET = 1.15
RG = "/subscriptions/local/resourceGroups/bench"
VMSS = RG + "/providers/Microsoft.Compute/virtualMachineScaleSets/vmbench"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/os"


async def healthy(port: int, timeout: float = 300) -> None:
    """Until the agent on ``port`` says Healthy (the guest has finished booting its units)."""
    deadline = time.monotonic() + timeout

    def ask() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                return bool(json.load(resp).get("applicationHealthState") == "Healthy")
        except (OSError, ValueError):
            return False

    while not await asyncio.to_thread(ask):
        if time.monotonic() > deadline:
            raise SystemExit(f"the agent on {port} did not say Healthy within {timeout}s")
        await asyncio.sleep(0.5)


async def first_answer(port: int, timeout: float = 300) -> None:
    """Until the agent on ``port`` answers /health at all (any status)."""
    deadline = time.monotonic() + timeout

    def ask() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # 503: it answers, not Healthy yet
        except OSError:
            return False

    while not await asyncio.to_thread(ask):
        if time.monotonic() > deadline:
            raise SystemExit(f"no agent answered on {port} within {timeout}s")
        await asyncio.sleep(0.2)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spec(name: str, image: Path, version: str, port: int) -> InstanceSpec:
    return InstanceSpec(
        scale_set=name,
        instance_id=0,
        image=str(image),
        version=version,
        ports={8090: port},
        volumes=((data_disk_name(name, 0, 0), "/datadisks/lun0"),),
        metadata={"instanceId": "0", "scaleSet": name, "extensionProfile": {"extensions": [health_extension(HEALTH)]}},
        stop_timeout=30,
        vm=VmOptions(),
    )


async def driver_rounds(artefacts: dict[str, Path], work: Path) -> tuple[list[float], list[float], list[float]]:
    driver = QemuDriver(QemuSettings(root=work / "vms"))
    floors: list[float] = []
    reimages: list[float] = []
    rss: list[float] = []
    # Whether KVM works is found once per driver (a probe boot of up to 5 s): not part of any measured boot.
    print(f"accelerator: {await driver.accel(Accel.AUTO.value, artefacts['1.0.0'] / 'vmlinuz')}", flush=True)

    async def settled(port: int) -> None:
        # A running instance has finished booting long before it is powered off (a guest still starting units
        # drops the power button, and that is not what is measured here).
        await healthy(port)
        await asyncio.sleep(SETTLE)

    for r in range(ROUNDS):
        name = f"bench{r}"
        v1 = spec(name, artefacts["1.0.0"], "1.0.0", free_port())
        v2 = spec(name, artefacts["2.0.0"], "2.0.0", free_port())
        try:
            started = time.monotonic()
            await driver.ensure_running(v1)  # a bare boot: an overlay, a config drive, QEMU
            await first_answer(v1.ports[8090])
            boot = time.monotonic() - started
            pid = driver.pid(name, 0)
            rss.append(rss_mib(pid) if pid else 0.0)
            await settled(v1.ports[8090])
            started = time.monotonic()
            await driver.reimage(v2)
            step = time.monotonic() - started
            await first_answer(v2.ports[8090])
            reimages.append(time.monotonic() - started)
            await settled(v2.ports[8090])
            pid = driver.pid(name, 0)
            assert pid is not None
            started = time.monotonic()
            await power_off(work / "vms" / name / "0" / "disks" / v2.disk / "qmp.sock", pid, 30)
            stop = time.monotonic() - started
            floors.append(boot + stop)
            said = (
                f"floor {floors[-1]:.1f}s (boot {boot:.1f}s + power-off {stop:.1f}s), reimage {reimages[-1]:.1f}s "
                f"(power-off and new overlay {step:.1f}s), RSS {rss[-1]:.0f} MiB"
            )
            print(f"round {r + 1}: {said}", flush=True)
        finally:
            await driver.delete(v1, keep_data=False)
    return floors, reimages, rss


def makespan(artefacts: dict[str, Path], work: Path) -> float:
    with overhaul_serve(work / "state", "--engine", "podman", "--auto-upgrade-first-delay", "0") as served:

        def publish(version: str) -> None:
            source = {"containerImage": f"{os_image.REPO}:{version}", "diskImage": str(artefacts[version])}
            body = {"properties": {"storageProfile": {"source": {"overhaul": source}}}}
            assert served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)[0] in (200, 201)

        def wait(predicate: Any, timeout: float = 900) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out; see {served.log}")
                time.sleep(0.5)

        def code() -> str:
            status, doc, _ = served.call("GET", f"{VMSS}/rollingUpgrades/latest?{API}")
            return str(doc["properties"]["runningStatus"]["code"]) if status == 200 else ""

        def healthy() -> bool:
            doc = served.call("GET", f"{VMSS}/virtualMachines?{API}")[1]
            views = [v["properties"]["instanceView"]["vmHealth"]["status"]["displayStatus"] for v in doc["value"]]
            return views == ["Healthy"] * 3

        identifier = {"publisher": "contoso", "offer": "os", "sku": "bookworm"}
        served.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})
        publish("1.0.0")
        assert served.call("PUT", f"{VMSS}?{API}", vm_fleet_model(3))[0] == 201
        wait(healthy)
        started = time.monotonic()
        publish("2.0.0")
        wait(lambda: code() == "Completed")
        took = time.monotonic() - started
        served.call("DELETE", f"{VMSS}?{API}")
        wait(lambda: served.call("GET", f"{VMSS}?{API}")[0] == 404)
        return took


def main() -> int:
    artefacts = {v: os_image.build_vm(v, bad=False) for v in ("1.0.0", "2.0.0")}
    work = Path(tempfile.mkdtemp(prefix="overhaul-vm-bench-"))
    try:
        floors, reimages, rss = asyncio.run(driver_rounds(artefacts, work))
        span = makespan(artefacts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the VMs are gone by then: each round and the rollout delete theirs
    floor, reimage = statistics.median(floors), statistics.median(reimages)
    ratio = reimage / floor
    print(
        json.dumps(
            {
                "vm_floor_s": round(floor, 2),
                "vm_reimage_s": round(reimage, 2),
                "vm_reimage_over_floor": round(ratio, 3),
                "vm_qemu_rss_mib": round(statistics.median(rss), 1),
                "vm_rollout_3_makespan_s": round(span, 1),
            }
        )
    )
    verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
    print(
        f"VM reimage {reimage:.1f}s vs bare power-off + boot {floor:.1f}s: {ratio:.2f}x "
        f"(target <= {TARGET}x, {verdict}); "
        f"QEMU RSS {statistics.median(rss):.0f} MiB per VM; 3 VMs, one per batch: {span:.0f}s"
    )
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
