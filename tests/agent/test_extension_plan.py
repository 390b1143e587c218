"""Parsing and ordering of the model's extensionProfile."""

from __future__ import annotations

from typing import Any

import pytest

from overhaul_agent.extension_plan import parse_extensions
from overhaul_agent.settings import SettingsError


def ext(name: str, after: list[str] | None = None, ext_type: str = "CustomScript", **settings: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"type": ext_type, "settings": {"commandToExecute": "true", **settings}}
    if after is not None:
        props["provisionAfterExtensions"] = after
    return {"name": name, "properties": props}


def names(profile: dict[str, Any]) -> list[str]:
    return [e.name for e in parse_extensions(profile)]


def test_order_is_stable_and_respects_dependencies() -> None:
    profile = {"extensions": [ext("c", ["b"]), ext("a"), ext("b", ["a"]), ext("d")]}
    assert names(profile) == ["a", "b", "c", "d"]


def test_protected_command_wins() -> None:
    raw = ext("s")
    raw["properties"]["protectedSettings"] = {"commandToExecute": "echo secret"}
    assert parse_extensions({"extensions": [raw]})[0].command == "echo secret"


def test_fingerprint_changes_with_the_command() -> None:
    one = parse_extensions({"extensions": [ext("s")]})[0]
    two = parse_extensions({"extensions": [ext("s", timestamp=2)]})[0]
    assert one.fingerprint != two.fingerprint


@pytest.mark.parametrize(
    ("profile", "field", "text"),
    [
        ({"extensions": [ext("a", ["b"]), ext("b", ["a"])]}, "extensionProfile.extensions", "cycle"),
        (
            {"extensions": [ext("a", ["zzz"])]},
            "extensionProfile.extensions[0].properties.provisionAfterExtensions",
            "zzz",
        ),
        ({"extensions": [ext("a"), ext("a")]}, "extensionProfile.extensions[0].name", "duplicate"),
        (
            {"extensions": [{"properties": {"type": "CustomScript"}}]},
            "extensionProfile.extensions[0].name",
            "required",
        ),
        (
            {"extensions": [{"name": "x", "properties": {}}]},
            "extensionProfile.extensions[0].properties.type",
            "required",
        ),
        (
            {"extensions": [{"name": "x", "properties": {"type": "CustomScript", "settings": {}}}]},
            "extensionProfile.extensions[0].properties.settings.commandToExecute",
            "required",
        ),
        ({"extensions": {}}, "extensionProfile.extensions", "list"),
        (
            {"extensions": [ext("a", overhaul={"timeoutInSeconds": 0})]},
            "extensionProfile.extensions[0].properties.settings.overhaul.timeoutInSeconds",
            "above 0",
        ),
    ],
)
def test_invalid_profiles_name_the_field(profile: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_extensions(profile)
    assert err.value.field == field
    assert text in err.value.message
