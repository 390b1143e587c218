"""az vmss …: scale sets, their instances and extensions, rolling and model upgrades."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from overhaul.cli.client import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    TERMINAL,
    Client,
    CliError,
    target_from_ids,
    wait_deleted,
)
from overhaul.cli.lifecycle_hooks import add_lifecycle_hook_flags, run_lifecycle_hook_event
from overhaul.cli.output import emit
from overhaul.cli.values import apply_sets, json_argument


def model_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        try:
            return dict(json.loads(Path(args.file).read_text()))
        except (OSError, ValueError) as exc:
            raise CliError(f"--file {args.file}: {exc}") from None
    if not args.image:
        raise CliError("--image is required (publisher:offer:sku:version, or a gallery image id), or --file")
    if args.image.startswith("/subscriptions/"):
        image: dict[str, Any] = {"id": args.image}
    else:
        parts = args.image.split(":")
        if len(parts) != 4:
            raise CliError(f"--image {args.image!r}: expected publisher:offer:sku:version")
        image = dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))
    profile: dict[str, Any] = {
        "storageProfile": {
            "imageReference": image,
            "dataDisks": [{"lun": i, "diskSizeGB": size} for i, size in enumerate(args.data_disk_sizes_gb or [])],
        }
    }
    if args.vm:
        vm = {"memoryMB": args.vm_memory, "vCPUs": args.vm_cpus, "accel": args.vm_accel}
        profile["overhaul"] = {"vm": {k: v for k, v in vm.items() if v is not None}}
    if args.health_probe_port:
        profile["networkProfile"] = {
            "healthProbe": {"protocol": "Http", "port": args.health_probe_port, "requestPath": args.health_probe_path}
        }
    properties: dict[str, Any] = {"upgradePolicy": {"mode": args.upgrade_policy_mode}, "virtualMachineProfile": profile}
    if args.host_group:
        properties["hostGroup"] = {"id": args.host_group}
    return {
        "location": args.location,
        **({"zones": args.zones} if args.zones else {}),
        "sku": {"name": "Standard_VM" if args.vm else "Standard_Container", "capacity": args.instance_count},
        "properties": properties,
    }


def watch_rolling_upgrade(client: Client, args: argparse.Namespace) -> int:
    """Live progress until the attempt ends; non-zero unless it Completed."""
    path = client.vmss(args.resource_group, args.name) + "/rollingUpgrades/latest"
    last = None
    printed_at = 0.0
    while True:
        doc = client.call("GET", path)
        props = doc["properties"]
        status = props["runningStatus"]["code"]
        p = props["progress"]
        extra = props.get("overhaul", {})
        line = (
            f"{status:<15} batch {extra.get('batchesStarted', 0)} {extra.get('currentBatch', [])}: "
            f"{p['successfulInstanceCount']} upgraded, {p['failedInstanceCount']} failed, "
            f"{p['inProgressInstanceCount']} in progress, {p['pendingInstanceCount']} pending"
        )
        details = [
            f"    {args.name}_{i['instanceId']}: {i['step']}, {i.get('health') or 'no health yet'}"
            + (f" ({i['reason']})" if i.get("reason") else "")
            + (f", {i['timeLeft']:.0f}s left" if i.get("timeLeft") is not None else "")
            for i in extra.get("instances", [])
            if "health" in i
        ]
        # Why it waits, besides health (each instance's line says that): a retried engine, a pause, an approval.
        details += [
            f"    why: {c['code']}: {c['message']}"
            for c in extra.get("why", [])
            if c["code"] != "WaitingForHealth" and status not in TERMINAL
        ]
        # Each instance in flight with its health, the reason and the time left: a bad version never looks hung.
        # Printed when something other than the countdown changes, and every 10 s while nothing does.
        key = "\n".join([line, *(d.rsplit(", ", 1)[0] if d.endswith("s left") else d for d in details)])
        if key != last or time.monotonic() - printed_at >= 10:
            print(f"[{time.strftime('%H:%M:%S')}] " + "\n".join([line, *details]), file=sys.stderr, flush=True)
            last, printed_at = key, time.monotonic()
        # Ended, and its last commit or rollback finished (older servers do not say: ended is enough).
        if status in TERMINAL and props.get("overhaul", {}).get("done", True):
            emit(args, doc, "latest")
            error = props.get("error")
            if error:
                print(f"overhaul: ({error.get('code')}) {error.get('message')}", file=sys.stderr)
            return 0 if status == "Completed" else 1
        time.sleep(0.5)  # the CLI follows the REST API as az does


def scale_set_target(client: Client, args: argparse.Namespace) -> None:
    if args.vmss_command != "list" or getattr(args, "ids", None):
        target_from_ids(client, args, "Microsoft.Compute/virtualMachineScaleSets", "name", "--name/-n")


# Publishers of the extension types overhaul runs, so `vmss extension set` needs no --publisher for them.
EXTENSION_PUBLISHERS = {
    "applicationhealthlinux": ("Microsoft.ManagedServices", "2.0"),
    "customscript": ("Microsoft.Azure.Extensions", "2.1"),
}


def run_extension(client: Client, args: argparse.Namespace) -> int:
    """vmss extension set|list|show|delete: edits the model's extensionProfile, as az does."""
    base = client.vmss(args.resource_group, args.name)
    doc = client.call("GET", base)
    profile = doc.setdefault("properties", {}).setdefault("virtualMachineProfile", {})
    extensions: list[dict[str, Any]] = profile.setdefault("extensionProfile", {}).setdefault("extensions", [])
    if args.extension_command == "list":
        emit(args, extensions)
        return 0
    if not args.extension_name:
        raise CliError(f"vmss extension {args.extension_command}: --name/-n is required", EXIT_USAGE)
    wanted = (args.extension_instance_name or args.extension_name).lower()
    index = next((i for i, e in enumerate(extensions) if str(e.get("name", "")).lower() == wanted), None)
    if args.extension_command in ("show", "delete"):
        if index is None:
            raise CliError(f"extension {wanted} is not in the scale set's model", EXIT_NOT_FOUND)
        if args.extension_command == "show":
            emit(args, extensions[index])
            return 0
        del extensions[index]
        emit(args, client.call("PUT", base, doc), "vmss")
        return 0
    publisher, version = EXTENSION_PUBLISHERS.get(args.extension_name.lower(), (None, None))
    properties: dict[str, Any] = {
        "publisher": args.publisher or publisher,
        "type": args.extension_name,
        "typeHandlerVersion": args.version or version,
    }
    if properties["publisher"] is None or properties["typeHandlerVersion"] is None:
        raise CliError(f"--publisher and --version are required for extension type {args.extension_name}", EXIT_USAGE)
    for key, flag, value in (
        ("settings", "--settings", args.settings),
        ("protectedSettings", "--protected-settings", args.protected_settings),
    ):
        parsed = json_argument(flag, value)
        if parsed is not None:
            properties[key] = parsed
    if args.provision_after_extensions:
        properties["provisionAfterExtensions"] = args.provision_after_extensions
    entry = {"name": args.extension_instance_name or args.extension_name, "properties": properties}
    if index is None:
        extensions.append(entry)
    else:
        extensions[index] = entry
    emit(args, client.call("PUT", base, doc), "vmss")
    return 0


