"""The lean key record and its shared groups (`apikeys.ApiKey`, `KeyGroup`): what a key
reads back is what it was made with, whatever the path or name, and the table of
shared groups stays bounded and lets go of what no key uses."""

from __future__ import annotations

import gc

import pytest

from extauth import apikeys
from extauth.apikeys import GROUP_LIMIT, ApiKey, api_key, digest, key_group, shared
from extauth.origins import Origin


def _key(
    name: str,
    path: str,
    *,
    namespace: str = "ns",
    labels: dict[str, str] | None = None,
    next_key: str | None = None,
    expires_at: float | None = None,
    hashed: bool = False,
    line: int = 3,
    document: int = 2,
) -> ApiKey:
    return api_key(
        namespace,
        name,
        shared(labels or {"team": "a"}),
        digest(f"key-{name}"),
        digest(next_key) if next_key else None,
        shared({"x-org": "developers"}),
        path,
        line,
        document,
        hashed,
        expires_at,
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("kubernetes:Secret/ns/team1", "team1"),  # derived: the namespace's source + name
        ("keys/team1", "team1"),  # a file named after its Secret: derived the same way
        ("/team1", "team1"),
        ("team1", "team1"),  # no "/" before the name: stored as it is
        ("keys/xteam1", "team1"),
        ("keys/team1.yaml", "team1"),
        ("kubernetes:Secret/ns/a/b", "b"),
        ("k/" + "n" * 10_000, "n" * 10_000),  # a huge name: one suffix compare
        ("ключи/ключ", "ключ"),  # not ASCII
        ("keys/\udcff/x", "x"),  # a lone surrogate (a path not valid UTF-8)
    ],
)
def test_a_key_reads_back_its_path_and_fields(path: str, name: str) -> None:
    key = _key(name, path, line=70_000, document=12)
    assert key.path == path
    assert key.origin == Origin(path, 70_000, 12)
    assert key.owner == ("ns", name)
    assert (key.namespace, key.name, dict(key.labels), dict(key.metadata)) == (
        "ns",
        name,
        {"team": "a"},
        {"x-org": "developers"},
    )
    assert key.digests == (digest(f"key-{name}"),)
    assert key.next_digest is None
    assert key.expires_at is None
    assert key.hashed is False


def test_the_keys_of_a_namespace_share_one_source_string_and_one_group() -> None:
    """A Kubernetes Secret's origin path is not stored per key: the namespace's keys
    hold one `kubernetes:Secret/ns/` and one group."""
    keys = [_key(f"s{i}", f"kubernetes:Secret/ns/s{i}") for i in range(100)]
    assert len({id(k.source) for k in keys}) == 1
    assert len({id(k.group) for k in keys}) == 1
    assert [k.path for k in keys] == [f"kubernetes:Secret/ns/s{i}" for i in range(100)]
    other = _key("s0", "kubernetes:Secret/other/s0", namespace="other")
    assert other.group is not keys[0].group
    assert other.path == "kubernetes:Secret/other/s0"


def test_groups_differ_in_every_field_they_hold() -> None:
    base = _key("a", "f.yaml")
    assert _key("b", "g.yaml").group is base.group  # the path is the key's own
    assert _key("a", "f.yaml", namespace="ns2").group is not base.group
    assert _key("a", "f.yaml", labels={"team": "b"}).group is not base.group
    assert _key("a", "f.yaml", hashed=True).group is not base.group
    assert _key("a", "f.yaml", hashed=True).hashed is True
    assert _key("a", "x/a").group is not base.group  # named: its path ends with its name


def test_a_key_in_rotation_or_expiring_carries_its_extras() -> None:
    plain = _key("a", "f.yaml")
    rotating = _key("a", "f.yaml", next_key="next", expires_at=1.5e9)
    assert rotating.group is plain.group
    assert rotating.digests == (digest("key-a"), digest("next"))
    assert rotating.expires_at == 1.5e9
    assert isinstance(rotating, ApiKey)
    assert _key("a", "f.yaml", expires_at=2.0).digests == (digest("key-a"),)
    # Every key is its own definition: equal fields, not the same key.
    assert _key("a", "f.yaml") != plain
    assert len({plain, _key("a", "f.yaml")}) == 2


def test_a_key_repr_names_it_without_its_digest() -> None:
    key = _key("team1", "kubernetes:Secret/ns/team1", line=0)
    assert repr(key) == "ApiKey(ns/team1 from kubernetes:Secret/ns/team1)"
    assert key.digest.hex() not in repr(key)
    assert key.digest.hex() not in repr(key.group)


def test_distinct_label_sets_past_the_limit_keep_the_table_bounded() -> None:
    """A tenant writing a distinct label set into every Secret: each key gets a group
    of its own past GROUP_LIMIT, the table never holds more, and every key still reads
    its own labels; once the keys go, their groups go too."""
    gc.collect()
    before = len(apikeys._groups)
    count = GROUP_LIMIT + 2_000
    keys = [_key(f"s{i}", "f.yaml", labels={"tenant": f"t{i}"}) for i in range(count)]
    assert len(apikeys._groups) <= GROUP_LIMIT
    assert all(k.labels == {"tenant": f"t{i}"} for i, k in enumerate(keys))
    assert len({id(k.group) for k in keys}) == count
    # Equal groups made past the limit are equal in every field.
    again = _key("s0", "f.yaml", labels={"tenant": f"t{count - 1}"})
    assert again.labels is keys[-1].labels
    del keys, again
    gc.collect()
    assert len(apikeys._groups) <= before
    # With room again, equal keys share a group once more.
    first, second = (_key(n, "f.yaml", labels={"tenant": "fresh"}) for n in ("a", "b"))
    assert first.group is second.group


def test_key_group_is_shared_only_while_used() -> None:
    labels, metadata = shared({"l": "1"}), shared({"m": "1"})
    group = key_group("ns", labels, metadata, False, False)
    assert key_group("ns", labels, metadata, False, False) is group
    size = len(apikeys._groups)
    del group
    gc.collect()
    assert len(apikeys._groups) == size - 1
