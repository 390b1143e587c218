"""Pure mapping of one probe answer to a health result (Azure's rich health states)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_BODY_BYTES = 1024 * 1024


class HealthState(StrEnum):
    INITIALIZING = "Initializing"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class CustomMetrics:
    """The ``rollingUpgrade`` part of the application's ``customMetrics``."""

    phase_ordering_number: int | None
    skip_upgrade: bool

    def to_json(self) -> dict[str, Any]:
        rolling: dict[str, Any] = {"SkipUpgrade": self.skip_upgrade}
        if self.phase_ordering_number is not None:
            rolling["PhaseOrderingNumber"] = self.phase_ordering_number
        return {"rollingUpgrade": rolling}


@dataclass(frozen=True)
class BodyVerdict:
    state: HealthState
    detail: str
    custom_metrics: CustomMetrics | None = None
    custom_metrics_error: str | None = None


def parse_custom_metrics(raw: Any) -> tuple[CustomMetrics | None, str | None]:
    """``customMetrics`` is a string holding JSON; returns (metrics, error), never raises."""
    if not isinstance(raw, str):
        return None, f"customMetrics must be a string holding JSON, got {type(raw).__name__}"
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return None, f"customMetrics is not valid JSON: {str(exc)[:200]}"
    if not isinstance(doc, dict):
        return None, "customMetrics must hold a JSON object"
    rolling = doc.get("rollingUpgrade", {})
    if not isinstance(rolling, dict):
        return None, "customMetrics.rollingUpgrade must be an object"
    phase = rolling.get("PhaseOrderingNumber")
    if phase is not None and (isinstance(phase, bool) or not isinstance(phase, int) or phase < 0):
        return (
            None,
            f"customMetrics.rollingUpgrade.PhaseOrderingNumber must be a whole number >= 0, got {phase!r}",
        )
    skip = rolling.get("SkipUpgrade", False)
    if not isinstance(skip, bool):
        return None, f"customMetrics.rollingUpgrade.SkipUpgrade must be true or false, got {skip!r}"
    return CustomMetrics(phase_ordering_number=phase, skip_upgrade=skip), None


def _state_value(doc: dict[str, Any]) -> Any:
    # Azure matches the key case-insensitively.
    for key, value in doc.items():
        if key.lower() == "applicationhealthstate":
            return value
    return None


def parse_http_answer(status: int, body: bytes, *, truncated: bool = False) -> BodyVerdict:
    """Map an HTTP status and body to Healthy / Unhealthy / Unknown; total over all inputs."""
    if not 200 <= status < 300:
        return BodyVerdict(HealthState.UNKNOWN, f"HTTP status {status} is not 2xx")
    if truncated:
        return BodyVerdict(HealthState.UNKNOWN, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return BodyVerdict(HealthState.UNKNOWN, "body is not JSON")
    if not isinstance(doc, dict):
        return BodyVerdict(HealthState.UNKNOWN, "body is not a JSON object")
    value = _state_value(doc)
    if not isinstance(value, str) or value.lower() not in ("healthy", "unhealthy"):
        return BodyVerdict(
            HealthState.UNKNOWN, f"applicationHealthState must be Healthy or Unhealthy, got {value!r:.100}"
        )
    state = HealthState.HEALTHY if value.lower() == "healthy" else HealthState.UNHEALTHY
    metrics: CustomMetrics | None = None
    error: str | None = None
    for key, raw in doc.items():
        if key.lower() == "custommetrics":
            metrics, error = parse_custom_metrics(raw)
    return BodyVerdict(state, f"HTTP {status}: {state.value}", metrics, error)


@dataclass(frozen=True)
class ProbeResult:
    """One probe of the application: its state and what was seen."""

    state: HealthState
    detail: str
    at: float
    latency: float
    status_code: int | None = None
    custom_metrics: CustomMetrics | None = None
    custom_metrics_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "detail": self.detail,
            "time": self.at,
            "latencySeconds": round(self.latency, 6),
            "statusCode": self.status_code,
        }
