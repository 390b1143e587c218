"""Pure: one rolling upgrade attempt as a re-entrant step function.

``decide(attempt, views, now)`` returns the next attempt state, the driver actions to take, and when to look
again. ``apply_result`` folds an action's outcome back in. Times are wall-clock seconds so an attempt
persisted before a crash means the same after it. Nothing here awaits, sleeps or touches I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from overhaul.core.lifecycle_hooks import ActionState, EventState, HookEvent, LifecycleHook, batch_event
from overhaul.core.maintenance import MaintenanceWindow, parse_window
from overhaul.core.model import RollingUpgradePolicy, parse_rolling_policy
from overhaul.core.planner import Health, InstanceView, exceeds, needs_upgrade, plan_batches, unhealthy_count
from overhaul.core.triage import Fault, infrastructure_end

# Stable error codes, Azure's where Azure has one.
MAX_UNHEALTHY = "MaxUnhealthyInstancePercentExceededInRollingUpgrade"
MAX_UNHEALTHY_UPGRADED = "MaxUnhealthyUpgradedInstancePercentExceededInRollingUpgrade"
HOST_UNREACHABLE = Fault.HOST_UNREACHABLE.value

# How long a resumed attempt waits for its health source's first word on each instance before it judges without.
FIRST_LOOK = 30.0


class AttemptStatus(StrEnum):
    ROLLING_FORWARD = "RollingForward"
    COMPLETED = "Completed"
    FAULTED = "Faulted"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self is not AttemptStatus.ROLLING_FORWARD


class StartedBy(StrEnum):
    PLATFORM = "Platform"
    USER = "User"


class Step(StrEnum):
    """Where one instance of the attempt is. *_ING steps have a driver action in flight."""

    REIMAGE = "Reimage"
    REIMAGING = "Reimaging"
    WAITING = "WaitingForHealth"
    COMMIT = "Commit"
    COMMITTING = "Committing"
    UPGRADED = "Upgraded"
    ROLLBACK = "Rollback"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    ROLLBACK_FAILED = "RollbackFailed"
    # Unhealthy after the upgrade and no rollback wanted (manual start, or disableAutomaticRollback).
    KEEP_FAILED = "KeepFailed"
    KEEPING_FAILED = "KeepingFailed"
    FAILED = "Failed"
    # Unhealthy, no rollback wanted, rollbackFailedInstancesOnPolicyBreach: the previous OS disk is kept until the
    # attempt ends, then restored if it ended by a breach of the policy, else dropped.
    FAILED_HELD = "FailedHeld"
    # osRollingUpgradeDeferral: the instance is told its OS upgrade is pending, then waits for an approval (by
    # its application through the agent, or by approveRollingUpgrade). A cancel withdraws the notice.
    NOTIFY = "Notify"
    NOTIFYING = "Notifying"
    AWAITING_APPROVAL = "AwaitingApproval"
    WITHDRAW = "Withdraw"
    WITHDRAWING = "Withdrawing"
    NOT_UPGRADED = "NotUpgraded"
    # The infrastructure stayed broken past rollout.infra_deadline: the instance runs the OS disk it had (a
    # rollback restores it), and nothing is counted against the version (core/triage.py).
    INTERRUPT = "Interrupt"
    INTERRUPTING = "Interrupting"
    INTERRUPTED = "Interrupted"

    @property
    def terminal(self) -> bool:
        return self in (
            Step.UPGRADED,
            Step.ROLLED_BACK,
            Step.ROLLBACK_FAILED,
            Step.FAILED,
            Step.NOT_UPGRADED,
            Step.INTERRUPTED,
        )

    @property
    def succeeded(self) -> bool:
        return self in (Step.COMMIT, Step.COMMITTING, Step.UPGRADED)

    @property
    def failed(self) -> bool:
        return self in (
            Step.ROLLED_BACK,
            Step.ROLLBACK_FAILED,
            Step.FAILED,
            Step.KEEP_FAILED,
            Step.KEEPING_FAILED,
            Step.FAILED_HELD,
        )

    @property
    def untouched(self) -> bool:
        """Not upgraded, and not the version's fault: its upgrade was withdrawn before it was approved, or the
        infrastructure failed it."""
        return self in (
            Step.WITHDRAW,
            Step.WITHDRAWING,
            Step.NOT_UPGRADED,
            Step.INTERRUPT,
            Step.INTERRUPTING,
            Step.INTERRUPTED,
        )

    @property
    def settled(self) -> bool:
        """The outcome is known; what may remain is clean-up (dropping a previous OS disk, withdrawing a notice),
        which the next batch need not wait for. A rollback is not clean-up: it changes what runs, so batches wait
        for it."""
        return self.succeeded or self.failed or self.untouched


IN_FLIGHT = {
    Step.REIMAGING: Step.REIMAGE,
    Step.COMMITTING: Step.COMMIT,
    Step.ROLLING_BACK: Step.ROLLBACK,
    Step.KEEPING_FAILED: Step.KEEP_FAILED,
    Step.NOTIFYING: Step.NOTIFY,
    Step.WITHDRAWING: Step.WITHDRAW,
    Step.INTERRUPTING: Step.INTERRUPT,
}


class ActionKind(StrEnum):
    REIMAGE = "reimage"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    NOTIFY = "notify"  # tell the instance its OS upgrade is pending
    WITHDRAW = "withdraw"  # take the notice back


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    instance_id: int


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    error: str | None = None
    duration: float = 0.0
    # Failed on the infrastructure, retried until rollout.infra_deadline (None: ok, or the image's failure).
    fault: Fault | None = None


@dataclass(frozen=True)
class InstanceProgress:
    instance_id: int
    step: Step
    since: float
    deadline: float | None = None
    error: str | None = None
    fault: Fault | None = None  # the infrastructure fault that interrupted it

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "instanceId": self.instance_id,
            "step": self.step.value,
            "since": self.since,
            "deadline": self.deadline,
            "error": self.error,
        }
        if self.fault is not None:
            doc["fault"] = self.fault.value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> InstanceProgress:
        return cls(
            int(doc["instanceId"]),
            Step(doc["step"]),
            float(doc["since"]),
            doc.get("deadline"),
            doc.get("error"),
            Fault(doc["fault"]) if doc.get("fault") else None,
        )


@dataclass(frozen=True)
class Attempt:
    id: str
    scale_set: str
    target_version: str
    started_by: StartedBy
    rollback_enabled: bool
    policy: RollingUpgradePolicy
    capacity: int
    start_time: float
    status: AttemptStatus = AttemptStatus.ROLLING_FORWARD
    end_time: float | None = None
    instances: Mapping[int, InstanceProgress] = field(default_factory=dict)
    batch: tuple[int, ...] = ()
    batches_started: int = 0
    pause_until: float | None = None
    cancel_requested: bool = False
    pending: int = 0
    error_code: str | None = None
    error_message: str | None = None
    last_action: str = "Start"
    last_action_time: float = 0.0
    # osRollingUpgradeDeferral: each instance waits for an approval before its reimage.
    deferred: bool = False
    approved: frozenset[int] = frozenset()
    # A model upgrade: instances move onto this model digest too (None: an OS upgrade, the version alone).
    target_model_digest: str | None = None
    # Only these instances (a manual upgrade of chosen ones); None: every instance.
    scope: tuple[int, ...] | None = None
    # How many instances were unhealthy when the attempt ended on maxUnhealthyInstancePercent.
    unhealthy: int | None = None
    # An automatic upgrade in an assigned maintenance window: batches start only while it is open.
    window: MaintenanceWindow | None = None
    # Fix-forward: the instances unhealthy before the attempt touched them (blamed on neither the version nor the
    # infrastructure: core/triage.py's pre-existing), left out of every maxUnhealthyInstancePercent check.
    pre_existing: frozenset[int] = frozenset()
    # UpgradeAutoOSRollingBatchStarting: each batch waits for its lifecycle hook event (the latest one is ``gate``;
    # responses come from the store, core/lifecycle_hooks.py).
    batch_hook: LifecycleHook | None = None
    gate: HookEvent | None = None
    # Instances whose host does not answer wait for it this long once nothing else is left to do; then the attempt
    # ends Faulted (HostUnreachable), leaving them as they are. ``hosts_down_since``: when that wait began.
    host_outage_timeout: float = 600.0
    hosts_down_since: float | None = None
    # When this orchestrator began looking at the attempt (resume): not kept, each process looks afresh.
    looking_since: float | None = field(default=None, compare=False)

    def unhealthy_now(self, views: Mapping[int, InstanceView]) -> int:
        """Unhealthy instances as maxUnhealthyInstancePercent counts them: the pre-existing ones left out."""
        return unhealthy_count(v for i, v in views.items() if i not in self.pre_existing)

    def with_instance(self, progress: InstanceProgress) -> Attempt:
        return replace(self, instances={**self.instances, progress.instance_id: progress})

    def finished(
        self, status: AttemptStatus, now: float, code: str | None = None, message: str | None = None
    ) -> Attempt:
        return replace(
            self,
            status=status,
            end_time=now,
            batch=(),
            pause_until=None,
            error_code=code,
            error_message=message,
        )

    def count(self, *steps: Step) -> int:
        return sum(1 for p in self.instances.values() if p.step in steps)

    @property
    def successful(self) -> int:
        return sum(1 for p in self.instances.values() if p.step.succeeded)

    @property
    def failed(self) -> int:
        return sum(1 for p in self.instances.values() if p.step.failed)

    @property
    def in_progress(self) -> int:
        return sum(1 for p in self.instances.values() if not p.step.settled)

    @property
    def awaiting_approval(self) -> tuple[int, ...]:
        return tuple(i for i, p in sorted(self.instances.items()) if p.step is Step.AWAITING_APPROVAL)

    @property
    def done(self) -> bool:
        """Ended, and every instance's last driver action finished: exactly one OS disk each."""
        return self.status.terminal and all(p.step.terminal for p in self.instances.values())


