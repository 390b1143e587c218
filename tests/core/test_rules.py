"""The pure rules behind the runtime's commands (core/rules.py) and ARM's lookup by name (core/naming.py), as
tables."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from overhaul.core.errors import Conflict, InvalidInput
from overhaul.core.gallery import Gallery
from overhaul.core.model import RollingUpgradePolicy, ScaleSet, parse_scale_set
from overhaul.core.naming import Scope, in_scope, named, same_name
from overhaul.core.rollout import StartedBy
from overhaul.core.rules import (
    attempt_policy,
    check_instance_ids,
    model_upgrade_policy,
    model_upgrade_version,
    versions_after_put,
)

DOC: dict[str, Any] = {
    "location": "local",
    "sku": {"capacity": 4},
    "properties": {
        "upgradePolicy": {
            "mode": "Rolling",
            "rollingUpgradePolicy": {"maxBatchInstancePercent": 50, "maxUnhealthyInstancePercent": 40},
            "automaticOSUpgradePolicy": {"enableAutomaticOSUpgrade": True},
        },
        "virtualMachineProfile": {
            "storageProfile": {"imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "latest"}}
        },
    },
}


def scale_set(mode: str = "Rolling", *, use_rolling_policy: bool = False, capacity: int = 4) -> ScaleSet:
    doc = copy.deepcopy(DOC)
    doc["sku"]["capacity"] = capacity
    policy = doc["properties"]["upgradePolicy"]
    policy["mode"] = mode
    policy["automaticOSUpgradePolicy"]["useRollingUpgradePolicy"] = use_rolling_policy
    return parse_scale_set(doc, name="web", resource_group="rg", subscription="sub")


@pytest.mark.parametrize(
    ("started_by", "use_rolling_policy", "batch"),
    [
        (StartedBy.USER, False, 50),  # a person's start follows the scale set's policy
        (StartedBy.USER, True, 50),
        (StartedBy.PLATFORM, True, 50),  # automatic upgrades follow it only with useRollingUpgradePolicy
        (StartedBy.PLATFORM, False, RollingUpgradePolicy().max_batch_instance_percent),
    ],
)
def test_the_policy_an_attempt_follows(started_by: StartedBy, use_rolling_policy: bool, batch: int) -> None:
    model = scale_set(use_rolling_policy=use_rolling_policy)
    policy = attempt_policy(model, started_by)
    assert policy.max_batch_instance_percent == batch
    assert policy.instance_health_timeout == model.upgrade_policy.rolling.instance_health_timeout


@pytest.mark.parametrize(
    ("mode", "batch", "unhealthy"), [("Rolling", 50, 40), ("Automatic", 100, 100), ("Manual", 100, 100)]
)
def test_a_model_upgrade_is_health_gated_only_in_rolling_mode(mode: str, batch: int, unhealthy: int) -> None:
    policy = model_upgrade_policy(scale_set(mode))
    assert (policy.max_batch_instance_percent, policy.max_unhealthy_instance_percent) == (batch, unhealthy)


@pytest.mark.parametrize(
    ("running", "scope", "kept"),
    [
        ({0: "1.0.0", 1: "1.0.0"}, None, "1.0.0"),  # all on one version: it is kept
        ({0: "1.0.0", 1: "2.0.0"}, None, None),  # mixed: the model's image
        ({0: "1.0.0", 1: "2.0.0"}, (1,), "2.0.0"),  # only the chosen instances count
        ({0: None, 1: "2.0.0"}, None, "2.0.0"),  # an instance with no OS disk runs nothing
        ({}, None, None),
    ],
)
def test_the_version_a_model_upgrade_keeps(
    running: dict[int, str | None], scope: tuple[int, ...] | None, kept: str | None
) -> None:
    assert model_upgrade_version(running, scope) == kept


@pytest.mark.parametrize(
    ("capacity", "running", "after"),
    [
        (3, {}, ["img", "img", "img"]),  # new instances get the model's image
        (3, {0: "1.0.0", 1: "2.0.0"}, ["v1", "v2", "img"]),  # existing ones keep theirs
        (2, {0: "9.9.9", 1: None}, ["img", "img"]),  # unknown to the gallery, or none: the model's image
        (1, {0: "1.0.0", 1: "2.0.0"}, ["v1"]),  # scaled in: the rest is not planned
    ],
)
def test_the_version_each_instance_runs_after_a_put(
    capacity: int, running: dict[int, str | None], after: list[str]
) -> None:
    assert versions_after_put(capacity, running, {"1.0.0": "v1", "2.0.0": "v2"}, "img") == after


@pytest.mark.parametrize(("ids", "ok"), [([0, 3], True), ([], True), ([4], False), ([-1], False)])
def test_instance_ids_name_instances_of_the_model(ids: list[int], ok: bool) -> None:
    if ok:
        check_instance_ids(scale_set(capacity=4), ids)
        return
    with pytest.raises(InvalidInput, match="no instance") as err:
        check_instance_ids(scale_set(capacity=4), ids)
    assert err.value.target == "instanceIds"


GALLERIES = [Gallery("Shared", "rg1", "sub"), Gallery("other", "rg2", "sub")]


@pytest.mark.parametrize(
    ("name", "scope", "found"),
    [
        ("shared", None, "Shared"),  # names compare case-insensitively
        ("SHARED", Scope("SUB", "RG1"), "Shared"),
        ("shared", Scope("sub", "rg2"), None),  # outside the request's scope it does not exist
        ("shared", Scope("sub"), "Shared"),  # a subscription-wide scope
        ("missing", None, None),
    ],
)
def test_a_resource_is_found_by_name_within_its_scope(name: str, scope: Scope | None, found: str | None) -> None:
    hit = named(GALLERIES, name, scope)
    assert (hit.name if hit else None) == found


def test_a_name_keeps_its_first_spelling_and_is_unique_on_the_host() -> None:
    assert same_name(None, Gallery("New", "rg1", "sub"), "gallery", "Taken") == "New"
    assert same_name(GALLERIES[0], Gallery("SHARED", "RG1", "sub"), "gallery", "Taken") == "Shared"
    with pytest.raises(Conflict, match="exists in resource group rg1") as err:
        same_name(GALLERIES[0], Gallery("shared", "rg2", "sub"), "gallery", "Taken")
    assert err.value.code == "Taken"
    assert in_scope(GALLERIES, Scope("sub", "rg2")) == [GALLERIES[1]]
    assert in_scope(GALLERIES, None) == GALLERIES
