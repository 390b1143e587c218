"""Pure: why a rollout is not making progress, as machine-readable causes with a readable paragraph each.

Every state that is not progress has a cause: a stable ``code``, the rule and its threshold beside the observed
value, the instances, since when, what unblocks it and the next automatic action with its time. The API serves
them under ``properties.overhaul.why`` of ``rollingUpgrades/latest``; ``overhaul vmss rolling-upgrade why`` prints
the paragraphs. docs/why.md lists every code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from overhaul.core.lifecycle_hooks import ActionState, EventState, HookEvent, HookType
from overhaul.core.planner import InstanceView, needs_upgrade
from overhaul.core.rollout import MAX_UNHEALTHY, MAX_UNHEALTHY_UPGRADED, Attempt, AttemptStatus, Step
from overhaul.core.triage import REMEDIES, Fault, infrastructure_fault

OUTSIDE_WINDOW_UNBLOCK = (
    "wait for the window, widen it (az maintenance configuration update), or start the upgrade by hand "
    "(manual starts ignore windows, as in Azure)"
)


@dataclass(frozen=True)
class Cause:
    code: str
    message: str
    unblock: str
    rule: str | None = None
    threshold: float | None = None
    observed: float | None = None
    instances: tuple[int, ...] = ()
    since: float | None = None
    next_action: str | None = None
    next_at: float | None = None

    def paragraph(self, now: float) -> str:
        """One readable paragraph: what, since when, what happens next, what unblocks it."""
        text = f"{self.code}: {self.message}"
        if self.since is not None:
            text += f" (for {max(0.0, now - self.since):.0f}s)"
        if self.next_action is not None:
            when = f" in {max(0.0, self.next_at - now):.0f}s" if self.next_at is not None else ""
            text += f". Next{when}: {self.next_action}"
        return f"{text}. To unblock: {self.unblock}."


@dataclass(frozen=True)
class Retrying:
    """A driver step retried through an infrastructure fault (the runtime keeps these while they last)."""

    fault: Fault
    error: str
    since: float
    next_at: float
    deadline: float | None = None  # when the step gives up (a reimage: rollout.infra_deadline); None: never


@dataclass(frozen=True)
class Restarting:
    """The attempt's reconciler stopped on an error and is resumed after a back-off (the supervisor's)."""

    error: str
    storage: bool  # the store could not be written (disk full, a read-only file system)
    since: float
    next_at: float


@dataclass(frozen=True)
class Context:
    """What the causes name: the scale set's CLI arguments, the runtime's retries by instance, a stopped
    reconciler, and the automatic upgrade an attempt in flight holds back."""

    target: str  # "--resource-group G --name S"
    retrying: Mapping[int, Retrying] = field(default_factory=dict)
    restarting: Restarting | None = None
    automatic_target: str | None = None  # the version an automatic OS upgrade would move to now


def attempt_causes(attempt: Attempt, views: Mapping[int, InstanceView], now: float, context: Context) -> list[Cause]:
    """Why ``attempt`` waits (rolling forward) or why it stopped (ended without completing)."""
    if attempt.status.terminal:
        return _ended(attempt, context)
    causes = [
        *_restarting(context),
        *_retrying(attempt, context),
        *_batch(attempt, views, context),
        *_surge(attempt),
        *_hosts_down(attempt, views),
        *_automatic_held(attempt, context),
    ]
    if attempt.cancel_requested:
        causes.append(
            Cause(
                "CancelRequested",
                "a cancel was asked: the batch in flight finishes, then the attempt ends Cancelled",
                "nothing: it ends once the batch settles",
                instances=attempt.batch,
                since=attempt.last_action_time,
                next_action="end Cancelled when the batch settles",
            )
        )
    if attempt.pause_until is not None and now < attempt.pause_until:
        causes.append(
            Cause(
                "PauseBetweenBatches",
                f"pausing between batches (pauseTimeBetweenBatches {attempt.policy.pause_time_between_batches:g}s)",
                "wait, or set a shorter rollingUpgradePolicy.pauseTimeBetweenBatches for later attempts",
                rule="pauseTimeBetweenBatches",
                threshold=attempt.policy.pause_time_between_batches,
                next_action=f"start batch {attempt.batches_started + 1}",
                next_at=attempt.pause_until,
            )
        )
    causes += _outside_window(attempt, now)
    if attempt.gate is not None and attempt.gate.state is EventState.ACTIVE and not attempt.batch:
        causes.append(hook_waiting(attempt.gate, context))
    causes += _phases(attempt, views)
    skipping = tuple(sorted(i for i, v in views.items() if v.skip_upgrade and i not in attempt.instances))
    if skipping:
        causes.append(
            Cause(
                "SkipUpgradeRequested",
                f"the application of instance(s) {_ids(skipping)} reports SkipUpgrade: they are left alone",
                "the application stops reporting SkipUpgrade in its customMetrics",
                instances=skipping,
            )
        )
    return causes


def hook_waiting(event: HookEvent, context: Context) -> Cause:
    """A lifecycle hook event the upgrade waits on (core/lifecycle_hooks.py)."""
    waiting = event.with_state(ActionState.WAITING)
    if event.type is HookType.SCHEDULING:
        what = f"the automatic OS upgrade to {event.target_version} waits"
        next_action = f"{event.default_action.value.lower()} the upgrade (the hook's defaultAction)"
    else:
        what = f"batch {event.batch} (instance(s) {_ids(event.instance_ids)}) waits"
        next_action = f"{event.default_action.value.lower()} instance(s) {_ids(waiting)} (the hook's defaultAction)"
    return Cause(
        "LifecycleHookWaiting",
        f"{what} for an answer to lifecycle hook event {event.name} ({event.type.value})",
        f"approve or reject it: `overhaul vmss lifecycle-hook-event update {context.target} --event-name "
        f"{event.name} --action-state Approved` (a PATCH of the event), or put it off with --wait-until",
        rule="lifecycleHooksProfile.lifecycleHooks",
        instances=waiting,
        since=event.time_created,
        next_action=next_action,
        next_at=event.wait_until,
    )


def _phases(attempt: Attempt, views: Mapping[int, InstanceView]) -> list[Cause]:
    """Instances of a later PhaseOrderingNumber wait for the batch's phase to finish (a batch never mixes phases)."""
    current = {views[i].phase for i in attempt.batch if i in views}
    if len(current) != 1:
        return []
    [phase] = current
    held = tuple(
        sorted(
            i
            for i, v in views.items()
            if i not in attempt.instances
            and not v.skip_upgrade
            and needs_upgrade(v, attempt.target_version, attempt.target_model_digest)
            and v.phase != phase
        )
    )
    if not held:
        return []
    return [
        Cause(
            "PhaseOrdering",
            f"instance(s) {_ids(held)} report another PhaseOrderingNumber and wait for phase {phase} to finish",
            "nothing: each phase starts when the one before it has finished (the application's customMetrics "
            "decide the phases)",
            rule="PhaseOrderingNumber",
            instances=held,
            next_action="start their phase once this one is done",
        )
    ]


