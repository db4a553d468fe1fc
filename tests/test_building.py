"""The policy: who is admitted where, with which headers, and how changes and conflicts
play out when applied incrementally."""

from __future__ import annotations

import gc
import random

import pytest

from extauth import deciding
from extauth.apikeys import ApiKey, digest
from extauth.building import PolicyBuilder, PolicyHolder, compile_policy
from extauth.changes import Change, Removal
from extauth.origins import Origin
from extauth.policy import WorkingIndex
from tests.builders import REFS as X_KEY_REFS
from tests.builders import allowed, authconfig, merge, secret, snapshot

REFS = """
headerName: x-key
k8sSecretApikeyStorage:
  apiKeySecretRefs: [{name: a}, {name: c, namespace: other}]
headersFromMetadataEntry:
  x-org: {name: org}
"""
REFS_AB = "k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}"


def errors(policy_problems: tuple[object, ...]) -> list[str]:
    return [str(p) for p in policy_problems if not getattr(p, "warning", False)]


def test_refs_admit_exactly_the_referenced_secrets() -> None:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a", org="red"),
            secret("b", "key-b", org="blue"),
            secret("c", "key-c", namespace="other"),
            authconfig("cfg", REFS),
        )
    )
    assert policy.key_count == 3
    grant_a = deciding.grant(policy, "ns.cfg", "key-a")
    assert grant_a is not None
    assert grant_a.set_headers == (("x-org", "red"),)
    assert deciding.grant(policy, "ns.cfg", "key-b") is None  # loaded, but not referenced
    # c has no `org`: its grant removes a client-sent x-org.
    grant_c = deciding.grant(policy, "ns.cfg", "key-c")
    assert grant_c is not None
    assert grant_c.remove_headers == ("x-org",)
    assert policy.configs["ns.cfg"].rules[0].strip_headers == ("x-key",)


def _selected(all_namespaces: str) -> set[str]:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a", labels={"tier": "gold"}),
            secret("b", "key-b", namespace="elsewhere", labels={"tier": "gold", "x": "y"}),
            secret("c", "key-c", labels={"tier": "free"}),
            secret("d", "key-d"),
            secret("e", "key-e", namespace="other"),
            authconfig(
                "cfg",
                f"""
                {all_namespaces}
                k8sSecretApikeyStorage:
                  labelSelector: {{tier: gold}}
                  apiKeySecretRefs: [{{name: d}}, {{name: e, namespace: other}}]
                """,
            ),
        )
    )
    keys = ("key-a", "key-b", "key-c", "key-d", "key-e")
    return {k for k in keys if deciding.grant(policy, "ns.cfg", k)}


def test_label_selectors_stay_in_the_authconfigs_namespace_unless_told() -> None:
    """A tenant who may create Secrets in another namespace cannot add a key to this
    config by labelling one; references name their namespace and are not confined."""
    assert _selected("") == {"key-a", "key-d", "key-e"}
    assert _selected("allNamespaces: false") == {"key-a", "key-d", "key-e"}
    assert _selected("allNamespaces: true") == {"key-a", "key-b", "key-d", "key-e"}


def test_missing_reference_is_a_warning_not_an_error() -> None:
    policy = compile_policy(snapshot(authconfig("cfg", REFS)))
    warnings = [str(p) for p in policy.problems]
    assert any("references Secret ns/a, which is not loaded" in w for w in warnings)
    assert all(p.warning for p in policy.problems)


def test_required_metadata_missing_marks_the_grant_and_warns() -> None:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a", team="t1"),
            secret("b", "key-b"),
            authconfig(
                "cfg",
                """
                k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}
                headersFromMetadataEntry: {x-team: {name: team, required: true}}
                clientIdHeader: x-client
                """,
            ),
        )
    )
    grant_a = deciding.grant(policy, "ns.cfg", "key-a")
    grant_b = deciding.grant(policy, "ns.cfg", "key-b")
    assert grant_a is not None
    assert grant_b is not None
    assert grant_a.missing_required == ()
    assert grant_a.set_headers == (("x-team", "t1"), ("x-client", "a"))
    assert grant_b.missing_required == ("team",)
    assert any("lacks metadata 'team'" in str(p) for p in policy.problems)


