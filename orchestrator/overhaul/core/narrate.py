"""Pure: what changed between two saved states of an attempt, as log lines a person can follow.

One line when an attempt starts, when each batch starts, when an instance's outcome becomes known (committing,
rolling back with the reason, kept failed, upgraded, rolled back) and when the attempt ends."""

from __future__ import annotations

from enum import IntEnum

from overhaul.core.naming import instance_name
from overhaul.core.rollout import Attempt, AttemptStatus, InstanceProgress, Step


class Level(IntEnum):
    """The same numbers as Python's logging levels."""

    INFO = 20
    WARNING = 30
    ERROR = 40


# Steps that say the same thing to a person: one line when an instance enters the group, none within it.
GROUPS = {
    Step.COMMIT: "commit",
    Step.COMMITTING: "commit",
    Step.ROLLBACK: "rollback",
    Step.ROLLING_BACK: "rollback",
    Step.KEEP_FAILED: "keep",
    Step.KEEPING_FAILED: "keep",
}


def _instance_line(attempt: Attempt, progress: InstanceProgress) -> tuple[Level, str] | None:
    name = instance_name(attempt.scale_set, progress.instance_id)
    why = f": {progress.error}" if progress.error else ""
    lines = {
        "commit": (Level.INFO, f"{name}: Healthy on {attempt.target_version}, committing"),
        "rollback": (Level.WARNING, f"{name}: rolling back to its previous OS disk{why}"),
        "keep": (Level.WARNING, f"{name}: failed on {attempt.target_version}, kept as it is (no rollback){why}"),
        Step.FAILED_HELD.value: (
            Level.WARNING,
            f"{name}: failed on {attempt.target_version}; its previous OS disk is kept until the attempt ends{why}",
        ),
        Step.UPGRADED.value: (Level.INFO, f"{name}: upgraded to {attempt.target_version}"),
        Step.ROLLED_BACK.value: (Level.INFO, f"{name}: rolled back"),
        Step.ROLLBACK_FAILED.value: (Level.ERROR, f"{name}: rollback failed{why}"),
    }
    return lines.get(GROUPS.get(progress.step, progress.step.value))


def _group(progress: InstanceProgress | None) -> str | None:
    return None if progress is None else GROUPS.get(progress.step, progress.step.value)


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
