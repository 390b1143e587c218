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
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from overhaul.aio import Background
from overhaul.core.errors import InvalidInput, NotFound, OverhaulError
from overhaul.core.model import ScaleSetRef
from overhaul.core.naming import Scope
from overhaul.core.network import parse_load_balancer
from overhaul.core.resources import Resource, group_id, resource_id
from overhaul.core.templates import KNOWN, TemplateError, expand, functions_in
from overhaul.runtime.kept import PARSERS

if TYPE_CHECKING:
    from overhaul.runtime.orchestrator import Orchestrator

log = logging.getLogger(__name__)
DEPLOYMENT_TYPE = "Microsoft.Resources/deployments"
SCALE_SET_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
LOAD_BALANCER_TYPE = "Microsoft.Network/loadBalancers"
NAT_RULE_TYPE = "Microsoft.Network/loadBalancers/inboundNatRules"
TEMPLATE_ONLY = ("type", "name", "apiVersion", "dependsOn", "condition", "comments", "copy", "scope")
API_VERSION = "2024-07-01"


class Evaluation:
    """What a deployment's expressions read: its parameters and variables, and what it has put so far."""

    def __init__(self, subscription: str, group: Resource, template: Mapping[str, Any], given: Mapping[str, Any]):
        self.subscription_id, self.group = subscription, group
        self.template, self.given = template, given
        self.deployed: dict[str, Any] = {}  # lower-case id -> the resource's document

    def parameter(self, name: str) -> Any:
        for key, value in self.given.items():
            if key.lower() == name.lower():
                return value.get("value") if isinstance(value, Mapping) else value
        declared = {k.lower(): v for k, v in (self.template.get("parameters") or {}).items()}
        if name.lower() not in declared or "defaultValue" not in declared[name.lower()]:
            raise TemplateError(f"the parameter {name!r} has no value")
        return expand(declared[name.lower()]["defaultValue"], self)

    def variable(self, name: str) -> Any:
        variables = {k.lower(): v for k, v in (self.template.get("variables") or {}).items()}
        if name.lower() not in variables:
            raise TemplateError(f"the variable {name!r} is not declared")
        return expand(variables[name.lower()], self)

    def resource_id(self, args: Sequence[Any]) -> str:
        parts = [str(a) for a in args]
        at = next((i for i, p in enumerate(parts) if "/" in p), None)
        if at is None or at > 2:
            raise TemplateError("resourceId() needs a resource type such as 'Microsoft.Network/loadBalancers'")
        scope = parts[:at]
        subscription = scope[0] if len(scope) == 2 else self.subscription_id
        group = scope[-1] if scope else self.group.name
        type_parts, names = parts[at].split("/"), parts[at + 1 :]
        if len(names) != len(type_parts) - 1:
            raise TemplateError(f"resourceId(): {parts[at]!r} takes {len(type_parts) - 1} name(s)")
        path = f"{type_parts[0]}/{type_parts[1]}/{names[0]}"
        for child_type, child_name in zip(type_parts[2:], names[1:], strict=True):
            path += f"/{child_type}/{child_name}"
        return f"{group_id(subscription, group)}/providers/{path}"

    def reference(self, target: str, full: bool) -> Any:
        wanted = target.lower()
        doc = next((d for key, d in self.deployed.items() if key == wanted or key.endswith("/" + wanted)), None)
        if doc is None:
            raise TemplateError(f"reference({target!r}): no resource of this deployment has that id or name")
        return doc if full else doc.get("properties", {})

    def resource_group(self) -> dict[str, Any]:
        return dict(self.group.doc)

    def subscription(self) -> dict[str, Any]:
        sub = self.subscription_id
        return {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "displayName": sub}

    def provider(self, namespace: str, type_: str) -> dict[str, Any]:
        return {"namespace": namespace, "resourceType": type_, "locations": ["local"], "apiVersions": [API_VERSION]}


