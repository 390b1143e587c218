"""ARM template expressions evaluated as Resource Manager does (core/templates.py), with the functions az's own
templates call; what overhaul cannot evaluate is said, never guessed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from overhaul.core.templates import KNOWN, TemplateError, evaluate, expand, functions_in, parse


class Fixed:
    """A deployment's outside, fixed: parameters, variables, one deployed resource."""

    def parameter(self, name: str) -> Any:
        return {"vmName": "web", "count": 2}[name]

    def variable(self, name: str) -> Any:
        return {"prefix": "pre-"}[name]

    def resource_id(self, args: Sequence[Any]) -> str:
        return "/subscriptions/s/resourceGroups/g/providers/" + "/".join(str(a) for a in args)

    def reference(self, target: str, full: bool) -> Any:
        doc = {"id": target, "properties": {"upgradePolicy": {"mode": "Automatic"}}}
        return doc if full else doc["properties"]

    def resource_group(self) -> dict[str, Any]:
        return {"name": "g", "location": "local"}

    def subscription(self) -> dict[str, Any]:
        return {"subscriptionId": "s"}

    def provider(self, namespace: str, type_: str) -> dict[str, Any]:
        return {"apiVersions": ["2024-07-01", "2023-09-01"]}

    def copy_index(self, loop: str | None) -> int:
        return {None: 4, "nets": 2}[loop]


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("[concat('Microsoft.Network/loadBalancers/', 'webLB')]", "Microsoft.Network/loadBalancers/webLB"),
        ("[concat(variables('prefix'), parameters('vmName'))]", "pre-web"),
        (
            "[concat(resourceId('Microsoft.Network/loadBalancers', 'webLB'), '/backendAddressPools/', 'pool')]",
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/loadBalancers/webLB/backendAddressPools/pool",
        ),
        (
            "[reference(resourceId('Microsoft.Compute/virtualMachineScaleSets', 'web'),"
            "providers('Microsoft.Compute', 'virtualMachineScaleSets').apiVersions[0])]",
            {"upgradePolicy": {"mode": "Automatic"}},
        ),
        ("[reference('web', '2024-07-01', 'Full').properties.upgradePolicy.MODE]", "Automatic"),
        ("[resourceGroup().location]", "local"),
        ("[if(equals(parameters('count'), 2), 'two', fail())]", "two"),  # the branch not taken is not evaluated
        ("[toLower(format('{0}-{1}', 'A', 1))]", "a-1"),
        ("[length(createArray(1, 2, 3))]", 3),
        ("[union(createObject('a', 1), createObject('b', 2))]", {"a": 1, "b": 2}),
        ("[split('a,b', ',')[1]]", "b"),
        ("[[not an expression]", "[not an expression]"),
        ("plain", "plain"),
        ("[copyIndex()]", 4),
        ("[copyIndex(1)]", 5),
        ("[copyIndex('nets')]", 2),
        ("[copyIndex('nets', 10)]", 12),
        ("[string(add(parameters('count'), -1))]", "1"),
        ("[concat('it''s', ' ok')]", "it's ok"),
    ],
)
def test_expressions_evaluate_as_resource_manager_does(expression: str, value: Any) -> None:
    assert expand(expression, Fixed()) == value


def test_an_object_is_walked_and_only_expression_strings_are_evaluated() -> None:
    doc = {"name": "[parameters('vmName')]", "list": ["[variables('prefix')]", 3, None], "deep": {"x": "y"}}
    assert expand(doc, Fixed()) == {"name": "web", "list": ["pre-", 3, None], "deep": {"x": "y"}}


@pytest.mark.parametrize(
    ("expression", "said"),
    [
        ("listKeys('x', '2020-01-01')", "listKeys() is not one overhaul evaluates"),
        ("concat('a'", "expected"),
        ("parameters('vmName').nothere", "no 'nothere'"),
        ("createArray(1)[5]", "no 5"),
        ("int('x')", "int() failed"),
        ("'a' 'b'", "unexpected"),
        ("copyIndex('nets', 'x')", "copyIndex() takes an optional loop name and an optional offset"),
        ("copyIndex(1, 2)", "copyIndex() takes an optional loop name and an optional offset"),
        ("copyIndex(createArray(1))", "copyIndex(): the offset must be a whole number"),
    ],
)
def test_what_cannot_be_evaluated_is_said(expression: str, said: str) -> None:
    with pytest.raises(TemplateError, match=said.replace("(", r"\(").replace(")", r"\)")):
        evaluate(parse(expression), Fixed())


def test_the_functions_a_template_calls_are_found_before_anything_runs() -> None:
    template = {"a": "[concat(listKeys('x', '1'), uniqueString(resourceGroup().id))]", "b": ["[[literal]"]}
    assert functions_in(template) == ["concat", "listKeys", "uniqueString", "resourceGroup"]
    assert {f.lower() for f in functions_in(template)} - KNOWN == {"listkeys"}