@dataclass(frozen=True)
class Decision:
    attempt: Attempt
    actions: tuple[Action, ...] = ()
    wake_at: float | None = None


def start(
    *,
    attempt_id: str,
    scale_set: str,
    target_version: str,
    started_by: StartedBy,
    disable_automatic_rollback: bool,
    policy: RollingUpgradePolicy,
    capacity: int,
    views: Mapping[int, InstanceView],
    now: float,
    deferred: bool = False,
    target_model_digest: str | None = None,
    scope: tuple[int, ...] | None = None,
    window: MaintenanceWindow | None = None,
    batch_hook: LifecycleHook | None = None,
    host_outage_timeout: float = 600.0,
) -> Attempt:
    """A new attempt; Faulted at once when too much of the scale set is unhealthy to start (the upgrade rule "Too
    unhealthy to start", docs/upgrade-rules.md). With ``policy.fix_forward`` the instances unhealthy now are
    pre-existing: they go first and count in no unhealthy check."""
    pre_existing: frozenset[int] = frozenset()
    if policy.fix_forward:
        pre_existing = frozenset(i for i, v in views.items() if not v.healthy)
        policy = replace(policy, prioritize_unhealthy_instances=True)
    attempt = Attempt(
        host_outage_timeout=host_outage_timeout,
        batch_hook=batch_hook,
        window=window,
        pre_existing=pre_existing,
        deferred=deferred,
        target_model_digest=target_model_digest,
        scope=scope,
        id=attempt_id,
        scale_set=scale_set,
        target_version=target_version,
        started_by=started_by,
        # Manual starts never roll back; platform starts do unless the policy disables it.
        rollback_enabled=started_by is StartedBy.PLATFORM and not disable_automatic_rollback,
        policy=policy,
        capacity=capacity,
        start_time=now,
        last_action_time=now,
    )
    unhealthy = attempt.unhealthy_now(views)
    if exceeds(unhealthy, capacity, policy.max_unhealthy_instance_percent):
        return replace(attempt, unhealthy=unhealthy).finished(
            AttemptStatus.FAULTED,
            now,
            MAX_UNHEALTHY,
            f"{unhealthy} of {capacity} instances are unhealthy, more than maxUnhealthyInstancePercent "
            f"({policy.max_unhealthy_instance_percent}%): the upgrade was not started",
        )
    return replace(attempt, pending=sum(len(b) for b in _remaining(attempt, views)))


