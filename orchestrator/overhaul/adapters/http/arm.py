"""Pure: Azure Resource Manager shaped documents of attempts, instances, gallery images and errors, as Azure's API
returns them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from overhaul.core.arm_json import overlay
from overhaul.core.gallery import ImageDefinition, ImageVersion
from overhaul.core.model import ScaleSet, model_digest
from overhaul.core.naming import image_definition_id, image_version_id, vm_image_version_id
from overhaul.core.planner import InstanceView
from overhaul.core.rollout import Attempt, AttemptStatus, InstanceProgress, Step
from overhaul.core.why import Cause
from overhaul.ports.health import HealthReport

UPGRADE_TYPE = "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def error_doc(
    code: str, message: str, target: str | None = None, details: tuple[Mapping[str, str], ...] = ()
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if target:
        error["target"] = target
    if details:
        error["details"] = [dict(d) for d in details]
    return {"error": error}


def running_status(attempt: Attempt) -> dict[str, Any]:
    return {
        "code": attempt.status.value,
        "startTime": iso(attempt.start_time),
        "endTime": iso(attempt.end_time),
        "lastAction": attempt.last_action,
        "lastActionTime": iso(attempt.last_action_time),
    }


def progress(attempt: Attempt) -> dict[str, int]:
    return {
        "successfulInstanceCount": attempt.successful,
        "failedInstanceCount": attempt.failed,
        "inProgressInstanceCount": attempt.in_progress,
        "pendingInstanceCount": attempt.pending,
    }


def _error(attempt: Attempt) -> dict[str, Any] | None:
    if attempt.error_code is None:
        return None
    details = [
        {"code": "InstanceUpgradeFailed", "target": str(p.instance_id), "message": p.error}
        for p in attempt.instances.values()
        if p.error
    ]
    return {"code": attempt.error_code, "message": attempt.error_message, "details": details}


def rollback_info(attempt: Attempt) -> dict[str, Any]:
    failed = [p for p in attempt.instances.values() if p.step is Step.ROLLBACK_FAILED]
    info: dict[str, Any] = {
        "successfullyRolledbackInstanceCount": attempt.count(Step.ROLLED_BACK),
        "failedRolledbackInstanceCount": len(failed),
    }
    if failed:
        info["rollbackError"] = {
            "code": "RollbackFailed",
            "message": "; ".join(f"instance {p.instance_id}: {p.error}" for p in failed),
        }
    return info


def history_record(attempt: Attempt, image_reference: Mapping[str, Any], location: str) -> dict[str, Any]:
    """One entry of ``osUpgradeHistory``."""
    properties: dict[str, Any] = {
        "runningStatus": running_status(attempt),
        "progress": progress(attempt),
        "startedBy": attempt.started_by.value,
        "targetImageReference": dict(image_reference),
        "rollbackInfo": rollback_info(attempt),
    }
    error = _error(attempt)
    if error is not None:
        properties["error"] = error
    return {"properties": properties, "type": UPGRADE_TYPE, "location": location, "id": attempt.id}


def in_flight_doc(progress: InstanceProgress, report: HealthReport | None, now: float) -> dict[str, Any]:
    """One instance of an attempt, with what its health source says and the time its health deadline leaves."""
    doc = progress.to_json()
    if not progress.step.terminal:
        doc["health"] = report.health.value if report else None
        doc["reason"] = report.detail if report else None
        doc["timeLeft"] = None if progress.deadline is None else max(0.0, round(progress.deadline - now, 1))
    return doc


def latest_record(
    attempt: Attempt,
    model: ScaleSet,
    health: Mapping[int, HealthReport] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """``rollingUpgrades/latest``: the policy, the running status and the progress of the newest attempt; with
    ``health``, each instance in flight says its health, the reason and the time left before its deadline."""
    health = health or {}
    clock = now if now is not None else attempt.last_action_time
    properties: dict[str, Any] = {
        "policy": model.upgrade_policy.rolling.to_json(),
        "runningStatus": running_status(attempt),
        "progress": progress(attempt),
        "overhaul": {
            "attemptId": attempt.id,
            "targetVersion": attempt.target_version,
            "startedBy": attempt.started_by.value,
            "batchesStarted": attempt.batches_started,
            "currentBatch": list(attempt.batch),
            "instances": [in_flight_doc(p, health.get(i), clock) for i, p in attempt.instances.items()],
            # Ended, and its last commit or rollback finished: the scale set takes changes again.
            "done": attempt.done,
        },
    }
    error = _error(attempt)
    if error is not None:
        properties["error"] = error
    return {
        "id": f"{model.resource_id}/rollingUpgrades/latest",
        "name": "latest",
        "type": UPGRADE_TYPE,
        "location": model.location,
        "properties": properties,
    }


def instance_doc(
    model: ScaleSet,
    view: InstanceView,
    *,
    running: bool,
    ports: Mapping[int, int],
    has_previous_os_disk: bool,
    health_detail: str = "",
    address: str = "127.0.0.1",
    host: str = "",
) -> dict[str, Any]:
    """One entry of ``…/virtualMachines`` with its instanceView (health, image version, power state)."""
    power = "PowerState/running" if running else "PowerState/stopped"
    image = model.image_reference.to_json()
    image["exactVersion"] = view.version
    return {
        "id": f"{model.resource_id}/virtualMachines/{view.instance_id}",
        "name": model.instance_name(view.instance_id),
        "instanceId": str(view.instance_id),
        "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
        "location": model.location,
        **({"zones": [view.zone]} if view.zone else {}),
        "properties": {
            # Whether its OS disk was made with the model as it is now (a model change shows here until upgraded).
            "latestModelApplied": view.model_digest == model_digest(model),
            "storageProfile": {"imageReference": image},
            "instanceView": {
                "statuses": [
                    {"code": "ProvisioningState/succeeded", "level": "Info"},
                    {"code": power, "level": "Info"},
                ],
                "vmHealth": {
                    "status": {
                        "code": f"HealthState/{view.health.value.lower()}",
                        "level": "Info",
                        "displayStatus": view.health.value,
                        "message": health_detail,
                    }
                },
            },
            "overhaul": {
                "address": address,
                "host": host or None,  # the host's id; none: the orchestrator's own engine
                "hostPorts": {str(k): v for k, v in ports.items()},
                "phaseOrderingNumber": view.phase,
                "skipUpgrade": view.skip_upgrade,
                "upgradeInProgress": has_previous_os_disk,
            },
        },
    }


def scale_set_instance_view(model: ScaleSet, instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Azure's VirtualMachineScaleSetInstanceView: counts of the instances' statuses, and of each extension's."""
    counts: dict[str, int] = {}
    for doc in instances:
        for status in doc["properties"]["instanceView"]["statuses"]:
            counts[status["code"]] = counts.get(status["code"], 0) + 1
    health: dict[str, int] = {}
    for doc in instances:
        code = doc["properties"]["instanceView"]["vmHealth"]["status"]["code"]
        health[code] = health.get(code, 0) + 1
    return {
        "virtualMachine": {"statusesSummary": [{"code": c, "count": n} for c, n in sorted(counts.items())]},
        "extensions": [
            {"name": ext.name, "statusesSummary": [{"code": "ProvisioningState/succeeded", "count": len(instances)}]}
            for ext in model.extensions
        ],
        "statuses": [
            {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"}
        ],
        "overhaul": {"healthSummary": [{"code": c, "count": n} for c, n in sorted(health.items())]},
    }


OPERATION_STATUS = {
    AttemptStatus.ROLLING_FORWARD: "InProgress",
    AttemptStatus.COMPLETED: "Succeeded",
    AttemptStatus.FAULTED: "Failed",
    AttemptStatus.CANCELLED: "Canceled",
}


def operation_doc(name: str, attempt: Attempt, *, cancel: bool = False) -> dict[str, Any]:
    """ARM's operation resource for a rolling upgrade, or for the cancel of one (done once the attempt ends).

    InProgress until the attempt is done — ended, and its last driver actions (a commit, a rollback) finished —
    so a client that acts on the scale set as soon as the operation ends is not refused (409) meanwhile."""
    status = OPERATION_STATUS[attempt.status] if attempt.done else "InProgress"
    if cancel and attempt.done:
        status = "Succeeded"
    doc: dict[str, Any] = {"name": name, "status": status, "startTime": iso(attempt.start_time)}
    if attempt.done:
        doc["endTime"] = iso(attempt.end_time)
    if status == "Failed":
        doc["error"] = {"code": attempt.error_code or "RollingUpgradeFailed", "message": attempt.error_message or ""}
    return doc


def image_definition_doc(subscription: str, resource_group: str, definition: ImageDefinition) -> dict[str, Any]:
    """Its ARM document: what was sent (Azure fields with no meaning here come back verbatim) under ours."""
    own = {
        "id": image_definition_id(subscription, resource_group, definition.gallery, definition.name),
        "name": definition.name,
        "type": "Microsoft.Compute/galleries/images",
        "properties": {
            "provisioningState": "Succeeded",
            "osType": "Linux",
            "identifier": {"publisher": definition.publisher, "offer": definition.offer, "sku": definition.sku},
        },
    }
    doc: dict[str, Any] = overlay(definition.sent, own)
    return doc


def image_version_doc(subscription: str, resource_group: str, version: ImageVersion) -> dict[str, Any]:
    """The ARM document of an image version: its full id and an ISO 8601 publishedDate."""
    doc = version.to_json()
    doc["id"] = image_version_id(subscription, resource_group, version.gallery, version.image, version.version)
    doc["properties"]["publishingProfile"]["publishedDate"] = iso(version.published_at)
    return doc


def vm_image_version_doc(
    subscription: str, location: str, sku: tuple[str, str, str], version: ImageVersion
) -> dict[str, Any]:
    """A version as `vm image list` shows a platform image's (Azure's VirtualMachineImageResource); ``sku`` is
    (publisher, offer, sku) as the request spelt them."""
    return {
        "location": location,
        "name": version.version,
        "id": vm_image_version_id(subscription, location, sku, version.version),
        "properties": {"excludeFromLatest": version.exclude_from_latest} | version.source(),
    }


def cause_doc(cause: Cause, now: float) -> dict[str, Any]:
    """One cause of ``why`` (core/why.py) as the API shows it, times in UTC."""
    doc: dict[str, Any] = {
        "code": cause.code,
        "message": cause.message,
        "unblock": cause.unblock,
        "description": cause.paragraph(now),
        "instances": list(cause.instances),
    }
    for key, value in (
        ("rule", cause.rule),
        ("threshold", cause.threshold),
        ("observed", cause.observed),
        ("since", iso(cause.since)),
        ("nextAction", cause.next_action),
        ("nextActionTime", iso(cause.next_at)),
    ):
        if value is not None:
            doc[key] = value
    return doc