def _outside_window(attempt: Attempt, now: float) -> list[Cause]:
    if attempt.window is None or attempt.window.is_open(now) or attempt.batch:
        return []
    occurrence = attempt.window.around(now)
    return [
        Cause(
            "OutsideMaintenanceWindow",
            "the scale set's maintenance window is closed: no batch starts until it opens "
            f"({attempt.window.to_json()['startDateTime'][11:]} {attempt.window.time_zone} daily, "
            f"for {attempt.window.to_json()['duration']})",
            OUTSIDE_WINDOW_UNBLOCK,
            rule="maintenanceWindow",
            next_action=f"start batch {attempt.batches_started + 1} when the window opens",
            next_at=occurrence[0] if occurrence else None,
        )
    ]


def _automatic_held(attempt: Attempt, context: Context) -> list[Cause]:
    """An automatic OS upgrade to a newer version waits for the attempt in flight (one at a time per scale set)."""
    if context.automatic_target in (None, attempt.target_version):
        return []
    return [
        Cause(
            "RollingUpgradeInProgress",
            f"the automatic OS upgrade to {context.automatic_target} waits for rolling upgrade {attempt.id} (to "
            f"{attempt.target_version}) to end",
            f"wait for it, or cancel it: `overhaul vmss rolling-upgrade cancel {context.target}`",
            since=attempt.start_time,
            next_action=f"start the automatic OS upgrade to {context.automatic_target} once it ends",
        )
    ]


def _restarting(context: Context) -> list[Cause]:
    stopped = context.restarting
    if stopped is None:
        return []
    if stopped.storage:
        what = f"the store could not be written: {stopped.error}"
        unblock = "free disk space or make the state directory writable again; the attempt resumes by itself"
    else:
        what = f"the attempt stopped on an unexpected error: {stopped.error}"
        unblock = "nothing: it is resumed by itself (the orchestrator's log has the error)"
    return [
        Cause(
            "StorageUnavailable" if stopped.storage else "AttemptRestarting",
            what,
            unblock,
            rule="rollout.restart_min/restart_max",
            since=stopped.since,
            next_action="resume the attempt where its last save left it",
            next_at=stopped.next_at,
        )
    ]


