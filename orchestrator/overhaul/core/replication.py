"""A gallery version's copies on the hosts of its target locations, and Azure's ReplicationStatus over them (pure).

The orchestrator's own engine holds each published image (it is checked there before the version is kept); a copy
goes to every host of each target location. A location counts a version as there ('latest', an exact version)
once every copy made for its publication is Completed; a host added later catches up without taking the version
away from the location meanwhile (its batches wait for the image instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ReplicaState(StrEnum):
    """Azure's ReplicationState, one host's copy."""

    UNKNOWN = "Unknown"  # not started yet
    REPLICATING = "Replicating"
    COMPLETED = "Completed"
    FAILED = "Failed"


@dataclass(frozen=True)
class Replica:
    """One host's copy of a version's container image."""

    host: str  # the host's id
    location: str
    state: ReplicaState = ReplicaState.UNKNOWN
    progress: int = 0  # percent
    details: str = ""  # why it failed (the engine's words)
    catch_up: bool = False  # made for a host added after the version was published
    updated: float = 0.0  # wall-clock time of the last change

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "location": self.location,
            "state": self.state.value,
            "progress": self.progress,
            "details": self.details,
            "catchUp": self.catch_up,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Replica:
        return cls(
            doc["host"],
            doc["location"],
            ReplicaState(doc["state"]),
            int(doc["progress"]),
            doc["details"],
            bool(doc["catchUp"]),
            float(doc["updated"]),
        )


def host_label(host_id: str) -> str:
    """``group/host`` from a host's id."""
    parts = host_id.split("/")
    return "/".join(parts[-3::2]) if len(parts) >= 3 else host_id


def _of(replicas: Iterable[Replica], location: str) -> list[Replica]:
    return [r for r in replicas if r.location.lower() == location.lower()]


def available_in(replicas: Iterable[Replica], location: str) -> bool:
    """Every copy made for the publication in the location is Completed (none: the image needs no copy there)."""
    return all(r.state is ReplicaState.COMPLETED for r in _of(replicas, location) if not r.catch_up)


def region_state(replicas: Sequence[Replica]) -> ReplicaState:
    """One location's state over its hosts' copies: Failed if one failed, Replicating while one is not done."""
    states = {r.state for r in replicas}
    if ReplicaState.FAILED in states:
        return ReplicaState.FAILED
    if states - {ReplicaState.COMPLETED}:
        return ReplicaState.REPLICATING
    return ReplicaState.COMPLETED


def replication_status(locations: Sequence[str], replicas: Sequence[Replica]) -> dict[str, Any]:
    """``properties.replicationStatus`` as Azure's ``$expand=ReplicationStatus`` shows it: one summary per target
    location (its progress the mean of its hosts'; its details the failures, each naming its host)."""
    summary = []
    for location in locations:
        mine = _of(replicas, location)
        state = region_state(mine)
        progress = round(sum(r.progress for r in mine) / len(mine)) if mine else 100
        details = "; ".join(f"host {host_label(r.host)}: {r.details}" for r in mine if r.state is ReplicaState.FAILED)
        summary.append({"region": location, "state": state.value, "details": details, "progress": progress})
    states = {s["state"] for s in summary}
    aggregated = (
        "Failed"
        if ReplicaState.FAILED.value in states
        else "InProgress"
        if states - {ReplicaState.COMPLETED.value}
        else "Completed"
    )
    return {"aggregatedState": aggregated, "summary": summary}


def copies_due(replicas: Iterable[Replica], now: float, retry_after: float) -> list[Replica]:
    """The copies to make now: those not started or left half done, and failed ones once ``retry_after`` passed."""
    return [
        r
        for r in replicas
        if r.state in (ReplicaState.UNKNOWN, ReplicaState.REPLICATING)
        or (r.state is ReplicaState.FAILED and now >= r.updated + retry_after)
    ]
