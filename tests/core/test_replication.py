"""A gallery version's copies on the hosts (core/replication.py): Azure's ReplicationStatus over them, which
locations count the version as there, and which copies are due."""

from __future__ import annotations

from dataclasses import replace

import pytest

from overhaul.core.arm_json import ModelError
from overhaul.core.gallery import ImageDefinition, latest_version, parse_image_version, resolve
from overhaul.core.model import ImageReference
from overhaul.core.replication import Replica, ReplicaState, available_in, copies_due, replication_status
from tests.builders import version

HOST = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/hostGroups/{}/hosts/{}"
C, R, F, U = ReplicaState.COMPLETED, ReplicaState.REPLICATING, ReplicaState.FAILED, ReplicaState.UNKNOWN


def replica(group: str, state: ReplicaState, location: str = "edge", **kw: object) -> Replica:
    return replace(Replica(HOST.format(group, "h"), location, state), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("copies", "available"),
    [
        ([], True),  # no host in the location: this machine's engine has it
        ([replica("a", C), replica("b", C)], True),
        ([replica("a", C), replica("b", R)], False),
        ([replica("a", C), replica("b", U)], False),
        ([replica("a", C), replica("b", F)], False),
        ([replica("a", C), replica("b", U, catch_up=True)], True),  # a host added later catches up
        ([replica("a", C), replica("b", F, location="other")], True),  # another location's copies
    ],
)
def test_a_location_has_a_version_once_every_copy_its_publication_made_is_completed(
    copies: list[Replica], available: bool
) -> None:
    assert available_in(copies, "EDGE") is available


def test_replication_status_has_azures_shape_one_summary_per_target_location() -> None:
    copies = [
        replica("a", C, progress=100),
        replica("b", R, progress=40),
        replica("c", F, "far", progress=10, details="no space left on device"),
    ]
    assert replication_status(["local", "edge", "far"], copies) == {
        "aggregatedState": "Failed",
        "summary": [
            {"region": "local", "state": "Completed", "details": "", "progress": 100},
            {"region": "edge", "state": "Replicating", "details": "", "progress": 70},
            {"region": "far", "state": "Failed", "details": "host c/h: no space left on device", "progress": 10},
        ],
    }
    assert replication_status(["edge"], copies[:2])["aggregatedState"] == "InProgress"
    assert replication_status(["edge"], copies[:1])["aggregatedState"] == "Completed"


def test_copies_due_are_those_not_done_and_failed_ones_after_the_retry_delay() -> None:
    copies = [
        replica("a", C),
        replica("b", U),
        replica("c", R),  # left half done (a restart): made again
        replica("d", F, updated=100.0),
    ]
    assert [r.host for r in copies_due(copies, 150.0, 60.0)] == [copies[1].host, copies[2].host]
    assert [r.host for r in copies_due(copies, 160.0, 60.0)] == [c.host for c in copies[1:]]


def test_latest_in_a_location_skips_a_version_still_replicating_there_and_an_exact_one_says_so() -> None:
    definitions = [ImageDefinition("g", "tiny", "overhaul", "test", "tiny")]
    v1 = replace(version("1.0.0"), target_locations=("edge",), replicas=(replica("a", C),))
    v2 = replace(version("2.0.0"), target_locations=("edge",), replicas=(replica("a", R, progress=30),))
    assert latest_version([v1, v2], "edge") == v1
    latest = ImageReference(publisher="overhaul", offer="test", sku="tiny", version="latest")
    assert resolve(latest, definitions, [v1, v2], "edge") == v1
    with pytest.raises(ModelError, match=r"version 2\.0\.0 .* not available in edge yet \(replication: Replicating\)"):
        resolve(latest.with_version("2.0.0"), definitions, [v1, v2], "edge")
    with pytest.raises(ModelError, match=r"still replicating to edge: 2\.0\.0"):
        resolve(latest, definitions, [v2], "edge")
    done = replace(v2, replicas=(replica("a", C),))
    assert resolve(latest, definitions, [v1, done], "edge") == done


def test_a_client_sending_back_what_it_read_does_not_make_replication_its_own() -> None:
    read_back = {
        "properties": {
            "storageProfile": {"source": {"overhaul": {"containerImage": "localhost/tiny:1.0.0"}}},
            "replicationStatus": {"aggregatedState": "Completed", "summary": []},
            "overhaul": {"replicas": [{"host": "x"}]},
        }
    }
    parsed = parse_image_version(read_back, gallery="g", image="tiny", version="1.0.0", published_at=0.0)
    assert "replicationStatus" not in parsed.to_json()["properties"]
    assert "replicas" not in parsed.to_json()["properties"]["overhaul"]
