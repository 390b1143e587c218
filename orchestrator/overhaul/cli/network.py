"""az network lb …: load balancers and the health probes scale sets name."""

from __future__ import annotations

import argparse
from typing import Any

from overhaul.cli.client import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Client,
    CliError,
    target_from_ids,
)
from overhaul.cli.output import emit


def add_network_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    """az network lb create|list|show|delete and az network lb probe create|list|show|delete."""
    network = groups.add_parser("network", help="load balancers, for the health probes scale sets name")
    lb = network.add_subparsers(dest="network_group", required=True).add_parser("lb", help="load balancers")
    lb_commands = lb.add_subparsers(dest="lb_command", required=True)
    for action in ("create", "list", "show", "delete"):
        sub = lb_commands.add_parser(action, help=f"{action} load balancers", parents=[common])
        sub.add_argument("--resource-group", "-g", help="default: `overhaul configure --defaults group=…`")
        if action != "list":
            sub.add_argument("--name", "-n")
            sub.add_argument("--ids", help="the load balancer's resource id instead of -n/-g")
    lb_commands.choices["create"].add_argument("--location", "-l", default="local")
    probe = lb_commands.add_parser("probe", help="a load balancer's health probes", parents=[common])
    probe.add_argument("probe_command", choices=["create", "update", "list", "show", "delete"])
    probe.add_argument("--resource-group", "-g", help="default: `overhaul configure --defaults group=…`")
    probe.add_argument("--lb-name", required=True)
    probe.add_argument("--name", "-n", help="the probe's name (all but list)")
    probe.add_argument("--protocol", choices=["Http", "Tcp", "http", "tcp"])
    probe.add_argument("--port", type=int, help="the application's container port")
    probe.add_argument("--path", help="with Http: the request path (default /)")
    probe.add_argument("--interval", type=int, help="seconds between probes (default: the orchestrator's)")
    probe.add_argument(
        "--threshold",
        "--number-of-probes",
        dest="threshold",
        type=int,
        help="failed probes in a row that make a Healthy instance Unhealthy (default 1)",
    )


def run_network(client: Client, args: argparse.Namespace) -> int:
    provider = "providers/Microsoft.Network/loadBalancers"
    group = f"/resourceGroups/{args.resource_group}" if args.resource_group else ""
    if args.lb_command == "list":
        emit(args, client.call("GET", f"/subscriptions/{client.subscription}{group}/{provider}"))
        return 0
    if args.lb_command == "probe":
        name = args.lb_name
    else:
        target_from_ids(client, args, "Microsoft.Network/loadBalancers", "name", "--name/-n")
        name, group = args.name, f"/resourceGroups/{args.resource_group}"
    path = f"/subscriptions/{client.subscription}{group}/{provider}/{name}"
    if args.lb_command == "create":
        emit(args, client.call("PUT", path, {"location": args.location, "properties": {"probes": []}}))
    elif args.lb_command == "show":
        emit(args, client.call("GET", path))
    elif args.lb_command == "delete":
        client.call("DELETE", path)
    else:
        run_probe(client, args, path)
    return 0


def run_probe(client: Client, args: argparse.Namespace, lb_path: str) -> None:
    """As az: the load balancer is read, its probes changed, and the whole written back."""
    if args.probe_command == "list":
        emit(args, client.list(lb_path + "/probes"))
        return
    if not args.name:
        raise CliError(f"network lb probe {args.probe_command}: --name/-n is required", EXIT_USAGE)
    if args.probe_command == "show":
        emit(args, client.call("GET", f"{lb_path}/probes/{args.name}"))
        return
    doc = client.call("GET", lb_path)
    probes: list[dict[str, Any]] = doc.setdefault("properties", {}).setdefault("probes", [])
    found = next((p for p in probes if str(p.get("name", "")).lower() == args.name.lower()), None)
    if args.probe_command == "delete":
        if found is not None:
            probes.remove(found)
            client.call("PUT", lb_path, doc)
        return
    if args.probe_command == "create":
        if found is not None:
            raise CliError(f"probe {args.name} exists in load balancer {args.lb_name} (use update)", EXIT_USAGE)
        if args.protocol is None or args.port is None:
            raise CliError("network lb probe create: --protocol and --port are required", EXIT_USAGE)
        found = {"name": args.name, "properties": {}}
        probes.append(found)
    elif found is None:
        raise CliError(f"load balancer {args.lb_name} has no probe {args.name}", EXIT_NOT_FOUND)
    settings = found.setdefault("properties", {})
    for key, value in (
        ("protocol", args.protocol.capitalize() if args.protocol else None),
        ("port", args.port),
        ("requestPath", args.path),
        ("intervalInSeconds", args.interval),
        ("numberOfProbes", args.threshold),
    ):
        if value is not None:
            settings[key] = value
    written = client.call("PUT", lb_path, doc)
    emit(args, next(p for p in written["properties"]["probes"] if p["name"].lower() == args.name.lower()))
