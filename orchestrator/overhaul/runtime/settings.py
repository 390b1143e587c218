"""How the runtime paces itself: retries, restarts, timeouts. Every field is a `overhaul serve` setting."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeSettings:
    # How long one driver action may take before it is retried (a stop alone may take StopTimeout).
    action_timeout: float = 600.0
    # The engine is listed afresh at least this often during an attempt.
    observe_every: float = 30.0
    # ... and this often while an instance waiting for health cannot be reached: it may have exited.
    observe_unreachable_every: float = 1.0
    # Back-off between retries of an engine call that failed transiently (doubling up to the maximum).
    retry_min: float = 0.05
    retry_max: float = 5.0
    # How long a reimage is retried through an infrastructure fault (the engine down, a port taken, an image
    # missing) before the attempt ends naming it; the version is never blamed for it.
    infra_deadline: float = 600.0
    # How long instances on a host that does not answer are waited for once nothing else is left to upgrade.
    host_outage_timeout: float = 600.0
    # The gallery's copies to hosts: how many at once, how long one may take, when a failed one is tried again.
    replication_parallel: int = 3
    replication_timeout: float = 3600.0
    replication_retry: float = 60.0
    # The shortest maintenance window (OSImage) a configuration may have: Azure's 5 hours; shorter for labs.
    min_maintenance_window: float = 5 * 3600.0
    # Back-off between restarts of an attempt's reconciler that stopped on an unexpected error.
    restart_min: float = 0.5
    restart_max: float = 30.0
