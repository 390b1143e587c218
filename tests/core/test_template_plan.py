"""A deployment's plan (core/template_plan.py): copy loops unrolled with copyIndex(), dependsOn a loop's name waits
for every copy, and what is wrong with a loop refused naming the field before anything is made."""

from __future__ import annotations

from typing import Any

import pytest

from overhaul.core.errors import InvalidInput
from overhaul.core.resources import Resource
from overhaul.core.template_plan import Evaluation, check, ordered, resource_key, unrolled
from overhaul.core.templates import TemplateError, expand

GROUP = Resource("s", "g", "Microsoft.Resources/resourceGroups", "g", {"name": "g", "location": "local"})
NETS: dict[str, Any] = {
    "type": "Microsoft.Network/virtualNetworks",
    "name": "[concat('net', copyIndex(1))]",
    "copy": {"name": "nets", "count": "[parameters('count')]"},
    "properties": {"order": "[copyIndex()]", "named": "[copyIndex('nets', 10)]"},
}
BALANCER: dict[str, Any] = {"type": "Microsoft.Network/loadBalancers", "name": "lb", "dependsOn": ["nets"]}


def evaluation(count: Any = 3) -> Evaluation:
    template = {"parameters": {"count": {"type": "int"}}, "resources": [BALANCER, NETS]}
    return Evaluation("s", GROUP, template, {"count": {"value": count}})


def test_a_copy_loop_is_unrolled_with_its_index_and_what_depends_on_it_comes_after() -> None:
    plan = evaluation()
    resources = ordered(unrolled([BALANCER, NETS], plan), plan)
    keys = [resource_key(r, plan) for r in resources]
    assert keys == [
        "Microsoft.Network/virtualNetworks/net1",
        "Microsoft.Network/virtualNetworks/net2",
        "Microsoft.Network/virtualNetworks/net3",
        "Microsoft.Network/loadBalancers/lb",
    ]
    assert [expand(r["properties"], plan.at(r)) for r in resources[:3]] == [
        {"order": 0, "named": 10},
        {"order": 1, "named": 11},
        {"order": 2, "named": 12},
    ]
    assert ordered(unrolled([BALANCER, NETS], evaluation(0)), evaluation(0)) == [BALANCER]  # count 0: none


@pytest.mark.parametrize("count", [-1, 801, "3", True])
def test_a_count_out_of_range_or_not_a_number_is_said(count: Any) -> None:
    with pytest.raises(TemplateError, match="count must be a whole number from 0 to 800"):
        unrolled([NETS], evaluation(count))


def test_copy_index_outside_a_loop_or_of_another_loop_is_said() -> None:
    plan = evaluation()
    with pytest.raises(TemplateError, match="only for a resource with a copy loop"):
        expand("[copyIndex()]", plan)
    [first, *_] = unrolled([NETS], plan)
    with pytest.raises(TemplateError, match="in the copy loop 'nets'"):
        expand("[copyIndex('other')]", plan.at(first))


@pytest.mark.parametrize(
    ("resource", "target", "said"),
    [
        ({"type": "T/x", "name": "[copyIndex()]"}, "properties.template.resources[0]", r"copyIndex\(\) is only for"),
        ({"type": "T/x", "name": "a", "copy": {"count": 2}}, "properties.template.resources[0].copy", "a name"),
        ({"type": "T/x", "name": "a", "copy": "twice"}, "properties.template.resources[0].copy", "a name and a count"),
        ({"type": "T/x", "name": "a", "copy": {"name": "c"}}, "properties.template.resources[0].copy", "a count"),
    ],
)
def test_a_malformed_loop_is_refused_naming_the_field(resource: dict[str, Any], target: str, said: str) -> None:
    with pytest.raises(InvalidInput, match=said) as refused:
        check({"resources": [resource]})
    assert refused.value.target == target
