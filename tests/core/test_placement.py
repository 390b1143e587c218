"""Placement and zone-aware batches (pure, core/planner.py): instances spread over zones, then fault domains, then
hosts; placed ones stay; a batch never spans two zones unless enableCrossZoneUpgrade."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overhaul.core.model import RollingUpgradePolicy
from overhaul.core.planner import Health, InstanceView, PlacementError, Slot, place, plan_batches

THREE_ZONES = [Slot("a1", "1", 0), Slot("b1", "2", 0), Slot("c1", "3", 0)]


def zones_of(chosen: dict[int, str], slots: list[Slot]) -> Counter[str | None]:
    zone = {s.host: s.zone for s in slots}
    return Counter(zone[h] for h in chosen.values())


def test_nine_instances_over_three_zones_take_three_each() -> None:
    chosen = place(range(9), {}, THREE_ZONES, ["1", "2", "3"])
    assert zones_of(chosen, THREE_ZONES) == {"1": 3, "2": 3, "3": 3}
    assert [chosen[i] for i in range(3)] == ["a1", "b1", "c1"]  # round the zones, in order


def test_placed_instances_stay_and_new_ones_fill_the_emptiest_zone() -> None:
    placed = {0: "a1", 1: "a1", 2: "b1"}
    assert place([3, 4], placed, THREE_ZONES, ["1", "2", "3"]) == {3: "c1", 4: "b1"}


def test_within_a_zone_fault_domains_then_hosts_share_the_instances() -> None:
    slots = [Slot("x", "1", 0), Slot("y", "1", 0), Slot("z", "1", 1)]
    chosen = place(range(4), {}, slots, ["1"])
    assert [chosen[i] for i in range(4)] == ["x", "z", "y", "z"]
    assert Counter(chosen.values()) == {"x": 1, "y": 1, "z": 2}


def test_without_zones_fault_domains_of_each_group_share_the_instances() -> None:
    slots = [Slot("a", None, 0, group="g1"), Slot("b", None, 0, group="g2"), Slot("c", None, 1, group="g1")]
    chosen = place(range(3), {}, slots)
    assert sorted(chosen.values()) == ["a", "b", "c"]


def test_a_host_without_room_is_passed_over() -> None:
    slots = [Slot("a", None, 0, room=1), Slot("b", None, 0)]
    assert place(range(3), {}, slots) == {0: "a", 1: "b", 2: "b"}
    with pytest.raises(PlacementError) as caught:
        place(range(3), {}, [Slot("a", None, 0, room=2)])
    assert caught.value.field == "sku.capacity" and "instance 2" in str(caught.value)


def test_zone_balance_refuses_a_scale_out_that_would_unbalance_the_zones() -> None:
    slots = [Slot("a1", "1", 0), Slot("b1", "2", 0), Slot("c1", "3", 0, room=0)]
    # Without zoneBalance, the zones that have room take the instances.
    assert zones_of(place(range(4), {}, slots, ["1", "2", "3"]), slots) == {"1": 2, "2": 2}
    with pytest.raises(PlacementError) as caught:
        place(range(4), {}, slots, ["1", "2", "3"], zone_balance=True)
    assert caught.value.field == "zones" and "zone 3" in str(caught.value)
    with pytest.raises(PlacementError, match="zones 1, 4"):
        place([0], {}, [Slot("b1", "2", 0)], ["1", "4"])


@settings(max_examples=100, deadline=None)
@given(
    hosts=st.lists(st.tuples(st.sampled_from("123"), st.integers(0, 2)), min_size=3, max_size=12),
    count=st.integers(0, 40),
    already=st.integers(0, 10),
)
def test_zones_stay_within_one_instance_when_every_zone_has_room(
    hosts: list[tuple[str, int]], count: int, already: int
) -> None:
    slots = [Slot(f"h{i}", zone, fd) for i, (zone, fd) in enumerate(hosts)]
    zones = sorted({s.zone for s in slots if s.zone is not None})
    first = place(range(already), {}, slots, zones, zone_balance=True)
    chosen = place(range(already, already + count), first, slots, zones, zone_balance=True)
    assert set(chosen) == set(range(already, already + count))
    everything = zones_of({**first, **chosen}, slots)
    per_zone = [everything[z] for z in zones]
    assert max(per_zone) - min(per_zone) <= 1
    assert chosen == place(range(already, already + count), first, slots, zones, zone_balance=True)  # deterministic


def views(zones: list[str], phases: list[int | None] | None = None) -> list[InstanceView]:
    return [
        InstanceView(i, "1.0.0", Health.HEALTHY, zone=z, phase=phases[i] if phases else None)
        for i, z in enumerate(zones)
    ]


def test_a_rollout_goes_zone_by_zone_unless_cross_zone() -> None:
    fleet = views(["1", "2", "3", "1", "2", "3", "1", "2", "3", "1"])
    policy = RollingUpgradePolicy(max_batch_instance_percent=40)  # batches of 4
    assert plan_batches(fleet, "2.0.0", policy, 10) == [(0, 3, 6, 9), (1, 4, 7), (2, 5, 8)]
    assert plan_batches(fleet, "2.0.0", policy, 10, cross_zone=True) == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]


@settings(max_examples=100, deadline=None)
@given(
    zones=st.lists(st.sampled_from(["1", "2", "3"]), min_size=1, max_size=30),
    percent=st.integers(1, 100),
    data=st.data(),
)
def test_no_batch_spans_two_zones_or_two_phases_and_each_instance_is_in_one(
    zones: list[str], percent: int, data: st.DataObject
) -> None:
    phases = data.draw(st.lists(st.one_of(st.none(), st.integers(0, 2)), min_size=len(zones), max_size=len(zones)))
    fleet = views(zones, phases)
    policy = RollingUpgradePolicy(max_batch_instance_percent=percent)
    batches = plan_batches(fleet, "2.0.0", policy, len(fleet))
    size = max(1, len(fleet) * percent // 100)
    assert sorted(i for b in batches for i in b) == list(range(len(fleet)))
    for batch in batches:
        assert len(batch) <= size
        assert len({zones[i] for i in batch}) == 1
        assert len({phases[i] for i in batch}) == 1