def run_vmss(client: Client, args: argparse.Namespace) -> int:
    if args.vmss_command == "extension":
        args.name = args.vmss_name
    scale_set_target(client, args)
    if args.vmss_command == "extension":
        return run_extension(client, args)
    rg, cmd = args.resource_group, args.vmss_command
    if cmd == "create":
        emit(args, client.call("PUT", client.vmss(rg, args.name), model_from_args(args)), "vmss")
    elif cmd == "update":
        doc = client.call("GET", client.vmss(rg, args.name))
        apply_sets(doc, args.set)
        emit(args, client.call("PUT", client.vmss(rg, args.name), doc), "vmss")
    elif cmd == "show":
        emit(args, client.call("GET", client.vmss(rg, args.name)), "vmss")
    elif cmd == "list":
        path = (
            client.vmss(rg)
            if rg
            else f"/subscriptions/{client.subscription}/providers/Microsoft.Compute/virtualMachineScaleSets"
        )
        emit(args, client.call("GET", path), "vmss")
    elif cmd == "delete":
        client.call("DELETE", client.vmss(rg, args.name))
        if not args.no_wait:  # az waits for the end of a long-running operation unless told not to
            wait_deleted(client, client.vmss(rg, args.name), f"scale set {args.name}")
    elif cmd == "list-instances":
        emit(args, client.call("GET", client.vmss(rg, args.name) + "/virtualMachines"), "instances")
    elif cmd in ("scale", "get-instance-view", "list-instance-connection-info"):
        run_vmss_instances(client, args)
    elif cmd == "reimage":
        body = {"instanceIds": [str(i) for i in args.instance_ids]} if args.instance_ids else {}
        client.call("POST", client.vmss(rg, args.name) + "/reimage", body)
    elif cmd == "update-instances":
        base = client.vmss(rg, args.name)
        if args.instance_ids == ["*"]:  # az: every instance
            ids = [str(vm["instanceId"]) for vm in client.list(base + "/virtualMachines")]
        else:
            ids = args.instance_ids  # checked by the server, which names the field
        started = client.call("POST", base + "/manualupgrade", {"instanceIds": ids})
        if not args.no_wait:  # az waits for the end of a long-running operation unless told not to
            return watch_rolling_upgrade(client, args)
        emit(args, started, "latest")
    elif cmd == "approve-rolling-upgrade":
        body = {"instanceIds": [str(i) for i in args.instance_ids]} if args.instance_ids else {}
        client.call("POST", client.vmss(rg, args.name) + "/approveRollingUpgrade", body)
    elif cmd == "get-os-upgrade-history":
        emit(args, client.call("GET", client.vmss(rg, args.name) + "/osUpgradeHistory"), "history")
    elif cmd == "rolling-upgrade":
        return run_rolling_upgrade(client, args)
    elif cmd == "lifecycle-hook-event":
        return run_lifecycle_hook_event(client, args, client.vmss(rg, args.name))
    return 0


