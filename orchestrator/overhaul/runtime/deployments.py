"""Template deployments (Microsoft.Resources/deployments), as `az vmss create` and `az network lb create` make
them: the template's resources are evaluated (core/templates.py) and put in dependency order through the same
commands the REST API uses — scale sets, load balancers and their inbound NAT rules, the resources overhaul keeps —
in the background; the deployment's record says how far it got, each resource's operation, and its outputs. A
template overhaul cannot evaluate is refused before anything is made, naming the resource and the expression. The
template is kept with the record, so a deployment a stop interrupted is deployed again by the next start."""

from __future__ import annotations

import builtins
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from overhaul.aio import Background
from overhaul.core.errors import InvalidInput, NotFound, OverhaulError
from overhaul.core.model import ScaleSetRef, without_secrets
from overhaul.core.naming import Scope
from overhaul.core.network import parse_load_balancer
from overhaul.core.resources import Resource, resource_id
from overhaul.core.template_plan import TEMPLATE_ONLY, Evaluation, camel, check, ordered, unrolled
from overhaul.core.templates import TemplateError, expand
from overhaul.runtime.kept import PARSERS
from overhaul.runtime.parts import utc_timestamp

if TYPE_CHECKING:
    from overhaul.runtime.orchestrator import Orchestrator

log = logging.getLogger(__name__)
DEPLOYMENT_TYPE = "Microsoft.Resources/deployments"
SCALE_SET_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
LOAD_BALANCER_TYPE = "Microsoft.Network/loadBalancers"
NAT_RULE_TYPE = "Microsoft.Network/loadBalancers/inboundNatRules"
KEPT_DOCS = frozenset(PARSERS)  # the kept types reference() reads (not groups, deployments or operations)


