"""`overhaul`: az-shaped commands over the orchestrator's REST API (and `overhaul serve`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from overhaul import __version__
from overhaul.defaults import DEFAULT_PORT, default_state_dir

API_VERSION = "2024-07-01"
TERMINAL = ("Completed", "Faulted", "Cancelled")


# Exit codes as az's: 1 an error, 2 a usage error (argparse), 3 a resource that does not exist.
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND = 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_path() -> Path:
    """Where `overhaul configure --defaults` keeps them: $OVERHAUL_CONFIG_DIR, else ~/.config/overhaul."""
    base = os.environ.get("OVERHAUL_CONFIG_DIR") or str(Path.home() / ".config" / "overhaul")
    return Path(base) / "config.json"


def load_defaults() -> dict[str, str]:
    try:
        doc = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    defaults = doc.get("defaults") if isinstance(doc, dict) else None
    return {k: v for k, v in defaults.items() if isinstance(v, str)} if isinstance(defaults, dict) else {}


def configure(args: argparse.Namespace) -> int:
    """az configure --defaults group=NAME subscription=ID location=LOC: kept for later commands."""
    defaults = load_defaults()
    for item in args.defaults or []:
        key, sep, value = item.partition("=")
        if not sep or key not in ("group", "subscription", "location"):
            raise CliError(f"--defaults {item!r}: expected group=NAME, subscription=ID or location=LOC")
        if value:
            defaults[key] = value
        else:
            defaults.pop(key, None)  # az: an empty value clears the default
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"defaults": defaults}, indent=2) + "\n")
    print(json.dumps(defaults, indent=2))
    return 0


class Client:
    def __init__(
        self,
        endpoint: str,
        token: str,
        subscription: str,
        *,
        timeout: float = 120.0,
        debug: bool = False,
        verbose: bool = False,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.subscription = subscription
        self.timeout = timeout
        self.debug = debug
        self.verbose = verbose or debug

    def call(self, method: str, path: str, body: Any = None) -> Any:
        sep = "&" if "?" in path else "?"
        url = f"{self.endpoint}{path}{sep}api-version={API_VERSION}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        started = time.monotonic()
        if self.debug:
            print(f"overhaul: {method} {url}", file=sys.stderr)
            if data is not None:
                print(f"overhaul: request body {data.decode()[:2000]}", file=sys.stderr)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if self.debug:
                print(f"overhaul: {exc.code} in {time.monotonic() - started:.3f}s: {raw[:2000]!r}", file=sys.stderr)
            elif self.verbose:
                print(f"overhaul: {method} {path} -> {exc.code} in {time.monotonic() - started:.3f}s", file=sys.stderr)
            code = EXIT_NOT_FOUND if exc.code == 404 else EXIT_ERROR
            try:
                err = json.loads(raw)["error"]
                message = f"({err.get('code')}) {err.get('message')}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}: {raw[:300]!r}"
            raise CliError(message, code) from None
        except urllib.error.URLError as exc:
            raise CliError(
                f"cannot reach the orchestrator at {self.endpoint}: {exc.reason} (is `overhaul serve` running?)"
            ) from None
        if self.debug:
            print(f"overhaul: {status} in {time.monotonic() - started:.3f}s", file=sys.stderr)
        elif self.verbose:
            print(f"overhaul: {method} {path} -> {status} in {time.monotonic() - started:.3f}s", file=sys.stderr)
        return json.loads(raw) if raw.strip() else None

    def list(self, path: str) -> list[Any]:
        """The items of an ARM list answer ({"value": [...]})."""
        doc = self.call("GET", path)
        items = doc.get("value") if isinstance(doc, dict) else doc
        return items if isinstance(items, list) else []

    def vmss(self, rg: str, name: str = "") -> str:
        provider = "providers/Microsoft.Compute/virtualMachineScaleSets"
        base = f"/subscriptions/{self.subscription}/resourceGroups/{rg}/{provider}"
        return f"{base}/{name}" if name else base

    def gallery(self, rg: str, gallery: str, image: str) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/Microsoft.Compute"
            f"/galleries/{gallery}/images/{image}"
        )


def find_token(args: argparse.Namespace) -> str:
    if os.environ.get("OVERHAUL_TOKEN"):
        return os.environ["OVERHAUL_TOKEN"].strip()
    path = Path(args.token_file) if args.token_file else default_state_dir() / "token"
    try:
        return path.read_text().strip()
    except OSError:
        raise CliError(
            f"no API token at {path}: start `overhaul serve` (it writes one there), or point the CLI at the state "
            "directory of the serve you talk to (OVERHAUL_STATE_DIR, or --token-file STATE_DIR/token), or give the "
            "token itself in OVERHAUL_TOKEN"
        ) from None


# --- az's --set: case-insensitive property paths --------------------------------------------------------------


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(doc: dict[str, Any], items: list[str] | None) -> None:
    """Each --set PATH=VALUE (VALUE is JSON, or a bare word) applied to ``doc`` in order."""
    for item in items or []:
        path, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r}: expected PATH=VALUE")
        set_path(doc, path, parse_value(value))


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """az's --set: dotted path, case-insensitive keys, 'properties' implied as az flattens it."""
    parts = [p for p in path.split(".") if p]
    if not parts:
        raise CliError(f"--set {path!r}: empty property path")
    target: dict[str, Any] = doc
    first = parts[0].lower()
    if first not in {k.lower() for k in doc} and isinstance(doc.get("properties"), dict):
        target = doc["properties"]
    for i, part in enumerate(parts):
        key = next((k for k in target if k.lower() == part.lower()), None)
        if key is None:
            key = part[0].lower() + part[1:]  # new keys in Azure's camelCase
        if i == len(parts) - 1:
            target[key] = value
            return
        child = target.get(key)
        if child is None:
            child = target[key] = {}
        if not isinstance(child, dict):
            raise CliError(f"--set {path}: {key} is not an object")
        target = child


