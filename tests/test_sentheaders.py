"""Envoy sends only what Check reads: the list the generated configs carry, what extauth
does with a filtered header map, and how a key source outside the list is caught (at
Check time, on /readyz and the status page, and by `extauth validate --envoy-config`)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from extauth import cli, deciding, envoyconf, sentheaders, tracing
from extauth.building import PolicyHolder
from extauth.decisions import Allow, Deny, Reason
from extauth.server import AuthorizationService
from extauth.wire import ext_authz_pb2 as pb
from tests.builders import authconfig, check_at_once, secret, snapshot
from tests.harness import ROOT

KEY = "sent-headers-key-0123456789"
# Odd spellings: a header name in capitals, a cookie and a query source beside it.
MIXED = (
    "keySources: [{header: X-Team-Key}, {query: api_key}, {cookie: session}]\n"
    "clientIdHeader: x-client-id\n"
    "k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}\n"
    "headersFromMetadataEntry: {x-org: {name: org}, x-plan: {name: plan}}"
)
PLAIN = "headerName: Vanity-Auth\nk8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}"


def _holder(*configs: str) -> PolicyHolder:
    holder = PolicyHolder()
    holder.update(
        [
            snapshot(
                secret("a", KEY, org="red", plan="gold"),
                *(authconfig(f"c{i}", body) for i, body in enumerate(configs)),
            )
        ]
    )
    return holder


def test_the_list_is_every_key_header_lower_case_plus_what_logs_and_traces_read() -> None:
    policy = _holder(MIXED, PLAIN).current
    sent = sentheaders.sent_headers(policy.configs.values())
    assert set(sent.names) == {"x-team-key", "cookie", "vanity-auth", *sentheaders.ALWAYS_SENT}
    assert "api_key" not in sent.names  # a query source reads the path, always sent
    # Whatever tracing and the decision log read is sent.
    for name in (*tracing._ALL_TRACE_HEADERS, "x-request-id"):
        assert name in sent.names or name.startswith(sent.prefixes), name
    # x-org, x-plan, x-client-id and the rewritten cookie: four to keep free.
    assert sent.reserve == 4
    assert sent.limit == deciding.MAX_REQUEST_HEADERS - 4
    assert sent.listed().endswith(",x-b3-*")


def _request(listed: str | None, headers: dict[str, str], config: str = "ns.c0") -> pb.CheckRequest:
    request = pb.CheckRequest()
    request.attributes.context_extensions["config_id"] = config
    if listed is not None:
        request.attributes.context_extensions[deciding.ALLOWED_HEADERS] = listed
    http = request.attributes.request.http
    http.headers.update(headers)
    http.path = "/"
    return request


@pytest.mark.parametrize(
    ("listed", "headers", "reason"),
    [
        # The list names the header in another case: still sent.
        ("X-Team-Key,x-request-id", {"x-team-key": KEY}, None),
        # The key header is missing from the list: a mismatch, not a missing key.
        ("x-request-id,cookie", {}, Reason.KEY_SOURCE_NOT_SENT),
        # A cookie source needs `cookie` in the list, even when the header source is there.
        ("x-team-key", {"x-team-key": KEY}, Reason.KEY_SOURCE_NOT_SENT),
        # A prefix entry covers a header it begins.
        ("x-team-*,cookie", {"x-team-key": KEY}, None),
        # Not filtered: no list, no mismatch; a missing key is a missing key.
        (None, {}, Reason.MISSING),
    ],
)
def test_a_key_source_outside_the_routes_list_is_denied_as_such(
    listed: str | None, headers: dict[str, str], reason: Reason | None
) -> None:
    policy = _holder(MIXED).current
    if reason is None:
        headers = {**headers}
        listed = f"{listed},cookie" if listed and "cookie" not in listed else listed
    decision = deciding.decide(
        policy,
        {"config_id": "ns.c0", **({deciding.ALLOWED_HEADERS: listed} if listed else {})},
        headers,
        "/",
    )
    if reason is None:
        assert isinstance(decision, Allow)
    else:
        assert isinstance(decision, Deny)
        assert decision.reason is reason


def test_a_query_source_needs_no_header_and_the_filtered_map_is_not_counted() -> None:
    query_only = "keySources: [{query: k}]\nk8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}"
    policy = _holder(query_only, PLAIN).current
    listed = "x-request-id"
    assert isinstance(
        deciding.decide(
            policy, {"config_id": "ns.c0", "allowed_headers": listed}, {}, f"/?k={KEY}"
        ),
        Allow,
    )
    # Past the limit on a filtered map: Envoy's guard counted the real headers already.
    many = {f"x-{i}": "v" for i in range(deciding.MAX_REQUEST_HEADERS)} | {"vanity-auth": KEY}
    route = {"config_id": "ns.c1", "allowed_headers": "vanity-auth"}
    assert isinstance(deciding.decide(policy, route, many, "/"), Allow)
    # Unfiltered, the same map is counted and denied as before.
    unfiltered = deciding.decide(policy, {"config_id": "ns.c1"}, many, "/")
    assert isinstance(unfiltered, Deny)
    assert unfiltered.reason is Reason.TOO_MANY_HEADERS


def test_the_mismatch_is_a_500_and_a_problem_naming_config_and_header_never_the_key() -> None:
    holder = _holder(MIXED)
    service = AuthorizationService(holder)
    answer = check_at_once(service, _request("x-request-id", {"x-team-key": KEY}))
    assert answer.denied_response.status.code == 500
    assert "key_source_not_sent" in answer.denied_response.body
    (problem,) = service.unsent_problems()
    assert "ns.c0" in problem
    assert "'x-team-key'" in problem
    assert KEY not in problem
    # Seen again: still one problem. A new policy (the AuthConfig fixed) clears it.
    check_at_once(service, _request("x-request-id", {"x-team-key": KEY}))
    assert len(service.unsent_problems()) == 1
    holder.update([snapshot(authconfig("c0", PLAIN))])
    assert service.unsent_problems() == []


def _generated() -> dict[str, object]:
    config = envoyconf.build(envoyconf.LOCAL, "file")
    return copy.deepcopy(config)


def test_the_generated_config_sends_what_its_authconfigs_read() -> None:
    config = _generated()
    policy = _holder(PLAIN).current
    assert sentheaders.envoy_problems(config, policy) == []
    text = yaml.safe_dump(config)
    assert "allowed_headers: b3,traceparent,tracestate,vanity-auth,x-request-id,x-b3-*" in text
    # An AuthConfig added later, reading other headers and injecting more: reported.
    problems = sentheaders.envoy_problems(config, _holder(PLAIN, MIXED).current)
    assert len(problems) == 3, problems
    assert any("'x-team-key'" in p and "ns.c1" in p for p in problems)
    assert any("'cookie'" in p for p in problems)
    assert any("injects up to 4 headers" in p for p in problems)
    # Matchers as Envoy reads them: ignore_case, prefix, regex.
    for matcher in (
        {"exact": "X-TEAM-KEY", "ignore_case": True},
        {"prefix": "x-team"},
        {"safe_regex": {"regex": "x-t[a-z]+-key"}},
    ):
        patched = _generated()
        filters = patched["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]  # type: ignore[index]
        for f in filters[0]["typed_config"]["http_filters"]:
            if f["name"] == envoyconf.EXT_AUTHZ:
                f["typed_config"]["allowed_headers"]["patterns"] += [matcher, {"exact": "cookie"}]
        found = sentheaders.envoy_problems(patched, _holder(PLAIN, MIXED).current)
        assert not any("'x-team-key'" in p for p in found), (matcher, found)


def test_the_unfiltered_configs_have_no_list_and_no_guard() -> None:
    for relative in ("envoy/envoy-istio.yaml", "deploy/kubernetes/envoy-config/envoy.yaml"):
        text = (ROOT / relative).read_text()
        assert "allowed_headers" not in text
        assert sentheaders.GUARD_NAME not in text
    config = _generated()
    envoyconf.filter_headers(config, None)
    text = yaml.safe_dump(config)
    assert "allowed_headers" not in text
    assert sentheaders.GUARD_NAME not in text


def _write(tmp_path: Path, extra: str | None) -> Path:
    directory = tmp_path / "configs"
    directory.mkdir(parents=True)
    for source in (ROOT / "authconfigs").iterdir():
        (directory / source.name).write_text(source.read_text())
    if extra is not None:
        (directory / "late.yaml").write_text(authconfig("late", extra, namespace="tests"))
    return directory


def test_validate_with_the_envoy_config_reports_a_later_key_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envoy = ROOT / "envoy" / "envoy.yaml"
    assert cli.main(["validate", "--envoy-config", str(envoy), str(_write(tmp_path, None))]) == 0
    late = _write(tmp_path / "b", MIXED.replace("name: a", "name: team1-apikey"))
    capsys.readouterr()
    assert cli.main(["validate", "--envoy-config", str(envoy), str(late)]) == 1
    out = capsys.readouterr().out
    assert "'x-team-key'" in out
    assert "tests.late" in out
    assert KEY not in out
    # A broken, hostile or missing Envoy config is a problem, never a crash.
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
    )
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5_000 + "]" * 5_000)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe not utf-8")
    expected = {
        # Aliases shared 8^8 times over: walked once each, and no ext_authz filter in it.
        bomb: (0, ""),
        deep: (1, "nested more than"),
        binary: (1, "not a YAML Envoy config"),
        tmp_path / "absent.yaml": (1, "cannot read the Envoy config"),
    }
    for path, (code, said) in expected.items():
        capsys.readouterr()
        argv = ["validate", "--envoy-config", str(path), str(_write(tmp_path / path.stem, None))]
        assert cli.main(argv) == code, path
        assert said in capsys.readouterr().out


def test_envoy_config_for_workers_lists_the_given_authconfigs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    late = _write(tmp_path, MIXED.replace("name: a", "name: team1-apikey"))
    capsys.readouterr()
    argv = ["envoy-config", "--workers", "2", "--authconfigs", str(late)]
    assert cli.main(argv) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert sentheaders.envoy_problems(config, _holder(PLAIN, MIXED).current) == []
    # Installed without the repository (the container image): no list made from nothing.
    monkeypatch.setattr(envoyconf, "ROOT", tmp_path / "site-packages")
    assert cli.main(["envoy-config", "--workers", "2"]) == 2
    assert "--authconfigs DIR" in capsys.readouterr().err
    # An unfiltered shape needs none.
    assert cli.main(["envoy-config", "--like", "envoy/envoy-istio.yaml", "--workers", "2"]) == 0