class Deployments:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.store = orchestrator.parts.store
        self._running = Background()

    async def put(self, subscription: str, group: str, name: str, body: Any) -> Resource:
        """Checks the template, records the deployment Running and deploys it in the background."""
        if not isinstance(body, Mapping) or not isinstance(body.get("properties"), Mapping):
            raise InvalidInput("properties: is required (template, parameters, mode)", target="properties")
        props = body["properties"]
        template, given = props.get("template"), props.get("parameters") or {}
        if not isinstance(template, Mapping) or not isinstance(template.get("resources", []), list):
            raise InvalidInput(
                "properties.template: must be a template object with a resources list (templateLink is not supported)",
                target="properties.template",
            )
        owner = await self.orchestrator.resource_groups.get(subscription, group)
        check(template)
        doc = {
            "id": resource_id(subscription, group, DEPLOYMENT_TYPE, name),
            "name": name,
            "type": DEPLOYMENT_TYPE,
            "properties": {
                "provisioningState": "Running",
                "mode": props.get("mode", "Incremental"),
                "timestamp": utc_timestamp(self.orchestrator.parts.clock()),
                "parameters": given,
                "outputResources": [],
            },
            "operations": [],
            "template": template,  # kept (never answered) to deploy it again after a stop
        }
        deployment = Resource(subscription, group, DEPLOYMENT_TYPE, name, doc)
        await self.store.put_resource(deployment)
        self._start(deployment, Evaluation(subscription, owner, template, given))
        return deployment

    def _start(self, deployment: Resource, evaluation: Evaluation) -> None:
        work = functools.partial(self._deploy, deployment, evaluation, time.monotonic())
        self._running.start(deployment.id, work, f"deploy {deployment.name}")

    async def get(self, subscription: str, group: str, name: str) -> Resource:
        found = await self.store.get_resource(resource_id(subscription, group, DEPLOYMENT_TYPE, name))
        if found is None:
            raise NotFound(f"Deployment '{name}' could not be found.", "DeploymentNotFound")
        return found

    async def list(self, subscription: str, group: str) -> builtins.list[Resource]:
        return await self.store.list_resources(DEPLOYMENT_TYPE, subscription, group)

    async def delete(self, subscription: str, group: str, name: str) -> None:
        """The deployment's record (the resources it made stay, as in Azure)."""
        found = await self.get(subscription, group, name)
        await self.store.delete_resource(found.id)

    async def wait(self, deployment_id: str, timeout: float) -> None:
        await self._running.wait(deployment_id, timeout)

    async def resume(self) -> None:
        """Deployments a stop interrupted are deployed again from their template: each resource's PUT is
        idempotent, so what the first run made is put again as it is and the rest is made. One without its
        template (recorded by an older overhaul) or whose group is gone ends Failed, saying so."""
        for deployment in await self.store.list_resources(DEPLOYMENT_TYPE):
            props = dict(deployment.doc.get("properties") or {})
            if props.get("provisioningState") != "Running" or self._running.running(deployment.id):
                continue
            template = deployment.doc.get("template")
            owner = await self.orchestrator.resource_groups.find(deployment.subscription, deployment.resource_group)
            if isinstance(template, Mapping) and owner is not None:
                log.info("deployment %s: deployed again after a stop", deployment.id)
                evaluation = Evaluation(deployment.subscription, owner, template, props.get("parameters") or {})
                again = dict(deployment.doc) | {"operations": [], "properties": props | {"outputResources": []}}
                self._start(replace(deployment, doc=again), evaluation)
                continue
            props["provisioningState"] = "Failed"
            props["error"] = {
                "code": "DeploymentInterrupted",
                "message": "the orchestrator stopped while this deployment ran: deploy it again",
            }
            await self.store.put_resource(replace(deployment, doc=dict(deployment.doc) | {"properties": props}))

    async def close(self) -> None:
        await self._running.close()

    async def _deploy(self, deployment: Resource, evaluation: Evaluation, started: float) -> None:
        doc = dict(deployment.doc)
        props, operations = dict(doc["properties"]), list(doc["operations"])
        try:
            evaluation.existing = await self._existing(evaluation.subscription_id)
            resources = unrolled(list(evaluation.template.get("resources") or []), evaluation)
            for resource in ordered(resources, evaluation):
                target = await self._put_one(resource, evaluation, operations)
                if target is not None:
                    props["outputResources"] = [*props["outputResources"], {"id": target}]
            outputs = evaluation.template.get("outputs") or {}
            props["outputs"] = {
                camel(k): {"type": v.get("type", "string"), "value": expand(v.get("value"), evaluation)}
                for k, v in outputs.items()
            }
            props["provisioningState"] = "Succeeded"
        except (OverhaulError, TemplateError) as exc:
            props["provisioningState"] = "Failed"
            detail = {"code": getattr(exc, "code", "InvalidTemplate"), "message": str(exc)}
            props["error"] = {
                "code": "DeploymentFailed",
                "message": "At least one resource deployment operation failed: see details.",
                "details": [detail],
            }
        except Exception as exc:  # recorded, so the deployment never stays Running
            log.exception("deployment %s failed", deployment.id)
            props["provisioningState"] = "Failed"
            props["error"] = {"code": "InternalServerError", "message": str(exc)}
        props["duration"] = f"PT{time.monotonic() - started:.3f}S"
        await self.store.put_resource(replace(deployment, doc=doc | {"properties": props, "operations": operations}))

    async def _put_one(
        self, resource: Mapping[str, Any], evaluation: Evaluation, operations: builtins.list[Any]
    ) -> str | None:
        evaluation = evaluation.at(resource)
        type_ = str(resource.get("type", ""))
        name = str(expand(resource.get("name"), evaluation))
        if "condition" in resource and not expand(resource["condition"], evaluation):
            return None
        body = {k: expand(v, evaluation) for k, v in resource.items() if k not in TEMPLATE_ONLY}
        sub, group = evaluation.subscription_id, evaluation.group.name
        target = evaluation.resource_id([type_, *name.split("/")])  # a child's id as resourceId() makes it
        operation: dict[str, Any] = {
            "id": f"{target}/operations/{len(operations)}",
            "operationId": str(len(operations)),
            "properties": {
                "provisioningOperation": "Create",
                "targetResource": {"id": target, "resourceType": type_, "resourceName": name},
            },
        }
        try:
            made = await self._dispatch(type_, name, body, sub, group)
        except OverhaulError as exc:
            operation["properties"] |= {
                "provisioningState": "Failed",
                "statusCode": "BadRequest",
                "statusMessage": {"error": {"code": exc.code, "message": exc.message, "target": target}},
            }
            operations.append(operation)
            raise OverhaulError(f"{type_} '{name}': {exc.message}", exc.code, target) from exc
        except TemplateError as exc:
            operations.append(operation | {"properties": operation["properties"] | {"provisioningState": "Failed"}})
            raise TemplateError(f"{type_} '{name}': {exc}") from exc
        operation["properties"] |= {"provisioningState": "Succeeded", "statusCode": "OK"}
        operations.append(operation)
        evaluation.deployed[target.lower()] = made
        return target

    async def _existing(self, subscription: str) -> dict[str, Any]:
        """What reference() reads of resources outside the deployment, by id: as they were when it started."""
        o = self.orchestrator
        docs = [without_secrets(m.to_json()) for m in await o.scale_sets.list(subscription)]
        docs += [dict(b.to_json()) for b in await o.load_balancers.list(Scope(subscription, None))]
        docs += [dict(r.doc) for r in await self.store.list_resources(None, subscription) if r.type in KEPT_DOCS]
        return {str(d["id"]).lower(): d for d in docs if d.get("id")}

    async def _dispatch(self, type_: str, name: str, body: dict[str, Any], sub: str, group: str) -> dict[str, Any]:
        o = self.orchestrator
        kind = type_.lower()
        if kind == SCALE_SET_TYPE.lower():
            model, _ = await o.scale_sets.put(ScaleSetRef(sub, group, name), body)
            return without_secrets(model.to_json())  # what reference() reads may be answered in outputs
        if kind == LOAD_BALANCER_TYPE.lower():
            await o.load_balancers.put(parse_load_balancer(body, name=name, resource_group=group, subscription=sub))
            return dict((await o.load_balancers.get(name, Scope(sub, group))).to_json())
        if kind == NAT_RULE_TYPE.lower():
            balancer_name, rule = name.split("/", 1)
            balancer = await o.load_balancers.get(balancer_name, Scope(sub, group))
            doc = dict(balancer.sent)
            lb_props = dict(doc.get("properties") or {})
            rules = [r for r in lb_props.get("inboundNatRules") or [] if r.get("name", "").lower() != rule.lower()]
            lb_props["inboundNatRules"] = [*rules, {"name": rule, "properties": body.get("properties", {})}]
            await o.load_balancers.put(
                parse_load_balancer(
                    doc | {"properties": lb_props}, name=balancer.name, resource_group=group, subscription=sub
                )
            )
            return {"name": rule, "properties": body.get("properties", {})}
        kept = next((t for t in PARSERS if t.lower() == kind), None)
        if kept is not None:
            resource, _ = await o.kept.put(kept, sub, group, name, body)
            return dict(resource.doc)
        raise InvalidInput(f"resource type {type_} is not one overhaul deploys", target="type")