# --- output -------------------------------------------------------------------------------------------------


TABLES: dict[str, list[tuple[str, str]]] = {
    "vmss": [
        ("Name", "name"),
        ("ResourceGroup", "resourceGroup"),
        ("Location", "location"),
        ("Capacity", "sku.capacity"),
        ("UpgradeMode", "properties.upgradePolicy.mode"),
        ("Image", "properties.virtualMachineProfile.storageProfile.imageReference.version"),
    ],
    "instances": [
        ("InstanceId", "instanceId"),
        ("Name", "name"),
        ("Health", "properties.instanceView.vmHealth.status.displayStatus"),
        ("Power", "properties.instanceView.statuses.1.code"),
        ("Version", "properties.storageProfile.imageReference.exactVersion"),
    ],
    "history": [
        ("Status", "properties.runningStatus.code"),
        ("StartedBy", "properties.startedBy"),
        ("Target", "properties.targetImageReference.version"),
        ("Successful", "properties.progress.successfulInstanceCount"),
        ("Failed", "properties.progress.failedInstanceCount"),
        ("RolledBack", "properties.rollbackInfo.successfullyRolledbackInstanceCount"),
        ("Start", "properties.runningStatus.startTime"),
        ("Error", "properties.error.code"),
    ],
    "latest": [
        ("Status", "properties.runningStatus.code"),
        ("Successful", "properties.progress.successfulInstanceCount"),
        ("Failed", "properties.progress.failedInstanceCount"),
        ("InProgress", "properties.progress.inProgressInstanceCount"),
        ("Pending", "properties.progress.pendingInstanceCount"),
        ("Error", "properties.error.code"),
    ],
    "versions": [("Name", "name"), ("Location", "location"), ("ExcludeFromLatest", "properties.excludeFromLatest")],
    "imageversions": [
        ("Name", "name"),
        ("ExcludeFromLatest", "properties.publishingProfile.excludeFromLatest"),
        ("ContainerImage", "properties.storageProfile.source.overhaul.containerImage"),
    ],
}


def _lookup_index(doc: Any, part: str) -> Any:
    if isinstance(doc, list) and part.isdigit():
        return doc[int(part)] if int(part) < len(doc) else None
    return doc.get(part) if isinstance(doc, Mapping) else None


def table(rows: list[Mapping[str, Any]], kind: str) -> str:
    columns = TABLES[kind]
    cells = []
    for doc in rows:
        row = []
        for _, path in columns:
            value: Any = doc
            for part in path.split("."):
                value = _lookup_index(value, part)
            row.append("" if value is None else str(value))
        cells.append(row)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, (h, _) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def to_yaml(value: Any, indent: int = 0) -> str:
    """YAML as az prints it, for the JSON values the API returns (no library needed for that subset)."""
    pad = "  " * indent
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(item)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = to_yaml(item, indent + 1) if isinstance(item, Mapping | list) and item else to_yaml(item)
            lines.append(f"{pad}- {text.lstrip()}")
        return "\n".join(lines)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    plain = (
        text
        and text.strip() == text
        and not any(c in text for c in ":#{}[],&*!|>'\"%@`\n")
        and text.lower() not in ("true", "false", "null", "yes", "no", "~")
    )
    return text if plain and not text[0].isdigit() and text[0] not in "-?" else json.dumps(text)


