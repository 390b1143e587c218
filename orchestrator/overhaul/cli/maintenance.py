"""az maintenance configuration … and az maintenance assignment …: when automatic OS upgrades may run."""

from __future__ import annotations

import argparse
from typing import Any

from overhaul.cli.client import EXIT_USAGE, Client, CliError
from overhaul.cli.output import emit

PROVIDER = "providers/Microsoft.Maintenance/maintenanceConfigurations"


def add_maintenance_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    maintenance = groups.add_parser("maintenance", help="maintenance windows for automatic OS upgrades")
    kinds = maintenance.add_subparsers(dest="maintenance_group", required=True)
    configuration = kinds.add_parser("configuration", help="maintenance configurations", parents=[common])
    configuration.add_argument("maintenance_command", choices=["create", "update", "show", "list", "delete"])
    configuration.add_argument("--resource-group", "-g")
    configuration.add_argument("--resource-name", "--name", "-n", dest="resource_name")
    configuration.add_argument("--location", "-l", default="local")
    configuration.add_argument("--maintenance-scope", default="OSImage", help="OSImage (the one overhaul acts on)")
    configuration.add_argument("--maintenance-window-start-date-time", help="'yyyy-MM-dd hh:mm', local to the zone")
    configuration.add_argument("--maintenance-window-duration", help="'hh:mm' (OSImage: at least 05:00)")
    configuration.add_argument("--maintenance-window-recur-every", default="Day", help="Day (OSImage)")
    configuration.add_argument("--maintenance-window-time-zone", default="UTC", help="a Windows time zone name")
    configuration.add_argument("--maintenance-window-expiration-date-time", help="'yyyy-MM-dd hh:mm'")
    assignment = kinds.add_parser("assignment", help="configuration assignments to scale sets", parents=[common])
    assignment.add_argument("assignment_command", choices=["create", "show", "list", "delete"])
    assignment.add_argument("--resource-group", "-g")
    assignment.add_argument("--resource-name", required=True, help="the scale set")
    assignment.add_argument("--resource-type", default="virtualMachineScaleSets", choices=["virtualMachineScaleSets"])
    assignment.add_argument("--provider-name", default="Microsoft.Compute", choices=["Microsoft.Compute"])
    assignment.add_argument("--configuration-assignment-name", "--name", "-n", dest="assignment_name")
    assignment.add_argument("--maintenance-configuration-id", help="the configuration's resource id")
    assignment.add_argument("--location", "-l", default="local")


def run_maintenance(client: Client, args: argparse.Namespace) -> int:
    if not args.resource_group and not (
        args.maintenance_group == "configuration" and args.maintenance_command == "list"
    ):
        raise CliError("--resource-group/-g is required (or `overhaul configure --defaults group=NAME`)", EXIT_USAGE)
    if args.maintenance_group == "assignment":
        return _assignment(client, args)
    group = f"/resourceGroups/{args.resource_group}" if args.resource_group else ""
    base = f"/subscriptions/{client.subscription}{group}/{PROVIDER}"
    if not args.resource_name and args.maintenance_command != "list":
        raise CliError(f"maintenance configuration {args.maintenance_command}: --resource-name is required", EXIT_USAGE)
    path = f"{base}/{args.resource_name}"
    if not _read_or_delete(client, args, args.maintenance_command, base, path):
        doc: dict[str, Any] = (
            client.call("GET", path) if args.maintenance_command == "update" else {"location": args.location}
        )
        props = doc.setdefault("properties", {})
        props["maintenanceScope"] = (
            args.maintenance_scope
            if args.maintenance_command == "create"
            else props.get("maintenanceScope", args.maintenance_scope)
        )
        window = dict(props.get("maintenanceWindow") or {})
        for key, value in (
            ("startDateTime", args.maintenance_window_start_date_time),
            ("duration", args.maintenance_window_duration),
            ("recurEvery", args.maintenance_window_recur_every),
            ("timeZone", args.maintenance_window_time_zone),
            ("expirationDateTime", args.maintenance_window_expiration_date_time),
        ):
            if value is not None:
                window[key] = value
        if "startDateTime" in window:
            props["maintenanceWindow"] = window
        emit(args, client.call("PUT", path, doc))
    return 0


def _read_or_delete(client: Client, args: argparse.Namespace, command: str, base: str, path: str) -> bool:
    """list, show and delete, alike for both kinds; False for a command that writes."""
    if command == "list":
        emit(args, client.call("GET", base))
    elif command == "show":
        emit(args, client.call("GET", path))
    elif command == "delete":
        client.call("DELETE", path)
    else:
        return False
    return True


def _assignment(client: Client, args: argparse.Namespace) -> int:
    vmss = client.vmss(args.resource_group, args.resource_name)
    base = f"{vmss}/providers/Microsoft.Maintenance/configurationAssignments"
    if not args.assignment_name and args.assignment_command != "list":
        raise CliError(f"maintenance assignment {args.assignment_command}: --configuration-assignment-name is required")
    path = f"{base}/{args.assignment_name}"
    if not _read_or_delete(client, args, args.assignment_command, base, path):
        if not args.maintenance_configuration_id:
            raise CliError("maintenance assignment create: --maintenance-configuration-id is required", EXIT_USAGE)
        body = {
            "location": args.location,
            "properties": {"maintenanceConfigurationId": args.maintenance_configuration_id},
        }
        emit(args, client.call("PUT", path, body))
    return 0
