"""What an attacker can slip past Envoy and extauth to the upstream, tried through a real
Envoy (envoy/envoy.yaml as shipped) and an upstream that records the raw request line and
every header line it receives.

- The vanity key never reaches the upstream, whatever spelling of its query parameter
  Envoy forwards: extauth reads the parameter Envoy strips, and denies (400) a request
  that carries it twice or in a spelling Envoy would leave in; it is not in
  `x-envoy-original-path` after a prefix rewrite either.
- An injected identity header arrives once, with extauth's value, in every spelling a
  client can send it; underscore spellings (`x_org`) are refused with 400.
- A request whose headers plus the injected ones would pass Envoy's header limit is
  denied by extauth (431) and not counted as usage, instead of being counted and then
  failed by Envoy with a 500.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests import harness
from tests.builders import authconfig, secret
from tests.harness import request, wait_until

pytestmark = pytest.mark.e2e

KEY = "smuggle-key-7f3a"
KEY_2 = "smuggle-key-second"
RESOURCES = "---\n".join(
    [
        secret("smuggler", KEY, "tests", {"tier": "q"}, x_org="developers"),
        secret("smuggler-2", KEY_2, "tests", {"tier": "q"}, x_org="second"),
        authconfig(
            "query-auth",
            """
            keySources: [{header: x-api-key}, {query: api_key}, {cookie: session-key}]
            clientIdHeader: x-client-id
            k8sSecretApikeyStorage: {labelSelector: {tier: q}}
            headersFromMetadataEntry:
              x-org: {name: x-org}
            """,
            namespace="tests",
        ),
    ]
)


def _route(prefix: str, rewrite: str | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "upstream"}
    if rewrite:
        action["prefix_rewrite"] = rewrite
    return {
        "match": {"prefix": prefix},
        "route": action,
        "typed_per_filter_config": {
            "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": {"config_id": "tests.query-auth"}},
            }
        },
    }


@dataclass
class Stack:
    port: int
    upstream: Any
    extauth: harness.Extauth
    metrics_port: int
    envoy: harness.Envoy

    def raw(self, head: str) -> int:
        """Send `head` (request line and headers, CRLF-separated) as is; the status."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return int(data.split(b" ", 2)[1])

    def received(self) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = self.upstream.take()
        return seen


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("smuggling")
    config_dir = harness.config_dir(work, {"tests.yaml": RESOURCES}, authconfigs=True)
    metrics_port = harness.free_port()
    with harness.recording_upstream() as upstream:
        extauth = harness.Extauth(
            config_dir,
            work / "extauth.log",
            "--http-address",
            f"127.0.0.1:{metrics_port}",
            "--usage-label",
            "x-org",
        )

        def with_query_routes() -> tuple[dict[str, Any], int]:
            config, listen = harness.envoy_config(
                extauth=extauth.port, upstream=upstream.server_address[1], work=work
            )
            hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
            vhost["routes"] = [_route("/rewrite", "/v1/rewritten"), _route("/q")] + vhost["routes"]
            return config, listen

        with harness.serving(extauth, with_query_routes, work) as (envoy, listen):
            yield Stack(listen, upstream, extauth, metrics_port, envoy)


def _everything(seen: list[dict[str, Any]]) -> str:
    return repr(seen)


# The key in the query string ---------------------------------------------------------------


def test_plain_query_key_is_stripped_from_the_line_and_the_original_path(stack: Stack) -> None:
    stack.received()
    response = request(stack.port, f"/rewrite/x?model=m&api_key={KEY}&n=1")
    assert response.status == 200
    (seen,) = stack.received()
    assert seen["request_line"].startswith("GET /v1/rewritten/x?")
    assert "model=m" in seen["request_line"]
    original = [v for k, v in seen["headers"] if k == "x-envoy-original-path"]
    assert original
    assert original[0].startswith("/rewrite/x?")
    assert KEY not in _everything([seen])
    assert "api_key" not in _everything([seen])


SPELLINGS = [
    f"%61pi_key={KEY}",
    f"api%5Fkey={KEY}",
    f"api_key={KEY_2}&%61pi_key={KEY}",
    f"api_key={KEY_2}&api_key={KEY}",
    f"api_key={KEY}&api_key={KEY_2}",
    f"API_KEY={KEY}",
    f"Api_Key={KEY}",
    f"api.key={KEY}",
    f"api+key={KEY}",
    f"api%20key={KEY}",
    f"api_key[]={KEY}",
    f"api_key%5B%5D={KEY}",
    f"%2561pi_key={KEY}",
    f"x=1;api_key={KEY}",
    f"api_key={KEY_2};api_key={KEY}",
    f"+api_key={KEY}",
]