def to_tsv(value: Any) -> str:
    """az's tsv: one line per item, the item's scalar fields in order, tab-separated; nested values left out."""
    rows = value if isinstance(value, list) else [value]
    lines = []
    for row in rows:
        if isinstance(row, Mapping):
            cells = [_tsv_cell(v) for v in row.values() if not isinstance(v, Mapping | list)]
        elif isinstance(row, list):
            cells = [_tsv_cell(v) for v in row if not isinstance(v, Mapping | list)]
        else:
            cells = [_tsv_cell(row)]
        lines.append("\t".join(cells))
    return "\n".join(lines)


def _tsv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def emit(args: argparse.Namespace, result: Any, kind: str | None = None) -> None:
    """Prints a result as az does: lists as bare arrays, --query applied, then the chosen output format."""
    if result is None:
        return
    if isinstance(result, Mapping) and set(result) <= {"value", "nextLink"} and isinstance(result.get("value"), list):
        result = result["value"]
    if getattr(args, "query", None):
        try:
            jmespath = importlib.import_module("jmespath")
            result = jmespath.search(args.query, result)
        except ImportError:
            raise CliError("--query needs the jmespath package (pip install jmespath)") from None
        except ValueError as exc:  # jmespath's parse errors
            raise CliError(f"--query {args.query!r}: {exc}") from None
    output = args.output
    if output == "none":
        return
    if output == "table" and kind is not None and not getattr(args, "query", None):
        rows = result if isinstance(result, list) else [result]
        if kind == "vmss":
            for row in rows:
                row["resourceGroup"] = row.get("id", "").split("/")[4] if row.get("id") else ""
        print(table(rows, kind))
    elif output == "tsv":
        print(to_tsv(result))
    elif output in ("yaml", "yamlc"):
        print(to_yaml(result))
    else:
        print(json.dumps(result, indent=2))