def _hosts_down(attempt: Attempt, views: Mapping[int, InstanceView]) -> list[Cause]:
    """Instances on hosts that do not answer: left for later (or held in their batch), counted neither way."""
    down = tuple(sorted(i for i, v in views.items() if v.unreachable))
    if not down:
        return []
    since = attempt.hosts_down_since
    deadline = since + attempt.host_outage_timeout if since is not None else None
    return [
        Cause(
            "HostUnreachable",
            f"instance(s) {_ids(down)} are on a host that does not answer ({views[down[0]].detail}): nothing is "
            "known of them, so they count neither as failed nor against maxUnhealthyInstancePercent; the rest goes "
            "on, and they are upgraded when their host answers again",
            "bring the host (its sshd, its engine, the network to it) back; `overhaul vm host list` shows each",
            instances=down,
            since=since,
            next_action="end Faulted (HostUnreachable), leaving them as they are" if deadline else None,
            next_at=deadline,
        )
    ]


def _surge(attempt: Attempt) -> list[Cause]:
    """maxSurge: the batch's new OS disks run beside their previous ones until each is committed or rolled back."""
    if not attempt.policy.max_surge:
        return []
    surged = tuple(i for i in attempt.batch if attempt.instances[i].step in (Step.REIMAGING, Step.WAITING))
    if not surged:
        return []
    return [
        Cause(
            "SurgeCapacity",
            f"instance(s) {_ids(surged)} run a new OS disk beside their previous one (maxSurge): {len(surged)} more "
            f"instance(s) run than the capacity of {attempt.capacity} until each is committed or rolled back",
            "nothing: each previous OS disk is dropped once its new one is Healthy (or restored if it is not); turn "
            "rollingUpgradePolicy.maxSurge off to upgrade in place",
            rule="maxSurge",
            observed=float(attempt.capacity + len(surged)),
            threshold=float(attempt.capacity),
            instances=surged,
            since=min(attempt.instances[i].since for i in surged),
            next_action="drop each previous OS disk when its new one is Healthy",
        )
    ]


def _ids(ids: tuple[int, ...]) -> str:
    return " ".join(str(i) for i in ids)


def _retrying(attempt: Attempt, context: Context) -> list[Cause]:
    causes = []
    for instance_id, retry in sorted(context.retrying.items()):
        if instance_id not in attempt.instances:
            continue
        if retry.deadline is not None:
            after = "end the attempt with this code, the version still eligible, the instance on its previous OS disk"
            action = f"retry the step; at the deadline (rollout.infra_deadline): {after}"
        else:
            action = "retry the step until it is done"
        causes.append(
            Cause(
                retry.fault.value,
                f"instance {instance_id}: the infrastructure, not version {attempt.target_version}, failed a step: "
                f"{retry.error}",
                REMEDIES[retry.fault],
                rule="rollout.infra_deadline" if retry.deadline is not None else None,
                instances=(instance_id,),
                since=retry.since,
                next_action=action,
                next_at=retry.next_at,
            )
        )
    return causes


def _batch(attempt: Attempt, views: Mapping[int, InstanceView], context: Context) -> list[Cause]:
    waiting: list[Cause] = []
    approving = attempt.awaiting_approval
    if approving:
        waiting.append(
            Cause(
                "AwaitingApproval",
                f"instance(s) {_ids(approving)} were told their OS upgrade to {attempt.target_version} is pending "
                "(osRollingUpgradeDeferral) and wait for an approval, without a deadline",
                f"the application approves through its agent (POST /platform/approve-os-upgrade), or `overhaul vmss "
                f"approve-rolling-upgrade {context.target} --instance-ids {_ids(approving)}`",
                rule="osRollingUpgradeDeferral",
                instances=approving,
                since=min(attempt.instances[i].since for i in approving),
                next_action="reimage each instance as soon as it is approved",
            )
        )
    for instance_id in attempt.batch:
        progress = attempt.instances[instance_id]
        if progress.step is not Step.WAITING:
            continue
        view = views.get(instance_id)
        seen = f"{view.health.value}" + (f" ({view.detail})" if view and view.detail else "") if view else "not seen"
        failed = "rolled back" if attempt.rollback_enabled else "kept as it is and counted as failed"
        waiting.append(
            Cause(
                "WaitingForHealth",
                f"instance {instance_id} runs {attempt.target_version} and is not Healthy yet: {seen}",
                "the application becomes Healthy (its grace period and numberOfProbes decide when the agent says "
                "so); or cancel with `overhaul vmss rolling-upgrade cancel " + context.target + "`",
                rule="instanceHealthTimeout",
                threshold=attempt.policy.instance_health_timeout,
                instances=(instance_id,),
                since=progress.since,
                next_action=f"commit it when Healthy; at the deadline it is {failed}",
                next_at=progress.deadline,
            )
        )
    return waiting


