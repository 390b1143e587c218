"""A scale set's DELETE as Azure runs it: a long-running operation. Its record (an operation resource kept in the
store, so any replica answers the polls) says InProgress until every instance is gone — each container removed, each
VM's process ended and its disks removed — then Succeeded; or Failed with the engine's error, the scale set staying
as it is (as in Azure). While it runs the scale set reads ``provisioningState: Deleting`` and refuses changes; a
deletion a stop interrupted is taken up again by the next start."""

from __future__ import annotations

import builtins
import logging
import uuid
from dataclasses import replace
from typing import Any

from overhaul.aio import Background
from overhaul.core.errors import Conflict, NotFound
from overhaul.core.model import ScaleSet, ScaleSetRef
from overhaul.core.resources import OPERATION_TYPE, Resource
from overhaul.runtime.parts import utc_timestamp
from overhaul.runtime.scale_sets import ScaleSets

log = logging.getLogger(__name__)
LOCK = "/scaleSetDeletions"
# Finished records are kept this long for late polls, then dropped.
KEEP_FINISHED_SECONDS = 24 * 3600.0
IN_PROGRESS, SUCCEEDED, FAILED = "InProgress", "Succeeded", "Failed"


def target_of(record: Resource) -> str:
    return str(record.doc.get("target", ""))


def status_of(record: Resource) -> str:
    return str(record.doc.get("status", ""))


def operation_doc(record: Resource) -> dict[str, Any]:
    """The operation resource a client polls: Azure's {name, status, startTime, endTime, error}."""
    return {k: record.doc[k] for k in ("name", "status", "startTime", "endTime", "error") if k in record.doc}


class ScaleSetDeletions:
    def __init__(self, scale_sets: ScaleSets) -> None:
        self.scale_sets = scale_sets
        self.parts = scale_sets.parts
        self.store = scale_sets.parts.store
        self._running = Background()
        scale_sets.refuse_change = self.refuse_while_deleting

    async def begin(self, ref: ScaleSetRef) -> tuple[ScaleSet, Resource]:
        """Records the deletion InProgress and runs it in the background (the running one, when there is one);
        NotFound when there is no such scale set."""
        model = await self.scale_sets.get(ref)
        async with self.parts.writing(LOCK):
            record = await self.running(model)
            if record is None:
                await self._prune(model.subscription)
                name = str(uuid.uuid4())
                doc = {
                    "name": name,
                    "status": IN_PROGRESS,
                    "startTime": utc_timestamp(self.parts.clock()),
                    "target": model.resource_id,
                }
                record = Resource(model.subscription, model.resource_group, OPERATION_TYPE, name, doc)
                await self.store.put_resource(record)
        self._start(record, model.ref)
        return model, record

    async def find(self, subscription: str, name: str) -> Resource | None:
        for record in await self.store.list_resources(OPERATION_TYPE, subscription):
            if record.name.lower() == name.lower():
                return record
        return None

    async def running(self, model: ScaleSet) -> Resource | None:
        target = model.resource_id.lower()
        for record in await self.store.list_resources(OPERATION_TYPE, model.subscription, model.resource_group):
            if status_of(record) == IN_PROGRESS and target_of(record).lower() == target:
                return record
        return None

    async def refuse_while_deleting(self, ref: ScaleSetRef) -> None:
        model = await self.scale_sets.find(ref)
        if model is not None and await self.running(model) is not None:
            raise Conflict(
                f"The scale set '{model.name}' is being deleted: it cannot be changed.", "OperationNotAllowed"
            )

    async def shown(self, docs: builtins.list[dict[str, Any]], subscription: str) -> builtins.list[dict[str, Any]]:
        """Scale set documents as a reader sees them: Deleting while a deletion runs; after one that failed, its
        error under properties.overhaul.lastDeleteError (until a later one)."""
        latest: dict[str, Resource] = {}
        for record in await self.store.list_resources(OPERATION_TYPE, subscription):
            key = target_of(record).lower()
            if key not in latest or str(record.doc.get("startTime")) >= str(latest[key].doc.get("startTime")):
                latest[key] = record
        for doc in docs:
            last = latest.get(str(doc.get("id", "")).lower())
            if last is None:
                continue
            props = doc.setdefault("properties", {})
            if status_of(last) == IN_PROGRESS:
                props["provisioningState"] = "Deleting"
            elif status_of(last) == FAILED:
                props.setdefault("overhaul", {})["lastDeleteError"] = last.doc.get("error")
        return docs

    async def resume(self) -> None:
        """Deletions a previous run left InProgress run again (the engine's removals are idempotent)."""
        for record in await self.store.list_resources(OPERATION_TYPE):
            if status_of(record) == IN_PROGRESS:
                _, _, name = target_of(record).rpartition("/")
                self._start(record, ScaleSetRef(record.subscription, record.resource_group, name))

    async def wait(self, record: Resource, timeout: float) -> None:
        await self._running.wait(record.id, timeout)

    async def close(self) -> None:
        await self._running.close()

    def _start(self, record: Resource, ref: ScaleSetRef) -> None:
        self._running.start(record.id, lambda: self._delete(record, ref), f"delete {ref.name}")

    async def _delete(self, record: Resource, ref: ScaleSetRef) -> None:
        try:
            await self.scale_sets.delete(ref)
            log.info("scale set %s deleted", ref.name)
            ended: dict[str, Any] = {"status": SUCCEEDED}
        except NotFound:
            ended = {"status": SUCCEEDED}  # deleted by someone else meanwhile: nothing is left either way
        except Exception as exc:  # any failure ends the operation Failed, saying why
            log.warning("deleting scale set %s failed: %s", ref.name, exc)
            code = getattr(exc, "code", "InternalOperationError")
            ended = {"status": FAILED, "error": {"code": code, "message": f"the scale set was not deleted: {exc}"}}
        doc = dict(record.doc) | {"endTime": utc_timestamp(self.parts.clock())} | ended
        await self.store.put_resource(replace(record, doc=doc))

    async def _prune(self, subscription: str) -> None:
        horizon = utc_timestamp(self.parts.clock() - KEEP_FINISHED_SECONDS)
        for record in await self.store.list_resources(OPERATION_TYPE, subscription):
            if status_of(record) != IN_PROGRESS and str(record.doc.get("endTime", "")) < horizon:
                await self.store.delete_resource(record.id)