def run_rolling_upgrade(client: Client, args: argparse.Namespace) -> int:
    base = client.vmss(args.resource_group, args.name)
    if args.upgrade_command == "start":
        body = {"overhaul": {"fixForward": True}} if args.fix_forward else None
        started = client.call("POST", base + "/osRollingUpgrade", body)
        if not args.no_wait:  # az waits for the end of a long-running operation unless told not to
            return watch_rolling_upgrade(client, args)
        emit(args, started, "latest")
    elif args.upgrade_command == "cancel":
        emit(args, client.call("POST", base + "/rollingUpgrades/cancel"), "latest")
    elif args.upgrade_command == "why":
        # For people: one paragraph per cause (get-latest has them as data, under properties.overhaul.why).
        causes = client.call("GET", base + "/rollingUpgrades/why")["value"]
        print("\n\n".join(c["description"] for c in causes) or "Nothing holds the rollout back.")
    elif args.wait:
        return watch_rolling_upgrade(client, args)
    else:
        emit(args, client.call("GET", base + "/rollingUpgrades/latest"), "latest")
    return 0


def run_vmss_instances(client: Client, args: argparse.Namespace) -> None:
    """vmss scale, get-instance-view and list-instance-connection-info."""
    base = client.vmss(args.resource_group, args.name)
    if args.vmss_command == "scale":
        doc = client.call("GET", base)
        doc.setdefault("sku", {})["capacity"] = args.new_capacity
        emit(args, client.call("PUT", base, doc), "vmss")
    elif args.vmss_command == "get-instance-view":
        if args.instance_id is None:
            emit(args, client.call("GET", base + "/instanceView"))
        elif args.instance_id == "*":  # az: every instance's view
            emit(args, [vm["properties"]["instanceView"] for vm in client.list(base + "/virtualMachines")])
        else:
            emit(args, client.call("GET", f"{base}/virtualMachines/{args.instance_id}/instanceView"))
    else:
        # az maps "instance N" to the address of its NAT rule; here to each of the instance's published ports.
        emit(args, connection_info(client.list(base + "/virtualMachines")))