def _ended(attempt: Attempt, context: Context) -> list[Cause]:
    if attempt.status is AttemptStatus.COMPLETED:
        return []
    if attempt.status is AttemptStatus.CANCELLED:
        return [
            Cause(
                "Cancelled",
                "the rolling upgrade was cancelled",
                f"start it again: `overhaul vmss rolling-upgrade start {context.target}`",
                since=attempt.end_time,
            )
        ]
    message = attempt.error_message or "Faulted"
    code = attempt.error_code or "Faulted"
    if code == MAX_UNHEALTHY:
        unhealthy = attempt.unhealthy
        return [
            Cause(
                "PreCheckRefused" if attempt.batches_started == 0 else MAX_UNHEALTHY,
                message,
                f"make the unhealthy instances Healthy (`overhaul vmss list-instances {context.target}`), or raise "
                "rollingUpgradePolicy.maxUnhealthyInstancePercent",
                rule="maxUnhealthyInstancePercent",
                threshold=attempt.policy.max_unhealthy_instance_percent,
                observed=round(100 * unhealthy / attempt.capacity, 1) if unhealthy and attempt.capacity else None,
                since=attempt.end_time,
            )
        ]
    if code == MAX_UNHEALTHY_UPGRADED:
        processed = attempt.successful + attempt.failed
        return [
            Cause(
                code,
                message,
                "publish a fixed version (this one is quarantined), or raise "
                "rollingUpgradePolicy.maxUnhealthyUpgradedInstancePercent",
                rule="maxUnhealthyUpgradedInstancePercent",
                threshold=attempt.policy.max_unhealthy_upgraded_instance_percent,
                observed=round(100 * attempt.failed / processed, 1) if processed else None,
                instances=tuple(sorted(i for i, p in attempt.instances.items() if p.step.failed)),
                since=attempt.end_time,
            )
        ]
    fault = infrastructure_fault(code)
    unblock = f"{REMEDIES[fault]}, then start the upgrade again" if fault else "see the message"
    interrupted = tuple(sorted(i for i, p in attempt.instances.items() if p.fault is not None))
    return [Cause(code, message, unblock, rule="rollout.infra_deadline" if fault else None, instances=interrupted)]


@dataclass(frozen=True)
class Gallery:
    """What the gallery says of the scale set's target: the newest version published (quarantined or not), the
    version the model's reference resolves to now, and whether the engine has its image (None: not asked)."""

    follows_latest: bool
    newest: str | None = None
    newest_quarantine: str | None = None  # why the newest version is quarantined (None: it is not)
    resolved: str | None = None
    resolved_image: str | None = None
    image_present: bool | None = None
    gallery_args: str = ""  # "--gallery-name G --gallery-image-definition I"
    # An automatic OS upgrade to ``resolved`` is wanted (some instance runs another version) but the assigned
    # maintenance window is closed until then (None: no window holds it).
    window_opens: float | None = None
    # The UpgradeAutoOSScheduling event an automatic OS upgrade waits on (None: none waits).
    hook_waiting: HookEvent | None = None


def scale_set_causes(gallery: Gallery, context: Context, engine_error: str | None = None) -> list[Cause]:
    """Why no attempt moves the scale set on, with none in flight: the engine, the target version, its image."""
    causes: list[Cause] = []
    if engine_error is not None:
        causes.append(
            Cause(
                Fault.ENGINE_UNAVAILABLE.value,
                f"the container engine does not answer: {engine_error}",
                REMEDIES[Fault.ENGINE_UNAVAILABLE],
                next_action="automatic upgrades and reimages wait for it",
            )
        )
    if gallery.follows_latest and gallery.newest_quarantine is not None and gallery.newest != gallery.resolved:
        causes.append(
            Cause(
                "TargetQuarantined",
                f"version {gallery.newest} is quarantined, so 'latest' skips it: {gallery.newest_quarantine}",
                f"publish a fixed version, or clear it with `overhaul sig image-version update {gallery.gallery_args} "
                f"--gallery-image-version {gallery.newest} --set overhaul.quarantined=false`",
                rule="quarantine",
            )
        )
    if gallery.window_opens is not None:
        causes.append(
            Cause(
                "OutsideMaintenanceWindow",
                f"the automatic OS upgrade to {gallery.resolved} waits for the scale set's maintenance window",
                OUTSIDE_WINDOW_UNBLOCK,
                rule="maintenanceWindow",
                next_action=f"start the automatic OS upgrade to {gallery.resolved} when the window opens",
                next_at=gallery.window_opens,
            )
        )
    if gallery.hook_waiting is not None:
        causes.append(hook_waiting(gallery.hook_waiting, context))
    if gallery.image_present is False:
        causes.append(
            Cause(
                "TargetImageMissing",
                f"the engine has no image {gallery.resolved_image!r} for version {gallery.resolved}: no instance "
                "is touched until it has",
                REMEDIES[Fault.IMAGE_UNAVAILABLE],
            )
        )
    return causes
