"""The pure rollout core: table-driven rules and hypothesis properties over a simulated fleet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from overhaul.core.lifecycle_hooks import (
    ActionState,
    EventState,
    HookAction,
    HookType,
    LifecycleHook,
    Response,
    respond,
)
from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.narrate import Level, describe
from overhaul.core.planner import Health, InstanceView, batch_size, exceeds, plan_batches
from overhaul.core.rollout import (
    MAX_UNHEALTHY,
    MAX_UNHEALTHY_UPGRADED,
    Action,
    ActionKind,
    ActionResult,
    Attempt,
    AttemptStatus,
    StartedBy,
    Step,
    apply_result,
    approve,
    attempt_from_json,
    attempt_to_json,
    decide,
    request_cancel,
    resume,
    start,
)

HEALTHY = Health.HEALTHY
UNHEALTHY = Health.UNHEALTHY


@dataclass
class World:
    """A simulated fleet: versions per instance, and whether a version comes up healthy on an instance."""

    versions: dict[int, str]
    healthy_on: Callable[[int, str], bool]
    phases: dict[int, int] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    previous: dict[int, str] = field(default_factory=dict)
    now: float = 1000.0
    touched: list[tuple[ActionKind, int]] = field(default_factory=list)
    batches: list[tuple[int, ...]] = field(default_factory=list)
    fail_reimage: set[int] = field(default_factory=set)

    def views(self) -> dict[int, InstanceView]:
        return {
            i: InstanceView(
                i,
                v,
                HEALTHY if self.healthy_on(i, v) else UNHEALTHY,
                phase=self.phases.get(i),
                skip_upgrade=i in self.skip,
                observed_at=self.now,
            )
            for i, v in self.versions.items()
        }

    def act(self, attempt: Attempt, kind: ActionKind, instance_id: int) -> ActionResult:
        self.touched.append((kind, instance_id))
        action = Action(kind, instance_id)
        if kind is ActionKind.REIMAGE:
            if instance_id in self.fail_reimage:
                return ActionResult(action, ok=False, error="image missing")
            self.previous[instance_id] = self.versions[instance_id]
            self.versions[instance_id] = attempt.target_version
        elif kind is ActionKind.ROLLBACK:
            if instance_id in self.previous:
                self.versions[instance_id] = self.previous.pop(instance_id)
        else:
            self.previous.pop(instance_id, None)
        return ActionResult(action, ok=True)


def policy(**overrides: object) -> RollingUpgradePolicy:
    base = RollingUpgradePolicy(instance_health_timeout=60)
    return replace(base, **overrides)  # type: ignore[arg-type]


def run(
    world: World,
    *,
    started_by: StartedBy = StartedBy.PLATFORM,
    pol: RollingUpgradePolicy | None = None,
    target: str = "v2",
    disable_rollback: bool = False,
    cancel_after_actions: int | None = None,
    max_steps: int = 10_000,
) -> Attempt:
    """Drives decide/apply_result to the end; time jumps to the next wake-up when nothing happens."""
    pol = pol or policy()
    attempt = start(
        attempt_id="a1",
        scale_set="web",
        target_version=target,
        started_by=started_by,
        disable_automatic_rollback=disable_rollback,
        policy=pol,
        capacity=len(world.versions),
        views=world.views(),
        now=world.now,
    )
    actions_seen = 0
    for _ in range(max_steps):
        decision = decide(attempt, world.views(), world.now)
        attempt = decision.attempt
        if attempt.batch and (not world.batches or world.batches[-1] != attempt.batch):
            world.batches.append(attempt.batch)
        for action in decision.actions:
            attempt = apply_result(attempt, world.act(attempt, action.kind, action.instance_id), world.now)
            actions_seen += 1
            if cancel_after_actions is not None and actions_seen == cancel_after_actions:
                attempt = request_cancel(attempt, world.now)
        if attempt.done:
            return attempt
        if not decision.actions and not attempt.status.terminal:
            assert decision.wake_at is not None, "an attempt that waits must say until when"
            world.now = max(world.now + 1, decision.wake_at)
    raise AssertionError("attempt did not finish")


def fleet(n: int, version: str = "v1") -> dict[int, str]:
    return dict.fromkeys(range(n), version)


def always(i: int, v: str) -> bool:
    return True


def test_batch_size_rule() -> None:
    assert [batch_size(c, 20) for c in (1, 4, 5, 9, 10, 20, 100)] == [1, 1, 1, 1, 2, 4, 20]
    assert batch_size(10, 100) == 10


def test_exceeds_is_strictly_more_than() -> None:
    assert not exceeds(1, 5, 20)
    assert exceeds(2, 5, 20)
    assert not exceeds(0, 0, 0)


def test_plan_orders_by_phase_unhealthy_then_id() -> None:
    views = [
        InstanceView(0, "v1", HEALTHY),
        InstanceView(1, "v1", UNHEALTHY),
        InstanceView(2, "v1", HEALTHY, phase=1),
        InstanceView(3, "v1", HEALTHY, phase=0),
        InstanceView(4, "v2", HEALTHY),
        InstanceView(5, "v1", HEALTHY, skip_upgrade=True),
        InstanceView(6, "v1", UNHEALTHY, phase=0),
    ]
    pol = policy(max_batch_instance_percent=50, prioritize_unhealthy_instances=True)
    # capacity 7 x 50% = 3 per batch; phases never share a batch; v2 and SkipUpgrade are left alone.
    assert plan_batches(views, "v2", pol, 7) == [(6, 3), (2,), (1, 0)]
    assert plan_batches(views, "v2", policy(max_batch_instance_percent=50), 7) == [(3, 6), (2,), (0, 1)]


def test_v1_to_v2_in_batches_of_one() -> None:
    world = World(fleet(5), always)
    attempt = run(world)
    assert attempt.status is AttemptStatus.COMPLETED
    assert world.batches == [(0,), (1,), (2,), (3,), (4,)]
    assert set(world.versions.values()) == {"v2"}
    assert (attempt.successful, attempt.failed, attempt.pending) == (5, 0, 0)
    assert not world.previous  # every previous OS disk committed away


def test_batches_of_twenty_percent() -> None:
    world = World(fleet(10), always)
    run(world)
    assert world.batches == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def test_failing_version_is_rolled_back_and_faults() -> None:
    world = World(fleet(5), lambda i, v: v != "v3")
    attempt = run(world, target="v3")
    assert attempt.status is AttemptStatus.FAULTED
    assert attempt.error_code == MAX_UNHEALTHY_UPGRADED
    assert world.batches == [(0,)]
    assert world.versions == fleet(5)  # instance 0 restored, others untouched
    assert attempt.instances[0].step is Step.ROLLED_BACK
    assert "not Healthy within 60s" in (attempt.instances[0].error or "")
    assert (attempt.successful, attempt.failed) == (0, 1)


def test_health_timeout_is_respected() -> None:
    world = World(fleet(5), lambda i, v: v != "v3")
    attempt = run(world, target="v3", pol=policy(instance_health_timeout=120))
    rolled = attempt.instances[0]
    assert rolled.step is Step.ROLLED_BACK
    assert attempt.end_time is not None and attempt.end_time - attempt.start_time >= 120


def test_too_many_unhealthy_before_start() -> None:
    world = World(fleet(5), lambda i, v: i not in (1, 2))
    attempt = run(world)
    assert attempt.status is AttemptStatus.FAULTED
    assert attempt.error_code == MAX_UNHEALTHY
    assert world.touched == []


def test_one_unhealthy_of_five_is_within_the_limit_and_goes_first_when_prioritized() -> None:
    world = World(fleet(5), lambda i, v: i != 3 or v == "v2")
    attempt = run(world, pol=policy(prioritize_unhealthy_instances=True))
    assert attempt.status is AttemptStatus.COMPLETED
    assert world.batches[0] == (3,)


def test_manual_start_does_not_roll_back() -> None:
    world = World(fleet(5), lambda i, v: v != "v3")
    attempt = run(world, target="v3", started_by=StartedBy.USER)
    assert attempt.status is AttemptStatus.FAULTED
    assert attempt.instances[0].step is Step.FAILED
    assert world.versions[0] == "v3"  # left on the new version
    assert (ActionKind.ROLLBACK, 0) not in world.touched
    assert not world.previous  # but still exactly one OS disk


def test_disable_automatic_rollback() -> None:
    world = World(fleet(5), lambda i, v: v != "v3")
    attempt = run(world, target="v3", disable_rollback=True)
    assert attempt.instances[0].step is Step.FAILED
    assert world.versions[0] == "v3"


def test_failed_reimage_always_restores_the_previous_disk() -> None:
    world = World(fleet(5), always, fail_reimage={0})
    attempt = run(world, started_by=StartedBy.USER)
    assert attempt.instances[0].step is Step.ROLLED_BACK
    assert "reimage failed: image missing" in (attempt.instances[0].error or "")
    assert world.versions[0] == "v1"


def test_cancel_stops_after_the_batch_in_flight() -> None:
    world = World(fleet(10), always)
    attempt = run(world, cancel_after_actions=1)
    assert attempt.status is AttemptStatus.CANCELLED
    assert attempt.last_action == "Cancel"
    assert world.batches == [(0, 1)]
    assert [world.versions[i] for i in range(4)] == ["v2", "v2", "v1", "v1"]


def test_phases_and_skip_upgrade() -> None:
    world = World(fleet(5), always, phases={4: 0, 3: 1}, skip={2})
    attempt = run(world)
    assert world.batches == [(4,), (3,), (0,), (1,)]
    assert world.versions[2] == "v1"
    assert attempt.status is AttemptStatus.COMPLETED


def test_pause_between_batches() -> None:
    world = World(fleet(5), always)
    attempt = run(world, pol=policy(pause_time_between_batches=30))
    assert attempt.end_time is not None and attempt.end_time - attempt.start_time >= 4 * 30


def platform_attempt(world: World, now: float, *, deferred: bool = False) -> Attempt:
    return start(
        attempt_id="a",
        scale_set="s",
        target_version="v2",
        started_by=StartedBy.PLATFORM,
        disable_automatic_rollback=False,
        policy=policy(),
        capacity=len(world.versions),
        views=world.views(),
        now=now,
        deferred=deferred,
    )


def test_stale_health_does_not_count() -> None:
    """A Healthy seen before the reimage finished belongs to the previous OS disk."""
    world = World(fleet(1), always)
    attempt = platform_attempt(world, now=100.0)
    decision = decide(attempt, world.views(), 100.0)
    (action,) = decision.actions
    attempt = apply_result(decision.attempt, ActionResult(action, ok=True), 105.0)
    stale = {0: InstanceView(0, "v2", HEALTHY, observed_at=104.0)}
    assert decide(attempt, stale, 106.0).attempt.instances[0].step is Step.WAITING
    fresh = {0: InstanceView(0, "v2", HEALTHY, observed_at=105.5)}
    assert decide(attempt, fresh, 106.0).attempt.instances[0].step is Step.COMMITTING


def test_resume_reissues_in_flight_actions_and_round_trips_json() -> None:
    world = World(fleet(5), always)
    attempt = platform_attempt(world, now=1.0)
    decision = decide(attempt, world.views(), 1.0)
    assert decision.attempt.instances[0].step is Step.REIMAGING
    restored = attempt_from_json(attempt_to_json(decision.attempt))
    assert restored == decision.attempt
    again = decide(resume(restored), world.views(), 2.0)
    assert [a.kind for a in again.actions] == [ActionKind.REIMAGE]


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[World, RollingUpgradePolicy, StartedBy]:
    n = draw(st.integers(1, 30))
    bad_instances = draw(st.sets(st.integers(0, n - 1), max_size=n))
    unhealthy_before = draw(st.sets(st.integers(0, n - 1), max_size=max(0, n // 3)))
    phases = draw(st.dictionaries(st.integers(0, n - 1), st.integers(0, 3), max_size=n))
    skip = draw(st.sets(st.integers(0, n - 1), max_size=n // 4 + 1))
    on_target = draw(st.sets(st.integers(0, n - 1), max_size=n // 4 + 1))
    versions = {i: ("v2" if i in on_target else "v1") for i in range(n)}

    def healthy_on(i: int, v: str) -> bool:
        return i not in bad_instances if v == "v2" else i not in unhealthy_before

    pol = policy(
        max_batch_instance_percent=draw(st.integers(5, 100)),
        max_unhealthy_instance_percent=draw(st.integers(5, 100)),
        max_unhealthy_upgraded_instance_percent=draw(st.integers(0, 100)),
        prioritize_unhealthy_instances=draw(st.booleans()),
        pause_time_between_batches=draw(st.sampled_from([0.0, 5.0])),
        rollback_failed_instances_on_policy_breach=draw(st.booleans()),
    )
    started_by = draw(st.sampled_from(list(StartedBy)))
    return World(versions, healthy_on, phases=phases, skip=skip), pol, started_by


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_properties_of_every_attempt(scenario: tuple[World, RollingUpgradePolicy, StartedBy]) -> None:
    world, pol, started_by = scenario
    before = dict(world.versions)
    skipped = set(world.skip)
    attempt = run(world, pol=pol, started_by=started_by)
    size = batch_size(len(before), pol.max_batch_instance_percent)
    # No batch larger than its size.
    assert all(len(batch) <= size for batch in world.batches)
    # Skipped instances and instances already on the target are never touched.
    touched = {i for _, i in world.touched}
    assert not touched & skipped
    assert not touched & {i for i, v in before.items() if v == "v2"}
    # Every instance ends upgraded, rolled back, failed in place (no rollback wanted) or untouched,
    # with exactly one OS disk: nothing left to commit or restore.
    assert not world.previous
    for i, version in world.versions.items():
        progress = attempt.instances.get(i)
        if progress is None:
            assert version == before[i]
        elif progress.step is Step.UPGRADED:
            assert version == "v2"
        elif progress.step is Step.ROLLED_BACK:
            assert version == before[i]
        else:
            assert progress.step is Step.FAILED and version == "v2" and not attempt.rollback_enabled
    # No new batch after the upgraded-unhealthy threshold was crossed: it can only be crossed by the last one.
    processed = 0
    failed = 0
    for index, batch in enumerate(world.batches):
        assert not exceeds(failed, processed, pol.max_unhealthy_upgraded_instance_percent), index
        processed += len(batch)
        failed += sum(1 for i in batch if attempt.instances[i].step.failed)
    if attempt.status is AttemptStatus.COMPLETED:
        assert attempt.pending == 0
        assert attempt.in_progress == 0
    # An attempt that ends by a breach of the policy leaves no instance on the version that failed when asked to.
    if pol.rollback_failed_instances_on_policy_breach and attempt.error_code in (MAX_UNHEALTHY, MAX_UNHEALTHY_UPGRADED):
        assert all(p.step is not Step.FAILED for p in attempt.instances.values())


def test_a_final_verdict_fails_the_instance_at_once_not_at_the_timeout() -> None:
    """The agent's Unknown after its grace period cannot turn Healthy by itself: roll back then."""
    world = World(fleet(1), always)
    attempt = platform_attempt(world, now=100.0)
    decision = decide(attempt, world.views(), 100.0)
    (action,) = decision.actions
    attempt = apply_result(decision.attempt, ActionResult(action, ok=True), 105.0)
    initializing = {0: InstanceView(0, "v2", Health.INITIALIZING, observed_at=106.0, detail="grace period")}
    assert decide(attempt, initializing, 107.0).attempt.instances[0].step is Step.WAITING
    not_final = {0: InstanceView(0, "v2", Health.UNKNOWN, observed_at=106.0, detail="agent not answering yet")}
    assert decide(attempt, not_final, 107.0).attempt.instances[0].step is Step.WAITING
    stale_final = {0: InstanceView(0, "v2", UNHEALTHY, observed_at=104.0, final=True)}
    assert decide(attempt, stale_final, 107.0).attempt.instances[0].step is Step.WAITING
    final = {0: InstanceView(0, "v2", Health.UNKNOWN, observed_at=111.0, final=True, detail="no answer on :80")}
    progress = decide(attempt, final, 111.5).attempt.instances[0]
    assert progress.step is Step.ROLLING_BACK
    assert progress.error == "Unknown after the reimage: no answer on :80"