def connection_info(instances: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """{"instance 0": {"8080": "127.0.0.1:41234", ...}}: where each port of each instance is reachable."""
    info: dict[str, dict[str, str]] = {}
    for vm in instances:
        own = vm.get("properties", {}).get("overhaul", {})
        address = own.get("address", "127.0.0.1")
        info[f"instance {vm.get('instanceId')}"] = {
            port: f"{address}:{host}" for port, host in sorted(own.get("hostPorts", {}).items())
        }
    return info


def add_extension_commands(vmss: Any, common: argparse.ArgumentParser) -> None:
    extension = vmss.add_parser("extension", help="the model's extensions (set, list, show, delete)", parents=[common])
    extension.add_argument("extension_command", choices=["set", "list", "show", "delete"])
    extension.add_argument("--vmss-name", required=True)
    extension.add_argument("--resource-group", "-g")
    extension.add_argument(
        "--name", "-n", dest="extension_name", help="the extension type, e.g. ApplicationHealthLinux or CustomScript"
    )
    extension.add_argument("--extension-instance-name", help="the extension's name in the model (default: --name)")
    extension.add_argument("--publisher", help="default for ApplicationHealthLinux and CustomScript")
    extension.add_argument("--version", help="typeHandlerVersion (default for the two known types)")
    extension.add_argument("--settings", help='JSON or @FILE, e.g. \'{"protocol": "http", "port": 8080}\'')
    extension.add_argument("--protected-settings", help="JSON or @FILE")
    extension.add_argument("--provision-after-extensions", nargs="*", default=[])


def add_create_flags(create: argparse.ArgumentParser) -> None:
    """`vmss create`'s flags (az's names where az has them)."""
    create.add_argument("--image", help="publisher:offer:sku:version (version may be latest) or a gallery image id")
    create.add_argument("--instance-count", type=int, default=2)
    create.add_argument("--upgrade-policy-mode", default="Automatic", choices=["Automatic", "Manual", "Rolling"])
    create.add_argument("--data-disk-sizes-gb", type=int, nargs="*")
    create.add_argument("--location", "-l", default="local")
    create.add_argument("--zones", nargs="*", help="the zones its instances are spread over (their hosts')")
    create.add_argument("--host-group", help="the id of the host group to place it on (default: its location's)")
    create.add_argument("--health-probe-port", type=int, help="container port of an HTTP health endpoint")
    create.add_argument("--health-probe-path", default="/health")
    create.add_argument("--vm", action="store_true", help="QEMU VMs, not containers (versions need a diskImage)")
    create.add_argument("--vm-memory", type=int, metavar="MB", help="with --vm: memory per VM (512)")
    create.add_argument("--vm-cpus", type=int, metavar="N", help="with --vm: vCPUs per VM (2)")
    create.add_argument("--vm-accel", choices=["auto", "kvm", "tcg"], help="with --vm: KVM, TCG, or KVM if it works")
    create.add_argument("--file", help="the whole model as Azure JSON (instead of the flags above)")


def add_vmss_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    """az vmss …: scale sets, their instances, extensions and rolling upgrades."""
    vmss = groups.add_parser("vmss", help="scale sets").add_subparsers(dest="vmss_command", required=True)

    def scale_set_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = vmss.add_parser(name, help=help_text, parents=[common])
        sub.add_argument("--name", "-n")
        sub.add_argument("--resource-group", "-g")
        sub.add_argument(
            "--ids", help="the scale set's resource id (/subscriptions/…/virtualMachineScaleSets/NAME) instead of -n/-g"
        )
        return sub

    add_create_flags(scale_set_command("create", "create a scale set"))
    update = scale_set_command("update", "update a scale set")
    update.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="e.g. UpgradePolicy.AutomaticOSUpgradePolicy.EnableAutomaticOSUpgrade=true",
    )
    scale_set_command("show", "show a scale set")
    listing = vmss.add_parser("list", help="list scale sets", parents=[common])
    listing.add_argument("--resource-group", "-g", default="")
    delete = scale_set_command("delete", "delete a scale set with its instances and data disks")
    delete.add_argument("--no-wait", action="store_true", help="return once the deletion has started")
    scale_set_command("list-instances", "list instances with health, power state and image version")
    scale = scale_set_command("scale", "change the number of instances")
    scale.add_argument("--new-capacity", type=int, required=True, help="the number of instances wanted")
    view = scale_set_command("get-instance-view", "status counts of the scale set, or one instance's instance view")
    view.add_argument("--instance-id", help="an instance id, or * for every instance's view")
    scale_set_command("list-instance-connection-info", "where each instance's ports are published (address:port)")
    add_extension_commands(vmss, common)

    reimage = scale_set_command("reimage", "reimage instances (all when none are named)")
    reimage.add_argument("--instance-ids", nargs="*", type=int)
    update_instances = scale_set_command(
        "update-instances", "give instances new OS disks made with the latest model (their version stays)"
    )
    update_instances.add_argument("--instance-ids", nargs="+", required=True, help="instance ids, or * for all")
    update_instances.add_argument("--no-wait", action="store_true", help="return once it has started")
    approval = scale_set_command(
        "approve-rolling-upgrade",
        "let deferred OS upgrades (osRollingUpgradeDeferral) go ahead (all instances when none are named)",
    )
    approval.add_argument("--instance-ids", nargs="*", type=int)
    scale_set_command("get-os-upgrade-history", "OS upgrade history, newest first")
    add_rolling_upgrade_flags(scale_set_command("rolling-upgrade", "start, cancel or follow a rolling upgrade"))
    add_lifecycle_hook_flags(scale_set_command("lifecycle-hook-event", "events automatic OS upgrades wait on"))


def add_rolling_upgrade_flags(rolling: argparse.ArgumentParser) -> None:
    rolling.add_argument(
        "upgrade_command",
        choices=["start", "cancel", "get-latest", "why"],
        help="why: one paragraph per cause that holds the rollout back (docs/why.md)",
    )
    rolling.add_argument(
        "--wait",
        action="store_true",
        help="with get-latest: follow the attempt batch by batch; exit non-zero unless it completes "
        "(start always follows it unless --no-wait)",
    )
    rolling.add_argument("--no-wait", action="store_true", help="with start: return once it has started")
    rolling.add_argument(
        "--fix-forward",
        action="store_true",
        help="with start: instances unhealthy now go first and count in no unhealthy check (docs/triage.md)",
    )
