"""Behind each gateway's shape, through one real Envoy: extauth picks the right AuthConfig.

One Envoy, one listener per committed config: envoy/envoy-istio.yaml (Istio's CUSTOM
authorization: one ext_authz filter, no per-route context, so the AuthConfig is chosen by
the request's host, `spec.hosts`) and tests/e2e/gateways/*.yaml (what Envoy Gateway and
kgateway generate, and what agentgateway sends: a `config_id` context extension per
route). Two hosts bound to two AuthConfigs with different key sources, keys and injected
headers, a wildcard host, and hosts no AuthConfig claims."""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests import harness
from tests.harness import ROOT, Response, request

pytestmark = pytest.mark.e2e

RED_KEY, BLUE_KEY, WILD_KEY = "red-key-1c9e", "blue-key-77d0", "wild-key-5a21"
RESOURCES = f"""
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {{name: red-team, namespace: gateways}}
stringData: {{api-key: {RED_KEY}, team: red}}
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {{name: blue-team, namespace: gateways}}
stringData: {{api-key: {BLUE_KEY}, plan: gold}}
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {{name: wild-team, namespace: gateways}}
stringData: {{api-key: {WILD_KEY}, team: wild}}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {{name: red, namespace: gateways}}
spec:
  hosts: [red.example.com]
  configs:
    - apiKeyAuth:
        headerName: x-red-key
        k8sSecretApikeyStorage: {{apiKeySecretRefs: [{{name: red-team}}]}}
        headersFromMetadataEntry: {{x-team: {{name: team}}}}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {{name: blue, namespace: gateways}}
spec:
  # The port-specific pattern beats red's `red.example.com` for a host that carries it.
  hosts: [blue.example.com, "red.example.com:8443"]
  configs:
    - apiKeyAuth:
        keySources: [{{header: x-blue-key}}, {{query: key}}]
        k8sSecretApikeyStorage: {{apiKeySecretRefs: [{{name: blue-team}}]}}
        headersFromMetadataEntry: {{x-plan: {{name: plan}}}}
        clientIdHeader: x-client-id
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {{name: api, namespace: gateways}}
spec:
  hosts: [api.wild.example.com]
  configs:
    - apiKeyAuth:
        headerName: x-api-key
        k8sSecretApikeyStorage: {{apiKeySecretRefs: [{{name: red-team}}]}}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {{name: wild, namespace: gateways}}
spec:
  hosts: ["*.wild.example.com", "*.wild.example.com:443"]
  configs:
    - apiKeyAuth:
        headerName: api-key
        k8sSecretApikeyStorage: {{apiKeySecretRefs: [{{name: wild-team}}]}}
        headersFromMetadataEntry: {{x-team: {{name: team}}}}
"""
SHAPES = {
    "istio": "envoy/envoy-istio.yaml",
    "envoy-gateway": "tests/e2e/gateways/envoy-gateway.yaml",
    "kgateway": "tests/e2e/gateways/kgateway.yaml",
    "agentgateway": "tests/e2e/gateways/agentgateway.yaml",
}
CONTEXT_SHAPES = ["envoy-gateway", "kgateway", "agentgateway"]


@dataclass
class Stack:
    ports: dict[str, int]
    upstream: Any
    extauth: harness.Extauth

    def send(self, shape: str, host: str, headers: dict[str, str], path: str = "/v1/x") -> Response:
        self.upstream.received.clear()
        return request(self.ports[shape], path, {"host": host, **headers})

    def upstream_saw(self) -> list[dict[str, list[str]]]:
        seen = []
        for received in self.upstream.received:
            headers: dict[str, list[str]] = {}
            for name, value in received["headers"]:
                headers.setdefault(name, []).append(value)
            seen.append(headers)
        return seen


