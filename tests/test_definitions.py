"""The one rule for every kind: the first by rank is in effect, the next takes over."""

from __future__ import annotations

import itertools

from extauth.definitions import ByOwner, Ranked


def test_the_first_by_rank_wins_whatever_the_order() -> None:
    for order in itertools.permutations([3, 1, 2]):
        table: Ranked[str, int] = Ranked(lambda value: value)
        for value in order:
            table.put("slot", value)
        assert table.first["slot"] == 1
        assert table.candidates("slot") == [1, 2, 3]


def test_the_next_takes_over_and_a_lone_slot_keeps_no_list() -> None:
    table: Ranked[str, int] = Ranked(lambda value: value)
    assert table.put("slot", 2) is None
    assert not table.others  # one candidate: one dict entry, no list
    assert table.put("slot", 1) == 2
    assert table.discard("slot", lambda value: value == 1) == (1, [1])
    assert table.first["slot"] == 2
    assert not table.others
    assert table.discard("slot", lambda value: value == 7) == (2, [])
    assert table.discard("slot", lambda value: value == 2) == (2, [2])
    assert "slot" not in table.first
    assert table.discard("slot", lambda value: True) == (None, [])


def test_a_new_version_replaces_its_old_one_by_identity() -> None:
    old, new, other = ["a", 2], ["a", 0], ["b", 1]
    table: Ranked[str, list[object]] = Ranked(lambda value: value[1])
    table.put("slot", old)
    table.put("slot", other)
    assert table.first["slot"] is other
    assert table.put("slot", new, replacing=old) is other
    assert table.candidates("slot") == [new, other]
    assert all(candidate is not old for candidate in table.candidates("slot"))


def test_owners_by_namespace_forget_an_empty_namespace() -> None:
    owners: ByOwner[int] = ByOwner(lambda value: value)
    owners.table("ns").put("a", 1)
    owners.table("other").put("a", 2)
    assert owners.get("ns", "a") == 1
    assert owners.get("missing", "a") is None
    assert sorted(owners.values()) == [1, 2]
    owners.table("ns").discard("a", lambda value: True)
    owners.tidy("ns")
    assert list(owners.namespaces) == ["other"]