# --- commands -----------------------------------------------------------------------------------------------


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
    if args.health_probe_port:
        profile["networkProfile"] = {
            "healthProbe": {"protocol": "Http", "port": args.health_probe_port, "requestPath": args.health_probe_path}
        }
    return {
        "location": args.location,
        "sku": {"name": "Standard_Container", "capacity": args.instance_count},
        "properties": {"upgradePolicy": {"mode": args.upgrade_policy_mode}, "virtualMachineProfile": profile},
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


def target_from_ids(client: Client, args: argparse.Namespace, provider: str, name_attr: str, flag: str) -> None:
    """The resource a command is about: the name flag and -g, or --ids with a full resource id (which names the
    subscription too), as az takes them. ``provider``: e.g. Microsoft.Compute/galleries."""
    if getattr(args, "ids", None):
        parts = args.ids.strip("/").split("/")
        lowered = [p.lower() for p in parts]
        if (
            len(parts) != 8
            or lowered[0] != "subscriptions"
            or lowered[2] != "resourcegroups"
            or "/".join(lowered[5:7]) != provider.lower()
        ):
            raise CliError(
                f"--ids {args.ids!r}: expected /subscriptions/SUB/resourceGroups/GROUP/providers/{provider}/NAME",
                EXIT_USAGE,
            )
        client.subscription, args.resource_group = parts[1], parts[3]
        setattr(args, name_attr, parts[7])
    elif not (getattr(args, name_attr) and args.resource_group):
        raise CliError(
            f"{flag} and --resource-group/-g are required (or --ids; a default group comes from "
            "`overhaul configure --defaults group=NAME`)",
            EXIT_USAGE,
        )


def scale_set_target(client: Client, args: argparse.Namespace) -> None:
    if args.vmss_command != "list" or getattr(args, "ids", None):
        target_from_ids(client, args, "Microsoft.Compute/virtualMachineScaleSets", "name", "--name/-n")


# Publishers of the extension types overhaul runs, so `vmss extension set` needs no --publisher for them.
EXTENSION_PUBLISHERS = {
    "applicationhealthlinux": ("Microsoft.ManagedServices", "2.0"),
    "customscript": ("Microsoft.Azure.Extensions", "2.1"),
}


def json_argument(flag: str, text: str | None) -> Any:
    """az's JSON arguments: inline JSON, or @FILE."""
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise CliError(f"{flag}: cannot read {text[1:]}: {exc.strerror}", EXIT_USAGE) from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{flag}: not valid JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(value, dict):
        raise CliError(f"{flag}: must be a JSON object", EXIT_USAGE)
    return value


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
        base = client.vmss(rg, args.name)
        if args.upgrade_command == "start":
            started = client.call("POST", base + "/osRollingUpgrade")
            if not args.no_wait:  # az waits for the end of a long-running operation unless told not to
                return watch_rolling_upgrade(client, args)
            emit(args, started, "latest")
        elif args.upgrade_command == "cancel":
            emit(args, client.call("POST", base + "/rollingUpgrades/cancel"), "latest")
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
        emit(args, client.call("GET", path), "imageversions")
    elif cmd == "delete":
        client.call("DELETE", path)
    elif cmd == "create":
        if not args.container_image:
            raise CliError("--container-image is required: the engine image this version is made from")
        publishing = {
            "excludeFromLatest": args.exclude_from_latest,
            "targetRegions": [{"name": r} for r in args.target_regions],
        }
        body = {
            "location": args.target_regions[0],
            "properties": {
                "publishingProfile": publishing,
                "storageProfile": {"source": {"overhaul": {"containerImage": args.container_image}}},
            },
        }
        emit(args, client.call("PUT", path, body), "imageversions")
    elif cmd == "update":
        patch: dict[str, Any] = {"properties": {"publishingProfile": {}}}
        if args.exclude_from_latest is not None:
            patch["properties"]["publishingProfile"]["excludeFromLatest"] = args.exclude_from_latest
        if args.target_regions:
            patch["properties"]["publishingProfile"]["targetRegions"] = [{"name": r} for r in args.target_regions]
        apply_sets(patch, args.set)
        emit(args, client.call("PATCH", path, patch), "imageversions")
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


def truthy(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def common_arguments() -> argparse.ArgumentParser:
    """The flags every command takes (az's global arguments)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        default=os.environ.get("OVERHAUL_ENDPOINT", f"http://127.0.0.1:{DEFAULT_PORT}"),
        help="the orchestrator's URL (env OVERHAUL_ENDPOINT)",
    )
    common.add_argument(
        "--token-file",
        help="file holding the API token (default: STATE_DIR/token, STATE_DIR from OVERHAUL_STATE_DIR; "
        "or the token itself in OVERHAUL_TOKEN)",
    )
    common.add_argument("--subscription", help="default: `overhaul configure --defaults subscription=…`, else local")
    common.add_argument("--debug", action="store_true", help="print every request and answer to stderr")
    common.add_argument("--verbose", action="store_true", help="print each request, its status and duration to stderr")
    common.add_argument(
        "-o", "--output", choices=["json", "jsonc", "table", "tsv", "yaml", "yamlc", "none"], default="json"
    )
    common.add_argument("--query", help="JMESPath query applied to the result, as az's --query")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overhaul",
        description="Health-gated automatic OS image upgrades for scale sets of local containers (az-shaped).",
        epilog="Start the service with `overhaul serve`; the other commands talk to it. "
        "Example: overhaul vmss rolling-upgrade start --name web --resource-group demo --wait",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = common_arguments()
    groups = parser.add_subparsers(dest="group", required=True)

    configure_parser = groups.add_parser("configure", help="defaults for later commands, as `az configure`")
    configure_parser.add_argument(
        "--defaults", nargs="*", metavar="KEY=VALUE", help="group=NAME subscription=ID location=LOC (empty clears)"
    )
    shell_help = "print a shell completion script: source <(overhaul completion bash)"
    groups.add_parser("completion", help=shell_help).add_argument("shell", choices=["bash"])
    # `overhaul serve ...` is handed to the server's own parser before this one runs (see main): the client
    # commands never import the server. Listed here so that `overhaul --help` shows it.
    groups.add_parser("serve", help="run the orchestrator service (overhaul serve --help lists its settings)")

    add_vmss_commands(groups, common)
    add_gallery_commands(groups, common)
    add_network_commands(groups, common)
    return parser


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


GALLERY_ACTIONS = {
    "create": "create a gallery (or update its location and description)",
    "list": "list galleries (of a resource group with -g)",
    "show": "show a gallery",
    "delete": "delete a gallery (it must hold no image definitions)",
}


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

    create = scale_set_command("create", "create a scale set")
    create.add_argument("--image", help="publisher:offer:sku:version (version may be latest) or a gallery image id")
    create.add_argument("--instance-count", type=int, default=2)
    create.add_argument("--upgrade-policy-mode", default="Automatic", choices=["Automatic", "Manual", "Rolling"])
    create.add_argument("--data-disk-sizes-gb", type=int, nargs="*")
    create.add_argument("--location", default="local")
    create.add_argument("--health-probe-port", type=int, help="container port of an HTTP health endpoint")
    create.add_argument("--health-probe-path", default="/health")
    create.add_argument("--file", help="the whole model as Azure JSON (instead of the flags above)")
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
    scale_set_command("delete", "delete a scale set with its instances and data disks")
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
    rolling = scale_set_command("rolling-upgrade", "start, cancel or follow a rolling upgrade")
    rolling.add_argument("upgrade_command", choices=["start", "cancel", "get-latest"])
    rolling.add_argument(
        "--wait",
        action="store_true",
        help="with get-latest: follow the attempt batch by batch; exit non-zero unless it completes "
        "(start always follows it unless --no-wait)",
    )
    rolling.add_argument("--no-wait", action="store_true", help="with start: return once it has started")


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


def add_gallery_commands(groups: Any, common: argparse.ArgumentParser) -> None:
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
    version.add_argument("--exclude-from-latest", type=truthy, nargs="?", const=True, default=None)
    version.add_argument("--target-regions", nargs="*", default=[])
    version.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="with update: e.g. overhaul.quarantined=false (lets 'latest' pick a version an attempt Faulted on)",
    )

    vm = groups.add_parser("vm", help="virtual machine images").add_subparsers(dest="vm_group", required=True)
    image = vm.add_parser("image", help="images").add_subparsers(dest="image_command", required=True)
    image_list = image.add_parser("list", help="list image versions of a sku", parents=[common])
    image_list.add_argument("--location", "-l", default="local")
    image_list.add_argument("--publisher", "-p", required=True)
    image_list.add_argument("--offer", "-f", required=True)
    image_list.add_argument("--sku", "-s", required=True)
    image_list.add_argument("--all", action="store_true", help="every version, not only the latest")


def completion_words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Command path ("overhaul", "overhaul vmss rolling-upgrade", ...) -> the words that may follow it."""
    table: dict[str, list[str]] = {}

    def walk(node: argparse.ArgumentParser, path: list[str]) -> None:
        words: set[str] = set()
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words.add(name)
                    walk(sub, [*path, name])
            elif action.option_strings:
                words.update(o for o in action.option_strings if o.startswith("--"))
            elif action.choices:
                words.update(str(c) for c in action.choices)
        table[" ".join(path)] = sorted(words)

    walk(parser, ["overhaul"])
    return table


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for every command and flag: `source <(overhaul completion bash)`."""
    entries = "\n".join(f'    ["{path}"]="{" ".join(words)}"' for path, words in completion_words(parser).items())
    return f"""# bash completion for overhaul: source <(overhaul completion bash)
declare -gA _overhaul_words=(
{entries}
)
_overhaul() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="overhaul" word next
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        next="$path $word"
        [[ $word != -* && -n "${{_overhaul_words[$next]+x}}" ]] && path="$next"
    done
    COMPREPLY=($(compgen -W "${{_overhaul_words[$path]}}" -- "$cur"))
}}
complete -F _overhaul overhaul
"""


def apply_defaults(args: argparse.Namespace, defaults: dict[str, str]) -> None:
    """What the command leaves out comes from `overhaul configure --defaults`, as az's defaults."""
    if getattr(args, "resource_group", None) in (None, "") and "group" in defaults and args.group != "vm":
        args.resource_group = defaults["group"]
    if getattr(args, "subscription", None) is None:
        args.subscription = defaults.get("subscription", "local")
    listing = getattr(args, "sig_command", None) == "list" or getattr(args, "lb_command", None) == "list"
    if args.group in ("sig", "network") and not args.resource_group and not listing and not getattr(args, "ids", None):
        raise CliError("--resource-group/-g is required (or `overhaul configure --defaults group=NAME`)", EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        server = importlib.import_module("overhaul.serve")
        return int(server.main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.group == "configure":
            return configure(args)
        if args.group == "completion":
            print(bash_completion(parser), end="")
            return 0
        apply_defaults(args, load_defaults())
        client = Client(args.endpoint, find_token(args), args.subscription, debug=args.debug, verbose=args.verbose)
        if args.group == "vmss":
            return run_vmss(client, args)
        if args.group == "sig":
            return run_sig(client, sig_defaults(args))
        if args.group == "network":
            return run_network(client, args)
        return run_vm_image(client, args)
    except CliError as exc:
        print(f"overhaul: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Only the CLI stops: what it was following goes on in `overhaul serve`.
        print(
            "overhaul: interrupted; a rolling upgrade that was started goes on "
            "(overhaul vmss rolling-upgrade get-latest --wait … follows it again)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