def test_a_final_verdict_without_rollback_keeps_the_instance_failed() -> None:
    world = World(fleet(1), always)
    attempt = replace(platform_attempt(world, now=100.0), rollback_enabled=False)
    decision = decide(attempt, world.views(), 100.0)
    (action,) = decision.actions
    attempt = apply_result(decision.attempt, ActionResult(action, ok=True), 105.0)
    final = {0: InstanceView(0, "v2", UNHEALTHY, observed_at=106.0, final=True, detail="instance exited")}
    progress = decide(attempt, final, 106.0).attempt.instances[0]
    assert progress.step is Step.KEEPING_FAILED
    assert progress.error == "Unhealthy after the reimage: instance exited"


def test_rollback_failed_instances_on_policy_breach() -> None:
    """A manual start does not roll back; with rollbackFailedInstancesOnPolicyBreach the instances that failed keep
    their previous OS disk until the attempt ends, and get it back when it ends by a breach of the policy."""
    world = World(fleet(5), lambda i, v: v != "v3")
    attempt = run(
        world, target="v3", started_by=StartedBy.USER, pol=policy(rollback_failed_instances_on_policy_breach=True)
    )
    assert attempt.status is AttemptStatus.FAULTED and attempt.error_code == MAX_UNHEALTHY_UPGRADED
    assert attempt.instances[0].step is Step.ROLLED_BACK
    assert world.versions == fleet(5)
    # Without the option the failed instance keeps the version that failed.
    world = World(fleet(5), lambda i, v: v != "v3")
    attempt = run(world, target="v3", started_by=StartedBy.USER)
    assert attempt.instances[0].step is Step.FAILED and world.versions[0] == "v3"