def approve(attempt: Attempt, instance_ids: Iterable[int]) -> Attempt:
    """Approvals of deferred OS upgrades (approveRollingUpgrade), as the store has them."""
    approved = attempt.approved | frozenset(instance_ids)
    return attempt if approved == attempt.approved else replace(attempt, approved=approved)


def request_cancel(attempt: Attempt, now: float) -> Attempt:
    if attempt.status.terminal:
        return attempt
    return replace(attempt, cancel_requested=True, last_action="Cancel", last_action_time=now)


def resume(attempt: Attempt, now: float | None = None) -> Attempt:
    """After a crash an in-flight action's outcome is unknown: issue it again (drivers are idempotent). ``now``:
    when this orchestrator began looking (it gives its health source FIRST_LOOK for a first word on each)."""
    instances = {
        i: replace(p, step=IN_FLIGHT[p.step]) if p.step in IN_FLIGHT else p for i, p in attempt.instances.items()
    }
    return replace(attempt, instances=instances, looking_since=now)


def _remaining(attempt: Attempt, views: Mapping[int, InstanceView]) -> list[tuple[int, ...]]:
    return plan_batches(
        list(views.values()),
        attempt.target_version,
        attempt.policy,
        attempt.capacity,
        exclude=attempt.instances,
        target_model_digest=attempt.target_model_digest,
        scope=attempt.scope,
        cross_zone=attempt.policy.enable_cross_zone_upgrade,
    )


