"""`overhaul serve` on real Podman, tried the way a fleet tries it: many clients at once, a missing image, the
private Podman service killed mid-attempt, and `overhaul serve` itself killed."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from demo import busybox_images as engine_images
from tests import builders
from tests.engines import containers as engine_containers
from tests.serve import API, Served, overhaul_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine]
REPO = "localhost/overhaul-faults"
RG = "/subscriptions/local/resourceGroups/faults"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/g/images/tiny"


def vmss(name: str) -> str:
    return f"{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"


def model(capacity: int, health_timeout: str = "PT30S") -> dict[str, Any]:
    return {
        "sku": {"capacity": capacity},
        "properties": {
            "upgradePolicy": {
                "mode": "Rolling",
                "rollingUpgradePolicy": {
                    "maxBatchInstancePercent": 50,
                    "overhaul": {"instanceHealthTimeout": health_timeout},
                },
            },
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "overhaul", "offer": "faults", "sku": "tiny", "version": "latest"},
                    "dataDisks": [{"lun": 0}],
                },
                "networkProfile": {"healthProbe": {"protocol": "Http", "port": 8080, "requestPath": "/health"}},
                "overhaul": {"stopTimeoutInSeconds": 2},
            },
        },
    }


@pytest.fixture(scope="module")
def images() -> None:
    for version in ("1.0.0", "2.0.0"):
        engine_images.build("podman", f"{REPO}:{version}", version)
    engine_images.build("podman", f"{REPO}:bad", "bad", healthy=False)


@pytest.fixture
def served(images: None, tmp_path: Path) -> Iterator[Served]:
    with overhaul_serve(
        tmp_path / "state",
        "--engine",
        "podman",
        "--probe-interval",
        "0.2",
        "--auto-upgrade-first-delay",
        "3600",
        "--engine-service-restart-min",
        "2",
    ) as running:
        identifier = {"publisher": "overhaul", "offer": "faults", "sku": "tiny"}
        assert running.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
        publish(running, "1.0.0")
        try:
            yield running
        finally:
            for name in ("conc", "puts", "missing", "outage", "why", "bodies", "sick"):
                running.delete(f"{vmss(name)}?{API}")


def publish(served: Served, version: str, image: str | None = None) -> None:
    source = {"overhaul": {"containerImage": image or f"{REPO}:{version}"}}
    body = {"properties": {"publishingProfile": {}, "storageProfile": {"source": source}}}
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


wait_for = functools.partial(builders.wait_for, timeout=90, every=0.2)


def latest(served: Served, name: str) -> dict[str, Any]:
    status, doc, _ = served.call("GET", f"{vmss(name)}/rollingUpgrades/latest?{API}")
    assert status == 200, doc
    return dict(doc["properties"])


def containers(prefix: str) -> dict[str, str]:
    """Every container of the scale set, previous OS disks included: name -> running or its state."""
    return {c["name"]: c["state"] for c in engine_containers("podman", f"{prefix}_")}


def parallel(count: int, call: Any) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return [status for status, _, _ in pool.map(lambda _: call(), range(count))]


def test_one_attempt_for_100_concurrent_starts_and_no_5xx_for_100_creates(served: Served) -> None:
    statuses = parallel(100, lambda: served.call("PUT", f"{vmss('conc')}?{API}", model(4)))
    assert sorted(set(statuses)) == [200, 201] and statuses.count(201) == 1, statuses
    wait_for(lambda: len(containers("conc")) == 4)
    publish(served, "2.0.0")
    statuses = parallel(100, lambda: served.call("POST", f"{vmss('conc')}/osRollingUpgrade?{API}"))
    assert statuses.count(202) == 1 and statuses.count(409) == 99, statuses
    status, doc, _ = served.call("PUT", f"{vmss('conc')}?{API}", model(5))
    assert status == 409 and doc["error"]["code"] == "RollingUpgradeInProgress"
    wait_for(lambda: latest(served, "conc")["runningStatus"]["code"] == "Completed")
    history = served.call("GET", f"{vmss('conc')}/osUpgradeHistory?{API}")[1]["value"]
    assert len(history) == 1 and history[0]["properties"]["progress"]["successfulInstanceCount"] == 4
    assert containers("conc") == {f"conc_{i}": "running" for i in range(4)}


def test_a_missing_image_is_refused_before_the_instance_is_touched(served: Served) -> None:
    assert served.call("PUT", f"{vmss('missing')}?{API}", model(2))[0] == 201
    source = {"overhaul": {"containerImage": "localhost/overhaul-faults:no-such-tag"}}
    body = {"properties": {"publishingProfile": {}, "storageProfile": {"source": source}}}
    status, doc, _ = served.call("PUT", f"{GALLERY}/versions/2.0.0?{API}", body)
    assert status == 400 and doc["error"]["target"] == "properties.storageProfile.source.overhaul.containerImage"
    assert "no-such-tag" in doc["error"]["message"], doc
    # An image removed from the engine after it was published is found before an instance is touched.
    subprocess.run(["podman", "tag", f"{REPO}:1.0.0", f"{REPO}:doomed"], check=True, timeout=60)
    publish(served, "2.0.0", image=f"{REPO}:doomed")
    subprocess.run(["podman", "untag", f"{REPO}:doomed", f"{REPO}:doomed"], check=True, timeout=60)
    status, doc, _ = served.call("POST", f"{vmss('missing')}/reimage?{API}", {"instanceIds": ["0"]})
    assert status == 400 and "doomed" in doc["error"]["message"], doc
    status, doc, _ = served.call("PUT", f"{vmss('missing')}?{API}", model(3))
    assert status == 400 and "doomed" in doc["error"]["message"], doc
    assert containers("missing") == {"missing_0": "running", "missing_1": "running"}
    served.call("DELETE", f"{GALLERY}/versions/2.0.0?{API}")


def podman_service_pid(served: Served) -> int:
    sock = str(served.state_dir / "podman" / "podman.sock")
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if sock in " ".join(proc.info["cmdline"] or []):
            return int(proc.info["pid"])
    raise AssertionError("no private podman service found")


def kill_podman_service_at_reimages(served: Served, which: set[int], delay: float) -> list[int]:
    """SIGKILLs the private Podman service ``delay`` seconds after the nth (in ``which``, from 1) reimage of the
    attempt starts, as its log says; returns the killed pids."""
    killed: list[int] = []
    seen = 0
    deadline = time.monotonic() + 120
    while len(killed) < len(which) and time.monotonic() < deadline:
        started = served.log.read_text(errors="replace").count("reimage onto 2.0.0 started")
        while seen < started:
            seen += 1
            if seen in which:
                time.sleep(delay)
                pid = podman_service_pid(served)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                wait_for(lambda: served.call("GET", "/healthz", token="")[0] == 200, timeout=60)
        time.sleep(0.02)
    return killed


def test_an_engine_killed_mid_reimage_and_a_taken_port_blame_no_version(served: Served) -> None:
    """What an engine restart once left (a name held in its storage, a stop cut short, a host port taken) made the
    attempt Fault, quarantine a good version and leave an instance stopped. Now each is the infrastructure's:
    the attempt completes, nothing is quarantined, every instance runs the new version."""
    body = model(4)
    body["properties"]["upgradePolicy"]["rollingUpgradePolicy"]["maxUnhealthyInstancePercent"] = 50
    assert served.call("PUT", f"{vmss('outage')}?{API}", body)[0] == 201
    wait_for(lambda: containers("outage") == {f"outage_{i}": "running" for i in range(4)})
    # Instance 3 is stopped, and another program takes its host port meanwhile.
    taken = int(engine_port("outage_3", 8080))
    subprocess.run(["podman", "stop", "-t", "0", "outage_3"], check=True, capture_output=True, timeout=60)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: the probes' TIME_WAITs stay
    wait_for(lambda: bound(squatter, taken), timeout=30)  # once the engine has let go of it
    squatter.listen()
    try:
        publish(served, "2.0.0")
        first = podman_service_pid(served)
        assert served.call("POST", f"{vmss('outage')}/osRollingUpgrade?{API}")[0] == 202
        killed = kill_podman_service_at_reimages(served, {1, 3}, delay=0.1)
        assert killed and killed[0] == first
        wait_for(lambda: latest(served, "outage")["runningStatus"]["code"] != "RollingForward", timeout=240)
    finally:
        squatter.close()
    done = latest(served, "outage")
    assert done["runningStatus"]["code"] == "Completed", done
    assert done["progress"]["failedInstanceCount"] == 0, done  # the outage is not the instances' fault
    status, version, _ = served.call("GET", f"{GALLERY}/versions/2.0.0?{API}")
    assert status == 200 and not version["properties"]["overhaul"]["quarantined"], version
    assert containers("outage") == {f"outage_{i}": "running" for i in range(4)}
    assert served.versions_and_health(vmss("outage")) == [("2.0.0", "Healthy")] * 4
    assert int(engine_port("outage_3", 8080)) != taken  # published on another port, and watched there
    leftovers = subprocess.run(
        ["podman", "ps", "-a", "--external", "--filter", "name=outage_", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    assert sorted(line for line in leftovers if line) == [f"outage_{i}" for i in range(4)]  # none in storage only


def bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def engine_port(container: str, port: int) -> str:
    out = subprocess.run(
        ["podman", "port", container, str(port)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return out.strip().rsplit(":", 1)[-1]


def test_a_killed_serve_takes_its_podman_service_along(images: None, tmp_path: Path) -> None:
    temp_before = set(Path("/tmp").glob("overhaul-podman-*"))
    with overhaul_serve(tmp_path / "state", "--engine", "podman") as running:
        pid = podman_service_pid(running)
        running.process.kill()
        running.process.wait(10)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=15)
    with overhaul_serve(tmp_path / "state", "--engine", "podman") as again:
        pid = podman_service_pid(again)
    wait_for(lambda: not psutil.pid_exists(pid), timeout=15)  # a clean stop stops it too
    assert set(Path("/tmp").glob("overhaul-podman-*")) == temp_before
    assert not (tmp_path / "state" / "podman" / "podman.sock").exists()


def test_wait_shows_each_instance_in_flight_with_its_health_reason_and_time_left(served: Served) -> None:
    assert served.call("PUT", f"{vmss('why')}?{API}", model(2, health_timeout="PT8S"))[0] == 201
    wait_for(lambda: len(containers("why")) == 2)
    publish(served, "2.0.0", image=f"{REPO}:bad")  # its /health is missing: the probe says HTTP 404
    started = served.cli("vmss", "rolling-upgrade", "start", "--ids", vmss("why"), check=False)
    assert started.returncode == 1  # it did not complete
    # Within the probe's grace period a failing probe is Initializing, with the probe's answer as the reason.
    assert "why_0: WaitingForHealth, Initializing (HTTP 404; grace period: " in started.stderr, started.stderr
    assert "s left" in started.stderr
    # The end says what to do next (this start was manual: no rollback).
    assert (
        "Next: restore instance(s) 0 with `overhaul vmss reimage --resource-group faults --name why" in started.stderr
    )
    # The CLI returned once the attempt was done (its last commit finished): the scale set takes changes at once.
    status, doc, _ = served.call("PATCH", f"{vmss('why')}?{API}", {"tags": {"after": "faulted"}})
    assert status == 200, doc
    served.call("DELETE", f"{GALLERY}/versions/2.0.0?{API}")


SICK = RG + "/providers/Microsoft.Compute/galleries/g/images/sick"


def publish_sick(served: Served, version: str, image: str) -> None:
    source = {"overhaul": {"containerImage": image}}
    body = {"properties": {"publishingProfile": {}, "storageProfile": {"source": source}}}
    status, doc, _ = served.call("PUT", f"{SICK}/versions/{version}?{API}", body)
    assert status in (200, 201), doc


def test_fix_forward_heals_an_all_unhealthy_fleet_and_still_stops_a_bad_version(served: Served) -> None:
    identifier = {"publisher": "overhaul", "offer": "faults", "sku": "sick"}
    assert served.call("PUT", f"{SICK}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
    publish_sick(served, "1.0.0", f"{REPO}:bad")  # its /health answers 404: every instance Unhealthy
    body = model(4, health_timeout="PT20S")
    body["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["sku"] = "sick"
    assert served.call("PUT", f"{vmss('sick')}?{API}", body)[0] == 201
    wait_for(lambda: containers("sick") == {f"sick_{i}": "running" for i in range(4)})
    wait_for(lambda: served.versions_and_health(vmss("sick")) == [("1.0.0", "Unhealthy")] * 4, timeout=120)
    publish_sick(served, "2.0.0", f"{REPO}:2.0.0")
    # Azure's pre-check refuses a fleet this sick; fix-forward is the way out.
    refused = served.cli("vmss", "rolling-upgrade", "start", "--ids", vmss("sick"), check=False)
    assert refused.returncode == 1 and "MaxUnhealthyInstancePercentExceeded" in refused.stderr, refused.stderr
    served.cli("vmss", "rolling-upgrade", "start", "--ids", vmss("sick"), "--fix-forward")
    assert served.versions_and_health(vmss("sick")) == [("2.0.0", "Healthy")] * 4
    # An equally bad version is stopped by its first batch, fix-forward or not.
    publish_sick(served, "3.0.0", f"{REPO}:bad")
    bad = served.cli("vmss", "rolling-upgrade", "start", "--ids", vmss("sick"), "--fix-forward", check=False)
    assert bad.returncode == 1
    done = latest(served, "sick")
    assert done["runningStatus"]["code"] == "Faulted" and done["overhaul"]["batchesStarted"] == 1, done
    assert done["error"]["code"] == "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
    assert [v for v, _ in served.versions_and_health(vmss("sick"))].count("2.0.0") == 2  # batch 2 never started


def container_ids(prefix: str) -> list[str]:
    out = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"name={prefix}_", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return sorted(out.split())


def test_a_reimage_body_that_is_not_an_object_touches_no_container(served: Served) -> None:
    """`[1]`, `"0"` or `7` once reimaged every instance at once, not health-gated."""
    assert served.call("PUT", f"{vmss('bodies')}?{API}", model(2))[0] == 201
    wait_for(lambda: containers("bodies") == {"bodies_0": "running", "bodies_1": "running"})
    before = container_ids("bodies")
    for body in (b"[1]", b'"0"', b"7", b"null"):
        status, doc, _ = served.call("POST", f"{vmss('bodies')}/reimage?{API}", raw=body)
        assert status == 400 and "JSON object" in doc["error"]["message"], (body, doc)
    # A reimage runs within its request (the API answers when it is done): a 400 has started nothing.
    assert container_ids("bodies") == before


def podman_services_of(state: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "system" in p.info["cmdline"] and str(state) in " ".join(p.info["cmdline"])
    ]


def test_a_state_directory_removed_under_serve_on_podman(images: None, tmp_path: Path) -> None:
    """Writes are refused and /healthz says so; a second serve on the path still refuses, so no second Podman
    service starts beside the first (which once left containers nobody managed)."""
    state = tmp_path / "state"
    with overhaul_serve(state, "--engine", "podman", "--probe-interval", "0.2") as running:
        identifier = {"publisher": "overhaul", "offer": "faults", "sku": "tiny"}
        assert running.call("PUT", f"{GALLERY}?{API}", {"properties": {"identifier": identifier}})[0] in (200, 201)
        publish(running, "1.0.0")
        assert running.call("PUT", f"{vmss('gone')}?{API}", model(1))[0] == 201
        token = running.token
        try:
            subprocess.run(["rm", "-rf", str(state)], check=True, timeout=60)
            status, doc, headers = running.call("PUT", f"{vmss('gone')}?{API}", model(2), token=token)
            assert status == 503 and doc["error"]["code"] == "StorageUnavailable" and "Retry-After" in headers
            assert running.call("GET", "/healthz", token="")[0] == 503
            second = subprocess.run(
                [sys.executable, "-m", "overhaul.cli", "serve", "--engine", "podman", "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert second.returncode == 1 and "in use" in second.stderr, second.stderr
            assert len(podman_services_of(state)) == 1
            assert containers("gone") == {"gone_0": "running"}  # untouched by the refused write
        finally:
            subprocess.run(["podman", "rm", "-f", "-t", "0", "gone_0"], capture_output=True, timeout=60, check=False)
            subprocess.run(["podman", "volume", "rm", "gone_0_lun0"], capture_output=True, timeout=60, check=False)
