"""Bounded decoding: no nesting depth makes a page or an event undecodable, an over-deep
object is told apart from its neighbours, and a Secret's size is what extauth keeps."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extauth.apikeys import ApiKey, _shared
from extauth.building import PolicyBuilder
from extauth.changes import Change, Removal
from extauth.origins import Origin
from extauth.sources import bounds
from extauth.sources.watching import next_page_size


def _nested(depth: int) -> str:
    return '{"a":' * depth + '"x"' + "}" * depth


def test_a_page_with_one_object_1000_deep_decodes_and_only_that_object_is_refused() -> None:
    good = {"metadata": {"name": "good"}, "spec": {"k": "v"}}
    bomb = f'{{"metadata":{{"name":"bomb"}},"spec":{{"s":{_nested(1000)}}}}}'
    page = f'{{"items":[{json.dumps(good)},{bomb},{json.dumps(good)}]}}'
    try:
        json.loads(page)
        raise AssertionError("the plain decoder was expected to refuse this depth")
    except RecursionError:
        pass
    items = bounds.loads(page.encode())["items"]
    assert [i["metadata"]["name"] for i in items] == ["good", "bomb", "good"]
    assert items[0] == good
    assert bounds.problem("AuthConfig", items[0], 1024) is None
    assert "nested more than 32 levels" in str(bounds.problem("AuthConfig", items[1], 1024))


def test_depth_just_inside_the_limit_is_accepted_and_just_past_refused() -> None:
    assert not bounds.too_deep(json.loads(_nested(bounds.MAX_DEPTH - 1)))
    assert bounds.too_deep(json.loads(_nested(bounds.MAX_DEPTH + 1)))


@settings(max_examples=50, deadline=None)
@given(
    st.recursive(
        st.text(max_size=5) | st.integers(),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
        max_leaves=30,
    )
)
def test_flatten_keeps_shallow_json_as_it_is(value: object) -> None:
    text = json.dumps(value)
    assert json.loads(bounds.flatten(text, 64)) == value


def test_strings_holding_brackets_do_not_count_as_nesting() -> None:
    text = json.dumps({"s": "[[[[{{{{" * 100, "t": '"\\]'})
    assert bounds.flatten(text, 2) == text


def test_secret_size_counts_entries_and_labels_and_names_the_flag() -> None:
    item: dict[str, Any] = {
        "metadata": {"name": "s", "labels": {"team": "red"}, "managedFields": [{"x": 1}]},
        "data": {"api-key": "a" * 100},
        "stringData": {"x-org": "b" * 50},
    }
    assert bounds.secret_bytes(item) == 7 + 100 + 5 + 50 + 4 + 3
    assert bounds.problem("Secret", item, 1000) is None
    assert "managedFields" not in item["metadata"]  # dropped: never read
    refused = bounds.problem("Secret", item, 100)
    assert refused is not None
    assert "--kube-max-secret-bytes" in refused
    assert "a" * 10 not in refused


def test_metadata_is_released_when_no_key_uses_it() -> None:
    """150 edits of one Secret, each with distinct metadata, then its deletion: the table
    of shared mappings keeps none of them (it used to keep every one, by count)."""
    before = len(_shared)
    builder = PolicyBuilder()
    path = "kubernetes:Secret/ns/big"
    for i in range(150):
        entries = {"api-key": "k", "blob": f"{i}-" + "z" * 1000}
        builder.apply(
            Change((ApiKey.from_entries("ns", "big", {"t": "x"}, entries, Origin(path, 0, 0)),))
        )
        assert builder.build().key_count == 1
        assert len(_shared) <= before + 2  # this version's labels and metadata only
    builder.apply(Change(removed=(Removal("Secret", ("ns", "big"), path),)))
    assert not builder.build().keys
    assert len(_shared) <= before


def test_list_pages_grow_while_light_and_shrink_when_heavy() -> None:
    assert next_page_size(50, 50 * 1024, 500) == 200
    assert next_page_size(200, 200 * 1024, 500) == 500
    assert next_page_size(500, 500 * 1024, 500) == 500
    # 500 Secrets of ~1 MB: the next page holds about eight.
    assert next_page_size(500, 500 * 1024 * 1024, 500) == 8
    assert next_page_size(1, 1500 * 1024 * 1024, 500) == 1
