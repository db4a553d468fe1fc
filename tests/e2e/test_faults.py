"""Fail closed under faults, with load going through a real Envoy the whole time.

The invariant checked on every response: a request without a valid key never gets a 2xx.
Figures (time to serve again after a restart) are printed and recorded, not asserted.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import harness
from tests.harness import ROOT, request, wait_until

pytestmark = pytest.mark.e2e

VALID = {"vanity-auth": "team1-key"}
KINDS: dict[str, dict[str, str]] = {
    "valid": VALID,
    "none": {},
    "wrong": {"vanity-auth": "not-a-key"},
    "spoof": {"x-org": "developers"},
}


@dataclass
class Load:
    """Requests of every kind, round-robin, from a few threads until stopped."""

    port: int
    results: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        while not self._stop.is_set():
            for kind, headers in KINDS.items():
                # When the request was sent: one allowed just before a kill may complete
                # after it (slowly, on a busy machine), and is no sign of failing open.
                sent = time.monotonic()
                try:
                    status = request(self.port, "/v1/chat/completions", headers).status
                except OSError:
                    status = 0
                self.results.append((sent, kind, status))

    def start(self, threads: int = 3) -> None:
        for _ in range(threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def leaked(self) -> list[tuple[float, str, int]]:
        """Requests without a valid key that got through: must always be empty."""
        return [r for r in self.results if r[1] != "valid" and 200 <= r[2] < 300]


@dataclass
class Stack:
    port: int
    config_dir: Path
    work: Path
    extauth: harness.Extauth


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config_dir = tmp_path / "config"
    shutil.copytree(ROOT / "authconfigs", config_dir)
    with harness.echo_upstream() as upstream:
        extauth = harness.Extauth(config_dir, tmp_path / "extauth.log")
        envoy: harness.Envoy | None = None
        running = Stack(0, config_dir, tmp_path, extauth)
        try:
            extauth.wait_ready()
            config, listen = harness.envoy_config(
                extauth=extauth.port, upstream=upstream, work=tmp_path
            )
            envoy = harness.Envoy(config, tmp_path)
            envoy.wait_ready()
            running.port = listen
            yield running
        finally:
            if envoy:
                envoy.stop()
            running.extauth.stop()  # the one running now (a test may have restarted it)


def test_kill_9_under_load_never_lets_an_invalid_request_through(
    stack: Stack, record_property: Any
) -> None:
    load = Load(stack.port)
    load.start()
    try:
        time.sleep(1.0)
        stack.extauth.proc.kill()  # SIGKILL: no draining, no goodbye
        stack.extauth.stop()
        killed_at = time.monotonic()
        time.sleep(1.0)
        restarted_at = time.monotonic()
        stack.extauth = harness.Extauth(
            stack.config_dir, stack.work / "extauth.log", port=stack.extauth.port
        )
        wait_until(
            lambda: (
                True
                if any(t > restarted_at and k == "valid" and s == 200 for t, k, s in load.results)
                else None
            ),
            15,
            "a valid request to succeed after the restart",
        )
        served_again = next(
            t for t, k, s in load.results if t > restarted_at and k == "valid" and s == 200
        )
        time.sleep(0.5)
    finally:
        load.stop()
    assert load.leaked() == []
    down = [s for t, k, s in load.results if killed_at < t < restarted_at and k == "valid"]
    assert down
    assert set(down) <= {503}  # Envoy's status_on_error: fail closed
    assert any(k == "valid" and s == 200 and t < killed_at for t, k, s in load.results)
    seconds = served_again - restarted_at
    record_property("serving_again_after_restart_seconds", round(seconds, 3))
    print(f"\n{len(load.results)} requests, 0 leaked; serving again {seconds:.2f}s after restart")


def test_config_dir_gone_under_load_keeps_the_last_good_state(stack: Stack) -> None:
    load = Load(stack.port)
    load.start()
    try:
        time.sleep(0.5)
        shutil.rmtree(stack.config_dir)
        time.sleep(3.0)  # longer than a resync: the missing directory has been noticed
        assert "does not exist; keeping the last good state" in stack.extauth.log()
        shutil.copytree(ROOT / "authconfigs", stack.config_dir)
        time.sleep(1.0)
    finally:
        load.stop()
    assert load.leaked() == []
    statuses = {s for _, k, s in load.results if k == "valid"}
    assert statuses == {200}  # no valid request was refused either


def _slow_allow_server(delay: float) -> tuple[grpc.Server, int]:
    """A Check service that answers *allow*, but only after `delay`: the worst case."""
    from extauth.wire import ext_authz_pb2 as pb

    allow = pb.CheckResponse(status=pb.RpcStatus(code=0), ok_response=pb.OkHttpResponse())

    def check(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(delay)
        return allow.SerializeToString()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.auth.v3.Authorization",
                {
                    "Check": grpc.unary_unary_rpc_method_handler(
                        check, request_deserializer=None, response_serializer=None
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_a_check_slower_than_envoys_timeout_is_denied(tmp_path: Path) -> None:
    slow, slow_port = _slow_allow_server(delay=2.0)
    with harness.echo_upstream() as upstream:
        config, listen = harness.envoy_config(extauth=slow_port, upstream=upstream, work=tmp_path)
        envoy = harness.Envoy(config, tmp_path)
        try:
            envoy.wait_ready()
            started = time.monotonic()
            response = request(listen, "/v1/chat/completions", VALID)
            elapsed = time.monotonic() - started
        finally:
            envoy.stop()
            slow.stop(0)
    assert response.status == 503
    assert b"path" not in response.body  # the upstream was never reached
    assert elapsed < 2.0  # Envoy gave up at its timeout, not when the answer came