def test_held_failures_are_kept_when_the_attempt_completes_within_the_policy() -> None:
    world = World(fleet(5), lambda i, v: not (i == 2 and v == "v3"))
    pol = policy(rollback_failed_instances_on_policy_breach=True, max_unhealthy_upgraded_instance_percent=50)
    attempt = run(world, target="v3", started_by=StartedBy.USER, pol=pol)
    assert attempt.status is AttemptStatus.COMPLETED
    assert attempt.instances[2].step is Step.FAILED  # held until the end, then kept: no breach
    assert world.versions == {0: "v3", 1: "v3", 2: "v3", 3: "v3", 4: "v3"}
    assert ("commit", 2) in [(k.value, i) for k, i in world.touched]


def step_once(world: World, attempt: Attempt) -> tuple[Attempt, list[tuple[str, int]]]:
    decision = decide(attempt, world.views(), world.now)
    attempt = decision.attempt
    for action in decision.actions:
        attempt = apply_result(attempt, world.act(attempt, action.kind, action.instance_id), world.now)
    return attempt, [(a.kind.value, a.instance_id) for a in decision.actions]


def test_a_deferred_upgrade_waits_for_an_approval_from_either_side() -> None:
    """osRollingUpgradeDeferral: the batch's instance is told first, then nothing happens until it is approved,
    through its agent (the view) or by approveRollingUpgrade (the attempt's approvals)."""
    world = World(fleet(5), always)
    attempt, actions = step_once(world, platform_attempt(world, world.now, deferred=True))
    assert actions == [("notify", 0)] and attempt.instances[0].step is Step.AWAITING_APPROVAL
    for _ in range(3):
        attempt, actions = step_once(world, attempt)
        assert actions == [] and world.versions[0] == "v1"
    views = world.views()
    views[0] = replace(views[0], approved="v1")  # an approval of another version is not one of this
    assert decide(attempt, views, world.now).actions == ()
    views[0] = replace(views[0], approved="v2")
    decision = decide(attempt, views, world.now)
    assert [(a.kind.value, a.instance_id) for a in decision.actions] == [("reimage", 0)]
    # approveRollingUpgrade of every instance: each one's batch goes ahead once it was told.
    attempt = approve(attempt, range(5))
    for _ in range(100):
        attempt, _ = step_once(world, attempt)
        if attempt.done:
            break
    assert attempt.status is AttemptStatus.COMPLETED and world.versions == fleet(5, "v2")
    assert [k for k, i in world.touched if i == 3] == [ActionKind.NOTIFY, ActionKind.REIMAGE, ActionKind.COMMIT]
    assert attempt_from_json(attempt_to_json(attempt)) == attempt


