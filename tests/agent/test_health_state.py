"""The pure state machine, table-driven against each of Azure's rules."""

from __future__ import annotations

import pytest

from overhaul_agent.health_state import ProbeMachine
from overhaul_agent.probe_body import HealthState

H, U, K, INIT = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.UNKNOWN, HealthState.INITIALIZING


def run(
    results: list[HealthState], *, probes: int, grace: float, fallback: HealthState, interval: float = 1.0
) -> list[HealthState]:
    """Feeds one result per interval starting at t=interval; returns the committed state after each."""
    machine = ProbeMachine.start(number_of_probes=probes, grace_period=grace, fallback=fallback, now=0.0)
    seen = []
    for i, result in enumerate(results, start=1):
        machine = machine.observe(result, now=i * interval)
        seen.append(machine.state)
    return seen


@pytest.mark.parametrize(
    ("name", "results", "probes", "grace", "fallback", "expected"),
    [
        ("initializing through grace", [K, K], 1, 10, K, [INIT, INIT]),
        ("one healthy ends grace at once with numberOfProbes=1", [H], 1, 10, K, [H]),
        ("grace ends early only after N equal results", [H, H, H], 3, 10, K, [INIT, INIT, H]),
        (
            "a different result resets the streak",
            [H, H, K, H, H, H],
            3,
            10,
            K,
            [INIT, INIT, INIT, INIT, INIT, H],
        ),
        ("http: Unhealthy x N ends grace early", [U, U], 2, 10, K, [INIT, U]),
        ("http: Unknown is the fallback and does not end grace", [K, K, K], 2, 10, K, [INIT, INIT, INIT]),
        ("tcp: Unhealthy is the fallback and does not end grace", [U, U, U], 2, 10, U, [INIT, INIT, INIT]),
        ("http: grace expiry commits Unknown", [K, K, K, K], 3, 2.5, K, [INIT, INIT, K, K]),
        ("tcp: grace expiry commits Unhealthy", [U, U, U], 5, 2.5, U, [INIT, INIT, U]),
        ("expiry keeps a partial streak counting", [K, H, H, H], 3, 2.5, K, [INIT, INIT, K, H]),
        ("after grace N equal results change state", [H, U, U, H, H], 2, 10, K, [INIT, INIT, U, U, H]),
        (
            "after grace a single flap does not change state",
            [H, H, U, H, U, H],
            2,
            10,
            K,
            [INIT, H, H, H, H, H],
        ),
        ("after grace Unknown commits after N", [H, K, K, K], 3, 0.5, K, [K, K, K, K]),
        ("numberOfProbes=1 follows every change", [H, U, K, H], 1, 10, K, [H, U, K, H]),
    ],
)
def test_rules(  # noqa: PLR0917
    name: str,
    results: list[HealthState],
    probes: int,
    grace: float,
    fallback: HealthState,
    expected: list[HealthState],
) -> None:
    assert run(results, probes=probes, grace=grace, fallback=fallback) == expected, name


def test_grace_expiry_by_tick_without_probes() -> None:
    machine = ProbeMachine.start(number_of_probes=2, grace_period=30, fallback=K, now=100.0)
    assert machine.tick(129.9).state is INIT
    expired = machine.tick(130.0)
    assert expired.state is K
    assert expired.since == 130.0
    assert "grace period expired" in expired.reason


def test_since_and_reason_change_only_on_commit() -> None:
    machine = ProbeMachine.start(number_of_probes=2, grace_period=30, fallback=K, now=0.0)
    machine = machine.observe(H, 1.0, "HTTP 200")
    assert machine.since == 0.0
    machine = machine.observe(H, 2.0, "HTTP 200")
    assert machine.state is H and machine.since == 2.0
    assert machine.reason == "2 consecutive probe(s) Healthy: HTTP 200"
    machine = machine.observe(H, 3.0)
    assert machine.since == 2.0


def test_a_verdict_forced_by_the_grace_period_says_what_the_last_probe_saw() -> None:
    machine = ProbeMachine.start(number_of_probes=2, grace_period=5, fallback=HealthState.UNKNOWN, now=0)
    machine = machine.observe(HealthState.UNKNOWN, 1, "connection refused")
    machine = machine.tick(6)
    assert machine.state is HealthState.UNKNOWN
    assert machine.reason.endswith("; last probe: connection refused"), machine.reason