def test_usage_label_comes_from_metadata() -> None:
    change = snapshot(
        secret("a", "key-a", org="red"), secret("b", "key-b"), authconfig("cfg", REFS_AB)
    )
    policy = compile_policy(change, usage_label="org")
    assert [deciding.grant(policy, "ns.cfg", k).usage for k in ("key-a", "key-b")] == ["red", "-"]  # type: ignore[union-attr]


def test_forward_credential_keeps_the_key_and_sources_are_split_by_kind() -> None:
    policy = compile_policy(
        snapshot(
            authconfig(
                "strip",
                """
                keySources: [{header: x-key}, {query: key}, {cookie: key}]
                k8sSecretApikeyStorage: {labelSelector: {a: b}}
                """,
            ),
            authconfig(
                "keep",
                """
                forwardCredential: true
                k8sSecretApikeyStorage: {labelSelector: {a: b}}
                """,
            ),
        )
    )
    strip = policy.configs["ns.strip"].rules[0]
    assert (strip.strip_headers, strip.strip_query) == (("x-key",), ("key",))
    assert strip.strip_cookies == frozenset({"key"})
    assert strip.hint == "the x-key header or the key query or the key cookie"
    keep = policy.configs["ns.keep"].rules[0]
    assert (keep.strip_headers, keep.strip_query, keep.strip_cookies) == ((), (), frozenset())


# Conflicts and succession ------------------------------------------------------------------


def test_same_key_in_two_secrets_goes_to_the_first_path_whatever_the_arrival_order() -> None:
    a = snapshot(secret("a", "shared", org="a"), authconfig("cfg", REFS_AB))
    b = snapshot(secret("b", "shared", org="b"), path="0.yaml")
    for order in ((a, b), (b, a)):
        builder = PolicyBuilder()
        for change in order:
            builder.apply(change)
        policy = builder.build()
        # 0.yaml comes before t.yaml: b holds the key, a is refused, naming both places.
        assert deciding.grant(policy, "ns.cfg", "shared").identity == "b"  # type: ignore[union-attr]
        assert errors(policy.problems) == [
            "t.yaml:1: Secret ns/a holds the same API key as Secret ns/b (0.yaml:1), "
            "which comes first; refused"
        ]
        # b is revoked: a, waiting, takes the key over and the conflict is gone.
        builder.apply(Change(removed=(Removal("Secret", ("ns", "b"), "0.yaml"),)))
        policy = builder.build()
        assert deciding.grant(policy, "ns.cfg", "shared").identity == "a"  # type: ignore[union-attr]
        assert errors(policy.problems) == []


def test_same_key_twice_in_one_file_goes_to_the_first_document() -> None:
    policy = compile_policy(
        snapshot(secret("z", "shared"), secret("a", "shared"), authconfig("cfg", REFS_AB))
    )
    assert policy.keys[digest("shared")].name == "z"
    assert errors(policy.problems) == [
        "t.yaml:8: Secret ns/a holds the same API key as Secret ns/z (t.yaml:1), "
        "which comes first; refused"
    ]


def test_redefining_the_holder_keeps_its_claim() -> None:
    builder = PolicyBuilder()
    builder.apply(snapshot(secret("a", "shared", org="a1"), authconfig("cfg", REFS_AB)))
    builder.apply(snapshot(secret("b", "shared"), path="u.yaml"))
    builder.apply(snapshot(secret("a", "shared", org="a2")))  # same file, new metadata
    policy = builder.build()
    grant = deciding.grant(policy, "ns.cfg", "shared")
    assert grant is not None
    assert grant.identity == "a"
    assert grant.set_headers == ()  # REFS_AB injects nothing; a is still the holder
    assert policy.keys[digest("shared")].metadata["org"] == "a2"
    assert errors(policy.problems) == [
        "u.yaml:1: Secret ns/b holds the same API key as Secret ns/a (t.yaml:1), "
        "which comes first; refused"
    ]