def test_a_cancel_withdraws_the_notice_of_an_instance_awaiting_approval() -> None:
    world = World(fleet(5), always)
    attempt, _ = step_once(world, platform_attempt(world, world.now, deferred=True))
    attempt, _ = step_once(world, request_cancel(attempt, world.now))
    assert attempt.status is AttemptStatus.CANCELLED and attempt.done
    assert attempt.instances[0].step is Step.NOT_UPGRADED
    assert world.touched == [(ActionKind.NOTIFY, 0), (ActionKind.WITHDRAW, 0)]
    assert world.versions == fleet(5)


def test_describe_names_each_step_once() -> None:
    world = World(fleet(2), lambda i, v: v != "v2")
    attempt = start(
        attempt_id="a",
        scale_set="web",
        target_version="v2",
        started_by=StartedBy.PLATFORM,
        disable_automatic_rollback=False,
        policy=policy(max_batch_instance_percent=50),
        capacity=2,
        views=world.views(),
        now=0.0,
    )
    lines = describe(None, attempt)
    before = attempt
    while not attempt.done:
        decision = decide(attempt, world.views(), world.now)
        attempt = decision.attempt
        lines += describe(before, attempt)  # saved as the runtime saves it: after deciding, after acting
        before = attempt
        for action in decision.actions:
            attempt = apply_result(attempt, world.act(attempt, action.kind, action.instance_id), world.now)
        lines += describe(before, attempt)
        before = attempt
        world.now = decision.wake_at or world.now + 1
    text = [line for _, line in lines]
    assert text[0] == "rolling upgrade a of web started by Platform: to v2, 2 instance(s) to upgrade, rollback on"
    assert text[1] == "rolling upgrade a of web: batch 1 started: instance(s) 0"
    assert text[2].startswith("web_0: rolling back to its previous OS disk: not Healthy within 60s")
    assert text[3] == "web_0: rolled back"
    assert text[4].startswith("rolling upgrade a of web Faulted: 0 upgraded, 1 failed: 1 of 1 upgraded")
    assert [level for level, _ in lines] == [Level.INFO, Level.INFO, Level.WARNING, Level.INFO, Level.ERROR]


