"""az sig … and az vm image list: galleries, image definitions and versions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from overhaul.cli.client import (
    Client,
    CliError,
    target_from_ids,
)
from overhaul.cli.output import emit
from overhaul.cli.values import apply_sets, truthy


def sig_defaults(args: argparse.Namespace) -> argparse.Namespace:
    if args.sig_command == "image-version":
        if args.version_command != "list" and not args.gallery_image_version:
            raise CliError("--gallery-image-version is required")
        if args.version_command == "create" and args.exclude_from_latest is None:
            args.exclude_from_latest = False
        if not args.target_regions and args.version_command == "create":
            args.target_regions = ["local"]
    return args


def run_gallery(client: Client, args: argparse.Namespace) -> int:
    """sig create / list / show / delete: galleries themselves."""
    provider = "providers/Microsoft.Compute/galleries"
    if args.sig_command == "list":
        scope = f"/resourceGroups/{args.resource_group}" if args.resource_group else ""
        emit(args, client.call("GET", f"/subscriptions/{client.subscription}{scope}/{provider}"))
        return 0
    target_from_ids(client, args, "Microsoft.Compute/galleries", "gallery_name", "--gallery-name/-r")
    path = f"/subscriptions/{client.subscription}/resourceGroups/{args.resource_group}/{provider}/{args.gallery_name}"
    if args.sig_command == "create":
        body: dict[str, Any] = {"location": args.location, "properties": {}}
        if args.description:
            body["properties"]["description"] = args.description
        emit(args, client.call("PUT", path, body))
    elif args.sig_command == "show":
        emit(args, client.call("GET", path))
    else:
        client.call("DELETE", path)
    return 0


def run_sig(client: Client, args: argparse.Namespace) -> int:
    if args.sig_command == "image-definition":
        return run_image_definition(client, args)
    if args.sig_command in GALLERY_ACTIONS:
        return run_gallery(client, args)
    base = client.gallery(args.resource_group, args.gallery_name, args.gallery_image_definition)
    cmd = args.version_command
    if cmd == "list":
        emit(args, client.call("GET", base + "/versions"), "imageversions")
        return 0
    path = f"{base}/versions/{args.gallery_image_version}"
    if cmd == "show":
        expand = f"?$expand={args.expand}" if args.expand else ""
        emit(args, client.call("GET", path + expand), "imageversions")
    elif cmd == "delete":
        client.call("DELETE", path)
    elif cmd == "create":
        if not args.container_image and not args.disk_image:
            raise CliError(
                "--container-image (the engine image this version is made from) or --disk-image (the directory of "
                "its VM artefacts) is required"
            )
        source = ({"containerImage": args.container_image} if args.container_image else {}) | (
            {"diskImage": str(Path(args.disk_image).resolve())} if args.disk_image else {}
        )
        publishing = {
            "excludeFromLatest": args.exclude_from_latest,
            "targetRegions": [{"name": r} for r in args.target_regions],
        }
        body = {
            "location": args.target_regions[0],
            "properties": {
                "publishingProfile": publishing,
                "storageProfile": {"source": {"overhaul": source}},
            },
        }
        emit(args, client.call("PUT", path, body), "imageversions")
    elif cmd == "update":
        # As az's generic update: the version as it is, with the flags and each --set applied (a path it does not
        # have is an error), written back.
        doc = client.call("GET", path)
        publishing = doc.setdefault("properties", {}).setdefault("publishingProfile", {})
        if args.exclude_from_latest is not None:
            publishing["excludeFromLatest"] = args.exclude_from_latest
        if args.target_regions:
            publishing["targetRegions"] = [{"name": r} for r in args.target_regions]
        apply_sets(doc, args.set)
        emit(args, client.call("PATCH", path, doc), "imageversions")
    return 0


def run_image_definition(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        emit(args, client.call("GET", client.gallery(args.resource_group, args.gallery_name, "").rstrip("/")))
        return 0
    if not args.gallery_image_definition:
        raise CliError(f"sig image-definition {args.action}: --gallery-image-definition/-i is required")
    base = client.gallery(args.resource_group, args.gallery_name, args.gallery_image_definition)
    if args.action == "show":
        emit(args, client.call("GET", base))
    elif args.action == "delete":
        client.call("DELETE", base)
    else:
        missing = [f"--{k}" for k in ("publisher", "offer", "sku") if not getattr(args, k)]
        if missing:
            raise CliError(f"sig image-definition create: {', '.join(missing)} required")
        body = {
            "properties": {
                "osType": "Linux",
                "identifier": {"publisher": args.publisher, "offer": args.offer, "sku": args.sku},
            }
        }
        emit(args, client.call("PUT", base, body))
    return 0


def run_vm_image(client: Client, args: argparse.Namespace) -> int:
    path = (
        f"/subscriptions/{client.subscription}/providers/Microsoft.Compute/locations/{args.location}/publishers/"
        f"{args.publisher}/artifacttypes/vmimage/offers/{args.offer}/skus/{args.sku}/versions"
    )
    versions = client.call("GET", path)
    for item in versions:  # the fields az adds to each image it lists
        item.update(publisher=args.publisher, offer=args.offer, sku=args.sku, version=item.get("name"))
        item["urn"] = f"{args.publisher}:{args.offer}:{args.sku}:{item.get('name')}"
    if not args.all:
        visible = [v for v in versions if not v.get("properties", {}).get("excludeFromLatest")]
        versions = visible[-1:] if visible else []
    emit(args, versions, "versions")
    return 0


GALLERY_ACTIONS = {
    "create": "create a gallery (or update its location and description)",
    "list": "list galleries (of a resource group with -g)",
    "show": "show a gallery",
    "delete": "delete a gallery (it must hold no image definitions)",
}


def add_gallery_commands(groups: Any, common: argparse.ArgumentParser) -> Any:
    """az sig … and az vm image list; returns the `vm` group, which other commands join."""
    sig = groups.add_parser("sig", help="the local image gallery").add_subparsers(dest="sig_command", required=True)
    for action, text in GALLERY_ACTIONS.items():
        sub = sig.add_parser(action, help=text, parents=[common])
        sub.add_argument("--resource-group", "-g", help="default: `overhaul configure --defaults group=…`")
        if action != "list":
            sub.add_argument("--gallery-name", "-r")
            sub.add_argument("--ids", help="the gallery's resource id instead of -r/-g")
    sig.choices["create"].add_argument("--location", "-l", default="local")
    sig.choices["create"].add_argument("--description")
    definition = sig.add_parser("image-definition", help="image definitions", parents=[common])
    definition.add_argument("action", choices=["create", "list", "show", "delete"])
    version = sig.add_parser("image-version", help="image versions", parents=[common])
    version.add_argument("version_command", choices=["create", "list", "show", "update", "delete"])
    for sub in (definition, version):
        sub.add_argument("--resource-group", "-g", help="default: `overhaul configure --defaults group=…`")
        sub.add_argument("--gallery-name", "-r", required=True)
    version.add_argument("--gallery-image-definition", "-i", required=True)
    definition.add_argument("--gallery-image-definition", "-i", help="required but for list")
    definition.add_argument("--publisher", help="with create")
    definition.add_argument("--offer", help="with create")
    definition.add_argument("--sku", help="with create")
    version.add_argument("--gallery-image-version", "-e")
    version.add_argument("--container-image", help="the engine image of this version (e.g. localhost/web:2.0.0)")
    version.add_argument(
        "--disk-image",
        help="the directory of this version's VM artefacts: base.qcow2, vmlinuz, initrd.img (for VM scale sets)",
    )
    version.add_argument("--exclude-from-latest", type=truthy, nargs="?", const=True, default=None)
    version.add_argument("--target-regions", nargs="*", default=[])
    version.add_argument(
        "--expand", choices=["ReplicationStatus"], help="with show: its copies on the hosts of its target regions"
    )
    version.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="with update: e.g. overhaul.quarantined=false (lets 'latest' pick a version an attempt Faulted on)",
    )

    vm = groups.add_parser("vm", help="virtual machine images and hosts").add_subparsers(dest="vm_group", required=True)
    image = vm.add_parser("image", help="images").add_subparsers(dest="image_command", required=True)
    image_list = image.add_parser("list", help="list image versions of a sku", parents=[common])
    image_list.add_argument("--location", "-l", default="local")
    image_list.add_argument("--publisher", "-p", required=True)
    image_list.add_argument("--offer", "-f", required=True)
    image_list.add_argument("--sku", "-s", required=True)
    image_list.add_argument("--all", action="store_true", help="every version, not only the latest")
    return vm
