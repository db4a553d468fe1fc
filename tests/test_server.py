"""The gRPC server in process, called with Envoy's official messages and stub."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2

from extauth import apikeys, deciding, memory
from extauth.building import PolicyHolder
from extauth.cli import SourceSettings, sources_for
from extauth.decisions import Decision
from extauth.policy import Policy
from extauth.server import WARN_LIMIT, AuthorizationService, Said, Saying, Server, Settings
from extauth.wire import ext_authz_pb2 as pb
from tests.builders import authconfig, secret, snapshot

CONFIG = authconfig(
    "cfg",
    """
    headerName: x-key
    k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}]}
    headersFromMetadataEntry: {x-org: {name: org}}
    """,
)


def check_request(headers: dict[str, str], config_id: str = "ns.cfg") -> object:
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions["config_id"] = config_id
    request.attributes.request.http.headers.update(headers)
    request.attributes.request.http.path = "/"
    return request


Scenario = Callable[[Server, external_auth_pb2_grpc.AuthorizationStub], Awaitable[None]]


def run_with_server(config_dir: Path, scenario: Scenario) -> None:
    async def main() -> None:
        server = Server(
            Settings(grpc_address="127.0.0.1:0"), sources_for(SourceSettings(config_dir=config_dir))
        )
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            try:
                await scenario(server, stub)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)

    asyncio.run(main())


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "all.yaml").write_text(secret("a", "key-a", org="red") + "---\n" + CONFIG)
    return tmp_path


def test_check_allows_and_denies(config_dir: Path) -> None:
    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        allowed = await stub.Check(check_request({"x-key": "key-a"}))
        assert allowed.status.code == 0
        assert allowed.ok_response.headers[0].header.value == "red"
        denied = await stub.Check(check_request({"x-key": "nope"}))
        assert denied.status.code == 16
        assert denied.denied_response.status.code == 401
        unknown = await stub.Check(check_request({"x-key": "key-a"}, "ns.other"))
        assert unknown.denied_response.status.code == 403

    run_with_server(config_dir, scenario)


def test_health_serving_once_ready(config_dir: Path) -> None:
    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        for service in ("", "envoy.service.auth.v3.Authorization"):
            reply = await server.health.Check(health_pb2.HealthCheckRequest(service=service), None)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    run_with_server(config_dir, scenario)


def test_raw_header_map_is_read(config_dir: Path) -> None:
    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        request = external_auth_pb2.CheckRequest()
        request.attributes.context_extensions["config_id"] = "ns.cfg"
        request.attributes.request.http.header_map.headers.add(key="X-Key", raw_value=b"key-a")
        reply = await stub.Check(request)
        assert reply.status.code == 0

    run_with_server(config_dir, scenario)


def test_exception_in_check_fails_closed(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> Decision:
        raise ValueError("boom with key-a inside")

    monkeypatch.setattr(deciding, "decide", broken)

    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        reply = await stub.Check(check_request({"x-key": "key-a"}))
        assert reply.WhichOneof("http_response") == "denied_response"
        assert reply.denied_response.status.code == 500
        assert reply.status.code == 13

    run_with_server(config_dir, scenario)
    assert "internal error (ValueError at" in caplog.text
    assert "key-a" not in caplog.text


def test_garbage_bytes_are_denied_without_a_traceback_each(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # grpc logged a ten-line DecodeError traceback for every malformed message: a caller
    # on the port wrote a kilobyte of log per request, without limit.
    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/envoy.service.auth.v3.Authorization/Check"
            )
            for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05\x12", b"\x0a" * 1000) * 20:
                reply = pb.CheckResponse.FromString(await call(garbage))
                assert reply.WhichOneof("http_response") == "denied_response"
                assert reply.denied_response.status.code == 500
                assert reply.status.code == 13
            # and well-formed Checks are answered as ever
            assert (await stub.Check(check_request({"x-key": "key-a"}))).status.code == 0

    with caplog.at_level("INFO"):
        run_with_server(config_dir, scenario)
    assert "Traceback" not in caplog.text
    assert "DecodeError" not in caplog.text


def test_shutdown_drains_in_flight_checks(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    original = AuthorizationService.check

    async def slow(
        self: AuthorizationService,
        request: pb.CheckRequest | None,
        context: grpc.aio.ServicerContext[pb.CheckRequest | None, bytes],
    ) -> bytes:
        entered.set()
        await gate.wait()
        return await original(self, request, context)

    monkeypatch.setattr(AuthorizationService, "check", slow)

    async def main() -> None:
        server = Server(
            Settings(grpc_address="127.0.0.1:0", shutdown_grace=10),
            sources_for(SourceSettings(config_dir=config_dir)),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            in_flight = asyncio.ensure_future(stub.Check(check_request({"x-key": "key-a"})))
            await asyncio.wait_for(entered.wait(), 5)
            stop.set()
            await asyncio.sleep(0.3)
            # Readiness is off while the check is still running, and run() has not returned.
            reply = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not task.done()
            assert not in_flight.done()
            gate.set()
            allowed = await asyncio.wait_for(in_flight, 5)
            assert allowed.status.code == 0
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_a_large_initial_state_is_frozen_out_of_the_collectors_sight(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "SETTLE_AFTER", 2)  # the fixture's Secret and AuthConfig
    gc.unfreeze()

    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # the pauses around loading and applying have ended
        reply = await stub.Check(check_request({"x-key": "key-a"}))
        assert reply.status.code == 0  # frozen keys still decide

    try:
        run_with_server(config_dir, scenario)
    finally:
        gc.unfreeze()


def test_a_secret_no_authconfig_admits_is_reported_while_serving(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        (config_dir / "stray.yaml").write_text(secret("stray", "key-stray", org="blue"))
        # An edit of an admitted Secret, in the same batch or the next: no warning.
        (config_dir / "all.yaml").write_text(secret("a", "key-a", org="green") + "---\n" + CONFIG)
        for _ in range(100):
            if "ns/stray" in caplog.text:
                break
            await asyncio.sleep(0.1)

    with caplog.at_level("WARNING", logger="extauth.server"):
        run_with_server(config_dir, scenario)
    warnings = [r.getMessage() for r in caplog.records if "admitted by no AuthConfig" in r.message]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("policy: Secret ns/stray (")
    assert "key-stray" not in caplog.text


def test_unknown_config_ids_are_logged_a_bounded_number_of_times(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A route without config_id (no --default-config) first, then many unknown ids: the
    # first few are logged once each, then one line says the rest are not.
    async def scenario(server: Server, stub: external_auth_pb2_grpc.AuthorizationStub) -> None:
        await stub.Check(check_request({}, config_id=""))
        for i in range(3 * WARN_LIMIT):
            await stub.Check(check_request({}, config_id=f"ns.unknown-{i}"))

    with caplog.at_level("WARNING", logger="extauth.server"):
        run_with_server(config_dir, scenario)
    warnings = [r.getMessage() for r in caplog.records if r.name == "extauth.server"]
    assert sum("is not loaded" in w for w in warnings) == WARN_LIMIT - 1
    assert sum("not logging more" in w for w in warnings) == 1
    assert sum("no config_id" in w for w in warnings) == 1


def test_a_check_hashes_the_key_once_whether_it_is_allowed_or_denied() -> None:
    # The cache key (config id, digest) is computed before the cache is asked; on a miss
    # decide is handed it rather than hashing again. Counted with a profiler, not timed.
    holder = PolicyHolder()
    holder.update([snapshot(secret("a", "key-a", org="red"), CONFIG)])
    service = AuthorizationService(holder)

    def hashes(key: str) -> tuple[int, pb.CheckResponse]:
        request = pb.CheckRequest.FromString(
            check_request({"x-key": key}).SerializeToString()  # type: ignore[attr-defined]
        )
        counted = 0

        def count(frame: FrameType, event: str, arg: object) -> None:
            nonlocal counted
            if event == "call" and frame.f_code is apikeys.digest.__code__:
                counted += 1

        sys.setprofile(count)
        try:
            raw = asyncio.run(service.check(request, None))  # type: ignore[arg-type]
        finally:
            sys.setprofile(None)
        return counted, pb.CheckResponse.FromString(raw)

    for key, status in (("nope", 16), ("key-a", 0), ("key-a", 0), ("nope", 16)):
        counted, reply = hashes(key)
        assert reply.status.code == status
        assert counted == 1


def test_said_says_each_thing_once_per_policy_and_at_most_warn_limit_things() -> None:
    said: Said[str] = Said()
    first, second = Policy(), Policy()
    assert said.say(first, "a") is Saying.NEW
    assert said.say(first, "a") is Saying.SAID
    for i in range(1, WARN_LIMIT):
        assert said.say(first, f"id-{i}") is Saying.NEW
    # No room under this policy: said so once, then silence.
    assert said.say(first, "one more") is Saying.FULL
    assert said.say(first, "and more") is Saying.SAID
    assert len(said.under(first)) == WARN_LIMIT
    # A new policy: what was said is said again, the older entries making room.
    assert said.say(second, "a") is Saying.NEW
    assert said.say(second, "one more") is Saying.NEW
    assert said.under(second) == ["a", "one more"]
    assert len(said.under(first)) == WARN_LIMIT - 2


def test_said_keeps_no_replaced_policy_alive() -> None:
    said: Said[str] = Said()
    old = Policy()
    gone = weakref.ref(old)
    said.say(old, "header")
    del old
    gc.collect()
    assert gone() is None
    current = Policy()
    assert said.under(current) == []
    # The entry of the dead policy is stale: it is said again, and makes room.
    assert said.say(current, "header") is Saying.NEW


def test_said_lists_what_a_policy_said_in_the_order_it_said_it() -> None:
    """/readyz lists unsent headers as `under` gives them: a thing said again under a new
    policy comes where it was said, not where an older policy first said it."""
    said: Said[str] = Said()
    first, second = Policy(), Policy()
    for thing in ("x", "y", "z"):
        said.say(first, thing)
    for thing in ("z", "w", "x"):
        assert said.say(second, thing) is Saying.NEW
    assert said.under(second) == ["z", "w", "x"]
    assert said.under(first) == ["y"]


def test_said_can_be_listed_from_another_thread_while_things_are_said() -> None:
    """The status page renders in a worker thread (httpd: asyncio.to_thread) and lists the
    unsent headers while Checks say new ones on the event loop. Switching threads every
    microsecond, iterating the live dict failed within a few hundred `say`s."""
    said: Said[str] = Said()
    policies = [Policy() for _ in range(3)]
    failures: list[BaseException] = []
    listed = 0
    stop = threading.Event()

    def status_page() -> None:
        nonlocal listed
        while not stop.is_set():
            try:
                said.under(policies[0])
            except RuntimeError as exc:
                failures.append(exc)
                return
            listed += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=status_page)
    reader.start()
    try:
        for i in range(5000):
            said.say(policies[i % 3], f"header-{i % (2 * WARN_LIMIT)}")
            if failures:
                break
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert failures == []
    assert listed > 0
