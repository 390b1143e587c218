"""What commands print: az's output formats (json, jsonc, table, tsv, yaml, yamlc, none) after a --query."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Mapping
from typing import Any

from overhaul.cli.client import (
    CliError,
)

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
        ("DiskImage", "properties.storageProfile.source.overhaul.diskImage"),
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