def resource_key(resource: Mapping[str, Any], evaluation: Evaluation) -> str:
    """``type/name`` of a template resource (names of children as ``parent/child``)."""
    return f"{resource.get('type')}/{expand(resource.get('name'), evaluation)}"


def _names(dependency: str, key: str) -> bool:
    """Whether a dependsOn entry (type/name, an id, or a bare name) names the resource ``key`` (type/name)."""
    return dependency == key or dependency.endswith("/" + key) or key.endswith("/" + dependency)


def ordered(resources: list[Mapping[str, Any]], evaluation: Evaluation) -> list[Mapping[str, Any]]:
    """The resources with each after those it depends on."""
    keys = [resource_key(r, evaluation).lower() for r in resources]
    needs = [[str(expand(d, evaluation)).lower() for d in r.get("dependsOn") or []] for r in resources]
    done: list[int] = []
    while len(done) < len(resources):
        ready = [
            i
            for i in range(len(resources))
            if i not in done
            and not any(_names(n, keys[j]) for n in needs[i] for j in range(len(resources)) if j != i and j not in done)
        ]
        if not ready:
            stuck = [keys[i] for i in range(len(resources)) if i not in done]
            raise TemplateError(f"the resources {stuck} depend on each other (a cycle)")
        done.append(ready[0])
    return [resources[i] for i in done]


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
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc = {
            "id": resource_id(subscription, group, DEPLOYMENT_TYPE, name),
            "name": name,
            "type": DEPLOYMENT_TYPE,
            "properties": {
                "provisioningState": "Running",
                "mode": props.get("mode", "Incremental"),
                "timestamp": now,
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
            for resource in ordered(list(evaluation.template.get("resources") or []), evaluation):
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

    async def _dispatch(self, type_: str, name: str, body: dict[str, Any], sub: str, group: str) -> dict[str, Any]:
        o = self.orchestrator
        kind = type_.lower()
        if kind == SCALE_SET_TYPE.lower():
            model, _ = await o.scale_sets.put(ScaleSetRef(sub, group, name), body)
            return dict(model.to_json())
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


def camel(name: str) -> str:
    """An output's name as Resource Manager answers it: camel-cased the way its JSON serializer does ("VMSS" ->
    "vmss", "MyOutput" -> "myOutput", "VMName" -> "vmName"); az reads outputs by these names."""
    chars = list(name)
    for i, char in enumerate(chars):
        if i == 1 and not char.isupper():
            break
        if i > 0 and i + 1 < len(chars) and not chars[i + 1].isupper():
            break
        chars[i] = char.lower()
    return "".join(chars)


def check(template: Mapping[str, Any]) -> None:
    """Refuses, before anything is made, a template using what overhaul cannot evaluate (naming the resource)."""
    for i, resource in enumerate(template.get("resources") or []):
        where = f"properties.template.resources[{i}]"
        if not isinstance(resource, Mapping) or not resource.get("type") or not resource.get("name"):
            raise InvalidInput(f"{where}: a resource needs a type and a name", target=where)
        label = f"{where} ({resource['type']} {str(resource['name'])[:80]})"
        if "copy" in resource:
            raise InvalidInput(f"{label}: copy loops are not supported", target=f"{where}.copy")
        try:
            unknown = [f for f in functions_in(resource) if f.lower() not in KNOWN]
        except TemplateError as exc:
            raise InvalidInput(f"{label}: an expression cannot be read: {exc}", target=where) from None
        if unknown:
            raise InvalidInput(f"{label}: the function {unknown[0]}() is not one overhaul evaluates", target=where)
    for key in ("variables", "outputs"):
        try:
            unknown = [f for f in functions_in(template.get(key) or {}) if f.lower() not in KNOWN]
        except TemplateError as exc:
            raise InvalidInput(f"properties.template.{key}: {exc}", target=f"properties.template.{key}") from None
        if unknown:
            raise InvalidInput(
                f"properties.template.{key}: the function {unknown[0]}() is not one overhaul evaluates",
                target=f"properties.template.{key}",
            )