def test_fix_forward_takes_a_fleet_all_unhealthy_on_v1_to_a_healthy_v2() -> None:
    world = World(fleet(5), lambda i, v: v == "v2")  # v1 is unhealthy everywhere
    refused = run(World(fleet(5), lambda i, v: v == "v2"))
    assert refused.status is AttemptStatus.FAULTED and refused.error_code == MAX_UNHEALTHY  # Azure's default
    attempt = run(world, pol=policy(fix_forward=True))
    assert attempt.status is AttemptStatus.COMPLETED, attempt.error_message
    assert attempt.pre_existing == frozenset(range(5)) and attempt.successful == 5
    assert set(world.versions.values()) == {"v2"}
    assert attempt_from_json(attempt_to_json(attempt)).pre_existing == attempt.pre_existing


def test_fix_forward_still_stops_an_equally_bad_version_after_its_first_batch() -> None:
    world = World(fleet(5), lambda i, v: v == "v2")  # v1 and v3 both unhealthy
    attempt = run(world, pol=policy(fix_forward=True), target="v3")
    assert attempt.status is AttemptStatus.FAULTED and attempt.error_code == MAX_UNHEALTHY_UPGRADED
    assert world.batches == [(0,)] and attempt.failed == 1
    assert set(world.versions.values()) == {"v1"}  # rolled back to what it ran


