"""The OpenAPI 3 document of the REST API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from overhaul import __version__
from overhaul.adapters.http.operations import ERROR, NAME, OPERATIONS


def _parameters(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    params: list[dict[str, Any]] = [
        {
            "name": n,
            "in": "path",
            "required": True,
            "schema": NAME
            if n
            in ("name", "gallery", "image", "lb", "probe", "config", "assignment", "subscription", "hostGroup", "host")
            else {"type": "string", "minLength": 1},
        }
        for n in names
    ]
    params.append(
        {"name": "api-version", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}
    )
    return params


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, body, statuses in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": _parameters(path),
            "responses": {
                **{
                    str(s): {"description": "success", "content": {"application/json": {"schema": {}}}}
                    for s in statuses
                },
                "default": {"description": "an ARM error", "content": {"application/json": {"schema": ERROR}}},
            },
        }
        if body is not None:
            operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[method] = operation
    paths["/healthz"] = {
        "get": {
            "summary": "Liveness (no token needed)",
            "security": [],
            "responses": {"200": {"description": "alive"}, "default": {"description": "the engine or storage is down"}},
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "overhaul orchestrator", "version": __version__},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
