"""The OpenAPI document at /openapi.json describes exactly the routes serve answers: schemathesis walks the document,
so a route it leaves out is never fuzzed, and a client generated from it cannot call it."""

from __future__ import annotations

import re

from overhaul.adapters.http.app import ARM_ROUTES
from overhaul.adapters.http.openapi import openapi_document


def shape(method: str, path: str) -> tuple[str, str]:
    """A route as ARM compares it: the method, and the path in any case whatever its placeholders are called."""
    return method.upper(), re.sub(r"\{[^}]*\}", "{}", path).lower()


def test_every_route_is_documented_and_every_documented_operation_is_a_route() -> None:
    routes = {shape(method, path) for method, path, _ in ARM_ROUTES}
    paths = openapi_document()["paths"]
    documented = {shape(method, path) for path, operations in paths.items() for method in operations}
    documented.discard(shape("get", "/healthz"))  # served beside the ARM routes, documented for its probe
    assert sorted(routes - documented) == []
    assert sorted(documented - routes) == []


def test_every_operation_has_a_summary_and_an_error_shape() -> None:
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"], (method, path)
            assert "default" in operation["responses"], (method, path)