@pytest.mark.parametrize("route", ["/q", "/rewrite"])
@pytest.mark.parametrize("query", SPELLINGS)
def test_key_in_a_spelling_envoy_would_not_strip_is_denied(
    stack: Stack, route: str, query: str
) -> None:
    stack.received()
    response = request(stack.port, f"{route}?a=1&{query}")
    assert response.status == 400
    assert response.json()["error"] == "ambiguous_api_key"
    assert stack.received() == []


@pytest.mark.parametrize("query", SPELLINGS)
def test_key_in_header_does_not_carry_a_smuggled_query_key_upstream(
    stack: Stack, query: str
) -> None:
    # The header decides, but the query parameter is still there: denied all the same.
    stack.received()
    response = request(stack.port, f"/q?{query}", {"x-api-key": KEY_2})
    assert response.status == 400
    assert stack.received() == []


def test_unrelated_parameters_that_look_alike_pass(stack: Stack) -> None:
    stack.received()
    response = request(stack.port, f"/q?api_keys=1&my_api_key=2&api-key=3&api_key={KEY}")
    assert response.status == 200
    (seen,) = stack.received()
    assert KEY not in _everything([seen])
    assert "api_keys=1" in seen["request_line"]


@pytest.mark.parametrize("flood", ["&" * 50_000, "a=1;" * 12_000])
def test_a_query_of_thousands_of_parameters_is_refused(stack: Stack, flood: str) -> None:
    # Examining each of them cost extauth 130 ms per request: a few clients without a
    # key made everyone else's Checks time out (503).
    stack.received()
    response = request(stack.port, f"/q?api_key={KEY}&{flood}")
    assert response.status == 400
    assert response.json()["error"] == "too_many_query_parameters"
    assert stack.received() == []
    assert request(stack.port, f"/q?a=1&api_key={KEY}").status == 200


# The key in a cookie -----------------------------------------------------------------------


@pytest.mark.parametrize("header_key", [True, False], ids=["header-decides", "cookie-decides"])
def test_key_in_a_second_cookie_line_never_goes_upstream(stack: Stack, header_key: bool) -> None:
    # Envoy hands Check several Cookie lines merged with ","; each line is still a cookie.
    stack.received()
    extra = f"x-api-key: {KEY_2}\r\n" if header_key else ""
    status = stack.raw(
        f"GET /q HTTP/1.1\r\nHost: h\r\n{extra}Cookie: a=1\r\n"
        f"Cookie: session-key={KEY}; b=2\r\nConnection: close"
    )
    assert status == 200
    (seen,) = stack.received()
    assert [v for k, v in seen["headers"] if k == "cookie"] == ["a=1; b=2"]
    assert KEY not in _everything([seen])
    expected = "smuggler-2" if header_key else "smuggler"
    assert [v for k, v in seen["headers"] if k == "x-client-id"] == [expected]


# Injected headers in every spelling -------------------------------------------------------


@pytest.mark.parametrize("name", ["x_org", "X_Org", "x_client_id", "x-org_"])
def test_underscore_spelling_of_an_injected_header_is_refused(stack: Stack, name: str) -> None:
    stack.received()
    status = stack.raw(
        f"GET /q HTTP/1.1\r\nHost: h\r\nx-api-key: {KEY}\r\n{name}: admins\r\nConnection: close"
    )
    assert status == 400
    assert stack.received() == []


@pytest.mark.parametrize(
    "spoof",
    [
        "X-Org: admins",
        "X-ORG: admins",
        "x-org: admins\r\nx-org: root",
        "x-org: admins\r\nX-Org: root",
        "x-org: admins, root",
        "X-Client-Id: someone\r\nx-client-id: other",
    ],
)
def test_injected_header_arrives_once_with_the_injected_value(stack: Stack, spoof: str) -> None:
    stack.received()
    status = stack.raw(
        f"GET /q HTTP/1.1\r\nHost: h\r\nx-api-key: {KEY}\r\n{spoof}\r\nConnection: close"
    )
    assert status == 200
    (seen,) = stack.received()
    headers = [tuple(pair) for pair in seen["headers"]]
    assert [v for k, v in headers if k == "x-org"] == ["developers"]
    assert [v for k, v in headers if k == "x-client-id"] == ["smuggler"]
    assert "admins" not in _everything([seen])
    assert "root" not in _everything([seen])


