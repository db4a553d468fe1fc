"""Credentials, decisions and responses: the pure request path, without a server."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from extauth import deciding, keys
from extauth.building import PolicyBuilder, compile_policy
from extauth.changes import Change, Removal
from extauth.deciding import MAX_QUERY_PARAMETERS, decide
from extauth.decisions import Allow, Deny, Reason
from extauth.policy import KeySource, Policy
from tests.builders import REFS, allowed, authconfig, expr_config, secret, snapshot

ROUTE = {"config_id": "ns.cfg"}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return compile_policy(
        snapshot(
            secret("a", "key-a", org="red", team="t"),
            secret("b", "key-b"),
            authconfig(
                "cfg",
                """
                headerName: x-key
                k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}
                headersFromMetadataEntry: {x-org: {name: org}}
                """,
            ),
            authconfig(
                "strict",
                """
                headerName: x-key
                k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}
                headersFromMetadataEntry: {x-team: {name: team, required: true}}
                """,
            ),
            authconfig(
                "cookies",
                """
                keySources: [{cookie: k}]
                k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}
                """,
            ),
            authconfig(
                "two",
                """
                headerName: x-key
                k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}
                headersFromMetadataEntry: {x-org: {name: org}}
                """,
                """
                headerName: x-partner
                clientIdHeader: x-partner-id
                k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: b}]}
                """,
            ),
        ),
        default_config="ns.cfg",
    )


# credentials -------------------------------------------------------------------------------

HEADER, QUERY, COOKIE = (
    KeySource("header", "x-key"),
    KeySource("query", "k"),
    KeySource("cookie", "k"),
)


@pytest.mark.parametrize(
    ("headers", "path", "expected"),
    [
        ({"x-key": "abc"}, "/", "abc"),
        ({"x-key": "Bearer abc"}, "/", "abc"),
        ({"x-key": "bearer   abc "}, "/", "abc"),
        ({"x-key": ""}, "/", None),
        ({"x-key": "Bearer "}, "/", None),
        ({}, "/p?a=1&k=q%2Bv+w", "q+v w"),
        ({}, "/p?k=&k=second", None),
        ({}, "/p?kk=1", None),
        ({}, "/p#k=frag", None),
        ({"cookie": "a=1; k=c1; z=2"}, "/", "c1"),
        ({"cookie": 'k="quoted"'}, "/", "quoted"),
        ({"cookie": "kk=1"}, "/", None),
        ({"cookie": "a=1,k=second-line"}, "/", "second-line"),  # two lines, merged
        # The header is first in order: it wins over query and cookie.
        ({"x-key": "h", "cookie": "k=c"}, "/?k=q", "h"),
        ({"cookie": "k=c"}, "/?k=q", "q"),
    ],
)
def test_extract(headers: dict[str, str], path: str, expected: str | None) -> None:
    assert deciding.extract((HEADER, QUERY, COOKIE), headers, path) == expected


@pytest.mark.parametrize(
    ("path", "smuggled"),
    [
        ("/p", False),
        ("/p?k=1", False),
        ("/p?a=1&k=1&kk=2&k-=3&x_k=4", False),
        ("/p?%6B=1", True),  # Envoy strips "k" only as spelled
        ("/p?K=1", True),
        ("/p?k=1&k=2", True),
        ("/p?k[]=1", True),
        ("/p?k%5B0%5D=1", True),
        ("/p?%256B=1", True),  # decoded twice
        ("/p?a=1;k=2", True),  # an upstream that also splits on ";"
        ("/p?+k=1", True),
        ("/p?k=%6B", False),  # values are the key's business, not names
    ],
)
def test_smuggled_query_keys(path: str, smuggled: bool) -> None:
    assert deciding.smuggled(path, ["k"]) is smuggled


def test_query_key_is_read_by_the_name_envoy_strips() -> None:
    assert deciding.query_param("/p?%6B=v&k=w", "k") == "w"
    assert deciding.query_param("/p?%6B=v", "k") is None


def test_without_cookies() -> None:
    assert deciding.without_cookies("a=1; k=secret;b=2", frozenset({"k"})) == "a=1; b=2"
    assert deciding.without_cookies("k=secret", frozenset({"k"})) == ""
    assert deciding.without_cookies("a=1,k=s; b=2", frozenset({"k"})) == "a=1; b=2"


def _python_calls(function: Callable[[], object]) -> int:
    """How many calls (Python functions and C methods alike) `function` makes: the work
    Check does for a request, counted rather than timed."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        function()
    finally:
        sys.setprofile(None)
    return calls


