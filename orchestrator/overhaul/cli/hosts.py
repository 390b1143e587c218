"""az vm host group … and az vm host …: host groups and the hosts whose container engines instances run on."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from overhaul.cli.client import EXIT_USAGE, Client, CliError
from overhaul.cli.output import emit


def add_host_commands(vm: Any, common: argparse.ArgumentParser) -> None:
    host = vm.add_parser("host", help="hosts (Dedicated Hosts' shape) whose engines instances run on")
    commands = host.add_subparsers(dest="host_command", required=True)
    group = commands.add_parser("group", help="host groups: a location, a zone, fault domains")
    group_commands = group.add_subparsers(dest="host_group_command", required=True)
    for action in ("create", "list", "show", "delete"):
        sub = group_commands.add_parser(action, help=f"{action} host groups", parents=[common])
        sub.add_argument("--resource-group", "-g", help="default: `overhaul configure --defaults group=…`")
        if action != "list":
            sub.add_argument("--name", "-n", required=True)
    create = group_commands.choices["create"]
    create.add_argument("--location", "-l", default="local")
    create.add_argument("--zone", "-z", help="the group's one availability zone")
    create.add_argument("--platform-fault-domain-count", "-c", type=int, required=True, help="1 to 3")
    create.add_argument("--automatic-placement", choices=["true", "false"], default="false")
    for action in ("create", "list", "show", "delete", "get-instance-view"):
        text = "whether a host's engine answers now" if action == "get-instance-view" else f"{action} hosts"
        sub = commands.add_parser(action, help=text, parents=[common])
        sub.add_argument("--resource-group", "-g", help="default: `overhaul configure --defaults group=…`")
        sub.add_argument("--host-group", required=True)
        if action != "list":
            sub.add_argument("--name", "-n", required=True)
    made = commands.choices["create"]
    made.add_argument("--location", "-l", help="default: the host group's")
    made.add_argument("--sku", help="kept as Azure's sku name; it means nothing here")
    made.add_argument("--platform-fault-domain", "-d", type=int, help="default: the group's least used")
    made.add_argument("--engine", required=True, help="unix:///path.sock, ssh://user@host[:port]/path.sock, tcp://h:p")
    made.add_argument("--ssh-key", help="with ssh://: the private key file the orchestrator signs in with")
    made.add_argument("--host-key", help="with ssh://: the host's public key line (ssh-ed25519 AAAA…)")
    made.add_argument("--host-key-file", help="with ssh://: a file holding that line (the host's ssh_host_*_key.pub)")
    made.add_argument("--publish-address", help="where the host's instances are reached (default: the engine's host)")
    made.add_argument("--host-ports", help="FIRST-LAST host ports instances publish on (default 20000-29999)")
    made.add_argument("--tls-ca", help="with tcp://: the CA file; with --tls-cert and --tls-key")
    made.add_argument("--tls-cert")
    made.add_argument("--tls-key")


def run_hosts(client: Client, args: argparse.Namespace) -> int:
    if not args.resource_group and not (args.host_command == "group" and args.host_group_command == "list"):
        raise CliError("--resource-group/-g is required (or `overhaul configure --defaults group=NAME`)", EXIT_USAGE)
    group_scope = f"/resourceGroups/{args.resource_group}" if args.resource_group else ""
    groups = f"/subscriptions/{client.subscription}{group_scope}/providers/Microsoft.Compute/hostGroups"
    if args.host_command == "group":
        action, path = args.host_group_command, f"{groups}/{getattr(args, 'name', '')}"
        body: dict[str, Any] = {}
        if action == "create":
            body = {
                "location": args.location,
                "properties": {
                    "platformFaultDomainCount": args.platform_fault_domain_count,
                    "supportAutomaticPlacement": args.automatic_placement == "true",
                },
            }
            if args.zone:
                body["zones"] = [args.zone]
    else:
        action, path = args.host_command, f"{groups}/{args.host_group}/hosts/{getattr(args, 'name', '')}"
        body = host_body(args) if action == "create" else {}
    if action == "list" and args.host_command == "list":
        # Each with whether its engine answers now (asked at once, a few seconds at most).
        emit(args, client.call("GET", path.rstrip("/") + "?$expand=instanceView"))
    elif action == "list":
        emit(args, client.call("GET", path.rstrip("/")))
    elif action == "get-instance-view":
        emit(args, client.call("GET", path + "/instanceView"))
    elif action == "create":
        emit(args, client.call("PUT", path, body))
    elif action == "show":
        emit(args, client.call("GET", path))
    else:
        client.call("DELETE", path)
    return 0


def host_body(args: argparse.Namespace) -> dict[str, Any]:
    ours: dict[str, Any] = {"engine": args.engine}
    host_key = args.host_key
    if args.host_key_file:
        try:
            host_key = Path(args.host_key_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"--host-key-file: {exc}", EXIT_USAGE) from None
    tls = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls):
        ours["tls"] = dict(zip(("caCertificate", "certificate", "key"), tls, strict=True))
    for key, value in (
        ("sshKey", args.ssh_key),
        ("hostKey", host_key),
        ("publishAddress", args.publish_address),
        ("hostPorts", args.host_ports),
    ):
        if value is not None:
            ours[key] = value
    props: dict[str, Any] = {"overhaul": ours}
    if args.platform_fault_domain is not None:
        props["platformFaultDomain"] = args.platform_fault_domain
    body: dict[str, Any] = {"properties": props}
    if args.location:
        body["location"] = args.location
    if args.sku:
        body["sku"] = {"name": args.sku}
    return body
