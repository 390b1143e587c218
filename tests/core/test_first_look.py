"""A restarted orchestrator has not heard from any instance yet (pure, core/rollout.py): until the health source's
first word on an instance, or FIRST_LOOK seconds after the attempt was resumed, that instance is neither failed for
its health timeout nor counted against maxUnhealthyInstancePercent, and no batch starts on a guess."""

from __future__ import annotations

from dataclasses import dataclass, field

from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import Health, InstanceView
from overhaul.core.rollout import (
    FIRST_LOOK,
    ActionKind,
    ActionResult,
    Attempt,
    AttemptStatus,
    StartedBy,
    Step,
    apply_result,
    decide,
    resume,
    start,
)


@dataclass
class Fleet:
    versions: dict[int, str]
    unseen: set[int] = field(default_factory=set)  # no word from their health source yet (just restarted)
    now: float = 1000.0

    def views(self) -> dict[int, InstanceView]:
        return {
            i: InstanceView(i, v, Health.UNKNOWN)
            if i in self.unseen
            else InstanceView(i, v, Health.HEALTHY, observed_at=self.now)
            for i, v in self.versions.items()
        }

    def begin(self) -> Attempt:
        return start(
            attempt_id="a",
            scale_set="web",
            target_version="v2",
            started_by=StartedBy.PLATFORM,
            disable_automatic_rollback=False,
            policy=RollingUpgradePolicy(max_batch_instance_percent=20, instance_health_timeout=60),
            capacity=len(self.versions),
            views=self.views(),
            now=self.now,
        )

    def step(self, attempt: Attempt) -> Attempt:
        decision = decide(attempt, self.views(), self.now)
        attempt = decision.attempt
        for action in decision.actions:
            if action.kind is ActionKind.REIMAGE:
                self.versions[action.instance_id] = "v2"
            attempt = apply_result(attempt, ActionResult(action, ok=True), self.now)
        return attempt


def test_an_instance_past_its_health_timeout_is_not_failed_before_a_restarted_orchestrator_hears_from_it() -> None:
    fleet = Fleet(dict.fromkeys(range(5), "v1"))
    attempt = fleet.step(fleet.begin())
    assert attempt.batch == (0,) and attempt.instances[0].step is Step.WAITING
    # The orchestrator is down for ten minutes; restarted, it has no word on anyone yet.
    fleet.now += 600
    fleet.unseen = set(range(5))
    attempt = resume(attempt, fleet.now)
    attempt = fleet.step(attempt)
    assert attempt.instances[0].step is Step.WAITING and attempt.status is AttemptStatus.ROLLING_FORWARD
    fleet.unseen.clear()  # the first words: all Healthy, instance 0 on v2
    attempt = fleet.step(attempt)
    assert attempt.instances[0].step.succeeded and attempt.failed == 0


def test_a_batch_does_not_start_on_health_not_yet_heard_and_first_look_is_bounded() -> None:
    fleet = Fleet(dict.fromkeys(range(5), "v1"))
    attempt = fleet.step(fleet.begin())
    fleet.now += 1
    attempt = fleet.step(attempt)  # instance 0 Healthy on v2: committed, and the next batch begun
    started = attempt.batches_started
    fleet.now += 30
    fleet.unseen = set(range(5))
    attempt = resume(attempt, fleet.now)
    attempt = fleet.step(attempt)
    # 5 of 5 Unknown would be 100 % unhealthy: not counted, and nothing new begins before their word.
    assert attempt.status is AttemptStatus.ROLLING_FORWARD and attempt.batches_started == started
    fleet.unseen = {4}  # the batch in flight is heard from (Healthy); one other instance's source stays silent
    attempt = fleet.step(attempt)
    assert attempt.failed == 0 and attempt.batches_started == started
    fleet.now += FIRST_LOOK  # then what is not heard from counts as before
    attempt = fleet.step(attempt)
    assert attempt.status is AttemptStatus.ROLLING_FORWARD and attempt.batches_started == started + 1
