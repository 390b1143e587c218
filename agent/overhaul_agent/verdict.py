"""Pure: the agent's reported health from the probe state machine and the extensions' provisioning states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from overhaul_agent.extension_plan import ExtensionStatus, ProvisioningState
from overhaul_agent.health_state import ProbeMachine
from overhaul_agent.probe_body import HealthState


@dataclass(frozen=True)
class Verdict:
    state: HealthState
    reason: str


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def combine(machine: ProbeMachine | None, extensions: Sequence[ExtensionStatus]) -> Verdict:
    """A failed extension makes the instance Unhealthy; one still running keeps it Initializing."""
    for ext in extensions:
        if ext.state is ProvisioningState.FAILED:
            tail = _last_line(ext.stderr_tail)
            code = f" with exit code {ext.exit_code}" if ext.exit_code is not None else ""
            detail = f": {ext.message}" if ext.message else ""
            stderr = f"; stderr: {tail}" if tail else ""
            return Verdict(HealthState.UNHEALTHY, f"extension {ext.name} failed{code}{detail}{stderr}")
    for ext in extensions:
        if ext.state is ProvisioningState.TRANSITIONING:
            return Verdict(HealthState.INITIALIZING, f"extension {ext.name} is transitioning")
    if machine is None:
        return Verdict(HealthState.INITIALIZING, "probing has not started")
    return Verdict(machine.state, machine.reason)
