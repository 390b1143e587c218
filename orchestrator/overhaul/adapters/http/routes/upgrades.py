"""A scale set's rolling upgrades: start, cancel, approve, manual upgrade, the latest one, history, operations."""

from __future__ import annotations

import time

from aiohttp import web

from overhaul.adapters.http import arm
from overhaul.adapters.http.requests import (
    CANCEL_SUFFIX,
    POLL_AFTER_SECONDS,
    SUB,
    Route,
    accepted,
    body_object,
    instance_ids,
    orchestrator_of,
    ref,
)
from overhaul.adapters.http.routes.scale_sets import VMSS
from overhaul.core.arm_json import Reader
from overhaul.core.errors import NotFound
from overhaul.core.rollout import StartedBy
from overhaul.runtime.deletions import operation_doc

OPERATIONS = SUB + "/providers/Microsoft.Compute/locations/{location}/operations/{operation}"


async def os_upgrade_history(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    history = await orchestrator.upgrades.history(model.ref)
    records = [arm.history_record(s.attempt, s.image_reference, model.location) for s in history]
    return web.json_response({"value": records})


async def start_os_rolling_upgrade(request: web.Request) -> web.Response:
    """Azure sends no body; ours may say ``{"overhaul": {"fixForward": true}}`` (docs/triage.md)."""
    orchestrator = orchestrator_of(request)
    ours = Reader(await body_object(request), "").obj("overhaul")
    fix_forward = ours.boolean("fixForward", False)
    attempt = await orchestrator.upgrades.start(ref(request), started_by=StartedBy.USER, fix_forward=fix_forward)
    return accepted(request, await orchestrator.scale_sets.get(ref(request)), attempt)


async def cancel_rolling_upgrade(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    attempt = await orchestrator.upgrades.cancel(ref(request))
    model = await orchestrator.scale_sets.get(ref(request))
    return accepted(request, model, attempt, operation=attempt.id + CANCEL_SUFFIX)


async def manual_upgrade(request: web.Request) -> web.Response:
    """manualupgrade (`az vmss update-instances`): the instances get the latest model; an operation to follow."""
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    attempt = await orchestrator.upgrades.manual(model.ref, await instance_ids(request, model, required=True))
    return accepted(request, model, attempt)


async def approve_rolling_upgrade(request: web.Request) -> web.Response:
    """approveRollingUpgrade: deferred OS upgrades of the instances (all when none are named) may go ahead."""
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    await orchestrator.upgrades.approve(model.ref, await instance_ids(request, model))
    return web.Response(status=200)


async def latest_rolling_upgrade(request: web.Request) -> web.Response:
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    latest = await orchestrator.upgrades.latest(model.ref)
    if latest is None:
        raise NotFound(f"no rolling upgrade of {model.name} has run yet", "RollingUpgradeNotFound")
    attempt = latest.attempt
    reports = {i: orchestrator.scale_sets.health_report(model.name, i) for i in attempt.instances}
    health = {i: r for i, r in reports.items() if r is not None}
    now = time.time()
    doc = arm.latest_record(attempt, model, health, now)
    doc["properties"]["overhaul"]["why"] = [arm.cause_doc(c, now) for c in await orchestrator.upgrades.why(model.ref)]
    return web.json_response(doc)


async def rolling_upgrade_why(request: web.Request) -> web.Response:
    """overhaul's own: why the rollout waits, or why none moves the scale set on (docs/why.md)."""
    orchestrator = orchestrator_of(request)
    model = await orchestrator.scale_sets.get(ref(request))
    now = time.time()
    return web.json_response({"value": [arm.cause_doc(c, now) for c in await orchestrator.upgrades.why(model.ref)]})


async def get_operation(request: web.Request) -> web.Response:
    """An operation resource: a rolling upgrade (its attempt), the cancel of one, or a scale set's deletion."""
    orchestrator = orchestrator_of(request)
    name = request.match_info["operation"]
    attempt = await orchestrator.upgrades.find(name.removesuffix(CANCEL_SUFFIX))
    if attempt is not None:
        doc = arm.operation_doc(name, attempt, cancel=name.endswith(CANCEL_SUFFIX))
    else:
        deletion = await orchestrator.scale_set_deletions.find(request.match_info["sub"], name)
        if deletion is None:
            raise NotFound(f"operation {name} does not exist (or its history was pruned)", "OperationNotFound")
        doc = operation_doc(deletion)
    headers = {"Retry-After": str(POLL_AFTER_SECONDS)} if doc["status"] == "InProgress" else {}
    return web.json_response(doc, headers=headers)


ROUTES: list[Route] = [
    ("GET", VMSS + "/{name}/osUpgradeHistory", os_upgrade_history),
    ("POST", VMSS + "/{name}/osRollingUpgrade", start_os_rolling_upgrade),
    ("POST", VMSS + "/{name}/rollingUpgrades/cancel", cancel_rolling_upgrade),
    ("POST", VMSS + "/{name}/approveRollingUpgrade", approve_rolling_upgrade),
    ("POST", VMSS + "/{name}/manualupgrade", manual_upgrade),
    ("GET", VMSS + "/{name}/rollingUpgrades/latest", latest_rolling_upgrade),
    ("GET", VMSS + "/{name}/rollingUpgrades/why", rolling_upgrade_why),
    ("GET", OPERATIONS, get_operation),
]
