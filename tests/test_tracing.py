"""Check spans (extauth/tracing.py), recorded by the SDK's in-memory exporter while the
Authorization service runs in a real grpc.aio server and is called with Envoy's own stub:
the parent comes from the call's or the request's traceparent/b3 headers, a malformed one
starts a trace of its own, and no span ever holds a key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from extauth import tracing
from extauth.building import PolicyHolder
from extauth.server import AuthorizationService, authorization_handler
from tests.builders import authconfig, secret, snapshot

KEY = "key-a-secret-value"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    yield found
    found.clear()


@pytest.fixture
def service(exporter: InMemorySpanExporter) -> AuthorizationService:
    holder = PolicyHolder(usage_label="org")
    holder.update(
        [
            snapshot(
                secret("team-a", KEY, org="red"),
                authconfig(
                    "cfg",
                    "headerName: x-key\n"
                    "k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: team-a}]}\n"
                    "headersFromMetadataEntry: {x-org: {name: org}}",
                ),
            )
        ]
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return AuthorizationService(holder, tracing=tracing.CheckTracing(provider))


def check(
    service: AuthorizationService,
    headers: dict[str, str],
    metadata: Sequence[tuple[str, str]] = (),
    config_id: str = "ns.cfg",
    raw: bytes | None = None,
) -> external_auth_pb2.CheckResponse:
    """One Check through a real gRPC server and Envoy's stub, with `metadata` on the call."""

    async def main() -> external_auth_pb2.CheckResponse:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((authorization_handler(service),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                if raw is not None:
                    call: grpc.aio.UnaryUnaryMultiCallable[
                        bytes, external_auth_pb2.CheckResponse
                    ] = channel.unary_unary(
                        "/envoy.service.auth.v3.Authorization/Check",
                        request_serializer=None,
                        response_deserializer=external_auth_pb2.CheckResponse.FromString,
                    )
                    reply: external_auth_pb2.CheckResponse = await call(raw, metadata=metadata)
                    return reply
                request = external_auth_pb2.CheckRequest()
                request.attributes.context_extensions["config_id"] = config_id
                request.attributes.request.http.headers.update(headers)
                request.attributes.request.http.path = "/v1/chat"
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                return await stub.Check(request, metadata=metadata)
        finally:
            await server.stop(None)

    return asyncio.run(main())


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    assert span.name == tracing.SPAN_NAME
    assert span.kind is SpanKind.SERVER
    # Never a key, in any attribute.
    assert KEY not in repr(dict(span.attributes or {}))
    return span


def parent_ids(span: ReadableSpan) -> tuple[str, str] | None:
    if span.parent is None:
        return None
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


def test_allowed_check_joins_envoys_trace_from_the_call(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    reply = check(service, {"x-key": KEY}, [("traceparent", TRACEPARENT)])
    assert reply.status.code == 0
    span = only_span(exporter)
    assert parent_ids(span) == (TRACE_ID, SPAN_ID)
    assert span.parent is not None
    assert span.parent.is_remote
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert dict(span.attributes or {}) == {
        "extauth.config": "ns.cfg",
        "extauth.result": "allow",
        "extauth.identity": "team-a",
        "extauth.team": "red",
    }
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time < span.end_time


def test_denied_check_carries_the_reason(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    reply = check(service, {"x-key": "guessed-key"}, [("traceparent", TRACEPARENT)])
    assert reply.denied_response.status.code == 401
    span = only_span(exporter)
    assert parent_ids(span) == (TRACE_ID, SPAN_ID)
    assert "guessed-key" not in repr(dict(span.attributes or {}))
    assert dict(span.attributes or {}) == {
        "extauth.config": "ns.cfg",
        "extauth.result": "deny",
        "extauth.reason": "invalid_api_key",
    }


def test_the_requests_own_traceparent_when_the_call_has_none(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    check(service, {"x-key": KEY, "traceparent": TRACEPARENT})
    assert parent_ids(only_span(exporter)) == (TRACE_ID, SPAN_ID)


def test_the_calls_traceparent_wins_over_the_requests(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    client = f"00-{'1' * 32}-{'2' * 16}-01"
    check(service, {"x-key": KEY, "traceparent": client}, [("traceparent", TRACEPARENT)])
    assert parent_ids(only_span(exporter)) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize(
    "headers",
    [
        {"b3": f"{TRACE_ID}-{SPAN_ID}-1"},
        {"x-b3-traceid": TRACE_ID, "x-b3-spanid": SPAN_ID, "x-b3-sampled": "1"},
    ],
    ids=["b3-single", "b3-multi"],
)
def test_b3_headers_are_a_parent_too(
    service: AuthorizationService, exporter: InMemorySpanExporter, headers: dict[str, str]
) -> None:
    check(service, {"x-key": KEY}, list(headers.items()))
    assert parent_ids(only_span(exporter)) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        f"00-{TRACE_ID}-{SPAN_ID}",  # no flags
        f"00-{'0' * 32}-{SPAN_ID}-01",  # the invalid trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # the invalid span id
        f"ff-{TRACE_ID}-{SPAN_ID}-01",  # a version that is forbidden
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper-case hex is not W3C
        f"00-{TRACE_ID}-{SPAN_ID}-01" + "-x" * 2000,  # longer than any trace header
        "00-\uff14bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a full-width digit
        f"00-{TRACE_ID}\x00-{SPAN_ID}-01",
    ],
    ids=[
        "garbage",
        "no-flags",
        "zero-trace",
        "zero-span",
        "version-ff",
        "upper-case",
        "oversized",
        "full-width",
        "nul",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace_and_the_check_answers(
    service: AuthorizationService, exporter: InMemorySpanExporter, value: str
) -> None:
    # In the request's headers (any byte string Envoy passes on), alone and beside b3.
    reply = check(service, {"x-key": KEY, "traceparent": value, "tracestate": "a=" + "b" * 9000})
    assert reply.status.code == 0
    span = only_span(exporter)
    assert span.parent is None
    assert span.context.trace_id != int(TRACE_ID, 16)
    assert span.context.is_valid


def test_a_malformed_b3_starts_a_new_trace(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    reply = check(service, {"x-key": "nope"}, [("b3", f"{TRACE_ID}-zz-1"), ("x-b3-spanid", "1")])
    assert reply.denied_response.status.code == 401
    assert only_span(exporter).parent is None


def test_an_unknown_config_id_is_cut(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    reply = check(service, {"x-key": KEY}, config_id="ns." + "x" * 5000)
    assert reply.denied_response.status.code == 403
    attributes = dict(only_span(exporter).attributes or {})
    assert attributes["extauth.reason"] == "unknown_auth_config"
    assert len(str(attributes["extauth.config"])) < 200
    assert str(attributes["extauth.config"]).endswith(" chars)")


def test_a_message_that_is_not_a_check_is_an_error_span(
    service: AuthorizationService, exporter: InMemorySpanExporter
) -> None:
    reply = check(service, {}, [("traceparent", TRACEPARENT)], raw=b"\xff\xff\xff")
    assert reply.denied_response.status.code == 500
    span = only_span(exporter)
    assert parent_ids(span) == (TRACE_ID, SPAN_ID)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["extauth.reason"] == "internal_error"


def test_a_failing_tracer_costs_no_decision(
    service: AuthorizationService,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK's tracer itself raising (a bug, a full queue that raises): the Checks answer
    # as without tracing and the failure is logged once.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"tracer broke near {KEY}")

    assert service._tracing is not None
    monkeypatch.setattr(service._tracing._tracer, "start_span", broken)
    with caplog.at_level(logging.ERROR):
        assert check(service, {"x-key": KEY}, [("traceparent", TRACEPARENT)]).status.code == 0
        assert check(service, {"x-key": "nope"}).denied_response.status.code == 401
    assert exporter.get_finished_spans() == ()
    lines = [r.getMessage() for r in caplog.records if r.name == "extauth.tracing"]
    assert lines == ["tracing: cannot record a Check span (RuntimeError)"]
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        (False, {}, False),
        (True, {}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        (False, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
        (True, {"OTEL_SDK_DISABLED": "true"}, False),
        (False, {"OTEL_SERVICE_NAME": "x"}, False),
    ],
)
def test_tracing_is_off_unless_asked_for(
    flag: bool, environ: dict[str, str], expected: bool
) -> None:
    assert tracing.wanted(flag, environ) is expected
    assert tracing.available()
