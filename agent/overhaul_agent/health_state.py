"""Pure state machine of Azure's rich health states. No I/O: time comes in as ``now`` (monotonic seconds)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from overhaul_agent.probe_body import HealthState


@dataclass(frozen=True)
class ProbeMachine:
    """The committed health state and the streak of equal probe results that may change it.

    Rules (Azure's Application Health extension, rich states):
    - ``Initializing`` from the start through the grace period;
    - the grace period ends early on ``number_of_probes`` consecutive equal results that differ from the
      fallback, and that result commits;
    - when the grace period expires still Initializing, the fallback commits (Unhealthy for tcp, Unknown
      for http/https);
    - afterwards a different state commits after ``number_of_probes`` consecutive equal results.
    """

    number_of_probes: int
    grace_deadline: float
    fallback: HealthState
    state: HealthState = HealthState.INITIALIZING
    since: float = 0.0
    reason: str = "grace period: waiting for consistent probe results"
    streak_state: HealthState | None = None
    streak_count: int = 0
    last_detail: str = ""  # what the latest probe said, for the reason of a verdict the grace period forces

    @classmethod
    def start(cls, *, number_of_probes: int, grace_period: float, fallback: HealthState, now: float) -> ProbeMachine:
        return cls(
            number_of_probes=number_of_probes,
            grace_deadline=now + grace_period,
            fallback=fallback,
            since=now,
        )

    @property
    def in_grace(self) -> bool:
        return self.state is HealthState.INITIALIZING

    def _commit(self, state: HealthState, now: float, reason: str) -> ProbeMachine:
        if state is self.state:
            return self
        return replace(self, state=state, since=now, reason=reason)

    def tick(self, now: float) -> ProbeMachine:
        """Apply the grace period's expiry; call it before each observation and on timers."""
        if self.in_grace and now >= self.grace_deadline:
            last = f"; last probe: {self.last_detail}" if self.last_detail else ""
            return self._commit(
                self.fallback,
                now,
                f"grace period expired without {self.number_of_probes} consistent probe result(s){last}",
            )
        return self

    def observe(self, result: HealthState, now: float, detail: str = "") -> ProbeMachine:
        """Fold one probe result (Healthy, Unhealthy or Unknown) into the machine."""
        machine = replace(self.tick(now), last_detail=detail[:200])
        if result is machine.streak_state:
            machine = replace(machine, streak_count=machine.streak_count + 1)
        else:
            machine = replace(machine, streak_state=result, streak_count=1)
        if machine.streak_count < machine.number_of_probes or result is machine.state:
            return machine
        if machine.in_grace and result is machine.fallback:
            # Results equal to the fallback do not end the grace period early.
            return machine
        suffix = f": {detail}" if detail else ""
        return machine._commit(result, now, f"{machine.streak_count} consecutive probe(s) {result.value}{suffix}")