ISSUE = {
    Step.REIMAGE: (ActionKind.REIMAGE, Step.REIMAGING),
    Step.COMMIT: (ActionKind.COMMIT, Step.COMMITTING),
    Step.ROLLBACK: (ActionKind.ROLLBACK, Step.ROLLING_BACK),
    Step.KEEP_FAILED: (ActionKind.COMMIT, Step.KEEPING_FAILED),
    Step.NOTIFY: (ActionKind.NOTIFY, Step.NOTIFYING),
    Step.WITHDRAW: (ActionKind.WITHDRAW, Step.WITHDRAWING),
    Step.INTERRUPT: (ActionKind.ROLLBACK, Step.INTERRUPTING),
}


def _issue(instances: dict[int, InstanceProgress], ids: Iterable[int], now: float) -> list[Action]:
    """Turns steps that call for a driver action into that action, marking them in flight."""
    actions: list[Action] = []
    for instance_id in ids:
        progress = instances[instance_id]
        if progress.step in ISSUE:
            kind, issued = ISSUE[progress.step]
            actions.append(Action(kind, instance_id))
            instances[instance_id] = replace(progress, step=issued, since=now)
    return actions


def _advance_batch(attempt: Attempt, views: Mapping[int, InstanceView], now: float) -> Decision:
    """Moves each instance of the batch in flight one step; returns the actions to take."""
    wake_at: float | None = None
    instances = dict(attempt.instances)  # one copy per step, not one per instance: batches may be large
    for instance_id in attempt.batch:
        progress = instances[instance_id]
        view = views.get(instance_id)
        if progress.step is Step.AWAITING_APPROVAL:
            if attempt.cancel_requested:
                instances[instance_id] = replace(progress, step=Step.WITHDRAW, since=now)
            elif instance_id in attempt.approved or (view is not None and view.approved == attempt.target_version):
                instances[instance_id] = replace(progress, step=Step.REIMAGE, since=now)
            continue
        if progress.step is not Step.WAITING:
            continue
        if view is not None and view.unreachable:
            # Its host does not answer: nothing is known of its health, so its time to become Healthy stands still.
            if progress.deadline is not None:
                deadline = max(progress.deadline, now + attempt.policy.instance_health_timeout)
                instances[instance_id] = replace(progress, deadline=deadline)
            continue
        fresh = view is not None and view.observed_at >= progress.since
        failed_step = Step.ROLLBACK if attempt.rollback_enabled else Step.KEEP_FAILED
        if failed_step is Step.KEEP_FAILED and attempt.policy.rollback_failed_instances_on_policy_breach:
            failed_step = Step.FAILED_HELD
        if view is not None and fresh and view.healthy and view.on(attempt.target_version, attempt.target_model_digest):
            instances[instance_id] = replace(progress, step=Step.COMMIT, since=now)
        elif view is not None and fresh and view.final and not view.healthy:
            # Decided as soon as the answer is known: waiting out the timeout would change nothing.
            error = f"{view.health.value} after the reimage: {view.detail or 'no reason given'}"
            instances[instance_id] = replace(progress, step=failed_step, since=now, error=error)
        elif progress.deadline is not None and now >= progress.deadline and _unheard(attempt, view, now):
            # A resumed orchestrator has not heard from it yet: its own downtime is not the instance's failure.
            first_look = (attempt.looking_since or now) + FIRST_LOOK
            wake_at = first_look if wake_at is None else min(wake_at, first_look)
        elif progress.deadline is not None and now >= progress.deadline:
            seen = view.health.value if view is not None else "not observed"
            detail = f": {view.detail}" if view is not None and view.detail else ""
            error = f"not Healthy within {attempt.policy.instance_health_timeout:g}s (last seen: {seen}{detail})"
            instances[instance_id] = replace(progress, step=failed_step, since=now, error=error)
        elif progress.deadline is not None:
            wake_at = progress.deadline if wake_at is None else min(wake_at, progress.deadline)
    actions = _issue(instances, attempt.batch, now)
    return Decision(replace(attempt, instances=instances), tuple(actions), wake_at)


