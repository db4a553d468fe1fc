"""Traces end to end: a real Envoy running envoy/envoy-tracing.yaml and `extauth serve
--otel` both export over OTLP/gRPC to a collector of ours, and extauth's Check span is the
child of Envoy's ext_authz span in Envoy's trace, with what extauth decided and never a
key."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from extauth import tracing
from tests import harness
from tests.harness import ROOT, request, wait_until

pytestmark = pytest.mark.e2e

KEY = "team1-key"  # authconfigs/ as shipped


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of(self, service: str) -> list[trace_pb2.Span]:
        with self._lock:
            return [span for name, span in self.spans if name == service]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    receiver = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(None)


def test_extauth_span_joins_envoys_trace(
    collector: tuple[Collector, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, otlp_port = collector
    shutil.copytree(ROOT / "authconfigs", tmp_path / "config")
    # The standard OTLP variables, as an operator sets them; batches leave every 0.1 s.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    assert tracing.wanted(False, os.environ)
    with harness.echo_upstream() as upstream:
        extauth = harness.Extauth(
            tmp_path / "config",
            tmp_path / "extauth.log",
            "--default-config",
            "agentgateway-system.apikey-auth",
            "--usage-label",
            "x-org",
        )
        envoy: harness.Envoy | None = None
        try:
            extauth.wait_ready()
            config, listen = harness.envoy_config(
                extauth=extauth.port,
                upstream=upstream,
                work=tmp_path,
                source=ROOT / "envoy" / "envoy-tracing.yaml",
            )
            harness.retarget(
                config,
                listen=listen,
                admin=config["admin"]["address"]["socket_address"]["port_value"],
                ports={"extauth": extauth.port, "upstream": upstream, "otel": otlp_port},
            )
            # Envoy sends a batch every 5 s or 5 spans by default: at once here.
            config["layered_runtime"] = {
                "layers": [
                    {
                        "name": "test",
                        "static_layer": {
                            "tracing.opentelemetry.min_flush_spans": 1,
                            "tracing.opentelemetry.flush_interval_ms": 100,
                        },
                    }
                ]
            }
            envoy = harness.Envoy(config, tmp_path)
            envoy.wait_ready()
            client_trace = "5bf92f3577b34da6a3ce929d0e0e4736"
            allowed = request(
                listen,
                "/openai",
                {"vanity-auth": KEY, "traceparent": f"00-{client_trace}-00f067aa0ba902b7-01"},
                "POST",
            )
            assert allowed.status == 200
            denied = request(listen, "/openai", {"vanity-auth": "guessed-key"}, "POST")
            assert denied.status == 401

            def both_traced() -> list[trace_pb2.Span] | None:
                ours = receiver.of("extauth")
                return ours if len(ours) == 2 and len(receiver.of("envoy")) >= 4 else None

            ours = wait_until(both_traced, 20, "spans from extauth and Envoy")
        finally:
            if envoy:
                envoy.stop()
            extauth.stop()

    envoys = {span.span_id: span for span in receiver.of("envoy")}
    by_result: dict[str, trace_pb2.Span] = {}
    for span in ours:
        attributes = {a.key: a.value.string_value for a in span.attributes}
        by_result[attributes["extauth.result"]] = span
        assert span.name == tracing.SPAN_NAME
        assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER
        # The parent is a span Envoy exported, in the same trace: its ext_authz call.
        parent = envoys[span.parent_span_id]
        assert parent.trace_id == span.trace_id
        assert "ext_authz" in parent.name or "Authorization" in parent.name, parent.name
        assert KEY not in str(span)
        assert "guessed-key" not in str(span)
    allowed_attributes = {a.key: a.value.string_value for a in by_result["allow"].attributes}
    assert allowed_attributes == {
        "extauth.config": "agentgateway-system.apikey-auth",
        "extauth.result": "allow",
        "extauth.identity": "team1-apikey",
        "extauth.team": "developers",
    }
    # Envoy continued the client's trace, and extauth with it.
    assert by_result["allow"].trace_id.hex() == client_trace
    denied_attributes = {a.key: a.value.string_value for a in by_result["deny"].attributes}
    assert denied_attributes["extauth.reason"] == "invalid_api_key"
    assert by_result["deny"].trace_id.hex() != client_trace
