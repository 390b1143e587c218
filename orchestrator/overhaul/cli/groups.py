"""az group create / list / show / exists / update / delete: resource groups, which hold everything else."""

from __future__ import annotations

import argparse
from typing import Any

from overhaul.cli.client import EXIT_NOT_FOUND, EXIT_USAGE, Client, CliError, wait_deleted
from overhaul.cli.output import emit


def add_group_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    group = groups.add_parser(
        "group", help="resource groups: create one before putting anything in it", parents=[common]
    )
    group.add_argument("group_command", choices=["create", "list", "show", "exists", "update", "delete"])
    group.add_argument("--name", "-n", "--resource-group", "-g", dest="group_name")
    group.add_argument("--location", "-l", help="where the group is (create; default: local)")
    group.add_argument("--tags", nargs="*", metavar="KEY=VALUE", help="the group's tags (create, update)")
    group.add_argument("--yes", "-y", action="store_true", help="delete without asking (nothing asks here)")
    group.add_argument("--no-wait", action="store_true", help="delete: return once the deletion has started")


def _tags(items: list[str] | None) -> dict[str, str]:
    tags = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key:
            raise CliError(f"--tags {item!r}: expected KEY=VALUE", EXIT_USAGE)
        tags[key] = value
    return tags


def run_group(client: Client, args: argparse.Namespace) -> int:
    base = f"/subscriptions/{client.subscription}/resourcegroups"
    command = args.group_command
    if command == "list":
        emit(args, client.list(base))
        return 0
    if not args.group_name:
        raise CliError(f"group {command}: --name/-n is required", EXIT_USAGE)
    path = f"{base}/{args.group_name}"
    if command == "exists":
        try:
            client.call("GET", path)
        except CliError as exc:
            if exc.exit_code != EXIT_NOT_FOUND:
                raise
            print("false")
            return 0
        print("true")
        return 0
    if command == "show":
        emit(args, client.call("GET", path))
    elif command == "create":
        body: dict[str, Any] = {"location": args.location or "local"}
        if args.tags is not None:
            body["tags"] = _tags(args.tags)
        emit(args, client.call("PUT", path, body))
    elif command == "update":
        emit(args, client.call("PATCH", path, {"tags": _tags(args.tags)}))
    else:
        client.call("DELETE", path)
        if not args.no_wait:
            wait_deleted(client, path, f"resource group {args.group_name}")
    return 0
