"""Hashed keys at rest, expiry, rotation keys, Optional mode and booleanExpr."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from extauth import boolexpr, cli, deciding, keys, manifests
from extauth.building import PolicyBuilder, compile_policy
from extauth.changes import Change, Removal
from extauth.deciding import decide
from extauth.decisions import Allow, Deny, Reason
from extauth.loader import definitions
from extauth.metrics import Metrics
from extauth.resources import Secret
from tests.builders import authconfig, secret, snapshot

ROUTE = {"config_id": "ns.cfg"}
REFS = "headerName: x-key\nk8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}"


def allowed(
    policy: object, headers: dict[str, str], route: dict[str, str] = ROUTE, now: float | None = None
) -> Allow | Deny:
    return decide(policy, route, headers, "/", now)  # type: ignore[arg-type]


# Hashed keys ---------------------------------------------------------------------------------


def test_a_hashed_secret_admits_its_key_and_never_holds_it() -> None:
    stored = keys.key_hash("team-key")
    policy = compile_policy(
        snapshot(
            secret("a", "unused").replace("api-key: 'unused'", f"api-key-hash: '{stored}'"),
            authconfig("cfg", REFS),
        )
    )
    decision = allowed(policy, {"x-key": "team-key"})
    assert isinstance(decision, Allow)
    assert decision.identity == "a"
    assert isinstance(allowed(policy, {"x-key": stored}), Deny)  # the hash is not the key


def test_require_hashed_keys_admits_only_hashed_secrets() -> None:
    stored = keys.key_hash("hashed-key")
    policy = compile_policy(
        snapshot(
            secret("a", "plain-key"),
            secret("b", "x").replace("api-key: 'x'", f"api-key-hash: '{stored}'"),
            authconfig("cfg", REFS + "\nrequireHashedKeys: true"),
        )
    )
    assert isinstance(allowed(policy, {"x-key": "hashed-key"}), Allow)
    denied = allowed(policy, {"x-key": "plain-key"})
    assert isinstance(denied, Deny)
    assert denied.reason is Reason.INVALID


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            "{api-key: k, api-key-hash: 'sha256:" + "0" * 64 + "'}",
            "give 'api-key' or 'api-key-hash', not both",
        ),
        ("{api-key-hash: 'md5:abc'}", "must be 'sha256:' and 64 hex digits"),
        ("{api-key-hash: 'sha256:" + "0" * 63 + "'}", "must be 'sha256:' and 64 hex digits"),
        ("{api-key: k, expires-at: 'next tuesday'}", "is not an RFC 3339 time"),
        ("{api-key: k, expires-at: '2027-01-01T00:00:00'}", "needs a timezone"),
        ("{api-key: k, api-key-next: ''}", "entry 'api-key-next' is empty"),
    ],
)
def test_key_entries_are_checked(entries: str, message: str) -> None:
    text = (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        f"metadata: {{name: a, namespace: ns}}\nstringData: {entries}\n"
    )
    result = manifests.parse_text(text, "f.yaml")
    assert not result.ok
    assert message in str(result.problems[0])


def test_keys_new_hashed_prints_a_hash_only_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(
            ["keys", "new", "team3", "-n", "ns", "--hashed", "--expires-at", "2099-01-01T00:00:00Z"]
        )
        == 0
    )
    out = capsys.readouterr()
    key = out.err.rsplit(": ", 1)[1].strip()
    assert "api-key-hash" in out.out
    assert "api-key:" not in out.out
    path = tmp_path / "k.yaml"
    path.write_text(out.out)
    loaded = manifests.load_file(path)
    assert loaded.ok
    resource = loaded.resources[0].resource
    assert isinstance(resource, Secret)
    assert keys.key_hash(key) == resource.entries()["api-key-hash"]
    policy = compile_policy(
        Change(
            (
                *snapshot(
                    authconfig("cfg", "headerName: x-key\napiKeySecretRefs: [{name: team3}]")
                ).upserted,
                *_from_file(path).upserted,
            )
        )
    )
    assert isinstance(allowed(policy, {"x-key": key}), Allow)


def _from_file(path: Path) -> Change:
    return Change(definitions(manifests.load_file(path).resources))


# Expiry ----------------------------------------------------------------------------------------


def test_expired_key_is_denied_with_its_own_reason() -> None:
    policy = compile_policy(
        snapshot(secret("a", "key-a", expires_at="2030-01-01T00:00:00Z"), authconfig("cfg", REFS))
    )
    before = allowed(policy, {"x-key": "key-a"}, now=1_800_000_000.0)  # 2027
    assert isinstance(before, Allow)
    after = allowed(policy, {"x-key": "key-a"}, now=1_900_000_000.0)  # 2030
    assert isinstance(after, Deny)
    assert after.reason is Reason.EXPIRED


def test_expiring_and_expired_keys_are_counted() -> None:
    now = time.time()
    metrics = Metrics()
    expiries = (now + 3600, now + 6 * 86400, now + 30 * 86400, now - 10)
    metrics.track_expiries(lambda: expiries)
    assert metrics.registry.get_sample_value("extauth_api_keys_expiring_soon") == 2
    assert metrics.registry.get_sample_value("extauth_api_keys_expired") == 1


def test_expiries_follow_the_policy() -> None:
    builder = PolicyBuilder()
    builder.apply(
        snapshot(secret("a", "key-a", expires_at="2030-01-01T00:00:00Z"), secret("b", "key-b"))
    )
    assert len(builder.build().expiries) == 1
    builder.apply(Change(removed=(Removal("Secret", ("ns", "a"), "t.yaml"),)))
    assert builder.build().expiries == ()


# Rotation --------------------------------------------------------------------------------------


def test_both_keys_of_a_rotation_work_for_one_identity() -> None:
    builder = PolicyBuilder()
    builder.apply(
        snapshot(secret("a", "old-key", api_key_next="new-key", org="red"), authconfig("cfg", REFS))
    )
    policy = builder.build()
    assert policy.key_count == 1
    for key in ("old-key", "new-key"):
        decision = allowed(policy, {"x-key": key})
        assert isinstance(decision, Allow)
        assert decision.identity == "a"
    # The rotation ends: only the new key remains.
    builder.apply(snapshot(secret("a", "new-key", org="red")))
    policy = builder.build()
    assert isinstance(allowed(policy, {"x-key": "old-key"}), Deny)
    assert isinstance(allowed(policy, {"x-key": "new-key"}), Allow)
    # Revoking the Secret revokes every key it held.
    builder.apply(Change(removed=(Removal("Secret", ("ns", "a"), "t.yaml"),)))
    assert isinstance(allowed(builder.build(), {"x-key": "new-key"}), Deny)


def test_a_next_key_that_clashes_is_refused_alone() -> None:
    policy = compile_policy(
        snapshot(
            secret("a", "key-a"),
            secret("b", "key-b", api_key_next="key-a"),
            authconfig("cfg", REFS),
        )
    )
    assert allowed(policy, {"x-key": "key-a"}).identity == "a"  # type: ignore[union-attr]
    assert allowed(policy, {"x-key": "key-b"}).identity == "b"  # type: ignore[union-attr]
    assert any("holds the same API key" in str(p) for p in policy.problems)


# Optional mode ---------------------------------------------------------------------------------

OPTIONAL = """
mode: Optional
headerName: x-key
clientIdHeader: x-client
k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}
headersFromMetadataEntry: {x-org: {name: org}}
"""


def test_optional_mode() -> None:
    policy = compile_policy(snapshot(secret("a", "key-a", org="red"), authconfig("cfg", OPTIONAL)))
    valid = allowed(policy, {"x-key": "key-a", "x-org": "spoof"})
    assert isinstance(valid, Allow)
    assert dict(valid.set_headers) == {"x-org": "red", "x-client": "a"}
    invalid = allowed(policy, {"x-key": "wrong"})
    assert isinstance(invalid, Deny)
    assert invalid.reason is Reason.INVALID
    anonymous = allowed(policy, {"x-org": "spoof", "x-client": "spoof"})
    assert isinstance(anonymous, Allow)
    assert anonymous.identity == ""
    assert anonymous.set_headers == ()
    assert set(anonymous.remove_headers) >= {"x-org", "x-client"}


# booleanExpr -----------------------------------------------------------------------------------


def _expr_config(expr: str) -> str:
    return (
        "apiVersion: extauth.solo.io/v1\nkind: AuthConfig\nmetadata: {name: cfg, namespace: ns}\n"
        f"spec:\n  booleanExpr: {expr!r}\n  configs:\n"
        "    - name: teamkeys\n      apiKeyAuth:\n        headerName: x-team-key\n"
        "        k8sSecretApikeyStorage: {labelSelector: {kind: team}}\n"
        "        headersFromMetadataEntry: {x-org: {name: org}}\n"
        "    - name: partnerkeys\n      apiKeyAuth:\n        headerName: x-partner-key\n"
        "        k8sSecretApikeyStorage: {labelSelector: {kind: partner}}\n"
        "        clientIdHeader: x-partner\n"
    )


def _expr_policy(expr: str) -> object:
    return compile_policy(
        snapshot(
            secret("t", "team-key", labels={"kind": "team"}, org="red"),
            secret("p", "partner-key", labels={"kind": "partner"}),
            _expr_config(expr),
        )
    )


def test_boolean_expr_or() -> None:
    policy = _expr_policy("teamkeys || partnerkeys")
    team = allowed(policy, {"x-team-key": "team-key", "x-partner": "spoof"})
    assert isinstance(team, Allow)
    assert team.identity == "t"
    assert dict(team.set_headers) == {"x-org": "red"}
    assert "x-partner" in team.remove_headers  # the failed branch injects nothing
    assert {"x-team-key", "x-partner-key"} <= set(team.remove_headers)
    partner = allowed(policy, {"x-partner-key": "partner-key"})
    assert isinstance(partner, Allow)
    assert partner.identity == "p"
    neither = allowed(policy, {"x-team-key": "wrong"})
    assert isinstance(neither, Deny)
    assert neither.reason is Reason.INVALID  # more telling than "missing"
    assert allowed(policy, {}).reason is Reason.MISSING  # type: ignore[union-attr]


def test_boolean_expr_and_not() -> None:
    policy = _expr_policy("teamkeys && !partnerkeys")
    assert isinstance(allowed(policy, {"x-team-key": "team-key"}), Allow)
    both = allowed(policy, {"x-team-key": "team-key", "x-partner-key": "partner-key"})
    assert isinstance(both, Deny)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("teamkeys || ghost", "booleanExpr names ['ghost'] that no configs entry has"),
        ("teamkeys", "configs entries ['partnerkeys'] are not used in booleanExpr"),
        ("teamkeys ||", "ends too early"),
        ("(teamkeys || partnerkeys", "missing ')'"),
        ("teamkeys partnerkeys", "unexpected 'partnerkeys'"),
        ("teamkeys | partnerkeys", "cannot read booleanExpr"),
    ],
)
def test_boolean_expr_problems(expr: str, message: str) -> None:
    result = manifests.parse_text(_expr_config(expr), "f.yaml")
    assert not result.ok
    assert message in str(result.problems[0])


def test_boolean_expr_needs_named_entries() -> None:
    text = _expr_config("teamkeys || partnerkeys").replace(
        "    - name: partnerkeys\n      apiKeyAuth", "    - apiKeyAuth"
    )
    result = manifests.parse_text(text, "f.yaml")
    assert "every entry of configs needs a name" in str(result.problems[0])


@pytest.mark.parametrize(
    ("expr", "values", "expected"),
    [
        ("a || b && c", {"a": False, "b": True, "c": False}, False),
        ("a || b && c", {"a": True, "b": False, "c": False}, True),
        ("(a || b) && c", {"a": True, "b": False, "c": False}, False),
        ("!a && !!b", {"a": False, "b": True}, True),
        ("!(a || b)", {"a": False, "b": False}, True),
    ],
)
def test_boolexpr_precedence(expr: str, values: dict[str, bool], expected: bool) -> None:
    parsed = boolexpr.parse(expr)
    assert deciding.evaluate(parsed, values) is expected
    assert parsed.names == frozenset(values)