def test_changing_a_key_releases_the_old_one() -> None:
    builder = PolicyBuilder()
    builder.apply(snapshot(secret("a", "old"), authconfig("cfg", REFS_AB)))
    builder.apply(snapshot(secret("a", "new")))
    policy = builder.build()
    assert deciding.grant(policy, "ns.cfg", "old") is None
    assert deciding.grant(policy, "ns.cfg", "new") is not None
    assert policy.key_count == 1


def test_duplicate_names_keep_the_first_path_and_the_next_takes_over() -> None:
    one = snapshot(secret("a", "one"), authconfig("cfg", REFS), path="1.yaml")
    two = snapshot(secret("a", "two"), authconfig("cfg", REFS), path="2.yaml")
    for order in ((one, two), (two, one), (merge(two, one),)):
        builder = PolicyBuilder()
        for change in order:
            builder.apply(change)
        policy = builder.build()
        assert deciding.grant(policy, "ns.cfg", "one") is not None
        assert deciding.grant(policy, "ns.cfg", "two") is None
        assert sorted(errors(policy.problems)) == [
            "2.yaml:1: Secret ns/a is already defined at 1.yaml:1, which comes first; "
            "this definition is refused",
            "2.yaml:8: AuthConfig ns/cfg is already defined at 1.yaml:8, which comes first; "
            "this definition is refused",
        ]
        builder.apply(Change(removed=(Removal("Secret", ("ns", "a"), "1.yaml"),)))
        policy = builder.build()
        assert deciding.grant(policy, "ns.cfg", "one") is None
        assert deciding.grant(policy, "ns.cfg", "two") is not None
        assert len(errors(policy.problems)) == 1  # only the AuthConfig duplicate is left


def test_a_config_from_a_path_that_comes_first_takes_over() -> None:
    builder = PolicyBuilder()
    builder.apply(snapshot(secret("a", "key-a"), authconfig("cfg", REFS_AB), path="2.yaml"))
    assert deciding.grant(builder.build(), "ns.cfg", "key-a") is not None
    builder.apply(snapshot(authconfig("cfg", "apiKeySecretRefs: [{name: b}]"), path="1.yaml"))
    policy = builder.build()
    assert deciding.grant(policy, "ns.cfg", "key-a") is None
    assert errors(policy.problems) == [
        "2.yaml:8: AuthConfig ns/cfg is already defined at 1.yaml:1, which comes first; "
        "this definition is refused"
    ]


def test_the_same_name_twice_in_one_file_keeps_the_first_document() -> None:
    builder = PolicyBuilder()
    builder.apply(snapshot(secret("a", "first"), secret("a", "second"), authconfig("cfg", REFS_AB)))
    policy = builder.build()
    assert deciding.grant(policy, "ns.cfg", "first") is not None
    assert deciding.grant(policy, "ns.cfg", "second") is None
    assert errors(policy.problems) == [
        "t.yaml:8: document 2: Secret ns/a is already defined at t.yaml:1 (document 1); "
        "this definition is refused"
    ]
    # A new version of the file without the duplicate clears it.
    builder.apply(snapshot(secret("a", "second"), authconfig("cfg", REFS_AB)))
    policy = builder.build()
    assert deciding.grant(policy, "ns.cfg", "second") is not None
    assert errors(policy.problems) == []