def _tag_virtual_hosts(listener: dict[str, Any]) -> None:
    """Each virtual host tells the upstream its name (x-vhost), so a test sees where Envoy
    routed a request, to compare with the AuthConfig extauth chose for it."""
    (chain,) = listener["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    vhosts = manager["route_config"]["virtual_hosts"]
    # An exact host under the wildcard, as Istio writes it (`host`, `host:*`): Envoy sends
    # `api.wild.example.com:443` to `*.wild.example.com:443` (suffix wildcards come before
    # prefix ones), and extauth must judge it by the wildcard's AuthConfig too.
    vhosts.insert(0, copy.deepcopy(vhosts[0]))
    vhosts[0]["name"] = "api.wild.example.com"
    vhosts[0]["domains"] = ["api.wild.example.com", "api.wild.example.com:*"]
    for vhost in vhosts:
        vhost["request_headers_to_add"] = [
            {
                "header": {"key": "x-vhost", "value": vhost["name"]},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]


def _merged(extauth: int, upstream: int, work: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """One config holding every shape's listener, as committed, each on a port of its own."""
    config, _ = harness.envoy_config(
        extauth=extauth, upstream=upstream, work=work, source=ROOT / SHAPES["istio"]
    )
    listeners = []
    ports: dict[str, int] = {}
    for shape, relative in SHAPES.items():
        source = harness.load_envoy_config(ROOT / relative)
        (listener,) = copy.deepcopy(source["static_resources"]["listeners"])
        assert (
            source["static_resources"]["clusters"]
            == harness.load_envoy_config(ROOT / SHAPES["agentgateway"])["static_resources"][
                "clusters"
            ]
        ), "the shapes share their clusters"
        if shape == "istio":
            (listener,) = config["static_resources"]["listeners"]  # its secrets relocated
            _tag_virtual_hosts(listener)
        listener["name"] = shape
        ports[shape] = harness.free_port()
        listener["address"]["socket_address"]["port_value"] = ports[shape]
        listeners.append(listener)
    config["static_resources"]["listeners"] = listeners
    return config, ports


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("gateways")
    config_dir = harness.config_dir(work, {"gateways.yaml": RESOURCES})
    with harness.recording_upstream() as upstream:
        extauth = harness.Extauth(config_dir, work / "extauth.log")

        def merged() -> tuple[dict[str, Any], dict[str, int]]:
            return _merged(extauth.port, upstream.server_address[1], work)

        with harness.serving(extauth, merged, work) as (envoy, ports):
            _wait_healthy(envoy)
            yield Stack(ports, upstream, extauth)


def _wait_healthy(envoy: harness.Envoy) -> None:
    """Envoy is ready once its listeners are; on a loaded machine its first gRPC health
    check of extauth may still time out, and a request then gets 503 until the next."""

    def healthy() -> bool | None:
        stats = harness.request(envoy.admin_port, "/stats?filter=health_check.healthy").body
        counts = [int(line.rsplit(b":", 1)[1]) for line in stats.splitlines() if b":" in line]
        return True if counts and min(counts) >= 1 else None

    harness.wait_until(healthy, 30, "Envoy to see extauth healthy")


ALL = list(SHAPES)


@pytest.mark.parametrize("shape", ALL)
def test_each_host_gets_its_authconfig_keys_and_headers(stack: Stack, shape: str) -> None:
    red = stack.send(shape, "red.example.com", {"x-red-key": RED_KEY, "x-team": "admins"})
    assert red.status == 200
    (seen,) = stack.upstream_saw()
    assert seen["x-team"] == ["red"]  # red's metadata, never the client's
    assert "x-red-key" not in seen
    blue = stack.send(shape, "blue.example.com", {"x-blue-key": BLUE_KEY, "x-team": "admins"})
    assert blue.status == 200
    (seen,) = stack.upstream_saw()
    assert seen["x-plan"] == ["gold"]
    assert seen["x-client-id"] == ["blue-team"]
    assert "x-blue-key" not in seen
    assert seen.get("x-team") == ["admins"]  # blue injects no x-team: the client's passes
    # Blue reads the key from the query as well; red does not.
    assert stack.send(shape, "blue.example.com", {}, f"/v1/x?key={BLUE_KEY}").status == 200
    assert stack.send(shape, "red.example.com", {}, f"/v1/x?key={RED_KEY}").status == 401


@pytest.mark.parametrize("shape", ALL)
def test_a_key_works_only_on_its_own_host(stack: Stack, shape: str) -> None:
    for host, headers in [
        ("red.example.com", {"x-red-key": BLUE_KEY}),
        ("red.example.com", {"x-blue-key": BLUE_KEY}),
        ("blue.example.com", {"x-blue-key": RED_KEY}),
        ("blue.example.com", {"x-red-key": RED_KEY}),
        ("a.wild.example.com", {"api-key": RED_KEY}),
    ]:
        denied = stack.send(shape, host, headers)
        assert denied.status == 401, (host, headers)
        assert stack.upstream_saw() == []


@pytest.mark.parametrize("shape", ALL)
def test_a_wildcard_host(stack: Stack, shape: str) -> None:
    # Envoy's domains hold one `*`: a gateway's `*.wild.example.com` takes no port, and
    # neither does extauth's (Istio's catch-all takes `x.wild.example.com:8080`, and
    # extauth finds no AuthConfig for it: test_istio_host_spellings_...).
    for host in ["a.wild.example.com", "x.y.wild.example.com", "A.Wild.Example.COM"]:
        allowed = stack.send(shape, host, {"api-key": WILD_KEY})
        assert allowed.status == 200, host
        (seen,) = stack.upstream_saw()
        assert seen["x-team"] == ["wild"]


def test_istio_denies_hosts_no_authconfig_claims(stack: Stack) -> None:
    """Istio's catch-all virtual host still asks extauth, which finds no AuthConfig for
    the host and, without --default-config, denies."""
    for host in ("other.example.com", "wild.example.com", "red.example.com.evil.com", "[::1]"):
        for headers in ({"x-red-key": RED_KEY}, {"api-key": WILD_KEY}, {}):
            denied = stack.send("istio", host, headers)
            assert denied.status == 403, host
            assert denied.json()["error"] == "no_auth_config"
            assert stack.upstream_saw() == []


def test_istio_host_and_port_first(stack: Stack) -> None:
    """`red.example.com:8443` is blue's pattern: with that port, blue's key, not red's."""
    assert stack.send("istio", "red.example.com:8443", {"x-red-key": RED_KEY}).status == 401
    assert stack.send("istio", "red.example.com:8443", {"x-blue-key": BLUE_KEY}).status == 200
    assert stack.send("istio", "red.example.com:9000", {"x-red-key": RED_KEY}).status == 200


@pytest.mark.parametrize("shape", CONTEXT_SHAPES)
def test_the_context_extension_wins_over_hosts(stack: Stack, shape: str) -> None:
    """The same host and port, through a gateway that names the AuthConfig: red's route
    sends config_id gateways.red, which beats blue's `red.example.com:8443`."""
    assert stack.send(shape, "red.example.com:8443", {"x-red-key": RED_KEY}).status == 200
    assert stack.send(shape, "red.example.com:8443", {"x-blue-key": BLUE_KEY}).status == 401


@pytest.mark.parametrize("shape", CONTEXT_SHAPES)
def test_hosts_without_a_route_never_reach_the_upstream(stack: Stack, shape: str) -> None:
    assert stack.send(shape, "other.example.com", {"x-red-key": RED_KEY}).status == 404
    assert stack.upstream_saw() == []


def test_keys_never_reach_the_log(stack: Stack) -> None:
    log = stack.extauth.log()
    for key in (RED_KEY, BLUE_KEY, WILD_KEY):
        assert key not in log


KEY_HEADERS = {
    "red": {"x-red-key": RED_KEY},
    "blue": {"x-blue-key": BLUE_KEY},
    "wild": {"api-key": WILD_KEY},
    "api": {"x-api-key": RED_KEY},
}
# The AuthConfig each of the Istio shape's virtual hosts is meant to be guarded by; its
# catch-all by none (there is no --default-config here).
GUARD = {
    "red.example.com": "red",
    "blue.example.com": "blue",
    "wildcard.wild.example.com": "wild",
    "api.wild.example.com": "api",
}


def _raw(port: int, head: str) -> int:
    """Status of a request written byte for byte (absolute-form targets, which http.client
    does not send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.encode("latin-1") + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


ODD_HOSTS = [
    # Envoy matches a virtual host's domains literally (ASCII case aside): a trailing dot or
    # a port its domains do not list routes elsewhere, here to the catch-all.
    "red.example.com.",
    "RED.Example.COM.",
    "a.wild.example.com.",
    "x.y.wild.example.com:8080",
    "red.example.com:",
    "red.example.com:abc",
    "red.example.com:08443",
    "red.example.com.:80",
    "blue.example.com:443",
    # Istio's `*.wild.example.com:443`, the Gateway server's port, even for a host that
    # has an exact virtual host (`api.wild.example.com:*` is a prefix wildcard: it comes
    # after the suffix ones).
    "a.wild.example.com:443",
    "api.wild.example.com:443",
    "api.wild.example.com:8443",
    "api.wild.example.com",
    # Envoy's `*.wild.example.com` takes any prefix, valid name or not.
    "x@a.wild.example.com",
    "red.example.com@a.wild.example.com",
    "a!.wild.example.com",
    "-a.wild.example.com",
    "a..wild.example.com",
    "%61.wild.example.com",
    "a_b.wild.example.com",
    "a.b.c.d.e.f.g.h.wild.example.com",
    "x" * 300 + ".wild.example.com",
    "wild.example.com",
    "red.example.com.wild.example.com",
    "[::1]",
    "[0:0::1]:80",
    " red.example.com ",
    "red.example.com\t",
]


def test_istio_host_spellings_never_borrow_another_virtual_hosts_authconfig(stack: Stack) -> None:
    """However a client spells the host, the AuthConfig extauth applies is the one that
    guards the virtual host Envoy routed the request to: a request that reaches an upstream
    carries a key of that virtual host's AuthConfig, and a host routed to a guarded virtual
    host is judged by its AuthConfig (never none, which --default-config would answer)."""
    routed: dict[str, str] = {}
    for host in ODD_HOSTS:
        for name, headers in KEY_HEADERS.items():
            response = stack.send("istio", host, headers)
            for seen in stack.upstream_saw():
                (vhost,) = seen["x-vhost"]
                routed[host] = vhost
                assert GUARD.get(vhost) == name, (host, name, vhost, response.status)
    for host, vhost in routed.items():
        assert vhost in GUARD, (host, vhost)
    # Envoy sends these to the wildcard virtual host: extauth must judge them by its
    # AuthConfig, not by none (which a --default-config would turn into another's).
    for host in (
        "x@a.wild.example.com",
        "a!.wild.example.com",
        "-a.wild.example.com",
        "a.wild.example.com:443",  # the Gateway server's port, which Istio routes
        "api.wild.example.com:443",
    ):
        assert routed.get(host) == "wildcard.wild.example.com", host
    assert routed.get("api.wild.example.com:8443") == "api.wild.example.com"


def test_istio_absolute_form_targets_route_and_judge_by_one_host(stack: Stack) -> None:
    """`GET http://red.../` with `Host: blue...`: Envoy routes by the target's authority
    and hands extauth the same, so blue's key never opens red's virtual host."""
    port = stack.ports["istio"]
    for target, host, key in [
        ("http://red.example.com/v1/x", "blue.example.com", f"x-blue-key: {BLUE_KEY}"),
        ("http://blue.example.com/v1/x", "red.example.com", f"x-red-key: {RED_KEY}"),
        ("http://other.example.com/v1/x", "red.example.com", f"x-red-key: {RED_KEY}"),
        ("http://a@red.example.com/v1/x", "blue.example.com", f"x-blue-key: {BLUE_KEY}"),
    ]:
        stack.upstream.received.clear()
        head = f"GET {target} HTTP/1.1\r\nhost: {host}\r\n{key}\r\nconnection: close\r\n"
        status = _raw(port, head)
        assert status != 200, (target, host)
        assert stack.upstream_saw() == []