def test_a_query_of_many_parameters_is_denied_before_any_is_examined() -> None:
    # Each parameter of a query-key config is normalized to catch smuggled spellings: a
    # 60 KB query of "&" was 130 ms of one worker's only thread, per request.
    policy = compile_policy(
        snapshot(
            secret("a", "key-a"),
            authconfig(
                "q",
                "keySources: [{query: k}]\nk8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}",
            ),
        )
    )
    route = {"config_id": "ns.q"}
    fewer = "&".join(f"p{i}=1" for i in range(MAX_QUERY_PARAMETERS - 1))
    assert isinstance(decide(policy, route, {}, f"/?{fewer}&k=key-a"), Allow)
    for flood in ("&" * 60_000, ";" * 60_000, "a=1&" * 15_000, "%&" * 30_000):
        path = f"/?k=key-a&{flood}"
        assert decide(policy, route, {}, path) == Deny(Reason.TOO_MANY_PARAMETERS, "ns.q")
        assert _python_calls(lambda p=path: decide(policy, route, {}, p)) < 100  # type: ignore[misc]


@pytest.mark.parametrize("flood", [";" * 60_000, ",;" * 30_000, "a=1; " * 12_000, "; \t" * 20_000])
def test_a_huge_cookie_header_is_searched_in_one_pass_not_cookie_by_cookie(
    policy: Policy, flood: str
) -> None:
    # Every request on a cookie-key config has its Cookie header searched; walking it
    # cookie by cookie cost 11 ms for 60 KB of ";", enough for 40 clients without a key
    # to make half of everyone else's Checks time out.
    route = {"config_id": "ns.cookies"}
    headers = {"cookie": flood}
    assert decide(policy, route, headers, "/") == Deny(Reason.MISSING, "ns.cookies", "the k cookie")
    assert _python_calls(lambda: decide(policy, route, headers, "/")) < 100
    found = decide(policy, route, {"cookie": f"{flood}k=key-a"}, "/")
    assert isinstance(found, Allow)
    assert found.identity == "a"


# decide ------------------------------------------------------------------------------------


def test_not_loaded_policy_denies() -> None:
    decision = decide(Policy(), ROUTE, {"x-key": "key-a"}, "/")
    assert decision == Deny(Reason.NOT_READY, "ns.cfg")


def test_no_config_and_unknown_config_deny(policy: Policy) -> None:
    no_default = Policy(configs=policy.configs, loaded=True)
    assert decide(no_default, {}, {"x-key": "key-a"}, "/") == Deny(Reason.NO_CONFIG, None)
    unknown = decide(policy, {"config_id": "ns.nope"}, {"x-key": "key-a"}, "/")
    assert unknown == Deny(Reason.UNKNOWN_CONFIG, "ns.nope")


def test_default_config_applies_when_route_names_none(policy: Policy) -> None:
    decision = decide(policy, {}, {"x-key": "key-a"}, "/")
    assert isinstance(decision, Allow)
    assert decision.config_id == "ns.cfg"


def test_missing_and_invalid_keys(policy: Policy) -> None:
    assert decide(policy, ROUTE, {}, "/") == Deny(Reason.MISSING, "ns.cfg", "the x-key header")
    assert decide(policy, ROUTE, {"x-key": "nope"}, "/").reason == Reason.INVALID  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("route", "headers"),
    [
        (ROUTE, {"x-key": "key-a"}),
        (ROUTE, {"x-key": "Bearer key-a", "x-org": "spoof"}),
        (ROUTE, {"x-key": "key-b"}),
        (ROUTE, {"x-key": "nope"}),
        ({}, {"x-key": "key-a"}),  # the default config
        ({"config_id": "ns.strict"}, {"x-key": "key-b"}),  # required metadata missing
        ({"config_id": "ns.strict"}, {"x-key": "key-a"}),
        (ROUTE, {"x-key": "key-a"} | {f"h{i}": "v" for i in range(99)}),  # too many headers
        (ROUTE | {deciding.ALLOWED_HEADERS: "x-key,x-request-id"}, {"x-key": "key-a"}),
        (ROUTE | {deciding.ALLOWED_HEADERS: "x-other"}, {"x-key": "key-a"}),  # key not listed
    ],
)
def test_decide_with_the_cache_key_decides_as_without_it(
    policy: Policy, route: dict[str, str], headers: dict[str, str]
) -> None:
    # The server computes the cache key first (config id and the key's digest); on a miss
    # it hands it to decide, which then neither resolves the config nor hashes again.
    keyed = deciding.cache_key(policy, route, headers, "")
    assert keyed is not None
    decision = decide(policy, route, headers, "/", keyed=keyed)
    assert decision == decide(policy, route, headers, "/")
    if isinstance(decision, Deny) and decision.reason is Reason.KEY_SOURCE_NOT_SENT:
        return  # the general path decides that one, keyed or not
    calls = _python_calls(lambda: decide(policy, route, headers, "/", keyed=keyed))
    assert _python_calls(lambda: decide(policy, route, headers, "/")) > calls


