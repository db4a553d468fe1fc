"""Compiling snapshots: who is admitted where, with which headers, and how conflicts end."""

from __future__ import annotations

from extauth.policy import Policy, PolicyHolder, compile_policy
from extauth.snapshot import Snapshot, digest
from tests.builders import authconfig, merge, secret, snapshot

REFS = """
headerName: x-key
k8sSecretApikeyStorage:
  apiKeySecretRefs: [{name: a}, {name: c, namespace: other}]
headersFromMetadataEntry:
  x-org: {name: org}
"""


def test_refs_admit_exactly_the_referenced_secrets() -> None:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a", org="red"),
            secret("b", "key-b", org="blue"),
            secret("c", "key-c", namespace="other"),
            authconfig("cfg", REFS),
        )
    )
    (rule,) = policy.configs["ns.cfg"].rules
    assert set(rule.grants) == {digest("key-a"), digest("key-c")}
    assert rule.grants[digest("key-a")].set_headers == (("x-org", "red"),)
    # c has no `org`: its grant removes a client-sent x-org.
    assert rule.grants[digest("key-c")].remove_headers == ("x-org",)
    assert rule.strip_headers == ("x-key",)
    assert policy.key_count == 3


def test_label_selector_and_refs_are_a_union_across_namespaces() -> None:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a", labels={"tier": "gold"}),
            secret("b", "key-b", namespace="elsewhere", labels={"tier": "gold", "x": "y"}),
            secret("c", "key-c", labels={"tier": "free"}),
            secret("d", "key-d"),
            authconfig(
                "cfg",
                """
                k8sSecretApikeyStorage:
                  labelSelector: {tier: gold}
                  apiKeySecretRefs: [{name: d}]
                """,
            ),
        )
    )
    (rule,) = policy.configs["ns.cfg"].rules
    assert {g.identity for g in rule.grants.values()} == {"a", "b", "d"}


def test_missing_reference_is_a_warning_not_an_error() -> None:
    policy = compile_policy(snapshot(authconfig("cfg", REFS)))
    assert not policy.configs["ns.cfg"].rules[0].grants
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
    grants = policy.configs["ns.cfg"].rules[0].grants
    assert grants[digest("key-a")].missing_required == ()
    assert grants[digest("key-a")].set_headers == (("x-team", "t1"), ("x-client", "a"))
    assert grants[digest("key-b")].missing_required == ("team",)
    assert any("lacks metadata 'team'" in str(p) for p in policy.problems)


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


def test_same_key_in_two_secrets_refuses_the_newcomer() -> None:
    refs = "k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}"
    first = snapshot(secret("a", "shared", org="a"), authconfig("cfg", refs))
    policy = compile_policy(first)
    assert policy.configs["ns.cfg"].rules[0].grants[digest("shared")].identity == "a"

    # b arrives with the same key, sorting before a in file order: a still keeps it.
    both = merge(snapshot(secret("b", "shared", org="b"), path="0.yaml"), first)
    after = compile_policy(both, previous=policy)
    assert after.configs["ns.cfg"].rules[0].grants[digest("shared")].identity == "a"
    conflict = [str(p) for p in after.problems if not p.warning]
    assert conflict == [
        "0.yaml:1: Secret ns/b holds the same API key as Secret ns/a (t.yaml:1); refused"
    ]
    assert after.key_count == 1
    # Without history, the first in order keeps it: deterministic either way.
    fresh = compile_policy(both)
    assert fresh.configs["ns.cfg"].rules[0].grants[digest("shared")].identity == "b"


def test_duplicate_names_keep_the_first_definition() -> None:
    both = merge(
        snapshot(secret("a", "one"), authconfig("cfg", REFS), path="1.yaml"),
        snapshot(secret("a", "two"), authconfig("cfg", REFS), path="2.yaml"),
    )
    policy = compile_policy(both)
    assert digest("one") in policy.configs["ns.cfg"].rules[0].grants
    assert digest("two") not in policy.configs["ns.cfg"].rules[0].grants
    errors = [str(p) for p in policy.problems if not p.warning]
    assert "2.yaml:1: Secret ns/a is already defined at 1.yaml:1; this definition is refused" in (
        errors
    )
    assert any(
        e.startswith("2.yaml:8: AuthConfig ns/cfg is already defined at 1.yaml:8") for e in errors
    )


def test_unknown_default_config_is_reported() -> None:
    policy = compile_policy(Snapshot(), default_config="ns.none")
    assert policy.default_config == "ns.none"
    assert "AuthConfig 'ns.none' does not exist" in str(policy.problems[0])


def test_holder_swaps_whole_policies_and_keeps_old_ones_intact() -> None:
    holder = PolicyHolder(default_config="ns.cfg")
    assert not holder.current.loaded
    first = holder.update(snapshot(secret("a", "key-a"), authconfig("cfg", REFS)))
    assert holder.current is first
    assert first.loaded
    assert first.default_config == "ns.cfg"
    second = holder.update(snapshot(authconfig("cfg", REFS)))  # a's Secret deleted
    assert holder.current is second
    assert digest("key-a") not in second.configs["ns.cfg"].rules[0].grants
    # A Check that started on `first` still sees a consistent, unchanged policy.
    assert digest("key-a") in first.configs["ns.cfg"].rules[0].grants


def test_policy_mappings_are_read_only() -> None:
    policy = compile_policy(snapshot(secret("a", "key-a"), authconfig("cfg", REFS)))
    assert isinstance(policy, Policy)
    try:
        policy.configs["x"] = policy.configs["ns.cfg"]  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("policy.configs accepted a write")
