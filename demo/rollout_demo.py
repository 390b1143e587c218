"""The main job, for real: a scale set of local system containers moved onto new OS image versions in
health-gated batches.

Builds (or reuses) three OS images — a minimal Debian with systemd, the overhaul agent and a sample application;
in 3.0.0 the application never becomes healthy — starts `overhaul serve` on a private Podman service, and then
drives it only with `overhaul` commands, as a user would with `az`: a gallery and a scale set of 10 instances that
boot like VMs, each with a data disk, the Application Health extension and a CustomScript extension, and
automatic OS upgrades on. Publishing 2.0.0 rolls it out by itself, batch by batch, each batch gated on the agents'
Healthy; publishing 3.0.0 fails its first batch, which is rolled back, and the attempt is Faulted with the fleet
still on 2.0.0. Everything is removed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
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
from demo.fleet_model import os_fleet_model  # noqa: E402

GROUP, GALLERY, IMAGE, NAME = "demo", "gallery", "os", "web"
START = time.monotonic()


def say(text: str) -> None:
    print(f"\n[{time.monotonic() - START:5.1f}s] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, state_dir: Path, port: int) -> None:
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
            f"/subscriptions/local/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{NAME}"
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
            f"/subscriptions/local/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachineScaleSets/{NAME}"
            "/virtualMachines?api-version=2024-07-01"
        )
        say("waiting for the instances to boot (systemd, the agent, the extensions, the application)")
        deadline = time.monotonic() + 180
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

    def follow_automatic_upgrade(self, before: str | None) -> None:
        deadline = time.monotonic() + 60
        while self.latest_id() == before:
            if time.monotonic() > deadline:
                raise SystemExit("the platform did not start an automatic upgrade")
            time.sleep(0.2)
        self.overhaul(
            "vmss", "rolling-upgrade", "get-latest", "-n", NAME, "-g", GROUP, "--wait", "-o", "table", check=False
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


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="overhaul-demo-"))
    say("OS images (built once, then cached): 1.0.0 and 2.0.0 good, 3.0.0 whose application never gets healthy")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        os_image.build(version, bad=version == "3.0.0")
    port = free_port()
    demo = Demo(work / "state", port)
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
        gallery = ["-g", GROUP, "-r", GALLERY, "-i", IMAGE]
        say("a gallery image and its first version")
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
        say(
            "a scale set of 10 system containers on 'latest': data disk, Application Health and CustomScript "
            "extensions, automatic OS upgrades on"
        )
        (work / "web.json").write_text(json.dumps(os_fleet_model(10, health_timeout="PT20S"), indent=2))
        demo.overhaul("vmss", "create", "-n", NAME, "-g", GROUP, "--file", str(work / "web.json"), "-o", "table")
        demo.wait_all_healthy()
        demo.overhaul("vmss", "list-instances", "-n", NAME, "-g", GROUP, "-o", "table")
        say(
            "publishing 2.0.0: the platform rolls it out by itself, 2 instances (20 %) per batch, each batch "
            "waiting for the agents' Healthy"
        )
        before = demo.latest_id()
        demo.publish("2.0.0")
        demo.follow_automatic_upgrade(before)
        say("publishing 3.0.0, whose application never becomes healthy")
        before = demo.latest_id()
        demo.publish("3.0.0")
        demo.follow_automatic_upgrade(before)
        say("the first batch was rolled back to 2.0.0 (its previous OS disk, booting again)")
        demo.wait_all_healthy()
        demo.overhaul("vmss", "list-instances", "-n", NAME, "-g", GROUP, "-o", "table")
        say("the OS upgrade history, as `az vmss get-os-upgrade-history` shows it")
        demo.overhaul("vmss", "get-os-upgrade-history", "-n", NAME, "-g", GROUP, "-o", "table")
        say("cleaning up: deleting the scale set (containers and data disks) and stopping the service")
        demo.overhaul("vmss", "delete", "-n", NAME, "-g", GROUP)
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