def _end(
    attempt: Attempt,
    status: AttemptStatus,
    now: float,
    cleanup: tuple[Action, ...],
    *,
    code: str | None = None,
    message: str | None = None,
) -> Decision:
    """Ends the attempt; instances held failed get their previous OS disk back if it ended by a breach of the
    policy (rollbackFailedInstancesOnPolicyBreach), else keep what they run."""
    breach = status is AttemptStatus.FAULTED and code in (MAX_UNHEALTHY, MAX_UNHEALTHY_UPGRADED)
    instances = dict(attempt.instances)
    held = [i for i, p in instances.items() if p.step is Step.FAILED_HELD]
    for instance_id in held:
        instances[instance_id] = replace(instances[instance_id], step=Step.ROLLBACK if breach else Step.KEEP_FAILED)
    actions = _issue(instances, held, now)
    gate = attempt.gate.close(f"the rolling upgrade ended ({status.value})") if attempt.gate is not None else None
    ended = replace(attempt, instances=instances, gate=gate).finished(status, now, code, message)
    return Decision(ended, (*cleanup, *actions))


def _held_by_window(attempt: Attempt, now: float, cleanup: tuple[Action, ...]) -> Decision | None:
    """Outside its maintenance window no batch starts: the attempt waits for the next opening (the running batch
    has finished). None when it may go on."""
    if attempt.window is None or attempt.window.is_open(now):
        return None
    occurrence = attempt.window.around(now)
    if occurrence is None:
        message = "its maintenance configuration expired before the upgrade finished"
        return _end(attempt, AttemptStatus.CANCELLED, now, cleanup, code="MaintenanceWindowExpired", message=message)
    return Decision(attempt, cleanup, wake_at=occurrence[0])


def _through_gate(
    attempt: Attempt, remaining: list[tuple[int, ...]], now: float, cleanup: tuple[Action, ...]
) -> Decision | tuple[Attempt, tuple[int, ...]]:
    """UpgradeAutoOSRollingBatchStarting: the next batch starts once its lifecycle hook event is answered (or its
    waitUntil passed); its rejected instances are not upgraded. Returns the attempt and the instances that start,
    or the Decision to wait."""
    if attempt.batch_hook is None:
        return attempt, remaining[0]
    number = attempt.batches_started + 1
    gate = attempt.gate
    if gate is None or gate.batch != number:
        gate = batch_event(
            attempt.batch_hook,
            scale_set=attempt.scale_set,
            version=attempt.target_version,
            attempt_id=attempt.id,
            batch=number,
            ids=remaining[0],
            now=now,
        )
    gate = gate.settled(now)
    if gate.state is EventState.ACTIVE:
        return Decision(replace(attempt, gate=gate), cleanup, wake_at=gate.wait_until)
    left = {i for batch in remaining for i in batch}
    instances = dict(attempt.instances)
    for instance_id in gate.with_state(ActionState.REJECTED):
        if instance_id in left:
            error = f"rejected by lifecycle hook event {gate.name}"
            instances[instance_id] = InstanceProgress(instance_id, Step.NOT_UPGRADED, now, error=error)
    attempt = replace(attempt, gate=gate, instances=instances)
    approved = tuple(i for i in gate.with_state(ActionState.APPROVED) if i in left)
    if not approved:  # every instance of the batch was rejected: on to the next one
        return Decision(replace(attempt, batches_started=attempt.batches_started + 1), cleanup, wake_at=now)
    return attempt, approved


