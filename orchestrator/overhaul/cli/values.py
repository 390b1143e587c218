"""Values from the command line: --set paths, JSON or @FILE arguments, booleans."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from overhaul.cli.client import (
    EXIT_USAGE,
    CliError,
)


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
        if i == len(parts) - 1:
            target[key or part[0].lower() + part[1:]] = value  # a new last key in Azure's camelCase
            return
        if key is None or target[key] is None:
            # az: a path through properties the resource does not have is a mistake, not a new object.
            where = ".".join(parts[:i]) or "the resource"
            options = ", ".join(sorted(k for k in target if target[k] is not None)) if key is None else "none"
            raise CliError(f"--set {path}: Couldn't find '{part}' in '{where}'. Available options: {options}")
        child = target[key]
        if not isinstance(child, dict):
            raise CliError(f"--set {path}: {key} is not an object")
        target = child


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


def truthy(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
