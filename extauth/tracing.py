"""OpenTelemetry traces of Checks: one span per Check, a child of Envoy's span.

Optional (the `otel` extra) and off unless asked for (`extauth serve --otel`, or the
standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): when off,
nothing of OpenTelemetry is imported and Check pays one `is None` test.

The span is made after the decision, with the Check's own start and end times, so that
deciding never runs inside tracing code and a failure of tracing cannot change a decision
(it is logged once and the Check answers as it would have). Its parent comes from the W3C
`traceparent` (with `tracestate`) or B3 (`b3`, `x-b3-*`) headers, first of the gRPC call
(where Envoy's tracer puts its ext_authz span), then of the HTTP request Envoy asks about
(a client's or an outer proxy's trace when Envoy itself does not trace). Those headers are
whoever sent them: values longer than a valid header could be are ignored, a malformed one
is no parent and the span starts a trace of its own. Attributes are what extauth decided
(config, result, reason, identity, team), never a key and never a client value uncut: an
unknown config id, which anyone reaching the port chooses, is cut like in the logs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from extauth.decisions import Allow, Decision, Reason
from extauth.metrics import shown

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

SPAN_NAME = "extauth Check"
# traceparent is 55 characters, tracestate at most 32 members of 256: anything longer than
# this is not a header a tracer wrote, and is not parsed.
MAX_TRACE_HEADER = 1024
# The variables that turn tracing on without --otel (the SDK reads the rest itself).
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Every header the W3C and B3 propagators read; a carrier without the first five has no
# parent to offer.
_TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid")
_ALL_TRACE_HEADERS = (*_TRACE_HEADERS, "x-b3-sampled", "x-b3-flags", "x-b3-parentspanid")


def available() -> bool:
    """Whether the `otel` extra is installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in (
            "opentelemetry.sdk",
            "opentelemetry.propagators.b3",
            "opentelemetry.exporter.otlp.proto.grpc",
        )
    )


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the `otel` extra is not installed."""


def wanted(flag: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether to trace: --otel, or an OTLP endpoint in the environment, unless the
    standard OTEL_SDK_DISABLED says no."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return flag or any(environ.get(name) for name in ENDPOINT_VARIABLES)


def _from_metadata(pairs: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The trace headers of the gRPC call, as the propagators read them: the first value
    of each, values too long for a trace header left out."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in _ALL_TRACE_HEADERS or isinstance(value, bytes):
            continue
        if len(value) <= MAX_TRACE_HEADER:
            values.setdefault(name, value)
    return values


def _from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The same from the HTTP request's headers (lower-case names, as Envoy sends them):
    looked up by name, never a walk over every header the client sent."""
    values: dict[str, str] = {}
    for name in _ALL_TRACE_HEADERS:
        value = headers.get(name)
        if value is not None and len(value) <= MAX_TRACE_HEADER:
            values[name] = value
    return values


class CheckTracing:
    """Makes the span of each Check; built by `start()` (the SDK) or by tests with a
    provider of their own (the SDK's in-memory exporter)."""

    def __init__(self, provider: TracerProvider) -> None:
        # Imported here: these modules exist only with the `otel` extra.
        from opentelemetry import trace
        from opentelemetry.propagators.b3 import B3MultiFormat
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._provider = provider
        self._tracer = provider.get_tracer("extauth")
        self._w3c = TraceContextTextMapPropagator()
        self._b3 = B3MultiFormat()
        self._failed = False

    def _parent(self, carriers: Iterable[Callable[[], dict[str, str]]]) -> Context | None:
        """The first valid remote parent: W3C before B3, the call before the request."""
        for read in carriers:
            carrier = read()
            if not any(name in carrier for name in _TRACE_HEADERS):
                continue
            for propagator in (self._w3c, self._b3):
                context = propagator.extract(carrier)
                if self._trace.get_current_span(context).get_span_context().is_valid:
                    return context
        return None

    def record(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        headers: Mapping[str, str],
        decision: Decision,
        seconds: float,
    ) -> None:
        """The span of one Check that took `seconds` and ended now."""
        try:
            end = time.time_ns()
            parent = self._parent(
                (lambda: _from_metadata(metadata or ()), lambda: _from_headers(headers))
            )
            attributes: dict[str, str] = {}
            if isinstance(decision, Allow):
                attributes["extauth.config"] = decision.config_id
                attributes["extauth.result"] = "allow"
                attributes["extauth.identity"] = decision.identity
                if decision.usage:
                    attributes["extauth.team"] = decision.usage
            else:
                attributes["extauth.config"] = shown(decision.config_id or "")
                attributes["extauth.result"] = "deny"
                attributes["extauth.reason"] = decision.reason.value
            span = self._tracer.start_span(
                SPAN_NAME,
                context=parent,
                kind=self._trace.SpanKind.SERVER,
                attributes=attributes,
                start_time=end - int(seconds * 1e9),
            )
            if not isinstance(decision, Allow) and decision.reason is Reason.INTERNAL:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "internal_error"))
            span.end(end_time=end)
        except Exception as exc:
            # Tracing must never cost a decision; the reason is logged once (no values).
            if not self._failed:
                self._failed = True
                log.error("tracing: cannot record a Check span (%s)", type(exc).__name__)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Send what is queued (at most `timeout` seconds), then stop."""
        try:
            self._provider.force_flush(int(timeout * 1000))
            self._provider.shutdown()
        except Exception as exc:
            log.warning("tracing: flushing spans at shutdown failed (%s)", type(exc).__name__)


def start(exporter: SpanExporter | None = None) -> CheckTracing:
    """The SDK with an OTLP/gRPC exporter configured by the standard OTEL_* variables
    (endpoint, headers, certificates, OTEL_TRACES_SAMPLER, OTEL_BSP_*), service name
    `extauth` unless OTEL_SERVICE_NAME says otherwise. Raises TracingUnavailable when the
    `otel` extra is not installed."""
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            "tracing needs the otel extra: pip install 'extauth[otel]'"
        ) from exc
    if exporter is None:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise TracingUnavailable(
                "tracing needs the otel extra: pip install 'extauth[otel]'"
            ) from exc
        exporter = OTLPSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "extauth"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return CheckTracing(provider)
