"""Pure: what an attempt that went wrong leaves behind, and the commands that put it right.

A Faulted attempt quarantines the version it failed on (``quarantine_reason``), and its error message ends with
the next step a person takes (``next_steps``), so the CLI, the API and history all say it."""

from __future__ import annotations

from overhaul.core.rollout import MAX_UNHEALTHY, Attempt, AttemptStatus, Step
from overhaul.core.triage import infrastructure_fault

# Left running the version that failed (no rollback wanted, or the rollback itself failed).
LEFT_FAILED = (Step.FAILED, Step.KEEP_FAILED, Step.KEEPING_FAILED, Step.ROLLBACK_FAILED)


def failed_on_target(attempt: Attempt) -> list[int]:
    return sorted(i for i, p in attempt.instances.items() if p.step.failed)


def quarantine_reason(attempt: Attempt) -> str | None:
    """Why the target version should leave 'latest': the attempt Faulted with instances that failed on it. (Not a
    model upgrade's: its instances failed on a new model, not on a new version.)"""
    failed = failed_on_target(attempt)
    if attempt.status is not AttemptStatus.FAULTED or not failed or attempt.target_model_digest is not None:
        return None
    if infrastructure_fault(attempt.error_code) is not None:
        return None  # it ended on the infrastructure: whatever failed before did not breach the policy
    first = attempt.instances[failed[0]]
    return (
        f"rolling upgrade {attempt.id} of scale set {attempt.scale_set} Faulted on this version: "
        f"instance {failed[0]}: {first.error or 'not healthy'}"
    )[:500]


def next_steps(
    attempt: Attempt,
    *,
    resource_group: str,
    latest: bool,
    previous_version: str | None,
    quarantined: tuple[str, str, str] | None,
) -> str | None:
    """The commands that restore service after ``attempt`` ended without completing.

    ``latest``: the scale set follows 'latest'; ``previous_version``: what its other instances run;
    ``quarantined``: (gallery, image, version) when the target version was just quarantined."""
    if attempt.status is not AttemptStatus.FAULTED or infrastructure_fault(attempt.error_code) is not None:
        return None  # (an infrastructure end says its own next step)
    target = f"--resource-group {resource_group} --name {attempt.scale_set}"
    if attempt.target_model_digest is not None:
        return (
            "Next: fix the model (`overhaul vmss show " + target + "`), then `overhaul vmss update-instances "
            f"{target} --instance-ids ...` for the instances that did not take it."
        )
    if attempt.error_code == MAX_UNHEALTHY and not failed_on_target(attempt):
        return f"Next: find why instances are unhealthy with `overhaul vmss list-instances {target}`."
    steps: list[str] = []
    left = sorted(i for i, p in attempt.instances.items() if p.step in LEFT_FAILED)
    if left:
        ids = " ".join(str(i) for i in left)
        reimage = f"`overhaul vmss reimage {target} --instance-ids {ids}`"
        if latest and quarantined is not None:
            steps.append(f"restore instance(s) {ids} with {reimage}: 'latest' now skips version {quarantined[2]}")
        else:
            back = previous_version or "PREVIOUS"
            steps.append(
                f"set the image version back with `overhaul vmss update {target} --set "
                f"virtualMachineProfile.storageProfile.imageReference.version={back}`, then restore "
                f"instance(s) {ids} with {reimage}"
            )
    if quarantined is not None:
        gallery, image, version = quarantined
        steps.append(
            f"version {version} is quarantined; publish a fixed version, or clear it with `overhaul sig "
            f"image-version update --resource-group {resource_group} --gallery-name {gallery} "
            f"--gallery-image-definition {image} --gallery-image-version {version} --set overhaul.quarantined=false`"
        )
    return ("Next: " + "; ".join(steps) + ".") if steps else None
