"""Decisions as CheckResponse bytes, and the one cache of finished allows."""

from __future__ import annotations

import json
import time

import pytest

from extauth import deciding, hosts, responses
from extauth.building import PolicyBuilder, PolicyHolder
from extauth.changes import Change, Removal
from extauth.decisions import Allow, Deny, Reason
from extauth.responses import CACHE_LIMIT, HOST_LIMIT, AllowCache
from extauth.server import AuthorizationService
from extauth.wire import ext_authz_pb2 as pb
from tests.builders import REFS, authconfig, check_at_once, secret, snapshot


@pytest.mark.parametrize(
    ("reason", "http", "grpc"),
    [
        (Reason.MISSING, 401, 16),
        (Reason.INVALID, 401, 16),
        (Reason.MISSING_METADATA, 403, 7),
        (Reason.NO_CONFIG, 403, 7),
        (Reason.UNKNOWN_CONFIG, 403, 7),
        (Reason.NOT_READY, 503, 14),
        (Reason.INTERNAL, 500, 13),
        (Reason.AMBIGUOUS, 400, 3),
        (Reason.TOO_MANY_HEADERS, 431, 8),
        (Reason.TOO_MANY_PARAMETERS, 400, 3),
    ],
)
def test_deny_responses(reason: Reason, http: int, grpc: int) -> None:
    response = pb.CheckResponse.FromString(responses.encode(Deny(reason, "ns.cfg", "the h header")))
    assert response.status.code == grpc
    assert response.denied_response.status.code == http
    body = json.loads(response.denied_response.body)
    assert body["error"] == reason.value
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["x-ext-auth-reason"] == reason.value
    assert headers["content-type"] == "application/json"
    assert ("www-authenticate" in headers) == (http == 401)


def test_deny_bytes_are_built_once() -> None:
    first = responses.deny_bytes(Reason.INVALID, "ns.cfg", "")
    assert responses.deny_bytes(Reason.INVALID, "ns.cfg", "") is first


def test_allow_response_overwrites_and_removes() -> None:
    raw = responses.encode(Allow("ns.cfg", "a", (("x-org", "red"),), ("x-key",), ("k",)))
    response = pb.CheckResponse.FromString(raw)
    assert response.status.code == 0
    (option,) = response.ok_response.headers
    assert option.append.value is False
    assert option.HasField("append")
    assert option.append_action == pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert list(response.ok_response.headers_to_remove) == ["x-key"]
    assert list(response.ok_response.query_parameters_to_remove) == ["k"]


def test_an_allow_is_built_afresh_and_cached_only_by_the_cache() -> None:
    allow = Allow("ns.cfg", "a", (("x-org", "red"),), ("x-key",), ())
    assert responses.encode(allow) == responses.encode(allow)
    assert responses.encode(allow) is not responses.encode(allow)  # no hidden table
    cache = AllowCache(object())
    key = ("ns.cfg", b"d" * 32)
    assert cache.get(key) is None
    encoded = responses.encode(allow)
    cache.put(key, allow, encoded)
    assert cache.get(key) == (allow, encoded)
    assert cache.get(("ns.other", b"d" * 32)) is None


def test_a_cached_allow_ends_when_its_key_expires() -> None:
    cache = AllowCache(object())
    soon = Allow("ns.cfg", "a", (), (), (), expires_at=time.time() + 3600)
    gone = Allow("ns.cfg", "b", (), (), (), expires_at=time.time() - 1)
    cache.put(("ns.cfg", b"a"), soon, b"a")
    cache.put(("ns.cfg", b"b"), gone, b"b")
    assert cache.get(("ns.cfg", b"a")) == (soon, b"a")
    assert cache.get(("ns.cfg", b"b")) is None


def test_the_cache_is_bounded() -> None:
    cache = AllowCache(object())
    allow = Allow("ns.cfg", "a", (), (), ())
    for i in range(CACHE_LIMIT + 10):
        cache.put(("ns.cfg", i.to_bytes(4, "big")), allow, b"x")
    assert len(cache) <= CACHE_LIMIT


def test_the_hosts_config_ids_answer_as_the_table_and_stay_bounded() -> None:
    table, _ = hosts.build([(1, "w", ["*.a.com"]), (2, "e", ["x.a.com:8080"])])
    cache = AllowCache(object())
    for _ in range(2):  # looked up, then remembered
        assert cache.config_of_host(table, "y.a.com") == "w"
        assert cache.config_of_host(table, "x.a.com:8080") == "e"
        assert cache.config_of_host(table, "x.b.com") is None
    # Hosts come from clients: a flood of distinct ones never grows it past its limit.
    for i in range(HOST_LIMIT * 2 + 7):
        assert cache.config_of_host(table, f"h{i}.a.com") == "w"
    assert len(cache._hosts) <= HOST_LIMIT
    long_host = "a" * 300 + ".a.com"
    assert cache.config_of_host(table, long_host) == "w"
    assert long_host not in cache._hosts


WITH_ORG = REFS + "\nheadersFromMetadataEntry: {x-org: {name: org}}"


def _check(service: AuthorizationService, key: str, extra: int = 0) -> pb.CheckResponse:
    request = pb.CheckRequest()
    request.attributes.context_extensions["config_id"] = "ns.cfg"
    http = request.attributes.request.http
    http.headers["x-key"] = key
    for i in range(extra):
        http.headers[f"x-extra-{i}"] = "1"
    http.path = "/"
    return check_at_once(service, request)


def test_the_server_serves_cached_allows_for_its_policy_only() -> None:
    """A revoked or edited key never gets the old policy's finished answer; a cached
    allow that would push the request past Envoy's header limit is still denied."""
    holder = PolicyHolder()
    holder.update([snapshot(secret("a", "key-a", org="red"), authconfig("cfg", WITH_ORG))])
    service = AuthorizationService(holder)
    first = _check(service, "key-a")
    assert first.status.code == 0
    assert {h.header.key: h.header.value for h in first.ok_response.headers} == {"x-org": "red"}
    assert _check(service, "key-a").SerializeToString() == first.SerializeToString()
    too_many = _check(service, "key-a", extra=deciding.MAX_REQUEST_HEADERS)
    assert too_many.denied_response.status.code == 431
    holder.update([snapshot(secret("a", "key-a", org="blue"))])  # edited
    edited = _check(service, "key-a")
    headers = {h.header.key: h.header.value for h in edited.ok_response.headers}
    assert headers["x-org"] == "blue"
    holder.update([Change(removed=(Removal("Secret", ("ns", "a"), "t.yaml"),))])
    assert _check(service, "key-a").denied_response.status.code == 401


def test_deciding_writes_nowhere() -> None:
    """decide is pure: deciding twice leaves the policy as it was, and the same key
    under the same policy gets equal, separately built answers."""
    builder = PolicyBuilder()
    builder.apply(snapshot(secret("a", "key-a", org="red"), authconfig("cfg", REFS)))
    policy = builder.build()
    before = (dict(policy.keys), dict(policy.configs))
    route, headers = {"config_id": "ns.cfg"}, {"x-key": "key-a"}
    first = deciding.decide(policy, route, headers, "/")
    second = deciding.decide(policy, route, headers, "/")
    assert isinstance(first, Allow)
    assert first == second
    assert first is not second
    assert (dict(policy.keys), dict(policy.configs)) == before
    assert isinstance(deciding.decide(policy, route, {"x-key": "nope"}, "/"), Deny)
