"""Which partitions a worker shadows (warm standbys): the ring rule and how a description of the
group changes the plan (pure functions of processors/runtime/_standby.py)."""

from __future__ import annotations

import pytest

from processors.runtime._standby import Member, next_plan, plan_standbys
from processors.settings import Settings, SettingsError


def _members(*owned: tuple[str, set[int]]) -> list[Member]:
    return [Member(f"{name}.counter", f"{name}-id", frozenset(parts)) for name, parts in owned]


def test_two_workers_with_one_replica_shadow_each_other():
    members = _members(("a", {0, 1}), ("b", {2}))
    assert plan_standbys(members, "a-id", 1) == {2}
    assert plan_standbys(members, "b-id", 1) == {0, 1}


def test_each_members_partitions_go_to_the_k_members_after_it_in_the_ring():
    members = _members(("c", {4, 5}), ("a", {0, 1}), ("b", {2, 3}))  # ring order: a, b, c
    assert plan_standbys(members, "a-id", 1) == {4, 5}
    assert plan_standbys(members, "b-id", 1) == {0, 1}
    assert plan_standbys(members, "c-id", 1) == {2, 3}
    assert plan_standbys(members, "a-id", 2) == {2, 3, 4, 5}
    assert plan_standbys(members, "a-id", 5) == {2, 3, 4, 5}, "never more than every partition not owned"
    every = [plan_standbys(members, f"{m}-id", 2) for m in "abc"]
    assert all(sum(p in plan for plan in every) == 2 for p in range(6)), "each partition has k standbys"


def test_no_plan_alone_unknown_or_without_replicas():
    members = _members(("a", {0, 1, 2}))
    assert plan_standbys(members, "a-id", 1) == set()
    assert plan_standbys(_members(("a", {0}), ("b", {1})), "zz-id", 1) == set()
    assert plan_standbys(_members(("a", {0}), ("b", {1})), "a-id", 0) == set()


def test_a_dead_members_partitions_stay_shadowed_until_someone_else_owns_them():
    # b died: the group shows it no more (or shows no assignment while it rebalances)
    assert next_plan({2}, set(), owned_by_others=set(), stable=True) == {2}
    # the group settled and gave 2 to c, whose follower is not us: our copy goes
    assert next_plan({2}, set(), owned_by_others={2}, stable=True) == set()
    # while it rebalances, nothing is dropped
    assert next_plan({2}, {5}, owned_by_others={2}, stable=False) == {2, 5}


def test_the_setting_comes_from_the_environment_and_is_checked():
    assert Settings.load(env={}).standby_replicas == 0
    assert Settings.load(env={"CHOREO_STANDBY_REPLICAS": "2"}).standby_replicas == 2
    with pytest.raises(SettingsError, match="standby_replicas: must be 0"):
        Settings.load(env={"CHOREO_STANDBY_REPLICAS": "-1"})
    with pytest.raises(SettingsError, match="standby_replicas must be an integer"):
        Settings.load(env={"CHOREO_STANDBY_REPLICAS": "many"})