def _batch_end(attempt: Attempt, now: float, cleanup: tuple[Action, ...]) -> Decision | None:
    """A batch has ended: the attempt ends too when the infrastructure interrupted an instance past its deadline,
    or when too many upgraded instances failed ("Fault and quarantine"); None when it goes on."""
    interrupted = next((p for p in attempt.instances.values() if p.fault is not None), None)
    if interrupted is not None and interrupted.fault is not None:
        error = interrupted.error or interrupted.fault.value
        message = infrastructure_end(interrupted.fault, error, attempt.target_version)
        return _end(attempt, AttemptStatus.FAULTED, now, cleanup, code=interrupted.fault.value, message=message)
    processed = attempt.successful + attempt.failed
    policy = attempt.policy
    if exceeds(attempt.failed, processed, policy.max_unhealthy_upgraded_instance_percent):
        message = (
            f"{attempt.failed} of {processed} upgraded instances are unhealthy, more than "
            f"maxUnhealthyUpgradedInstancePercent ({policy.max_unhealthy_upgraded_instance_percent}%)"
        )
        return _end(attempt, AttemptStatus.FAULTED, now, cleanup, code=MAX_UNHEALTHY_UPGRADED, message=message)
    return None


def _waiting_for_hosts(
    attempt: Attempt, views: Mapping[int, InstanceView], now: float, cleanup: tuple[Action, ...]
) -> Decision | None:
    """Everything reachable is done: instances still to upgrade on hosts that do not answer are waited for, up to
    ``host_outage_timeout``; then the attempt ends Faulted (HostUnreachable), leaving them as they are. None when
    there are none."""
    left = sorted(
        i
        for i, v in views.items()
        if v.unreachable
        and needs_upgrade(v, attempt.target_version, attempt.target_model_digest)
        and i not in attempt.instances
        and (attempt.scope is None or i in attempt.scope)
    )
    if not left:
        return None
    since = attempt.hosts_down_since if attempt.hosts_down_since is not None else now
    attempt = replace(attempt, hosts_down_since=since, pending=len(left))
    if now - since < attempt.host_outage_timeout:
        return Decision(attempt, cleanup, wake_at=since + attempt.host_outage_timeout)
    message = (
        f"instance(s) {' '.join(map(str, left))} could not be upgraded: their host did not answer for "
        f"{attempt.host_outage_timeout:g}s ({views[left[0]].detail or 'unreachable'}); they were left as they are"
    )
    return _end(attempt, AttemptStatus.FAULTED, now, cleanup, code=HOST_UNREACHABLE, message=message)


def decide(attempt: Attempt, views: Mapping[int, InstanceView], now: float) -> Decision:
    """One step of the attempt: the upgrade rules (docs/upgrade-rules.md), in order."""
    if attempt.status.terminal:
        # Only clean-up is left (and only after a crash in the middle of it): finish it.
        instances = dict(attempt.instances)
        actions = _issue(instances, list(instances), now)
        return Decision(replace(attempt, instances=instances), tuple(actions))
    decision = _advance_batch(attempt, views, now)
    attempt = decision.attempt
    remaining = _remaining(attempt, views)
    attempt = replace(attempt, pending=sum(len(b) for b in remaining))
    if any(not attempt.instances[i].step.settled for i in attempt.batch):
        return replace(decision, attempt=attempt)
    cleanup = decision.actions  # commits of the batch that just settled run alongside what comes next
    if attempt.batch:
        # The batch has ended: "Fault and quarantine", then the pause of "Pause, then the next batch".
        ended = _batch_end(attempt, now, cleanup)
        if ended is not None:
            return ended
        policy = attempt.policy
        pause = policy.pause_time_between_batches
        attempt = replace(attempt, batch=(), pause_until=now + pause if remaining and pause > 0 else None)
    if attempt.cancel_requested:
        message = "the rolling upgrade was cancelled"
        return _end(attempt, AttemptStatus.CANCELLED, now, cleanup, code="OperationCancelled", message=message)
    if not remaining:
        return _waiting_for_hosts(attempt, views, now, cleanup) or _end(attempt, AttemptStatus.COMPLETED, now, cleanup)
    attempt = replace(attempt, hosts_down_since=None)
    if attempt.pause_until is not None and now < attempt.pause_until:
        return Decision(attempt, cleanup, wake_at=attempt.pause_until)
    held = _held_by_window(attempt, now, cleanup)
    if held is not None:
        return held
    blocked = _before_a_batch(attempt, views, now, cleanup)
    if blocked is not None:
        return blocked
    gated = _through_gate(attempt, remaining, now, cleanup)
    if isinstance(gated, Decision):
        return gated
    attempt, batch = gated
    instances = dict(attempt.instances)
    first = Step.NOTIFY if attempt.deferred else Step.REIMAGE
    for instance_id in batch:
        instances[instance_id] = InstanceProgress(instance_id, first, now)
    actions = _issue(instances, batch, now)
    attempt = replace(
        attempt,
        instances=instances,
        batch=batch,
        batches_started=attempt.batches_started + 1,
        pause_until=None,
        pending=sum(len(b) for b in remaining[1:]),
    )
    return Decision(attempt, (*cleanup, *actions))