def test_editing_a_config_recompiles_it_alone() -> None:
    builder = PolicyBuilder()
    builder.apply(
        snapshot(secret("a", "key-a"), authconfig("cfg", REFS_AB), authconfig("other", REFS_AB))
    )
    first = builder.build()
    builder.apply(snapshot(authconfig("cfg", "k8sSecretApikeyStorage: {labelSelector: {t: x}}")))
    second = builder.build()
    assert deciding.grant(second, "ns.cfg", "key-a") is None
    assert second.configs["ns.other"] is first.configs["ns.other"]
    # A key-only change reuses the compiled configs as they are.
    builder.apply(snapshot(secret("b", "key-b")))
    assert builder.build().configs is second.configs


def test_unknown_default_config_is_reported() -> None:
    policy = compile_policy(Change(), default_config="ns.none")
    assert policy.default_config == "ns.none"
    assert "AuthConfig 'ns.none' does not exist" in str(policy.problems[0])


def test_holder_swaps_whole_policies_and_keeps_old_ones_intact() -> None:
    holder = PolicyHolder(default_config="ns.cfg")
    assert not holder.current.loaded
    first = holder.update([snapshot(secret("a", "key-a"), authconfig("cfg", REFS))])
    assert holder.current is first
    assert first.loaded
    second = holder.update([Change(removed=(Removal("Secret", ("ns", "a"), "t.yaml"),))])
    assert holder.current is second
    assert deciding.grant(second, "ns.cfg", "key-a") is None
    # A Check that started on `first` still sees a consistent, unchanged policy.
    assert deciding.grant(first, "ns.cfg", "key-a") is not None


def test_policy_mappings_are_read_only() -> None:
    policy = compile_policy(snapshot(secret("a", "key-a"), authconfig("cfg", REFS)))
    with pytest.raises(TypeError):
        policy.configs["x"] = policy.configs["ns.cfg"]  # type: ignore[index]
    with pytest.raises(TypeError):
        policy.keys[b"x"] = policy.keys[digest("key-a")]  # type: ignore[index]


def test_files_rank_before_kubernetes_objects_whatever_the_directory_is_called() -> None:
    def key(name: str, path: str) -> ApiKey:
        return ApiKey.from_entries("ns", name, {}, {"api-key": "shared"}, Origin(path, 1, 1))

    for directory in ("/etc/extauth", "zz-config", "kubernetes"):
        from_file = key("file", f"{directory}/keys.yaml")
        from_cluster = key("cluster", "kubernetes:Secret/ns/cluster")
        for order in ((from_file, from_cluster), (from_cluster, from_file)):
            policy = compile_policy(Change(order))
            assert policy.keys[digest("shared")].name == "file"


def test_a_publish_copies_the_change_not_the_index() -> None:
    """A revocation among many keys shares the published base and copies only the recent
    layer; after changes amounting to 1/32 of the base, a publish compacts them into a
    new base, and no superseded key stays referenced."""
    builder = PolicyBuilder()
    builder.apply(snapshot(*(secret(f"s{i}", f"key-{i}") for i in range(256))))
    first = builder.build()
    assert len(first.keys) == 256
    assert not first.keys.recent
    builder.apply(Change(removed=(Removal("Secret", ("ns", "s0"), "t.yaml"),)))
    second = builder.build()
    assert second.keys.base is first.keys.base  # shared, not copied
    assert dict(second.keys.recent) == {digest("key-0"): None}
    assert digest("key-0") not in second.keys
    assert len(second.keys) == 255
    assert first.keys[digest("key-0")].name == "s0"  # the old policy is unchanged
    assert set(second.keys) == {digest(f"key-{i}") for i in range(1, 256)}
    # 256 // 32 = 8 changed digests fit in the recent layer; past them a publish compacts.
    for i in range(1, 7):
        builder.apply(Change(removed=(Removal("Secret", ("ns", f"s{i}"), "t.yaml"),)))
        policy = builder.build()
        assert policy.keys.base is first.keys.base
        assert len(policy.keys.recent) == i + 1
    builder.apply(snapshot(secret("s9", "new-key-9")))  # two more digests: key-9, new-key-9
    compacted = builder.build()
    assert compacted.keys.base is not first.keys.base
    assert not compacted.keys.recent
    assert digest("key-9") not in compacted.keys.base  # superseded: gone from the base
    assert compacted.keys[digest("new-key-9")].name == "s9"
    assert len(compacted.keys) == 249


