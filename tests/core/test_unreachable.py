"""Instances whose host does not answer (pure, core/rollout.py): Unknown, counted neither as failed nor against
maxUnhealthyInstancePercent; the rest of the fleet goes on; they are waited for up to the host outage timeout, then
the attempt ends Faulted (HostUnreachable) leaving them as they are; a host back before that is picked up."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import Health, InstanceView
from overhaul.core.rollout import (
    HOST_UNREACHABLE,
    ActionKind,
    ActionResult,
    Attempt,
    AttemptStatus,
    StartedBy,
    Step,
    apply_result,
    attempt_from_json,
    attempt_to_json,
    decide,
    start,
)


@dataclass
class Fleet:
    versions: dict[int, str]
    down: set[int] = field(default_factory=set)  # instances on a host that does not answer
    now: float = 1000.0
    touched: list[int] = field(default_factory=list)

    def views(self) -> dict[int, InstanceView]:
        return {
            i: InstanceView(i, None, Health.UNKNOWN, unreachable=True, detail="host rack/h2: no route")
            if i in self.down
            else InstanceView(i, v, Health.HEALTHY, observed_at=self.now)
            for i, v in self.versions.items()
        }

    def begin(self, capacity: int = 5, timeout: float = 600.0) -> Attempt:
        attempt = start(
            attempt_id="a",
            scale_set="web",
            target_version="v2",
            started_by=StartedBy.USER,
            disable_automatic_rollback=False,
            policy=RollingUpgradePolicy(max_batch_instance_percent=20, instance_health_timeout=60),
            capacity=capacity,
            views=self.views(),
            now=self.now,
        )
        return replace(attempt, host_outage_timeout=timeout)

    def step(self, attempt: Attempt) -> tuple[Attempt, float | None]:
        decision = decide(attempt, self.views(), self.now)
        attempt = decision.attempt
        for action in decision.actions:
            if action.kind is ActionKind.REIMAGE:
                assert action.instance_id not in self.down, "nothing is done on a host that does not answer"
                self.versions[action.instance_id] = "v2"
                self.touched.append(action.instance_id)
            attempt = apply_result(attempt, ActionResult(action, ok=True), self.now)
        return attempt, decision.wake_at

    def run_until_waiting(self, attempt: Attempt) -> tuple[Attempt, float | None]:
        for _ in range(100):
            attempt, wake = self.step(attempt)
            if attempt.done or (wake is not None and not attempt.batch):
                return attempt, wake
        raise AssertionError("no progress")


def test_the_reachable_instances_go_on_then_the_attempt_waits_and_ends_faulted_leaving_the_rest() -> None:
    fleet = Fleet(dict.fromkeys(range(5), "v1"), down={3, 4})
    attempt = fleet.begin()
    assert attempt.status is AttemptStatus.ROLLING_FORWARD  # 2 of 5 Unknown would be 40 % unhealthy: not counted
    attempt, wake = fleet.run_until_waiting(attempt)
    assert sorted(fleet.touched) == [0, 1, 2] and attempt.status is AttemptStatus.ROLLING_FORWARD
    assert wake == fleet.now + 600 and attempt.hosts_down_since == fleet.now and attempt.pending == 2
    assert attempt_from_json(attempt_to_json(attempt)) == attempt  # survives a restart
    fleet.now += 599
    attempt, _ = fleet.step(attempt)
    assert attempt.status is AttemptStatus.ROLLING_FORWARD
    fleet.now += 1
    attempt, _ = fleet.step(attempt)
    assert attempt.status is AttemptStatus.FAULTED and attempt.error_code == HOST_UNREACHABLE
    assert attempt.error_message is not None and "3 4" in attempt.error_message and "no route" in attempt.error_message
    assert fleet.versions[3] == fleet.versions[4] == "v1" and 3 not in attempt.instances


def test_a_host_back_before_the_timeout_is_picked_up_where_it_stopped() -> None:
    fleet = Fleet(dict.fromkeys(range(5), "v1"), down={4})
    attempt, _ = fleet.run_until_waiting(fleet.begin())
    fleet.now += 300
    fleet.down.clear()
    for _ in range(20):
        attempt, _ = fleet.step(attempt)
        if attempt.done:
            break
    assert attempt.status is AttemptStatus.COMPLETED and fleet.versions == dict.fromkeys(range(5), "v2")


def test_an_instance_waiting_for_health_is_not_failed_while_its_host_does_not_answer() -> None:
    fleet = Fleet(dict.fromkeys(range(5), "v1"))
    attempt = fleet.begin()
    attempt, _ = fleet.step(attempt)  # batch [0] reimaged, waiting for its health
    assert attempt.batch == (0,) and attempt.instances[0].step is Step.WAITING
    fleet.down.add(0)
    fleet.now += 3600  # far past its health timeout, but nothing is known of it
    attempt, _ = fleet.step(attempt)
    assert attempt.instances[0].step is Step.WAITING and attempt.failed == 0
    fleet.down.clear()  # back, and Healthy on v2
    attempt, _ = fleet.step(attempt)
    assert attempt.instances[0].step.succeeded
