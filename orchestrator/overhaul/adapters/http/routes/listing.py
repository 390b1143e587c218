"""Azure's generic resource list (`GET /subscriptions/{s}[/resourceGroups/{g}]/resources?$filter=…`, `az resource
list`): every resource overhaul keeps in the scope as {id, name, type, location, tags}, with ARM's filter forms
`resourceType eq '…'`, `name eq '…'`, `resourceGroup eq '…'`, `location eq '…'`, `substringof('…', name)` and
`tagName eq '…' [and tagValue eq '…']`, joined by `and`. Any other filter is 400 naming $filter."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from overhaul.adapters.http import arm
from overhaul.adapters.http.requests import RG, SUB, Route, orchestrator_of, scope
from overhaul.core.errors import InvalidInput
from overhaul.core.naming import Scope
from overhaul.core.resources import OPERATION_TYPE, RESOURCE_GROUP_TYPE
from overhaul.runtime.orchestrator import Orchestrator

Entry = dict[str, Any]
CLAUSE = re.compile(
    r"\s*(?:(?P<field>resourceType|name|resourceGroup|location|tagName|tagValue)\s+eq\s+'(?P<value>(?:[^']|'')*)'"
    r"|substringof\(\s*'(?P<part>(?:[^']|'')*)'\s*,\s*name\s*\))\s*",
    re.IGNORECASE,
)


def entry(doc: Mapping[str, Any]) -> Entry:
    found: Entry = {k: doc[k] for k in ("id", "name", "type", "location") if k in doc}
    found["tags"] = dict(doc.get("tags") or {})
    return found


async def everything(o: Orchestrator, subscription: str, group: str | None) -> list[Entry]:
    where = Scope(subscription, group)
    docs: list[Mapping[str, Any]] = [m.to_json() for m in await o.scale_sets.list(subscription, group)]
    for kind in (o.galleries, o.load_balancers, o.maintenance, o.host_groups):
        docs += [r.to_json() for r in await kind.list(where)]
    for gallery in await o.galleries.list(where):
        definitions = await o.galleries.definitions(gallery.name, where)
        docs += [
            {"location": gallery.location} | arm.image_definition_doc(gallery.subscription, gallery.resource_group, d)
            for d in definitions
        ]
    kept = await o.store.list_resources(None, subscription, group)
    # Not resources, as in Azure's list.
    hidden = {RESOURCE_GROUP_TYPE.lower(), "microsoft.resources/deployments", OPERATION_TYPE.lower()}
    docs += [r.doc for r in kept if r.type.lower() not in hidden]
    return sorted((entry(d) for d in docs), key=lambda e: str(e.get("id", "")).lower())


def group_of(item: Entry) -> str:
    parts = str(item.get("id", "")).split("/")
    return parts[4] if len(parts) > 4 else ""


def _field_is(field: str, value: str) -> Callable[[Entry], bool]:
    readers: dict[str, Callable[[Entry], str]] = {
        "resourcetype": lambda e: str(e.get("type", "")),
        "name": lambda e: str(e.get("name", "")),
        "resourcegroup": group_of,
        "location": lambda e: str(e.get("location", "")),
    }
    read = readers[field]

    def test(item: Entry) -> bool:
        return read(item).lower() == value

    return test


def _name_has(part: str) -> Callable[[Entry], bool]:
    def test(item: Entry) -> bool:
        return part in str(item.get("name", "")).lower()

    return test


def _tag(names: list[str], value: str | None) -> Callable[[Entry], bool]:
    """A tag among ``names`` (with ``value``, when given)."""

    def test(item: Entry) -> bool:
        return any(k.lower() in names and (value is None or str(v).lower() == value) for k, v in item["tags"].items())

    return test


def predicate(text: str) -> Callable[[Entry], bool]:
    """ARM's $filter as a test of an entry (case-insensitive, as ARM compares)."""
    tests: list[Callable[[Entry], bool]] = []
    tag_names: list[str] = []
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        found = CLAUSE.fullmatch(clause)
        if found is None:
            raise InvalidInput(
                f"$filter: {clause[:200]!r} is not a filter overhaul understands (resourceType eq '…', name eq '…', "
                "resourceGroup eq '…', location eq '…', substringof('…', name), tagName eq '…' and tagValue eq '…')",
                target="$filter",
            )
        if found["part"] is not None:
            tests.append(_name_has(found["part"].replace("''", "'").lower()))
            continue
        field, value = found["field"].lower(), found["value"].replace("''", "'").lower()
        if field == "tagname":
            tag_names.append(value)
            tests.append(_tag([value], None))
        elif field == "tagvalue":
            tests.append(_tag(list(tag_names), value))
        else:
            tests.append(_field_is(field, value))
    return lambda item: all(test(item) for test in tests)


async def list_resources(request: web.Request) -> web.Response:
    where = scope(request)
    items = await everything(orchestrator_of(request), where.subscription, where.resource_group)
    wanted = request.query.get("$filter")
    if wanted:
        items = [i for i in items if predicate(wanted)(i)]
    top = request.query.get("$top")
    if top is not None:
        if not top.isdigit():
            raise InvalidInput(f"$top: must be a whole number, got {top[:40]!r}", target="$top")
        items = items[: int(top)]
    return web.json_response({"value": items})


ROUTES: list[Route] = [("GET", SUB + "/resources", list_resources), ("GET", RG + "/resources", list_resources)]