def test_folded_header_line_stays_in_the_header_it_continues(stack: Stack) -> None:
    # Envoy unfolds obs-fold into the previous value: no header of its own comes out.
    stack.received()
    status = stack.raw(
        f"GET /q HTTP/1.1\r\nHost: h\r\nx-api-key: {KEY}\r\nx-note: a\r\n x-org: admins\r\n"
        "Connection: close"
    )
    assert status in (200, 400)
    for seen in stack.received():
        assert [v for k, v in seen["headers"] if k == "x-org"] == ["developers"]


# Usage counts what was served ------------------------------------------------------------


def _usage(stack: Stack) -> float:
    text = request(stack.metrics_port, "/metrics").body.decode()
    wanted = 'extauth_usage_total{config="tests.query-auth",team="developers"}'
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _with_headers(count: int) -> str:
    extra = "".join(f"x-h{i}: v\r\n" for i in range(count))
    return f"GET /q HTTP/1.1\r\nHost: h\r\nx-api-key: {KEY}\r\n{extra}Connection: close"


def test_93_headers_and_a_valid_key_is_denied_and_not_counted(stack: Stack) -> None:
    before = _usage(stack)
    stack.received()
    assert stack.raw(_with_headers(93)) == 431
    assert stack.received() == []
    assert _usage(stack) == before
    assert stack.raw(_with_headers(10)) == 200
    assert _usage(stack) == before + 1


def test_no_header_count_gets_a_500_or_an_uncounted_allow(stack: Stack) -> None:
    # Around the limit, every answer is either served (and counted) or denied by extauth.
    for count in range(80, 100):
        before = _usage(stack)
        stack.received()
        status = stack.raw(_with_headers(count))
        served = len(stack.received())
        assert status in (200, 431), (count, status)
        assert served == (1 if status == 200 else 0)
        assert _usage(stack) == before + served, count


# Logs record decisions ---------------------------------------------------------------------


def _access_log(stack: Stack, marker: str) -> dict[str, Any]:
    def entry() -> dict[str, Any] | None:
        for line in stack.envoy.log_path.read_text().splitlines():
            if line.startswith("{") and marker in line:
                found: dict[str, Any] = json.loads(line)
                return found
        return None

    return wait_until(entry, 10, f"Envoy's access log line for {marker}")


def test_access_log_takes_the_team_from_extauth_never_from_the_client(stack: Stack) -> None:
    denied = request(stack.port, "/q/denied-spoof", {"x-api-key": "wrong", "x-org": "admins"})
    assert denied.status == 401
    allowed = request(stack.port, "/q/allowed-spoof", {"x-api-key": KEY, "x-org": "admins"})
    assert allowed.status == 200
    denied_line = _access_log(stack, "/q/denied-spoof")
    assert denied_line["x_org"] in (None, "-", "")
    assert denied_line["identity"] in (None, "-", "")
    assert denied_line["authz_reason"] == "invalid_api_key"
    allowed_line = _access_log(stack, "/q/allowed-spoof")
    assert allowed_line["x_org"] == "developers"
    assert allowed_line["identity"] == "smuggler"
    assert "admins" not in stack.envoy.log_path.read_text()


def test_access_log_cuts_and_escapes_what_the_client_chose(stack: Stack) -> None:
    request_id = 'r"\\' + "r" * 5000
    response = request(
        stack.port, "/q/long-" + "p" * 3000, {"x-api-key": KEY, "x-request-id": request_id}
    )
    assert response.status == 200
    line = _access_log(stack, "/q/long-ppp")
    assert len(line["path"]) <= 256
    assert len(line["request_id"]) <= 64
    assert len(json.dumps(line)) < 1000


def test_client_cannot_forge_the_logged_path_request_id_or_envoy_headers(stack: Stack) -> None:
    stack.received()
    response = request(
        stack.port,
        "/q/real-path",
        {
            "x-api-key": KEY,
            "x-request-id": "forged-request-id",
            "x-envoy-original-path": "/forged-path",
            "x-envoy-upstream-rq-timeout-ms": "1",
        },
    )
    assert response.status == 200
    (seen,) = stack.received()
    names = [k for k, _ in seen["headers"]]
    assert "x-envoy-original-path" not in names
    assert "x-envoy-upstream-rq-timeout-ms" not in names
    assert "forged-request-id" not in _everything([seen])
    line = _access_log(stack, "/q/real-path")
    assert line["request_id"] != "forged-request-id"
    assert "forged" not in stack.envoy.log_path.read_text()
