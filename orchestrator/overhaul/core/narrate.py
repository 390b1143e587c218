"""Pure: what changed between two saved states of an attempt, as log lines a person can follow.

One line when an attempt starts, when each batch starts, when an instance's outcome becomes known (committing,
rolling back with the reason, kept failed, upgraded, rolled back) and when the attempt ends."""

from __future__ import annotations

from enum import IntEnum

from overhaul.core.naming import instance_name
from overhaul.core.rollout import IN_FLIGHT, Attempt, AttemptStatus, InstanceProgress, Step


class Level(IntEnum):
    """The same numbers as Python's logging levels."""

    INFO = 20
    WARNING = 30
    ERROR = 40


def _group(progress: InstanceProgress | None) -> Step | None:
    """A step with a driver action in flight says the same to a person as the step that issued it: one line when
    an instance enters the group, none within it."""
    return None if progress is None else IN_FLIGHT.get(progress.step, progress.step)


def _instance_line(attempt: Attempt, progress: InstanceProgress) -> tuple[Level, str] | None:
    name = instance_name(attempt.scale_set, progress.instance_id)
    why = f": {progress.error}" if progress.error else ""
    target = attempt.target_version
    lines = {
        Step.COMMIT: (Level.INFO, f"{name}: Healthy on {target}, committing"),
        Step.ROLLBACK: (Level.WARNING, f"{name}: rolling back to its previous OS disk{why}"),
        Step.KEEP_FAILED: (Level.WARNING, f"{name}: failed on {target}, kept as it is (no rollback){why}"),
        Step.FAILED_HELD: (
            Level.WARNING,
            f"{name}: failed on {target}; its previous OS disk is kept until the attempt ends{why}",
        ),
        Step.UPGRADED: (Level.INFO, f"{name}: upgraded to {target}"),
        Step.ROLLED_BACK: (Level.INFO, f"{name}: rolled back"),
        Step.ROLLBACK_FAILED: (Level.ERROR, f"{name}: rollback failed{why}"),
        Step.AWAITING_APPROVAL: (
            Level.INFO,
            f"{name}: OS upgrade to {target} pending (Platform.PendingOSUpgrade), awaiting approval{why}",
        ),
        Step.NOT_UPGRADED: (Level.INFO, f"{name}: pending OS upgrade withdrawn, not upgraded"),
        Step.INTERRUPT: (
            Level.WARNING,
            f"{name}: the infrastructure failed it, not {target}; restoring its previous OS disk{why}",
        ),
        Step.INTERRUPTED: (Level.INFO, f"{name}: runs its previous OS disk again (not counted against {target})"),
    }
    return lines.get(IN_FLIGHT.get(progress.step, progress.step))


def describe(before: Attempt | None, after: Attempt) -> list[tuple[Level, str]]:
    """The lines for the change from ``before`` (None: the attempt is new) to ``after``."""
    lines: list[tuple[Level, str]] = []
    subject = f"rolling upgrade {after.id} of {after.scale_set}"
    if before is None:
        lines.append(
            (
                Level.INFO,
                f"{subject} started by {after.started_by.value}: to {after.target_version}, "
                f"{after.pending} instance(s) to upgrade, rollback {'on' if after.rollback_enabled else 'off'}",
            )
        )
    if after.batch and (before is None or before.batch != after.batch):
        ids = " ".join(str(i) for i in after.batch)
        lines.append((Level.INFO, f"{subject}: batch {after.batches_started} started: instance(s) {ids}"))
    for instance_id, progress in sorted(after.instances.items()):
        old = before.instances.get(instance_id) if before is not None else None
        if _group(old) != _group(progress):
            line = _instance_line(after, progress)
            if line is not None:
                lines.append(line)
    if after.status.terminal and (before is None or not before.status.terminal):
        level = {AttemptStatus.COMPLETED: Level.INFO, AttemptStatus.CANCELLED: Level.WARNING}.get(
            after.status, Level.ERROR
        )
        error = f": {after.error_message}" if after.error_message else ""
        lines.append(
            (level, f"{subject} {after.status.value}: {after.successful} upgraded, {after.failed} failed{error}")
        )
    return lines
