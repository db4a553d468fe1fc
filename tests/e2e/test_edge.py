"""The shipped Envoy as an edge: what a client without a key can hold on to is bounded.

A real Envoy with envoy/envoy.yaml as shipped. Envoy's defaults are not an edge's (its
own documentation says so, and it warns at start-up when no connection limit is set):
no limit on the time to send a request's headers, no limit on downstream connections.
A client trickling a header byte now and then kept a connection, and its buffered
headers, for as long as it liked; a few thousand of them held Envoy's memory and file
descriptors.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauth import envoyconf
from tests import harness
from tests.harness import request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Envoy, int]]:
    work = tmp_path_factory.mktemp("edge")
    with harness.echo_upstream() as upstream:
        # No extauth behind it: these clients never get as far as a Check.
        config, listen = harness.envoy_config(
            extauth=harness.free_port(), upstream=upstream, work=work
        )
        envoy = harness.Envoy(config, work)
        try:
            envoy.wait_ready()
            yield envoy, listen
        finally:
            envoy.stop()


def _stat(envoy: harness.Envoy, name: str) -> int:
    body = request(envoy.admin_port, f"/stats?filter=^{name}$").body.decode()
    for line in body.splitlines():
        if line.startswith(f"{name}: "):
            return int(line.split(": ", 1)[1])
    return 0


def test_a_client_trickling_its_headers_is_cut_off(envoy: tuple[harness.Envoy, int]) -> None:
    proxy, listen = envoy
    timeout = float(envoyconf.REQUEST_HEADERS_TIMEOUT.rstrip("s"))
    with socket.create_connection(("127.0.0.1", listen), timeout=1) as sock:
        sock.sendall(b"GET /q HTTP/1.1\r\nHost: h\r\nx-a: ")
        answer = b""
        # A byte a second: it never goes idle, and never finishes its headers.
        deadline = time.monotonic() + timeout + 10
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        else:
            pytest.fail("Envoy kept a connection that never finished its request headers")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    assert _stat(proxy, "http.ingress.downstream_rq_header_timeout") >= 1


def _ingress(config: dict[str, object]) -> dict[str, object]:
    listeners = config["static_resources"]["listeners"]  # type: ignore[index]
    (ingress,) = [listener for listener in listeners if listener["name"] == "ingress"]
    return ingress  # type: ignore[no-any-return]


@pytest.mark.parametrize("relative", list(envoyconf.FILES))
def test_every_committed_config_bounds_connections_and_streams(relative: str) -> None:
    config = harness.load_envoy_config(Path(harness.ROOT) / relative)
    monitors = config["overload_manager"]["resource_monitors"]
    limits = [
        m["typed_config"]["max_active_downstream_connections"]
        for m in monitors
        if m["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    ]
    assert limits == [envoyconf.MAX_DOWNSTREAM_CONNECTIONS]
    ingress = _ingress(config)
    assert ingress["per_connection_buffer_limit_bytes"] == 32768
    hcm = ingress["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[index]
    assert hcm["request_headers_timeout"] == envoyconf.REQUEST_HEADERS_TIMEOUT
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 100
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    # Probes still answer when clients have taken every connection.
    for listener in config["static_resources"]["listeners"]:
        assert listener.get("ignore_global_conn_limit", False) == (listener["name"] == "ops")