def test_a_cache_key_of_another_policy_is_not_trusted(policy: Policy) -> None:
    # decide ignores a `keyed` that names no config of its policy, or a config that is
    # not keyed by one header, or arrives before the policy is loaded: resolved afresh.
    headers = {"x-key": "key-a"}
    fresh = decide(policy, ROUTE, headers, "/")
    for other in (("ns.gone", b"\0" * 32), ("ns.cookies", b"\0" * 32)):
        assert decide(policy, ROUTE, headers, "/", keyed=other) == fresh
    keyed = deciding.cache_key(policy, ROUTE, headers, "")
    assert decide(Policy(), ROUTE, headers, "/", keyed=keyed) == Deny(Reason.NOT_READY, "ns.cfg")


def test_allow_sets_metadata_and_strips_key(policy: Policy) -> None:
    decision = decide(policy, ROUTE, {"x-key": "key-a", "x-org": "spoof"}, "/")
    assert decision == Allow(
        config_id="ns.cfg",
        identity="a",
        set_headers=(("x-org", "red"),),
        remove_headers=("x-key",),
        remove_query=(),
    )
    without_org = decide(policy, ROUTE, {"x-key": "key-b", "x-org": "spoof"}, "/")
    assert isinstance(without_org, Allow)
    assert without_org.remove_headers == ("x-org", "x-key")


def test_required_metadata(policy: Policy) -> None:
    route = {"config_id": "ns.strict"}
    assert isinstance(decide(policy, route, {"x-key": "key-a"}, "/"), Allow)
    assert decide(policy, route, {"x-key": "key-b"}, "/").reason == Reason.MISSING_METADATA  # type: ignore[union-attr]


def test_cookie_credential_is_cut_from_the_cookie_header(policy: Policy) -> None:
    route = {"config_id": "ns.cookies"}
    decision = decide(policy, route, {"cookie": "a=1; k=key-a"}, "/")
    assert isinstance(decision, Allow)
    assert decision.set_headers == (("cookie", "a=1"),)
    alone = decide(policy, route, {"cookie": "k=key-a"}, "/")
    assert isinstance(alone, Allow)
    assert alone.remove_headers == ("cookie",)


def test_every_config_entry_must_pass(policy: Policy) -> None:
    route = {"config_id": "ns.two"}
    both = decide(policy, route, {"x-key": "key-a", "x-partner": "key-b"}, "/")
    assert both == Allow(
        config_id="ns.two",
        identity="a",
        set_headers=(("x-org", "red"), ("x-partner-id", "b")),
        remove_headers=("x-key", "x-partner"),
        remove_query=(),
    )
    only_first = decide(policy, route, {"x-key": "key-a"}, "/")
    assert only_first == Deny(Reason.MISSING, "ns.two", "the x-partner header")
    swapped = decide(policy, route, {"x-key": "key-b", "x-partner": "key-a"}, "/")
    assert isinstance(swapped, Deny)
    assert swapped.reason == Reason.INVALID


OPTIONAL = """
mode: Optional
headerName: x-key
clientIdHeader: x-client
k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}
headersFromMetadataEntry: {x-org: {name: org}}
"""


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


def test_expired_key_is_denied_with_its_own_reason() -> None:
    policy = compile_policy(
        snapshot(secret("a", "key-a", expires_at="2030-01-01T00:00:00Z"), authconfig("cfg", REFS))
    )
    before = allowed(policy, {"x-key": "key-a"}, now=1_800_000_000.0)  # 2027
    assert isinstance(before, Allow)
    after = allowed(policy, {"x-key": "key-a"}, now=1_900_000_000.0)  # 2030
    assert isinstance(after, Deny)
    assert after.reason is Reason.EXPIRED


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


def test_boolean_expr_or() -> None:
    policy = expr_policy("teamkeys || partnerkeys")
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
    policy = expr_policy("teamkeys && !partnerkeys")
    assert isinstance(allowed(policy, {"x-team-key": "team-key"}), Allow)
    both = allowed(policy, {"x-team-key": "team-key", "x-partner-key": "partner-key"})
    assert isinstance(both, Deny)


def expr_policy(expr: str) -> Policy:
    return compile_policy(
        snapshot(
            secret("t", "team-key", labels={"kind": "team"}, org="red"),
            secret("p", "partner-key", labels={"kind": "partner"}),
            expr_config(expr),
        )
    )