def _before_a_batch(
    attempt: Attempt, views: Mapping[int, InstanceView], now: float, cleanup: tuple[Action, ...]
) -> Decision | None:
    """No batch starts on a guess: not before a resumed attempt heard from every instance (FIRST_LOOK at most),
    nor with too many unhealthy (maxUnhealthyInstancePercent: Fault)."""
    if attempt.looking_since is not None and any(_unheard(attempt, v, now) for v in views.values()):
        return Decision(attempt, cleanup, wake_at=attempt.looking_since + FIRST_LOOK)
    unhealthy = attempt.unhealthy_now(views)
    if not exceeds(unhealthy, attempt.capacity, attempt.policy.max_unhealthy_instance_percent):
        return None
    message = (
        f"{unhealthy} of {attempt.capacity} instances are unhealthy, more than "
        f"maxUnhealthyInstancePercent ({attempt.policy.max_unhealthy_instance_percent}%): "
        "no further batch was started"
    )
    attempt = replace(attempt, unhealthy=unhealthy)
    return _end(attempt, AttemptStatus.FAULTED, now, cleanup, code=MAX_UNHEALTHY, message=message)


def _unheard(attempt: Attempt, view: InstanceView | None, now: float) -> bool:
    """The health source has said nothing of it since the attempt was resumed, within FIRST_LOOK of that."""
    return (
        attempt.looking_since is not None
        and now < attempt.looking_since + FIRST_LOOK
        and view is not None
        and not view.unreachable
        and view.health is Health.UNKNOWN
        and view.observed_at == 0.0
    )


def apply_result(attempt: Attempt, result: ActionResult, now: float) -> Attempt:
    """Folds the outcome of a driver action into the attempt."""
    return apply_results(attempt, (result,), now)


def apply_results(attempt: Attempt, results: Iterable[ActionResult], now: float) -> Attempt:
    """Folds the outcomes of driver actions into the attempt."""
    instances = dict(attempt.instances)
    for result in results:
        progress = instances.get(result.action.instance_id)
        if progress is not None:
            instances[progress.instance_id] = _after(progress, result, attempt.policy, now)
    return replace(attempt, instances=instances)


def _after(
    progress: InstanceProgress, result: ActionResult, policy: RollingUpgradePolicy, now: float
) -> InstanceProgress:
    step = progress.step
    error = result.error or progress.error
    if step is Step.REIMAGING:
        if result.ok:
            deadline = now + policy.instance_health_timeout
            progress = replace(progress, step=Step.WAITING, since=now, deadline=deadline)
        elif result.fault is not None:
            # Not the image's fault: the previous OS disk runs again, and nothing is counted against the version.
            error = f"{result.fault.value}: {result.error}"
            progress = replace(progress, step=Step.INTERRUPT, since=now, error=error, fault=result.fault)
        else:
            # The new OS disk could not be made: restoring the previous one is the only safe state, even when
            # rollback after an unhealthy upgrade is off.
            progress = replace(progress, step=Step.ROLLBACK, since=now, error=f"reimage failed: {result.error}")
    elif step is Step.COMMITTING:
        progress = replace(progress, step=Step.UPGRADED, since=now, error=None if result.ok else error)
    elif step is Step.NOTIFYING:
        # The notice is a courtesy: an instance that could not be told still waits for an approval.
        progress = replace(progress, step=Step.AWAITING_APPROVAL, since=now, error=None if result.ok else error)
    elif step is Step.WITHDRAWING:
        progress = replace(progress, step=Step.NOT_UPGRADED, since=now, error=None)
    elif step is Step.KEEPING_FAILED:
        progress = replace(progress, step=Step.FAILED, since=now, error=error)
    elif step is Step.INTERRUPTING:
        # A rollback retries infrastructure faults until it is done: it fails only on the image's (none is left).
        progress = replace(progress, step=Step.INTERRUPTED if result.ok else Step.ROLLBACK_FAILED, since=now)
    elif step is Step.ROLLING_BACK:
        next_step = Step.ROLLED_BACK if result.ok else Step.ROLLBACK_FAILED
        rollback_error = None if result.ok else f"rollback failed: {result.error}"
        progress = replace(progress, step=next_step, since=now, error=progress.error if result.ok else rollback_error)
    return progress


