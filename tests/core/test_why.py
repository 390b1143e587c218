"""Every cause `why` gives, from plain data: its stable code, the rule and threshold beside the observed value,
the instances, and the next automatic action with its time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import Health, InstanceView
from overhaul.core.rollout import (
    MAX_UNHEALTHY_UPGRADED,
    Attempt,
    AttemptStatus,
    InstanceProgress,
    Step,
)
from overhaul.core.triage import Blame, Fault
from overhaul.core.why import Context, Gallery, Restarting, Retrying, attempt_causes, scale_set_causes
from tests.builders import platform_attempt

NOW = 1_000_000.0
TARGET = "--resource-group rg --name web"
CONTEXT = Context(TARGET)


def views(n: int = 4, **overrides: object) -> dict[int, InstanceView]:
    return {i: InstanceView(i, "1.0.0", Health.HEALTHY, observed_at=NOW, **overrides) for i in range(n)}  # type: ignore[arg-type]


def begun(seen: dict[int, InstanceView], policy: RollingUpgradePolicy, now: float) -> Attempt:
    return platform_attempt(seen, policy, now)


def attempt(**overrides: object) -> Attempt:
    policy = RollingUpgradePolicy(pause_time_between_batches=30.0, instance_health_timeout=120.0)
    return replace(begun(views(), policy, NOW - 60), **overrides)  # type: ignore[arg-type]


def codes(causes: list) -> list[str]:  # type: ignore[type-arg]
    return [c.code for c in causes]


def test_an_instance_waiting_for_health_says_its_health_and_deadline() -> None:
    waiting = InstanceProgress(0, Step.WAITING, NOW - 10, deadline=NOW + 110)
    seen = {0: InstanceView(0, "2.0.0", Health.INITIALIZING, observed_at=NOW, detail="grace period: 20s left")}
    [cause] = attempt_causes(attempt(instances={0: waiting}, batch=(0,)), seen, NOW, CONTEXT)
    assert cause.code == "WaitingForHealth" and cause.instances == (0,)
    assert cause.rule == "instanceHealthTimeout" and cause.threshold == 120.0
    assert cause.next_at == NOW + 110 and "rolled back" in (cause.next_action or "")
    assert "Initializing (grace period: 20s left)" in cause.message
    assert "Next in 110s" in cause.paragraph(NOW)


def test_instances_awaiting_approval_say_how_to_approve_them() -> None:
    told = {i: InstanceProgress(i, Step.AWAITING_APPROVAL, NOW - 5) for i in (0, 1)}
    [cause] = attempt_causes(attempt(instances=told, batch=(0, 1), deferred=True), views(), NOW, CONTEXT)
    assert cause.code == "AwaitingApproval" and cause.instances == (0, 1)
    assert f"approve-rolling-upgrade {TARGET} --instance-ids 0 1" in cause.unblock


def test_a_pause_between_batches_says_when_the_next_batch_starts() -> None:
    [cause] = attempt_causes(attempt(pause_until=NOW + 25, batches_started=1), views(), NOW, CONTEXT)
    assert cause.code == "PauseBetweenBatches" and cause.next_at == NOW + 25
    assert cause.rule == "pauseTimeBetweenBatches" and cause.threshold == 30.0
    assert "start batch 2" in (cause.next_action or "")


def test_a_cancel_in_flight_says_the_batch_finishes_first() -> None:
    reimaging = {0: InstanceProgress(0, Step.WAITING, NOW)}
    causes = attempt_causes(attempt(instances=reimaging, batch=(0,), cancel_requested=True), views(), NOW, CONTEXT)
    assert "CancelRequested" in codes(causes)


def test_skip_upgrade_from_the_application_is_named() -> None:
    seen = views()
    seen[2] = replace(seen[2], skip_upgrade=True)
    [cause] = attempt_causes(attempt(), seen, NOW, CONTEXT)
    assert cause.code == "SkipUpgradeRequested" and cause.instances == (2,)


@pytest.mark.parametrize("fault", [f for f in Fault if f.blame is Blame.INFRASTRUCTURE])
def test_a_step_retried_through_an_infrastructure_fault_says_the_fault_and_its_deadline(fault: Fault) -> None:
    reimaging = {1: InstanceProgress(1, Step.REIMAGING, NOW - 30)}
    retry = Retrying(fault, "reimage: the engine said so", NOW - 30, NOW + 5, deadline=NOW + 570)
    context = Context(TARGET, {1: retry})
    [cause] = attempt_causes(attempt(instances=reimaging, batch=(1,)), views(), NOW, context)
    assert cause.code == fault.value and cause.instances == (1,) and cause.since == NOW - 30
    assert cause.rule == "rollout.infra_deadline" and cause.next_at == NOW + 5
    assert "not version 2.0.0" in cause.message and cause.unblock


def test_an_attempt_refused_by_the_pre_check_says_observed_against_threshold() -> None:
    unhealthy = {i: InstanceView(i, "1.0.0", Health.UNHEALTHY, observed_at=NOW) for i in range(3)}
    refused = begun({**views(), **unhealthy}, RollingUpgradePolicy(), NOW)
    [cause] = attempt_causes(refused, {}, NOW, CONTEXT)
    assert cause.code == "PreCheckRefused" and cause.rule == "maxUnhealthyInstancePercent"
    assert cause.threshold == 20 and cause.observed == 75.0


def test_ended_attempts_say_why_they_ended() -> None:
    failed = {0: InstanceProgress(0, Step.ROLLED_BACK, NOW, error="Unhealthy")}
    faulted = attempt(instances=failed).finished(AttemptStatus.FAULTED, NOW, MAX_UNHEALTHY_UPGRADED, "too many")
    [cause] = attempt_causes(faulted, {}, NOW, CONTEXT)
    assert cause.code == MAX_UNHEALTHY_UPGRADED and cause.observed == 100.0 and cause.instances == (0,)
    cancelled = attempt().finished(AttemptStatus.CANCELLED, NOW, "OperationCancelled", "cancelled")
    assert codes(attempt_causes(cancelled, {}, NOW, CONTEXT)) == ["Cancelled"]
    interrupted = {0: InstanceProgress(0, Step.INTERRUPTED, NOW, fault=Fault.HOST_PORT_TAKEN)}
    ended = attempt(instances=interrupted).finished(AttemptStatus.FAULTED, NOW, "HostPortTaken", "ports")
    [cause] = attempt_causes(ended, {}, NOW, CONTEXT)
    assert cause.code == "HostPortTaken" and cause.instances == (0,) and "host port" in cause.unblock
    assert attempt_causes(attempt().finished(AttemptStatus.COMPLETED, NOW), {}, NOW, CONTEXT) == []


def test_with_no_attempt_the_target_and_the_engine_say_why_nothing_moves() -> None:
    gallery = Gallery(
        follows_latest=True,
        newest="3.0.0",
        newest_quarantine="Faulted on it",
        resolved="2.0.0",
        resolved_image="repo:2",
        image_present=False,
        gallery_args="--resource-group rg --gallery-name g --gallery-image-definition i",
    )
    causes = scale_set_causes(gallery, CONTEXT, engine_error="connection refused")
    assert codes(causes) == ["EngineUnavailable", "TargetQuarantined", "TargetImageMissing"]
    assert "--gallery-image-version 3.0.0 --set overhaul.quarantined=false" in causes[1].unblock
    assert scale_set_causes(replace(gallery, newest_quarantine=None, image_present=True), CONTEXT) == []


def test_instances_of_a_later_phase_are_named_while_an_earlier_phase_runs() -> None:
    seen = {i: replace(v, phase=1 if i < 2 else 2) for i, v in views().items()}
    waiting = {0: InstanceProgress(0, Step.WAITING, NOW, deadline=NOW + 60)}
    causes = attempt_causes(attempt(instances=waiting, batch=(0,)), seen, NOW, CONTEXT)
    phase = next(c for c in causes if c.code == "PhaseOrdering")
    assert phase.instances == (2, 3) and "phase 1" in phase.message and phase.rule == "PhaseOrderingNumber"
    assert "PhaseOrdering" not in codes(attempt_causes(attempt(instances=waiting, batch=(0,)), views(), NOW, CONTEXT))


def test_a_surged_batch_says_how_many_more_instances_run_than_the_capacity() -> None:
    surged = {i: InstanceProgress(i, Step.WAITING, NOW - 5, deadline=NOW + 100) for i in (0, 1)}
    policy = RollingUpgradePolicy(max_surge=True, instance_health_timeout=120.0)
    seen = {i: InstanceView(i, "2.0.0", Health.INITIALIZING, observed_at=NOW) for i in (0, 1)}
    causes = attempt_causes(attempt(instances=surged, batch=(0, 1), policy=policy), seen, NOW, CONTEXT)
    cause = next(c for c in causes if c.code == "SurgeCapacity")
    assert cause.observed == 6 and cause.threshold == 4 and cause.instances == (0, 1) and cause.rule == "maxSurge"
    in_place = attempt_causes(attempt(instances=surged, batch=(0, 1)), seen, NOW, CONTEXT)
    assert "SurgeCapacity" not in codes(in_place)


def test_a_newer_automatic_upgrade_held_back_by_the_attempt_in_flight_is_named() -> None:
    held = attempt_causes(attempt(), views(), NOW, Context(TARGET, automatic_target="3.0.0"))
    [cause] = held
    assert cause.code == "RollingUpgradeInProgress" and "3.0.0" in cause.message and "2.0.0" in cause.message
    assert f"rolling-upgrade cancel {TARGET}" in cause.unblock
    assert attempt_causes(attempt(), views(), NOW, Context(TARGET, automatic_target="2.0.0")) == []


@pytest.mark.parametrize(("storage", "code"), [(True, "StorageUnavailable"), (False, "AttemptRestarting")])
def test_a_stopped_reconciler_says_why_and_when_it_resumes(storage: bool, code: str) -> None:
    stopped = Restarting("disk I/O error", storage, NOW - 3, NOW + 2)
    [cause] = attempt_causes(attempt(), views(), NOW, Context(TARGET, restarting=stopped))
    assert cause.code == code and cause.next_at == NOW + 2 and "disk I/O error" in cause.message
