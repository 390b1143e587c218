"""The main job, for real: a scale set of local system containers moved onto new OS image versions in
health-gated batches.

Builds (or reuses) three OS images — a minimal Debian with systemd, the overhaul agent and a sample application;
in 3.0.0 the application never becomes healthy — starts `overhaul serve` on a private Podman service, and then
drives it only with `overhaul` commands, as a user would with `az`: a gallery and a scale set of 10 instances that
boot like VMs, each with a data disk, the Application Health extension and a CustomScript extension, and
automatic OS upgrades on. Publishing 2.0.0 rolls it out by itself, batch by batch, each batch gated on the agents'
Healthy; publishing 3.0.0 fails its first batch, which is rolled back, and the attempt is Faulted with the fleet
still on 2.0.0. Everything is removed at the end.

With --vm (`make demo-vm`) the same story runs on 3 QEMU VMs, one per batch, made from the same images' VM
artefacts; what the CustomScript extension wrote on each OS disk and on the data disk is shown as the agent inside
each VM reports it, before and after each upgrade.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo import os_image  # noqa: E402
from demo.fleet_model import os_fleet_model, vm_fleet_model  # noqa: E402
from overhaul.localhost import free_port  # noqa: E402

GROUP, GALLERY, IMAGE, NAME = "demo", "gallery", "os", "web"
START = time.monotonic()


def say(text: str) -> None:
    print(f"\n[{time.monotonic() - START:5.1f}s] {text}", flush=True)


class Demo:
    def __init__(self, state_dir: Path, port: int, *, vms: bool = False) -> None:
        self.vms = vms
        self.name = "vms" if vms else NAME
        self.state_dir = state_dir
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "OVERHAUL_ENDPOINT": self.endpoint, "OVERHAUL_STATE_DIR": str(state_dir)}

    def overhaul(self, *args: str, check: bool = True) -> str:
        print(f"$ overhaul {shlex.join(args)}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "overhaul.cli", *args],
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            timeout=600,
            check=False,
        )
        print(result.stdout, end="", flush=True)
        if check and result.returncode != 0:
            raise SystemExit(f"overhaul {args[0]} failed with exit code {result.returncode}")
        return result.stdout

    def latest_id(self) -> str | None:
        token = (self.state_dir / "token").read_text().strip()
        path = (
            f"/subscriptions/local/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{self.name}"
            "/rollingUpgrades/latest?api-version=2024-07-01"
        )
        request = urllib.request.Request(self.endpoint + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                doc: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError:
            return None
        return str(doc["properties"]["overhaul"]["attemptId"])

    def publish(self, version: str) -> None:
        """What os_image.py's publish does: a gallery image version naming the built image."""
        self.overhaul(
            "sig",
            "image-version",
            "create",
            "-g",
            GROUP,
            "-r",
            GALLERY,
            "-i",
            IMAGE,
            "-e",
            version,
            "--container-image",
            f"{os_image.REPO}:{version}",
            *(["--disk-image", str(os_image.vm_dir(version))] if self.vms else []),
            "-o",
            "table",
        )

    def call(self, path: str) -> Any:
        token = (self.state_dir / "token").read_text().strip()
        request = urllib.request.Request(self.endpoint + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def wait_all_healthy(self) -> None:
        path = (
            f"/subscriptions/local/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{self.name}"
            "/virtualMachines?api-version=2024-07-01"
        )
        say("waiting for the instances to boot (systemd, the agent, the extensions, the application)")
        deadline = time.monotonic() + (420 if self.vms else 180)
        while True:
            health = [
                vm["properties"]["instanceView"]["vmHealth"]["status"]["displayStatus"]
                for vm in self.call(path)["value"]
            ]
            if all(h == "Healthy" for h in health):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the instances did not become healthy: {health}")
            time.sleep(1)

    def show_setup(self) -> None:
        """What the CustomScript extension said on each instance (a new marker per OS disk, the data disk's first
        version), as the agent inside serves it."""
        path = (
            f"/subscriptions/local/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{self.name}"
            "/virtualMachines?api-version=2024-07-01"
        )
        for vm in self.call(path)["value"]:
            port = vm["properties"]["overhaul"]["hostPorts"]["8090"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
                extensions = json.load(resp)["extensions"]
            said = next((e["stdoutTail"].strip() for e in extensions if e["name"] == "setup"), "?")
            print(f"  {vm['name']}: {said}", flush=True)

    def follow_automatic_upgrade(self, before: str | None) -> None:
        deadline = time.monotonic() + 60
        while self.latest_id() == before:
            if time.monotonic() > deadline:
                raise SystemExit("the platform did not start an automatic upgrade")
            time.sleep(0.2)
        self.overhaul(
            "vmss", "rolling-upgrade", "get-latest", "-n", self.name, "-g", GROUP, "--wait", "-o", "table", check=False
        )


def wait_until_serving(demo: Demo, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(demo.endpoint + "/healthz", timeout=2):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"overhaul serve did not start; see {log}") from None
            time.sleep(0.1)


def story(demo: Demo, work: Path) -> None:
    """The user's part: only `overhaul` commands."""
    name, vms = demo.name, demo.vms
    gallery = ["-g", GROUP, "-r", GALLERY, "-i", IMAGE]
    say("a resource group, a gallery image and its first version")
    demo.overhaul("group", "create", "-n", GROUP, "-l", "local", "-o", "table")
    demo.overhaul(
        "sig",
        "image-definition",
        "create",
        *gallery,
        "--publisher",
        "contoso",
        "--offer",
        "os",
        "--sku",
        "bookworm",
    )
    demo.publish("1.0.0")
    what = "3 QEMU VMs (TCG: 30-50 s to boot)" if vms else "10 system containers"
    say(
        f"a scale set of {what} on 'latest': data disk, Application Health and CustomScript extensions, "
        "automatic OS upgrades on"
    )
    model = vm_fleet_model(3) if vms else os_fleet_model(10, health_timeout="PT20S")
    (work / "model.json").write_text(json.dumps(model, indent=2))
    demo.overhaul("vmss", "create", "-n", name, "-g", GROUP, "--file", str(work / "model.json"), "-o", "table")
    demo.wait_all_healthy()
    demo.overhaul("vmss", "list-instances", "-n", name, "-g", GROUP, "-o", "table")
    if vms:
        say("what the CustomScript extension said on each VM: its OS disk's marker, and the data disk's version")
        demo.show_setup()
    per_batch = "1 VM" if vms else "2 instances (20 %)"
    say(
        f"publishing 2.0.0: the platform rolls it out by itself, {per_batch} per batch, each batch "
        "waiting for the agents' Healthy"
    )
    before = demo.latest_id()
    demo.publish("2.0.0")
    demo.follow_automatic_upgrade(before)
    if vms:
        say("the extension ran again on each new OS disk (new markers); the data disks kept 1.0.0's file")
        demo.show_setup()
    say("publishing 3.0.0, whose application never becomes healthy")
    before = demo.latest_id()
    demo.publish("3.0.0")
    demo.follow_automatic_upgrade(before)
    say("the first batch was rolled back to 2.0.0 (its previous OS disk, booting again)")
    demo.wait_all_healthy()
    demo.overhaul("vmss", "list-instances", "-n", name, "-g", GROUP, "-o", "table")
    say("the OS upgrade history, as `az vmss get-os-upgrade-history` shows it")
    demo.overhaul("vmss", "get-os-upgrade-history", "-n", name, "-g", GROUP, "-o", "table")
    what = "VMs" if vms else "containers"
    say(f"cleaning up: deleting the scale set ({what} and data disks) and stopping the service")
    demo.overhaul("vmss", "delete", "-n", name, "-g", GROUP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vm", action="store_true", help="3 QEMU VMs instead of 10 system containers")
    vms = parser.parse_args().vm
    work = Path(tempfile.mkdtemp(prefix="overhaul-demo-"))
    say("OS images (built once, then cached): 1.0.0 and 2.0.0 good, 3.0.0 whose application never gets healthy")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        if vms:
            os_image.build_vm(version, bad=version == "3.0.0")
        else:
            os_image.build(version, bad=version == "3.0.0")
    port = free_port()
    demo = Demo(work / "state", port, vms=vms)
    say(f"starting `overhaul serve` on 127.0.0.1:{port} (state in {demo.state_dir}, a private podman service)")
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "overhaul.cli",
            "serve",
            "--state-dir",
            str(demo.state_dir),
            "--port",
            str(port),
            "--auto-upgrade-first-delay",
            "2",
            "--auto-upgrade-delay",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=demo.env,
    )
    try:
        wait_until_serving(demo, server, work / "serve.log")
        try:
            story(demo, work)
        except BaseException:
            # Instances outlive serve (as they outlive its restarts): a demo that stops early removes its own.
            say("the demo stopped early: deleting its scale set before stopping the service")
            demo.overhaul("vmss", "delete", "-n", demo.name, "-g", GROUP, check=False)
            raise
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    say(f"done; the service's log is {work / 'serve.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
