"""The filtered ext_authz filter through a real Envoy: the shipped envoy/envoy.yaml with
the list made for this test's AuthConfigs (as `make envoy-configs` makes it for
authconfigs/). A client at the header limit gets Envoy's 431 from the header-count guard,
never a 500, and is neither served nor counted; a key source added later, outside the
list, is denied as `key_source_not_sent` and named on /readyz. The unfiltered config is
what tests/e2e/test_smuggling.py drives through the same limit."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.builders import authconfig, secret
from tests.harness import request

pytestmark = pytest.mark.e2e

KEY = "sent-headers-e2e-key-4f1c"
LATE_KEY = "sent-headers-late-key-9d2e"
# Four injected headers: the guard keeps four free (limit 96).
RESOURCES = "---\n".join(
    [
        secret("k", KEY, "tests", a="1", b="2", c="3", team="red"),
        authconfig(
            "inject",
            """
            headerName: X-Api-Key
            clientIdHeader: x-client-id
            k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: k}]}
            headersFromMetadataEntry: {x-a: {name: a}, x-b: {name: b}, x-c: {name: c}}
            """,
            namespace="tests",
        ),
    ]
)
LATE = "---\n".join(
    [
        secret("late", LATE_KEY, "tests"),
        authconfig(
            "inject",
            """
            headerName: x-late-key
            k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: late}]}
            """,
            namespace="tests",
        ),
    ]
)


@dataclass
class Stack:
    port: int
    upstream: Any
    metrics_port: int
    config_dir: Path

    def raw(self, head: str) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
            lines, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in lines.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length and (chunk := sock.recv(65536)):
                body += chunk
        return int(lines.split(b" ", 2)[1]), body

    def served(self) -> int:
        return len(self.upstream.take())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("sent")
    config_dir = harness.config_dir(work, {"tests.yaml": RESOURCES})
    metrics_port = harness.free_port()
    with harness.recording_upstream() as upstream:
        extauth = harness.Extauth(
            config_dir,
            work / "extauth.log",
            "--default-config",
            "tests.inject",
            "--http-address",
            f"127.0.0.1:{metrics_port}",
        )

        def filtered() -> tuple[dict[str, Any], int]:
            config, listen = harness.envoy_config(
                extauth=extauth.port,
                upstream=upstream.server_address[1],
                work=work,
                authconfigs=config_dir,
            )
            # This test's AuthConfig on every route, with the list made for it.
            for route in config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][
                0
            ]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
                settings = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
                settings["check_settings"]["context_extensions"]["config_id"] = "tests.inject"
            return config, listen

        try:
            with harness.serving(extauth, filtered, work) as (_, listen):
                yield Stack(listen, upstream, metrics_port, config_dir)
        finally:
            assert KEY not in extauth.log()
            assert LATE_KEY not in extauth.log()


def _head(count: int, key_header: str = "x-api-key", key: str = KEY) -> str:
    extra = "".join(f"x-h{i}: v\r\n" for i in range(count))
    return f"GET /q HTTP/1.1\r\nHost: h\r\n{key_header}: {key}\r\n{extra}Connection: close"


def _usage(stack: Stack) -> float:
    text = request(stack.metrics_port, "/metrics").body.decode()
    prefix = 'extauth_decisions_total{config="tests.inject",result="allow"}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_a_client_at_the_limit_gets_431_from_envoy_never_500(stack: Stack) -> None:
    stack.served()
    statuses = {}
    guards: list[object] = []
    for count in range(84, 100):
        before = _usage(stack)
        status, body = stack.raw(_head(count))
        served = stack.served()
        statuses[count] = status
        assert status in (200, 431), (count, status)
        assert served == (status == 200)
        # A 431 is the guard's: extauth was not asked, so nothing was counted.
        assert _usage(stack) == before + served, count
        if status == 431:
            guards.append(body.startswith(b"{") and json.loads(body)["error"])
    assert {200, 431} <= set(statuses.values()), statuses
    # The guard answers first (with extauth's body); past 100, Envoy's codec itself.
    assert guards[0] == "too_many_headers", guards


def test_a_key_source_added_later_is_denied_as_not_sent_and_named(stack: Stack) -> None:
    assert stack.raw(_head(0))[0] == 200
    assert stack.served() == 1
    (stack.config_dir / "tests.yaml").write_text(LATE)

    def switched() -> bool | None:
        return True if stack.raw(_head(0, "x-late-key", LATE_KEY))[0] == 500 else None

    harness.wait_until(switched, 10, "the late AuthConfig to be served")
    status, body = stack.raw(_head(0, "x-late-key", LATE_KEY))
    assert (status, json.loads(body)["error"]) == (500, "key_source_not_sent")
    assert stack.served() == 0
    said = request(stack.metrics_port, "/readyz").body.decode()
    assert "tests.inject" in said
    assert "'x-late-key'" in said
    assert LATE_KEY not in said
    metrics = request(stack.metrics_port, "/metrics").body.decode()
    assert 'extauth_decisions_total{config="tests.inject",result="key_source_not_sent"}' in metrics
    page = request(stack.metrics_port, "/").body.decode()
    assert "x-late-key" in page
    assert LATE_KEY not in page