def test_fix_forward_upgrades_the_unhealthy_first_and_counts_only_new_unhealth() -> None:
    sick = {1, 3}
    world = World(fleet(5), lambda i, v: v == "v2" or i not in sick)
    attempt = run(world, pol=policy(fix_forward=True))
    assert attempt.status is AttemptStatus.COMPLETED
    assert world.batches[:2] == [(1,), (3,)]


BATCH_HOOK = LifecycleHook(HookType.BATCH_STARTING, 60, HookAction.APPROVE)


def hooked_attempt(world: World, hook: LifecycleHook = BATCH_HOOK) -> Attempt:
    return replace(platform_attempt(world, world.now), batch_hook=hook)


def test_each_batch_waits_for_its_lifecycle_hook_event_and_rejected_instances_keep_their_version() -> None:
    """UpgradeAutoOSRollingBatchStarting: nothing is touched until the batch's event is answered; an approved
    instance is upgraded, a rejected one is not (and counts neither way)."""
    world = World(fleet(10), always)  # batches of 2
    attempt, actions = step_once(world, hooked_attempt(world))
    gate = attempt.gate
    assert actions == [] and gate is not None and gate.state is EventState.ACTIVE and gate.instance_ids == (0, 1)
    assert decide(attempt, world.views(), world.now).wake_at == gate.wait_until == world.now + 60
    attempt, actions = step_once(world, attempt)
    assert actions == [] and attempt.gate == gate  # asked again, the same event: no second one
    answered = respond(gate, Response({0: ActionState.APPROVED, 1: ActionState.REJECTED}), world.now)
    attempt, actions = step_once(world, replace(attempt, gate=answered))
    assert actions == [("reimage", 0)] and attempt.batch == (0,)
    assert attempt.instances[1].step is Step.NOT_UPGRADED and gate.name in (attempt.instances[1].error or "")
    assert attempt.gate is not None and attempt.gate.state is EventState.COMPLETED
    # The next batch gets an event of its own, which the default action (Approve) answers at its waitUntil.
    for _ in range(5):
        attempt, _ = step_once(world, attempt)
    second = attempt.gate
    assert second is not None and second.batch == 2 and second.instance_ids == (2, 3) and second.name != gate.name
    world.now = second.wait_until
    while not attempt.done:
        attempt, _ = step_once(world, attempt)
        if attempt.gate is not None and attempt.gate.state is EventState.ACTIVE:
            world.now = attempt.gate.wait_until
    assert attempt.status is AttemptStatus.COMPLETED and attempt.failed == 0
    assert world.versions == {**fleet(10, "v2"), 1: "v1"}
    assert attempt_from_json(attempt_to_json(attempt)) == attempt


def test_a_batch_every_instance_of_which_is_rejected_moves_on_to_the_next() -> None:
    world = World(fleet(10), always)
    attempt = hooked_attempt(world, LifecycleHook(HookType.BATCH_STARTING, 60, HookAction.REJECT))
    attempt, _ = step_once(world, attempt)
    world.now += 60  # no answer: the default action rejects both
    attempt, actions = step_once(world, attempt)
    assert actions == [] and attempt.batches_started == 1 and attempt.instances[0].step is Step.NOT_UPGRADED
    attempt, actions = step_once(world, attempt)
    assert attempt.gate is not None and attempt.gate.instance_ids == (2, 3) and world.touched == []


def test_a_cancel_while_a_batch_waits_for_its_event_closes_the_event() -> None:
    world = World(fleet(10), always)
    attempt, _ = step_once(world, hooked_attempt(world))
    attempt, _ = step_once(world, request_cancel(attempt, world.now))
    assert attempt.status is AttemptStatus.CANCELLED and attempt.done and world.touched == []
    assert attempt.gate is not None and attempt.gate.state is EventState.COMPLETED
    assert attempt.gate.closed == "the rolling upgrade ended (Cancelled)"
