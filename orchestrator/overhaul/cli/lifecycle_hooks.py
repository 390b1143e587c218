"""overhaul vmss lifecycle-hook-event …: the events automatic OS upgrades wait on (lifecycleHooksProfile), listed,
shown, and answered (approve or reject targets, or put the event off)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from overhaul.cli.client import EXIT_USAGE, Client, CliError
from overhaul.cli.output import emit


def add_lifecycle_hook_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("hook_command", choices=["list", "show", "update"])
    command.add_argument("--event-name", help="the event's name (a GUID, as list shows it)")
    command.add_argument("--action-state", choices=["Approved", "Rejected"], help="with update: the answer")
    command.add_argument(
        "--instance-ids", nargs="*", type=int, help="with update: the instances answered (default: every waiting one)"
    )
    command.add_argument("--wait-until", help="with update: put the event off until this UTC time (ISO 8601)")


def run_lifecycle_hook_event(client: Client, args: argparse.Namespace, scale_set: str) -> int:
    """``scale_set``: the scale set's resource path."""
    base = f"{scale_set}/lifecycleHookEvents"
    if args.hook_command == "list":
        emit(args, client.call("GET", base))
        return 0
    if not args.event_name:
        raise CliError(f"lifecycle-hook-event {args.hook_command}: --event-name is required", EXIT_USAGE)
    path = f"{base}/{args.event_name}"
    if args.hook_command == "show":
        emit(args, client.call("GET", path))
        return 0
    if args.action_state is None and args.wait_until is None:
        raise CliError("lifecycle-hook-event update: give --action-state or --wait-until", EXIT_USAGE)
    props: dict[str, Any] = {}
    if args.wait_until is not None:
        props["waitUntil"] = args.wait_until
    if args.action_state is not None:
        event = client.call("GET", path)
        chosen = _chosen(args.instance_ids)
        props["targetResources"] = [
            {"resource": t["resource"], "actionState": args.action_state}
            for t in event["properties"]["targetResources"]
            if t["actionState"] == "Waiting" and chosen(t["resource"]["id"])
        ]
    emit(args, client.call("PATCH", path, {"properties": props}))
    return 0


def _chosen(instance_ids: list[int] | None) -> Callable[[str], bool]:
    if not instance_ids:
        return lambda resource_id: True
    wanted = {f"/virtualmachines/{i}" for i in instance_ids}
    return lambda resource_id: any(resource_id.lower().endswith(w) for w in wanted)
