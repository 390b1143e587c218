"""The events port: what happened, for whoever listens (metrics, logs, waiters). Listeners subscribe; nobody
patches a collaborator's callbacks from outside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from overhaul.core.rollout import ActionResult, Attempt


@dataclass(frozen=True)
class AttemptChanged:
    """An attempt was saved (started, stepped, or ended)."""

    attempt: Attempt


@dataclass(frozen=True)
class AttemptEnded:
    """An attempt's status became terminal (Completed, Faulted, Cancelled): emitted once per attempt."""

    attempt: Attempt


@dataclass(frozen=True)
class ActionFinished:
    """A driver action of an attempt ended (after its retries of transient errors)."""

    scale_set: str
    result: ActionResult


@dataclass(frozen=True)
class TransientError:
    """An engine call failed in a way that says nothing about the instance; it is retried."""

    scale_set: str
    what: str
    error: str


@dataclass(frozen=True)
class AutoUpgradesChecked:
    """The automatic-upgrade watcher looked at every scale set, as of change ``seen`` of the orchestrator's
    changes (a publish, a model update, an attempt's end): anything due by then was started."""

    seen: int


Event = AttemptChanged | AttemptEnded | ActionFinished | TransientError | AutoUpgradesChecked
Listener = Callable[[Event], None]


class Events(Protocol):
    def subscribe(self, listener: Listener) -> None: ...

    def emit(self, event: Event) -> None: ...
