"""az eventgrid event-subscription …: webhooks that receive a scale set's (or a resource group's) events."""

from __future__ import annotations

import argparse
from typing import Any

from overhaul.cli.client import EXIT_USAGE, Client, CliError
from overhaul.cli.output import emit

PROVIDER = "providers/Microsoft.EventGrid/eventSubscriptions"


def add_event_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    eventgrid = groups.add_parser("eventgrid", help="events of rollouts, delivered to webhooks")
    kinds = eventgrid.add_subparsers(dest="eventgrid_group", required=True)
    sub = kinds.add_parser("event-subscription", help="event subscriptions", parents=[common])
    sub.add_argument("event_command", choices=["create", "update", "show", "list", "delete", "dead-letters"])
    sub.add_argument("--name", "-n", help="the event subscription's name")
    sub.add_argument(
        "--source-resource-id", required=True, help="a scale set's or a resource group's id (/subscriptions/…)"
    )
    # az says --endpoint; here that names the overhaul server (a common option), so the webhook's flag is longer.
    sub.add_argument(
        "--webhook-endpoint", dest="webhook", help="the webhook's http(s) URL (it must pass the validation handshake)"
    )
    sub.add_argument("--endpoint-type", default="webhook", choices=["webhook"])
    sub.add_argument("--event-delivery-schema", default="cloudeventschemav1_0", choices=["cloudeventschemav1_0"])
    sub.add_argument("--included-event-types", nargs="*", help="event types (default: all)")
    sub.add_argument("--subject-begins-with")
    sub.add_argument("--subject-ends-with")
    sub.add_argument("--max-delivery-attempts", type=int, help="1-30 (default 30)")
    sub.add_argument("--event-ttl", type=int, help="minutes an event is retried, 1-1440 (default 1440)")


def run_events(client: Client, args: argparse.Namespace) -> int:
    base = f"{args.source_resource_id.rstrip('/')}/{PROVIDER}"
    if args.event_command == "list":
        emit(args, client.call("GET", base))
        return 0
    if not args.name:
        raise CliError(f"event-subscription {args.event_command}: --name is required", EXIT_USAGE)
    path = f"{base}/{args.name}"
    if args.event_command == "show":
        emit(args, client.call("GET", path))
    elif args.event_command == "delete":
        client.call("DELETE", path)
    elif args.event_command == "dead-letters":
        emit(args, client.call("GET", path + "/deadLetteredEvents"))
    else:
        emit(args, client.call("PUT", path, _body(client, args, path)))
    return 0


def _body(client: Client, args: argparse.Namespace, path: str) -> dict[str, Any]:
    """create: from the flags; update: the subscription as it is, with what the flags change."""
    if args.event_command == "update":
        doc = client.call("GET", path)
        props = doc["properties"]
        url = props["destination"]["properties"].get("endpointBaseUrl")
        props["destination"] = {"endpointType": "WebHook", "properties": {"endpointUrl": args.webhook or url}}
    else:
        if not args.webhook:
            raise CliError("event-subscription create: --webhook-endpoint is required", EXIT_USAGE)
        destination = {"endpointType": "WebHook", "properties": {"endpointUrl": args.webhook}}
        doc = {"properties": {"destination": destination, "eventDeliverySchema": "CloudEventSchemaV1_0"}}
        props = doc["properties"]
    filters = props.setdefault("filter", {})
    for key, value in (
        ("includedEventTypes", args.included_event_types),
        ("subjectBeginsWith", args.subject_begins_with),
        ("subjectEndsWith", args.subject_ends_with),
    ):
        if value is not None:
            filters[key] = value
    retry = props.setdefault("retryPolicy", {})
    for key, value in (
        ("maxDeliveryAttempts", args.max_delivery_attempts),
        ("eventTimeToLiveInMinutes", args.event_ttl),
    ):
        if value is not None:
            retry[key] = value
    return dict(doc)