def attempt_to_json(attempt: Attempt) -> dict[str, Any]:
    """Persistence form (the store keeps it as JSON)."""
    return {
        "id": attempt.id,
        "scaleSet": attempt.scale_set,
        "targetVersion": attempt.target_version,
        "startedBy": attempt.started_by.value,
        "rollbackEnabled": attempt.rollback_enabled,
        "policy": attempt.policy.to_json(),
        "capacity": attempt.capacity,
        "startTime": attempt.start_time,
        "status": attempt.status.value,
        "endTime": attempt.end_time,
        "instances": [p.to_json() for p in attempt.instances.values()],
        "batch": list(attempt.batch),
        "batchesStarted": attempt.batches_started,
        "pauseUntil": attempt.pause_until,
        "cancelRequested": attempt.cancel_requested,
        "pending": attempt.pending,
        "errorCode": attempt.error_code,
        "errorMessage": attempt.error_message,
        "lastAction": attempt.last_action,
        "lastActionTime": attempt.last_action_time,
        "deferred": attempt.deferred,
        "approved": sorted(attempt.approved),
        "targetModel": attempt.target_model_digest,
        "scope": list(attempt.scope) if attempt.scope is not None else None,
        "unhealthy": attempt.unhealthy,
        "preExisting": sorted(attempt.pre_existing),
        "maintenanceWindow": attempt.window.to_json() if attempt.window is not None else None,
        "batchHook": attempt.batch_hook.to_json() if attempt.batch_hook is not None else None,
        "gate": attempt.gate.to_json() if attempt.gate is not None else None,
        "hostOutageTimeout": attempt.host_outage_timeout,
        "hostsDownSince": attempt.hosts_down_since,
    }


def attempt_from_json(doc: Mapping[str, Any]) -> Attempt:
    instances = [InstanceProgress.from_json(p) for p in doc["instances"]]
    return Attempt(
        id=doc["id"],
        scale_set=doc["scaleSet"],
        target_version=doc["targetVersion"],
        started_by=StartedBy(doc["startedBy"]),
        rollback_enabled=bool(doc["rollbackEnabled"]),
        policy=parse_rolling_policy(doc["policy"]),
        capacity=int(doc["capacity"]),
        start_time=float(doc["startTime"]),
        status=AttemptStatus(doc["status"]),
        end_time=doc.get("endTime"),
        instances={p.instance_id: p for p in instances},
        batch=tuple(doc.get("batch", ())),
        batches_started=int(doc.get("batchesStarted", 0)),
        pause_until=doc.get("pauseUntil"),
        cancel_requested=bool(doc.get("cancelRequested", False)),
        pending=int(doc.get("pending", 0)),
        error_code=doc.get("errorCode"),
        error_message=doc.get("errorMessage"),
        last_action=doc.get("lastAction", "Start"),
        last_action_time=float(doc.get("lastActionTime", 0.0)),
        deferred=bool(doc.get("deferred", False)),
        approved=frozenset(int(i) for i in doc.get("approved", ())),
        target_model_digest=doc.get("targetModel"),
        scope=tuple(int(i) for i in doc["scope"]) if doc.get("scope") is not None else None,
        unhealthy=doc.get("unhealthy"),
        pre_existing=frozenset(int(i) for i in doc.get("preExisting", ())),
        window=parse_window(doc["maintenanceWindow"], "maintenanceWindow", 0.0)
        if doc.get("maintenanceWindow")
        else None,
        batch_hook=LifecycleHook.from_json(doc["batchHook"]) if doc.get("batchHook") else None,
        gate=HookEvent.from_json(doc["gate"]) if doc.get("gate") else None,
        host_outage_timeout=float(doc.get("hostOutageTimeout", 600.0)),
        hosts_down_since=doc.get("hostsDownSince"),
    )
