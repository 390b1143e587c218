"""The az-shaped CLI against a running `overhaul serve` (in-memory engine): az's commands with `overhaul` in place
of `az`, its output formats, exit codes and completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import API_MODEL, GALLERY, VMSS, hooked_model, publish, seeded_serve, wait_for
from tests.serve import API, Served
from tests.webhook import webhook_receiver


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with seeded_serve(tmp_path) as running:
        yield running


def in_the_fixtures_subscription(served: Served, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default subscription made the one the fixture's gallery is in (`az account set`'s role)."""
    monkeypatch.setenv("OVERHAUL_CONFIG_DIR", str(config_dir))
    served.cli("configure", "--defaults", "subscription=subscription_id")


def test_seed_cli_commands(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's az commands with `overhaul` in place of `az`."""
    in_the_fixtures_subscription(served, tmp_path / "config", monkeypatch)
    served.cli(
        "sig",
        "image-version",
        "create",
        "--resource-group",
        "myResourceGroup",
        "--gallery-name",
        "myGallery",
        "--gallery-image-definition",
        "myImage",
        "--gallery-image-version",
        "1.0.1",
        "--container-image",
        "localhost/jammy:1.0.1",
    )
    created = served.cli(
        "vmss",
        "create",
        "--name",
        "myScaleSet",
        "--resource-group",
        "myResourceGroup",
        "--image",
        "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest",
        "--instance-count",
        "3",
        "--upgrade-policy-mode",
        "Manual",
    )
    assert json.loads(created.stdout)["sku"]["capacity"] == 3
    updated = served.cli(
        "vmss",
        "update",
        "--name",
        "myScaleSet",
        "--resource-group",
        "myResourceGroup",
        "--set",
        "UpgradePolicy.AutomaticOSUpgradePolicy.EnableAutomaticOSUpgrade=true",
        "--set",
        "virtualMachineProfile.overhaul.healthFromPowerState=true",
    )
    assert (
        json.loads(updated.stdout)["properties"]["upgradePolicy"]["automaticOSUpgradePolicy"][
            "enableAutomaticOSUpgrade"
        ]
        is True
    )
    started = served.cli(
        "vmss",
        "rolling-upgrade",
        "start",
        "--resource-group",
        "myResourceGroup",
        "--name",
        "myScaleSet",
        "--wait",
    )
    assert "Completed" in started.stdout
    history = served.cli(
        "vmss", "get-os-upgrade-history", "--resource-group", "myResourceGroup", "--name", "myScaleSet"
    )
    assert json.loads(history.stdout)[0]["properties"]["runningStatus"]["code"] == "Completed"  # a bare array, as az
    images = served.cli(
        "vm",
        "image",
        "list",
        "--location",
        "local",
        "--publisher",
        "Canonical",
        "--offer",
        "0001-com-ubuntu-server-jammy",
        "--sku",
        "22_04-lts",
        "--all",
    )
    listed = json.loads(images.stdout)
    assert [v["name"] for v in listed] == ["1.0.0", "1.0.1"]
    assert listed[0]["urn"] == "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:1.0.0"
    assert {k: listed[0][k] for k in ("publisher", "offer", "sku", "version")} == {
        "publisher": "Canonical",
        "offer": "0001-com-ubuntu-server-jammy",
        "sku": "22_04-lts",
        "version": "1.0.0",
    }
    table = served.cli("vmss", "list-instances", "-n", "myScaleSet", "-g", "myResourceGroup", "-o", "table")
    assert table.stdout.count("Healthy") == 3
    excluded = served.cli(
        "sig",
        "image-version",
        "update",
        "-g",
        "myResourceGroup",
        "-r",
        "myGallery",
        "-i",
        "myImage",
        "-e",
        "1.0.1",
        "--exclude-from-latest",
        "true",
    )
    assert json.loads(excluded.stdout)["properties"]["publishingProfile"]["excludeFromLatest"] is True
    latest_only = served.cli(
        "vm", "image", "list", "-l", "local", "-p", "Canonical", "-f", "0001-com-ubuntu-server-jammy", "-s", "22_04-lts"
    )
    assert [v["name"] for v in json.loads(latest_only.stdout)] == ["1.0.0"]
    missing = served.cli("vmss", "show", "-n", "nope", "-g", "myResourceGroup", check=False)
    assert missing.returncode == 3 and "ResourceNotFound" in missing.stderr  # az: 3 for what does not exist


def test_cli_speaks_az(served: Served) -> None:
    """az's conventions: bare arrays, --query, -o tsv|yaml|none, --ids, start waits unless --no-wait."""
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    names = served.cli(
        "vmss", "list", "-g", "myResourceGroup", "--subscription", "subscription_id", "--query", "[].name", "-o", "tsv"
    )
    assert names.stdout.split() == ["myScaleSet"]
    capacity = served.cli("vmss", "show", "--ids", VMSS, "--query", "sku.capacity")
    assert json.loads(capacity.stdout) == 5
    yaml = served.cli("vmss", "show", "--ids", VMSS, "-o", "yaml")
    assert "name: myScaleSet" in yaml.stdout and "  capacity: 5" in yaml.stdout
    assert served.cli("vmss", "show", "--ids", VMSS, "-o", "none").stdout == ""
    instances = served.cli("vmss", "list-instances", "--ids", VMSS, "--query", "length(@)")
    assert json.loads(instances.stdout) == 5
    publish(served, "1.2.0")
    started = served.cli(
        "vmss", "rolling-upgrade", "start", "--ids", VMSS, "--no-wait", "--query", "properties.runningStatus.code"
    )
    assert json.loads(started.stdout) == "RollingForward"
    followed = served.cli("vmss", "rolling-upgrade", "get-latest", "--ids", VMSS, "--wait", "-o", "none")
    assert followed.returncode == 0
    wrong = served.cli("vmss", "show", "--ids", "/subscriptions/x/oops", check=False)
    assert wrong.returncode == 2 and "--ids" in wrong.stderr  # a usage error, as az
    bad_query = served.cli("vmss", "show", "--ids", VMSS, "--query", "[[", check=False)
    assert bad_query.returncode == 1 and "--query" in bad_query.stderr


def test_cli_help_and_unreachable_service(tmp_path: Path) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "serve" in helped.stdout and "vmss" in helped.stdout
    env = {**os.environ, "OVERHAUL_TOKEN": "x", "OVERHAUL_ENDPOINT": "http://127.0.0.1:9"}
    down = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "vmss", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1 and "is `overhaul serve` running?" in down.stderr


def test_cli_defaults_exit_codes_and_debug(served: Served, tmp_path: Path) -> None:
    """az's `configure --defaults`, exit code 3 for what does not exist, --debug showing each request."""
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return served.cli(*args, check=False, env={"OVERHAUL_CONFIG_DIR": str(tmp_path / "config")})

    configured = cli("configure", "--defaults", "group=myResourceGroup", "subscription=subscription_id")
    assert configured.returncode == 0 and json.loads(configured.stdout)["group"] == "myResourceGroup"
    shown = cli("vmss", "show", "-n", "myScaleSet", "--query", "name", "--debug")
    assert shown.returncode == 0 and json.loads(shown.stdout) == "myScaleSet"
    assert "GET " + served.url + "/subscriptions/subscription_id/resourceGroups/myResourceGroup/" in shown.stderr
    missing = cli("vmss", "show", "-n", "nope")
    assert missing.returncode == 3 and "ResourceNotFound" in missing.stderr
    assert cli("configure", "--defaults", "group=").returncode == 0  # an empty value clears it, as az
    unset = cli("vmss", "show", "-n", "myScaleSet")
    assert unset.returncode == 2 and "configure --defaults group" in unset.stderr


SUB = ("--subscription", "subscription_id")


def test_quarantine_is_shown_set_and_cleared_from_the_cli(served: Served) -> None:
    publish(served, "1.0.0")
    publish(served, "1.1.0")
    where = [
        "-g",
        "myResourceGroup",
        "-r",
        "myGallery",
        "-i",
        "myImage",
        "-e",
        "1.1.0",
        "--subscription",
        "subscription_id",
    ]
    shown = json.loads(served.cli("sig", "image-version", "show", *where).stdout)
    assert shown["properties"]["overhaul"] == {"quarantined": False}
    expanded = json.loads(served.cli("sig", "image-version", "show", *where, "--expand", "ReplicationStatus").stdout)
    assert expanded["properties"]["replicationStatus"] == {
        "aggregatedState": "Completed",
        "summary": [{"region": "local", "state": "Completed", "details": "", "progress": 100}],
    }
    served.cli("sig", "image-version", "update", *where, "--set", "overhaul.quarantined=true")
    shown = json.loads(served.cli("sig", "image-version", "show", *where).stdout)
    assert shown["properties"]["overhaul"] == {"quarantined": True, "quarantineReason": "quarantined by a person"}
    # 'latest' skips it: a new scale set lands on 1.0.0.
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    _, instances, _ = served.call("GET", f"{VMSS}/virtualMachines?{API}")
    assert {i["properties"]["storageProfile"]["imageReference"]["exactVersion"] for i in instances["value"]} == {
        "1.0.0"
    }
    # `why` says so, in a paragraph that names the command which unblocks it.
    why = served.cli("vmss", "rolling-upgrade", "why", "-g", "myResourceGroup", "-n", "myScaleSet", *SUB).stdout
    assert why.startswith("TargetQuarantined: version 1.1.0 is quarantined, so 'latest' skips it"), why
    assert "--gallery-image-version 1.1.0 --set overhaul.quarantined=false" in why
    served.cli("sig", "image-version", "update", *where, "--set", "overhaul.quarantined=false")
    why = served.cli("vmss", "rolling-upgrade", "why", "-g", "myResourceGroup", "-n", "myScaleSet", *SUB).stdout
    assert why.strip() == "Nothing holds the rollout back."
    shown = json.loads(served.cli("sig", "image-version", "show", *where).stdout)
    assert shown["properties"]["overhaul"] == {"quarantined": False}
    bad = served.cli("sig", "image-version", "update", *where, "--set", "overhaul.quarantined=maybe", check=False)
    assert bad.returncode != 0 and "properties.overhaul.quarantined" in bad.stderr


def test_cli_scale_instance_views_connection_info_and_verbose(served: Served) -> None:
    model = json.loads(json.dumps(API_MODEL))
    model["properties"]["virtualMachineProfile"]["overhaul"]["ports"] = [8080]
    assert served.call("PUT", f"{VMSS}?{API}", model)[0] == 201
    ids = ("--ids", VMSS)
    scaled = served.cli("vmss", "scale", *ids, "--new-capacity", "3", "--query", "sku.capacity")
    assert json.loads(scaled.stdout) == 3
    view = json.loads(served.cli("vmss", "get-instance-view", *ids).stdout)
    assert {"code": "PowerState/running", "count": 3} in view["virtualMachine"]["statusesSummary"]
    one = json.loads(served.cli("vmss", "get-instance-view", *ids, "--instance-id", "2").stdout)
    assert {s["code"] for s in one["statuses"]} == {"ProvisioningState/succeeded", "PowerState/running"}
    every = json.loads(served.cli("vmss", "get-instance-view", *ids, "--instance-id", "*").stdout)
    assert len(every) == 3
    missing = served.cli("vmss", "get-instance-view", *ids, "--instance-id", "7", check=False)
    assert missing.returncode == 3 and "instance 7 does not exist" in missing.stderr
    info = json.loads(served.cli("vmss", "list-instance-connection-info", *ids).stdout)
    assert sorted(info) == ["instance 0", "instance 1", "instance 2"]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", ports["8080"]) for ports in info.values()), info
    verbose = served.cli("vmss", "show", *ids, "--verbose", "-o", "none")
    assert re.search(r"overhaul: GET /subscriptions/\S+/myScaleSet -> 200 in \d+\.\d+s", verbose.stderr)


def test_cli_image_definition_list_show_delete(served: Served) -> None:
    where = ("-g", "myResourceGroup", "-r", "myGallery", "--subscription", "subscription_id")
    served.cli(
        "sig", "image-definition", "create", *where, "-i", "other", "--publisher", "p", "--offer", "o", "--sku", "s"
    )
    names = served.cli("sig", "image-definition", "list", *where, "--query", "[].name", "-o", "tsv").stdout.split()
    assert sorted(names) == ["myImage", "other"]
    shown = json.loads(served.cli("sig", "image-definition", "show", *where, "-i", "other").stdout)
    assert shown["properties"]["identifier"] == {"publisher": "p", "offer": "o", "sku": "s"}
    refused = served.cli("sig", "image-definition", "delete", *where, "-i", "myImage", check=False)
    assert (
        refused.returncode == 1 and "CannotDeleteResource" in refused.stderr and "delete them first" in refused.stderr
    )
    served.cli("sig", "image-definition", "delete", *where, "-i", "other")
    gone = served.cli("sig", "image-definition", "show", *where, "-i", "other", check=False)
    assert gone.returncode == 3
    assert served.call("DELETE", f"{GALLERY.rsplit('/', 1)[0]}/other?{API}")[0] == 204  # ARM: nothing to delete
    incomplete = served.cli("sig", "image-definition", "create", *where, "-i", "x", check=False)
    assert incomplete.returncode != 0 and "--publisher, --offer, --sku required" in incomplete.stderr


def test_cli_vmss_extension_set_list_show_delete(served: Served, tmp_path: Path) -> None:
    """The Application Health extension without a JSON file, as `az vmss extension set`."""
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    where = ("--vmss-name", "myScaleSet", "-g", "myResourceGroup", "--subscription", "subscription_id")
    health = '{"protocol": "http", "port": 8080, "requestPath": "/health"}'
    served.cli("vmss", "extension", "set", *where, "-n", "ApplicationHealthLinux", "--settings", health)
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"commandToExecute": "echo configured"}))
    served.cli(
        "vmss", "extension", "set", *where, "-n", "CustomScript", "--extension-instance-name", "setup",
        "--settings", f"@{script}", "--provision-after-extensions", "ApplicationHealthLinux",
    )  # fmt: skip
    names = served.cli("vmss", "extension", "list", *where, "--query", "[].name", "-o", "tsv").stdout.split()
    assert names == ["ApplicationHealthLinux", "setup"]
    shown = json.loads(served.cli("vmss", "extension", "show", *where, "-n", "setup").stdout)
    assert shown["properties"] == {
        "publisher": "Microsoft.Azure.Extensions",
        "type": "CustomScript",
        "typeHandlerVersion": "2.1",
        "settings": {"commandToExecute": "echo configured"},
        "provisionAfterExtensions": ["ApplicationHealthLinux"],
    }
    _, model, _ = served.call("GET", f"{VMSS}?{API}")
    extensions = model["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"]
    assert extensions[0]["properties"]["publisher"] == "Microsoft.ManagedServices"
    assert extensions[0]["properties"]["settings"]["port"] == 8080
    served.cli("vmss", "extension", "delete", *where, "-n", "setup")
    missing = served.cli("vmss", "extension", "show", *where, "-n", "setup", check=False)
    assert missing.returncode == 3 and "setup" in missing.stderr
    bad = served.cli("vmss", "extension", "set", *where, "-n", "CustomScript", "--settings", "{oops", check=False)
    assert bad.returncode == 2 and "--settings: not valid JSON" in bad.stderr
    unknown = served.cli("vmss", "extension", "set", *where, "-n", "Other", check=False)
    assert unknown.returncode == 2 and "--publisher and --version are required" in unknown.stderr


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("overhaul vm", {"vm", "vmss"}),
        ("overhaul vmss rol", {"rolling-upgrade"}),
        ("overhaul vmss rolling-upgrade --name web st", {"start"}),
        ("overhaul vmss extension set --settings", {"--settings"}),
        ("overhaul sig image-version --gallery-image-v", {"--gallery-image-version"}),
    ],
)
def test_bash_completion_completes_commands_and_flags(words: str, expected: set[str], tmp_path: Path) -> None:
    """`source <(overhaul completion bash)` in a real bash: no server or token needed."""
    script = subprocess.run(
        [sys.executable, "-m", "overhaul.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OVERHAUL_")},
    ).stdout
    (tmp_path / "overhaul.bash").write_text(script)
    parts = words.split(" ")
    probe = (
        f"source {tmp_path / 'overhaul.bash'}; COMP_WORDS=({' '.join(parts)}); COMP_CWORD={len(parts) - 1}; "
        '_overhaul; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert set(result.stdout.split()) == expected, result.stdout + result.stderr


def test_vm_scale_set_from_the_cli(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version with VM artefacts (a relative --disk-image is made absolute) and a scale set of VMs whose size
    `vmss show` reports; a scale set cannot turn into VMs, and VMs need a version with a disk image."""
    in_the_fixtures_subscription(served, tmp_path / "config", monkeypatch)
    where = ("-g", "myResourceGroup", "-r", "myGallery", "-i", "myImage")
    (tmp_path / "vm-2.0.0").mkdir()
    monkeypatch.chdir(tmp_path)
    created = served.cli("sig", "image-version", "create", *where, "-e", "2.0.0", "--disk-image", "vm-2.0.0")
    source = json.loads(created.stdout)["properties"]["storageProfile"]["source"]["overhaul"]
    assert source == {"diskImage": str(tmp_path / "vm-2.0.0")}
    table = served.cli("sig", "image-version", "list", *where, "-o", "table").stdout
    assert "DiskImage" in table and str(tmp_path / "vm-2.0.0") in table
    neither = served.cli("sig", "image-version", "create", *where, "-e", "2.0.1", check=False)
    assert neither.returncode != 0 and "--disk-image" in neither.stderr

    image = "Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest"
    vm = ("--vm", "--vm-memory", "384", "--vm-cpus", "1")
    served.cli("vmss", "create", "-g", "myResourceGroup", "-n", "vms", "--image", image, "--instance-count", "2", *vm)
    shown = json.loads(served.cli("vmss", "show", "-g", "myResourceGroup", "-n", "vms").stdout)
    profile = shown["properties"]["virtualMachineProfile"]
    assert profile["overhaul"]["vm"] == {"memoryMB": 384, "vCPUs": 1, "accel": "auto"}
    assert shown["sku"]["name"] == "Standard_VM"
    views = json.loads(served.cli("vmss", "list-instances", "-g", "myResourceGroup", "-n", "vms").stdout)
    versions = {v["properties"]["storageProfile"]["imageReference"]["exactVersion"] for v in views}
    assert versions == {"2.0.0"}  # 'latest' for VMs: 1.0.0 has no disk image

    served.cli("vmss", "create", "-g", "myResourceGroup", "-n", "web", "--image", image, "--instance-count", "1")
    changed = served.cli(
        "vmss",
        "update",
        "-g",
        "myResourceGroup",
        "-n",
        "web",
        "--set",
        "virtualMachineProfile.overhaul.vm={}",
        check=False,
    )
    assert changed.returncode != 0 and "properties.virtualMachineProfile.overhaul.vm" in changed.stderr
    pinned = served.cli(
        "vmss", "create", "-g", "myResourceGroup", "-n", "old", "--image", image.replace("latest", "1.0.0"), "--vm",
        check=False,
    )  # fmt: skip
    assert pinned.returncode != 0 and "names no diskImage" in pinned.stderr


def test_maintenance_configurations_and_assignments_from_the_cli(served: Served) -> None:
    publish(served, "1.0.0")
    assert served.call("PUT", f"{VMSS}?{API}", API_MODEL)[0] == 201
    create = ["maintenance", "configuration", "create", "-g", "myResourceGroup", "--resource-name", "nightly", *SUB]
    window = [
        "--maintenance-window-start-date-time",
        "2026-12-01 22:00",
        "--maintenance-window-time-zone",
        "Pacific Standard Time",
        "--maintenance-window-recur-every",
        "Day",
    ]
    short = served.cli(*create, *window, "--maintenance-window-duration", "04:00", check=False)
    assert short.returncode != 0 and "properties.maintenanceWindow.duration" in short.stderr, short.stderr
    assert "at least 5 hours" in short.stderr
    weekly = served.cli(
        *create,
        *window[:4],
        "--maintenance-window-recur-every",
        "Week",
        "--maintenance-window-duration",
        "05:00",
        check=False,
    )
    assert weekly.returncode != 0 and "recurEvery" in weekly.stderr
    made = json.loads(served.cli(*create, *window, "--maintenance-window-duration", "05:00").stdout)
    assert made["properties"]["maintenanceWindow"]["timeZone"] == "Pacific Standard Time"
    assert made["properties"]["maintenanceScope"] == "OSImage"
    assign = [
        "maintenance",
        "assignment",
        "create",
        "-g",
        "myResourceGroup",
        "--resource-name",
        "myScaleSet",
        "--resource-type",
        "virtualMachineScaleSets",
        "--provider-name",
        "Microsoft.Compute",
        "--configuration-assignment-name",
        "nightly",
        "--maintenance-configuration-id",
        made["id"],
        *SUB,
    ]
    assigned = json.loads(served.cli(*assign).stdout)
    assert assigned["properties"]["maintenanceConfigurationId"] == made["id"]
    assert assigned["properties"]["resourceId"].endswith("/virtualMachineScaleSets/myScaleSet")
    listed = ["maintenance", "assignment", "list", "-g", "myResourceGroup", "--resource-name", "myScaleSet", *SUB]
    assert [a["name"] for a in json.loads(served.cli(*listed).stdout)] == ["nightly"]
    delete = ["maintenance", "configuration", "delete", "-g", "myResourceGroup", "--resource-name", "nightly", *SUB]
    in_use = served.cli(*delete, check=False)
    assert in_use.returncode != 0 and "MaintenanceConfigurationInUse" in in_use.stderr
    served.cli(
        "maintenance",
        "assignment",
        "delete",
        "-g",
        "myResourceGroup",
        "--resource-name",
        "myScaleSet",
        "--configuration-assignment-name",
        "nightly",
        *SUB,
    )
    served.cli(*delete)
    assert json.loads(served.cli("maintenance", "configuration", "list", *SUB).stdout) == []


def test_lifecycle_hook_events_are_listed_answered_and_explained_from_the_cli(served: Served) -> None:
    model = hooked_model({"type": "UpgradeAutoOSRollingBatchStarting", "waitDuration": "PT1H"})
    assert served.call("PUT", f"{VMSS}?api-version=2025-11-01", model)[0] == 201
    publish(served, "2.0.0")
    target = ("-g", "myResourceGroup", "-n", "myScaleSet", *SUB)

    def events() -> list[dict[str, Any]]:
        listed = served.cli("vmss", "lifecycle-hook-event", "list", *target, "--output", "json").stdout
        return list(json.loads(listed))

    wait_for(lambda: len(events()) == 1)
    [event] = events()
    assert event["properties"]["state"] == "Active"
    why = served.cli("vmss", "rolling-upgrade", "why", *target).stdout
    assert why.startswith(
        f"LifecycleHookWaiting: batch 1 (instance(s) 0) waits for an answer to lifecycle hook event {event['name']}"
    ), why
    assert f"--event-name {event['name']} --action-state Approved" in why
    refused = served.cli("vmss", "lifecycle-hook-event", "update", *target, "--event-name", event["name"], check=False)
    assert refused.returncode == 2 and "--action-state or --wait-until" in refused.stderr
    late = served.cli(
        "vmss",
        "lifecycle-hook-event",
        "update",
        *target,
        "--event-name",
        event["name"],
        "--wait-until",
        "soon",
        check=False,
    )
    assert late.returncode != 0 and "properties.waitUntil" in late.stderr
    answered = served.cli(
        "vmss",
        "lifecycle-hook-event",
        "update",
        *target,
        "--event-name",
        event["name"],
        "--action-state",
        "Rejected",
        "--output",
        "json",
    ).stdout
    assert json.loads(answered)["properties"]["targetResources"][0]["actionState"] == "Rejected"
    wait_for(lambda: len(events()) == 2)  # batch 2 waits on an event of its own


def test_event_subscriptions_from_the_cli(served: Served) -> None:
    assert served.call("PUT", f"{VMSS}?api-version=2025-11-01", API_MODEL)[0] == 201
    with webhook_receiver() as receiver:
        where = ("--source-resource-id", VMSS, "--name", "ops", *SUB)
        created = served.cli(
            "eventgrid",
            "event-subscription",
            "create",
            *where,
            "--webhook-endpoint",
            receiver.url,
            "--included-event-types",
            "Overhaul.Compute.RollingUpgradeCompleted",
            "--output",
            "json",
        ).stdout
        doc = json.loads(created)
        assert doc["properties"]["filter"]["includedEventTypes"] == ["Overhaul.Compute.RollingUpgradeCompleted"]
        assert len(receiver.handshakes) == 1
        updated = served.cli(
            "eventgrid", "event-subscription", "update", *where, "--max-delivery-attempts", "5", "--output", "json"
        ).stdout
        assert json.loads(updated)["properties"]["retryPolicy"]["maxDeliveryAttempts"] == 5
        listed = served.cli("eventgrid", "event-subscription", "list", "--source-resource-id", VMSS, *SUB, "-o", "json")
        assert [s["name"] for s in json.loads(listed.stdout)] == ["ops"]
        assert (
            json.loads(served.cli("eventgrid", "event-subscription", "dead-letters", *where, "-o", "json").stdout) == []
        )
        bad = served.cli(
            "eventgrid",
            "event-subscription",
            "create",
            "--source-resource-id",
            VMSS,
            "--name",
            "bad",
            "--webhook-endpoint",
            "mailto:x",
            *SUB,
            check=False,
        )
        assert bad.returncode != 0 and "properties.destination.properties.endpointUrl" in bad.stderr
        served.cli("eventgrid", "event-subscription", "delete", *where)
        assert served.cli("eventgrid", "event-subscription", "show", *where, check=False).returncode == 3


def test_host_groups_and_hosts_from_the_cli(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_the_fixtures_subscription(served, tmp_path / "config", monkeypatch)
    g = ("--resource-group", "myResourceGroup")
    made = json.loads(
        served.cli("vm", "host", "group", "create", "-n", "rack1", *g, "-l", "edge", "-z", "1", "-c", "2").stdout
    )
    assert made["zones"] == ["1"] and made["properties"]["platformFaultDomainCount"] == 2
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True, timeout=30)
    host = json.loads(
        served.cli(
            "vm", "host", "create", "--host-group", "rack1", "-n", "h1", *g, "--sku", "DSv3-Type1",
            "--engine", "ssh://root@127.0.0.2:22022/run/p1.sock", "--ssh-key", "/etc/overhaul/id",
            "--host-key-file", str(tmp_path / "hk.pub"), "--host-ports", "30000-30999",
        ).stdout
    )  # fmt: skip
    ours = host["properties"]["overhaul"]
    assert (host["location"], ours["publishAddress"], ours["hostPorts"]) == ("edge", "127.0.0.2", "30000-30999")
    assert ours["hostKey"] == " ".join((tmp_path / "hk.pub").read_text().split()[:2])
    listed = json.loads(served.cli("vm", "host", "list", "--host-group", "rack1", *g).stdout)
    assert [h["name"] for h in listed] == ["h1"]
    assert listed[0]["properties"]["instanceView"]["statuses"][1]["code"] == "HealthState/available"
    view = json.loads(served.cli("vm", "host", "get-instance-view", "--host-group", "rack1", "-n", "h1", *g).stdout)
    assert view["statuses"][1]["code"] == "HealthState/available" and view["overhaul"]["lastSeen"]
    table = served.cli("vm", "host", "group", "list", "-o", "table").stdout
    assert "rack1" in table and "edge" in table
    # A refusal names the field; the CLI says it and exits non-zero.
    bad = served.cli(
        "vm", "host", "create", "--host-group", "rack1", "-n", "h2", *g, "--engine", "ssh://root@127.0.0.3:22/p.sock",
        "--ssh-key", "/etc/overhaul/id", check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "properties.overhaul.hostKey" in bad.stderr
    missing = served.cli("vm", "host", "show", "--host-group", "rack1", "-n", "nope", *g, check=False)
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    served.cli("vm", "host", "delete", "--host-group", "rack1", "-n", "h1", *g)
    served.cli("vm", "host", "group", "delete", "-n", "rack1", *g)
    assert json.loads(served.cli("vm", "host", "group", "list").stdout) == []


def test_group_commands_create_show_list_and_delete_what_a_group_holds(served: Served) -> None:
    """az group create / exists / show / update / list / delete: the delete waits until the group is gone."""
    assert served.cli("group", "exists", "-n", "team").stdout.strip() == "false"
    created = json.loads(served.cli("group", "create", "-n", "team", "-l", "local", "--tags", "owner=ops").stdout)
    assert created["location"] == "local" and created["tags"] == {"owner": "ops"}
    assert served.cli("group", "exists", "-n", "team").stdout.strip() == "true"
    assert json.loads(served.cli("group", "update", "-n", "team", "--tags", "owner=dev").stdout)["tags"] == {
        "owner": "dev"
    }
    served.cli("sig", "create", "-g", "team", "-r", "teamgallery")
    assert served.cli("group", "list", "--query", "[].name", "-o", "tsv").stdout.split() == ["team"]
    served.cli("group", "delete", "-n", "team", "--yes")
    assert served.cli("group", "show", "-n", "team", check=False).returncode == 3
    assert served.cli("sig", "show", "-g", "team", "-r", "teamgallery", check=False).returncode == 3
    # The fixture's group, in its own subscription, is untouched.
    shown = served.cli("sig", "show", "-g", "myResourceGroup", "-r", "myGallery", "--subscription", "subscription_id")
    assert json.loads(shown.stdout)["name"] == "myGallery"
    refused = served.cli("sig", "create", "-g", "absent", "-r", "g2", check=False)
    assert refused.returncode == 3 and "ResourceGroupNotFound" in refused.stderr