def test_expiries_follow_the_policy() -> None:
    builder = PolicyBuilder()
    builder.apply(
        snapshot(secret("a", "key-a", expires_at="2030-01-01T00:00:00Z"), secret("b", "key-b"))
    )
    assert len(builder.build().expiries) == 1
    builder.apply(Change(removed=(Removal("Secret", ("ns", "a"), "t.yaml"),)))
    assert len(builder.build().expiries) == 0


def test_a_next_key_that_clashes_is_refused_alone() -> None:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a"),
            secret("b", "key-b", api_key_next="key-a"),
            authconfig("cfg", X_KEY_REFS),
        )
    )
    assert allowed(policy, {"x-key": "key-a"}).identity == "a"  # type: ignore[union-attr]
    assert allowed(policy, {"x-key": "key-b"}).identity == "b"  # type: ignore[union-attr]
    assert any("holds the same API key" in str(p) for p in policy.problems)


def test_the_builder_and_its_policies_hold_one_index_not_two() -> None:
    """A million keys cost one dict: the builder's working index and the published
    index share their base, and the first publish copies nothing."""
    builder = PolicyBuilder()
    builder.apply(snapshot(*(secret(f"s{i}", f"key-{i}") for i in range(64))))
    policy = builder.build()
    working = builder._admitted
    (underlying,) = gc.get_referents(policy.keys.base)
    assert underlying is working.base
    assert len(working.base) == 64
    assert not working.recent
    builder.apply(Change(removed=(Removal("Secret", ("ns", "s3"), "t.yaml"),)))
    after = builder.build()
    assert gc.get_referents(after.keys.base)[0] is working.base  # still the one base
    assert digest("key-3") not in after.keys
    assert digest("key-3") in policy.keys


def test_the_working_index_behaves_as_a_dict() -> None:
    """Random sets, deletions and compactions: the two layers always read as one dict."""
    rng = random.Random(17)  # noqa: S311  # a reproducible sequence, not a secret
    working = WorkingIndex()
    model: dict[bytes, ApiKey] = {}
    keys = [
        ApiKey.from_entries("ns", f"s{i}", {}, {"api-key": f"k{i}"}, Origin("t.yaml", 1, 1))
        for i in range(40)
    ]
    for step in range(3000):
        key = rng.choice(keys)
        if rng.random() < 0.5:
            working[key.digest] = model[key.digest] = key
        elif key.digest in model:
            del working[key.digest], model[key.digest]
        else:
            with pytest.raises(KeyError):
                del working[key.digest]
        if step % 97 == 0:
            working.compact()
        assert len(working) == len(model)
        assert working.get(key.digest) is model.get(key.digest)
        assert (key.digest in working) == (key.digest in model)
    assert dict(working.items()) == model
    assert None not in working.base.values()


def test_keys_share_their_line_and_document_numbers() -> None:
    """Line numbers past 256 are not cached by Python: one int object each per key
    would be 64 bytes a key at a million keys."""
    text = "".join(
        f"---\napiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        f"metadata: {{name: s{i}, namespace: ns}}\nstringData: {{api-key: key-{i}}}\n"
        for i in range(400)
    )
    first = compile_policy(snapshot(text, path="a.yaml"))
    second = compile_policy(snapshot(text, path="b.yaml"))
    a = first.keys[digest("key-399")]
    b = second.keys[digest("key-399")]
    assert a.line == b.line > 256
    assert a.document == b.document == 400
    assert a.line is b.line
    assert a.document is b.document
