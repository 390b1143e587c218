"""A template deployment's plan (pure): what its expressions read (``Evaluation``: parameters, variables, ids,
what it has put so far, the copy index), its resources with copy loops unrolled, in dependsOn order, the static
check that refuses what overhaul cannot evaluate before anything is made, and outputs' names as Resource Manager
answers them."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from overhaul.core.errors import InvalidInput
from overhaul.core.resources import Resource, group_id
from overhaul.core.templates import KNOWN, TemplateError, expand, functions_in

# Template keys that are not the resource's document; INDEX/LOOP mark an unrolled copy of a copy loop.
INDEX, LOOP = "__copyIndex", "__copyLoop"
TEMPLATE_ONLY = ("type", "name", "apiVersion", "dependsOn", "condition", "comments", "copy", "scope", INDEX, LOOP)
API_VERSION = "2024-07-01"
MAX_COPIES = 800  # Resource Manager's limit on a copy loop's count


class Evaluation:
    """What a deployment's expressions read: its parameters and variables, and what it has put so far."""

    def __init__(self, subscription: str, group: Resource, template: Mapping[str, Any], given: Mapping[str, Any]):
        self.subscription_id, self.group = subscription, group
        self.template, self.given = template, given
        self.deployed: dict[str, Any] = {}  # lower-case id -> the resource's document
        self.existing: dict[str, Any] = {}  # lower-case id -> a document outside the deployment, as it started
        self.index: int | None = None  # copyIndex() of the unrolled copy being evaluated
        self.loop = ""

    def at(self, resource: Mapping[str, Any]) -> Evaluation:
        """This evaluation as ``resource`` sees it: its copy index, when it is a copy of a loop (what it has put
        so far is shared)."""
        if INDEX not in resource:
            return self
        seen = copy.copy(self)
        seen.index, seen.loop = int(resource[INDEX]), str(resource[LOOP])
        return seen

    def copy_index(self, loop: str | None) -> int:
        if self.index is None:
            raise TemplateError("copyIndex() is only for a resource with a copy loop")
        if loop is not None and loop.lower() != self.loop.lower():
            raise TemplateError(f"copyIndex({loop!r}): this resource is in the copy loop {self.loop!r}")
        return self.index

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
            doc = self.existing.get(wanted)  # by id only, as Resource Manager reads a resource outside the template
        if doc is None:
            raise TemplateError(
                f"reference({target!r}): no resource of this deployment has that id or name, and no other resource "
                "has that id"
            )
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
    return f"{resource.get('type')}/{expand(resource.get('name'), evaluation.at(resource))}"


def unrolled(resources: list[Mapping[str, Any]], evaluation: Evaluation) -> list[Mapping[str, Any]]:
    """The resources with each copy loop (``copy: {name, count}``) made ``count`` copies, each marked with its
    index for copyIndex()."""
    out: list[Mapping[str, Any]] = []
    for resource in resources:
        loop = resource.get("copy")
        if loop is None:
            out.append(resource)
            continue
        count = expand(loop["count"], evaluation)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COPIES:
            raise TemplateError(f"copy {loop['name']!r}: count must be a whole number from 0 to {MAX_COPIES}")
        out += [{**resource, INDEX: i, LOOP: loop["name"]} for i in range(count)]
    return out


def _names(dependency: str, key: str) -> bool:
    """Whether a dependsOn entry (type/name, an id, or a bare name) names the resource ``key`` (type/name)."""
    return dependency == key or dependency.endswith("/" + key) or key.endswith("/" + dependency)


def ordered(resources: list[Mapping[str, Any]], evaluation: Evaluation) -> list[Mapping[str, Any]]:
    """The resources with each after those it depends on."""
    keys = [resource_key(r, evaluation).lower() for r in resources]
    loops = [str(r.get(LOOP, "")).lower() for r in resources]
    needs = [[str(expand(d, evaluation.at(r))).lower() for d in r.get("dependsOn") or []] for r in resources]
    done: list[int] = []
    while len(done) < len(resources):
        ready = [
            i
            for i in range(len(resources))
            if i not in done
            and not any(
                _names(n, keys[j]) or n == loops[j]
                for n in needs[i]
                for j in range(len(resources))
                if j != i and j not in done
            )
        ]
        if not ready:
            stuck = [keys[i] for i in range(len(resources)) if i not in done]
            raise TemplateError(f"the resources {stuck} depend on each other (a cycle)")
        done.append(ready[0])
    return [resources[i] for i in done]


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
        check_copy(resource, where, label)
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


def check_copy(resource: Mapping[str, Any], where: str, label: str) -> None:
    """A copy loop is an object with a name and a count; copyIndex() only inside one."""
    loop = resource.get("copy")
    if loop is None:
        if "copyindex" in (f.lower() for f in functions_in(resource)):
            raise InvalidInput(f"{label}: copyIndex() is only for a resource with a copy loop", target=where)
        return
    if (
        not isinstance(loop, Mapping)
        or not isinstance(loop.get("name"), str)
        or not loop["name"]
        or "count" not in loop
    ):
        raise InvalidInput(f"{label}: copy must be an object with a name and a count", target=f"{where}.copy")
