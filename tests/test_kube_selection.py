"""The Kubernetes source's per-object records and selection, without an API server: the
rules that decide what a Secret costs and when it is read again, event by event."""

from __future__ import annotations

from typing import Any

from extauth.apikeys import ApiKey
from extauth.changes import Change
from extauth.resources import AuthConfig
from extauth.sources.kubernetes import Translator
from extauth.sources.records import Record, Stub, uuid_number, version_of
from extauth.sources.selection import EMPTY, Selection, Selects
from extauth.sources.watching import Deleted, Listed, RawObject, Upserted

UID = "0f0e0d0c-0b0a-4908-8706-050403020100"


def test_resource_versions_are_kept_as_compactly_as_they_compare() -> None:
    assert version_of("123456") == 123456
    assert version_of("0") == 0
    # Equal strings give equal results, and different strings different ones.
    for odd in ("0123", "", "12a", "-1", "1" * 40, "١٢٣"):
        assert version_of(odd) == odd
    assert version_of("0123") != version_of("123")


def test_only_a_canonical_uuid_becomes_a_number() -> None:
    assert uuid_number(UID) == int(UID.replace("-", ""), 16)
    for odd in (UID.upper(), UID.replace("-", ""), "x" * 36, UID[:-1] + "g", ""):
        assert uuid_number(odd) is None


def _config(namespace: str, storage: dict[str, Any], **auth: Any) -> AuthConfig:
    return AuthConfig.model_validate(
        {
            "apiVersion": "extauth.solo.io/v1",
            "kind": "AuthConfig",
            "metadata": {"name": "c", "namespace": namespace},
            "spec": {"configs": [{"apiKeyAuth": {"k8sSecretApikeyStorage": storage, **auth}}]},
        }
    )


def test_selection_follows_the_policy_rules() -> None:
    selection = Selection()
    confined = Selects.of(_config("a", {"labelSelector": {"team": "x", "tier": "1"}}))
    assert selection.update("k", ("a", "c"), confined)
    assert selection.selects(("a", "s"), {"team": "x", "tier": "1", "more": "y"})
    assert not selection.selects(("a", "s"), {"team": "x"})  # every label must match
    assert not selection.selects(("b", "s"), {"team": "x", "tier": "1"})  # own namespace
    wide = Selects.of(_config("a", {"labelSelector": {"team": "x"}}, allNamespaces=True))
    assert selection.update("k", ("a", "wide"), wide)
    assert selection.selects(("b", "s"), {"team": "x"})
    refs = Selects.of(_config("a", {"apiKeySecretRefs": [{"name": "n", "namespace": "b"}]}))
    assert selection.update("k", ("a", "refs"), refs)
    assert selection.selects(("b", "n"), {})
    # The same selector held twice: removing one keeps it.
    assert selection.update("k", ("a", "twin"), confined)
    assert selection.update("k", ("a", "c"), EMPTY)
    assert selection.selects(("a", "s"), {"team": "x", "tier": "1"})
    assert not selection.update("k", ("a", "twin"), confined)  # no change: nothing to do
    for owner in ("twin", "wide", "refs"):
        selection.update("k", ("a", owner), EMPTY)
    assert not selection.selects(("a", "s"), {"team": "x", "tier": "1"})
    assert not selection.selects(("b", "n"), {})


def _secret(name: str, version: str, key: str, labels: dict[str, str]) -> RawObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "extauth.solo.io/apikey",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": UID,
            "resourceVersion": version,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": labels,
        },
        "stringData": {"api-key": key, "pad": "p" * 4000},
    }


def test_an_unselected_secret_is_a_stub_and_read_again_only_at_its_version() -> None:
    selection = Selection()
    emitted: list[Change] = []
    secrets = Translator("Secret", lambda c, _: emitted.append(c), None, selection=selection)
    secrets.take(Upserted(_secret("s", "10", "key-10", {"team": "b"}), 1))
    secrets.take(Listed("11", 1, False, 1))
    stub = secrets.known.get(("ns", "s"))
    assert isinstance(stub, Stub)
    assert stub.definition is None
    assert dict(stub.labels) == {"team": "b"}
    assert emitted == [Change()]
    # Edited while unselected: a stub at the new version, nothing published.
    secrets.take(Upserted(_secret("s", "12", "key-12", {"team": "b"}), 0))
    assert isinstance(secrets.known.get(("ns", "s")), Stub)
    assert len(emitted) == 1
    # Now selected. A read of an older version than the watch's is not applied...
    selection.update("k", ("ns", "c"), Selects.of(_config("ns", {"labelSelector": {"team": "b"}})))
    assert secrets.reselect() == [("ns", "s")]
    secrets.fetched(_secret("s", "10", "key-10", {"team": "b"}))
    assert isinstance(secrets.known.get(("ns", "s")), Stub)
    assert len(emitted) == 1
    # ... the one at its version is.
    secrets.fetched(_secret("s", "12", "key-12", {"team": "b"}))
    record = secrets.known.get(("ns", "s"))
    assert type(record) is Record
    (change,) = emitted[1:]
    (key,) = change.upserted
    assert isinstance(key, ApiKey)
    assert record.definition is key
    # Narrowed: dropped to a stub, the key removed.
    selection.update("k", ("ns", "c"), EMPTY)
    assert secrets.reselect() == []
    assert isinstance(secrets.known.get(("ns", "s")), Stub)
    assert [r.owner for r in emitted[-1].removed] == [("ns", "s")]
    # A stub deleted: nothing to remove, and a later read of it is ignored.
    secrets.take(Deleted(_secret("s", "13", "key-12", {"team": "b"})))
    assert secrets.known.get(("ns", "s")) is None
    secrets.fetched(_secret("s", "12", "key-12", {"team": "b"}))
    assert secrets.known.get(("ns", "s")) is None


def test_a_relist_sweeps_what_it_no_longer_holds_by_stamp() -> None:
    emitted: list[Change] = []
    secrets = Translator("Secret", lambda c, _: emitted.append(c), None)
    for name in ("a", "b"):
        secrets.take(Upserted(_secret(name, "5", f"key-{name}", {}), 1))
    secrets.take(Listed("6", 2, False, 1))
    # A list that fails halfway (attempt 2) and one that completes (attempt 3).
    secrets.take(Upserted(_secret("a", "5", "key-a", {}), 2))
    secrets.take(Upserted(_secret("a", "5", "key-a", {}), 3))
    secrets.take(Listed("7", 1, True, 3))
    assert [r.owner for r in emitted[-1].removed] == [("ns", "b")]
    assert emitted[-1].upserted == ()  # "a" unchanged: not validated or published again
    assert ("ns", "a") in secrets.known
    assert len(secrets.known) == 1
