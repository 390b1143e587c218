"""Pure: the generic ARM-JSON toolkit every resource parser uses: a reader that names the JSON path of whatever is
wrong, ISO 8601 durations, the resource envelope ARM checks on every body, overlay (what was sent, under what the
model acts on) and JSON merge patch (Azure's PATCH)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DURATION_PATTERN = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class ModelError(ValueError):
    """Invalid model. ``path`` is the JSON path of the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def parse_duration(text: Any, path: str) -> float:
    """ISO 8601 duration (Azure's ``PT5M``) to seconds."""
    if not isinstance(text, str):
        raise ModelError(path, f"must be an ISO 8601 duration such as PT30S, got {text!r}")
    match = DURATION_PATTERN.match(text.strip().upper())
    if match is None or text.strip().upper() in ("P", "PT"):
        raise ModelError(path, f"must be an ISO 8601 duration such as PT30S, got {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def parse_timestamp(text: Any, path: str) -> float:
    """An ISO 8601 UTC timestamp (ARM's ``2026-12-03T10:00:00Z``; no offset means UTC) to epoch seconds."""
    if not isinstance(text, str):
        raise ModelError(path, f"must be an ISO 8601 timestamp such as 2026-12-03T10:00:00Z, got {text!r}")
    try:
        parsed = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ModelError(path, f"must be an ISO 8601 timestamp such as 2026-12-03T10:00:00Z, got {text!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def format_duration(seconds: float) -> str:
    whole = int(seconds)
    if whole != seconds:
        return f"PT{seconds:g}S"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    return text if text != "PT" else "PT0S"


class Reader:
    """Typed access to one JSON object with paths in every error."""

    def __init__(self, doc: Any, path: str) -> None:
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise ModelError(path, "must be a JSON object")
        self.doc = doc
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def obj(self, key: str) -> Reader:
        return Reader(self.doc.get(key), self.at(key))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.doc.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ModelError(self.at(key), f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int | None, low: int, high: int) -> int:
        value = self.doc.get(key, default)
        if value is None:
            raise ModelError(self.at(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(self.at(key), f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise ModelError(self.at(key), f"must be {low}..{high}, got {value}")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self.doc.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ModelError(self.at(key), f"must be a string, got {type(value).__name__}")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise ModelError(self.at(key), "is required")
        return value


def overlay(base: Any, top: Any) -> Any:
    """``top`` laid over ``base``: objects merge key by key, lists of objects item by item, anything else is
    ``top``'s. What the model acts on comes from ``top``; every other field of ``base`` stays as it was sent."""
    if isinstance(base, Mapping) and isinstance(top, Mapping):
        merged = {key: copy.deepcopy(value) for key, value in base.items()}
        for key, value in top.items():
            merged[key] = overlay(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(top, list) and len(base) == len(top):
        return [overlay(b, t) if isinstance(b, Mapping) else t for b, t in zip(base, top, strict=True)]
    return top


def resource_envelope(doc: Any, name: str) -> tuple[Mapping[str, Any], str, Mapping[str, Any]]:
    """A top-level resource's body checked as ARM checks every one: (the body, its location, its properties)."""
    if not NAME_PATTERN.match(name):
        raise ModelError("name", f"must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
    if not isinstance(doc, Mapping):
        raise ModelError("", "must be a JSON object")
    location = doc.get("location", "local")
    if not isinstance(location, str) or not location:
        raise ModelError("location", f"must be a location name, got {location!r}")
    props = doc.get("properties") or {}
    if not isinstance(props, Mapping):
        raise ModelError("properties", "must be a JSON object")
    return doc, location, props


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386), as Azure's PATCH applies it."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result
