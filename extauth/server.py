"""The gRPC server: Envoy's Authorization/Check, the standard health service, and signals.

One Check, from socket to bytes, runs through three modules of this package, no more
(the import-linter contract in pyproject.toml keeps it so):

1. `server` (here): `AuthorizationService.check` reads the current policy reference
   once, pulls route settings, headers and path out of the parsed request, and looks
   for a finished answer (and a host's config id) in the policy's `AllowCache`;
2. `deciding`: the credential, the key's digest in the policy's index, each rule's
   verdict, the `booleanExpr`: `Allow` or `Deny` (pure: it writes nowhere);
3. `responses`: the decision as serialized `CheckResponse` bytes.

They read the vocabulary (`policy`, `apikeys`, `decisions`: data, no behaviour to speak
of); `metrics` counts the answer once it is made. The handler is registered with our own
message classes under Envoy's method path, and its response serializer is the identity:
responses are already bytes. Sources are given (`cli.sources_for` wires them).

Fail closed: any exception inside Check becomes a deny (500), never an allow and never a
gRPC error that Envoy might be configured to let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import ssl
import sys
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauth import deciding, memory, responses, statuspage, tracing
from extauth.apikeys import ApiKey
from extauth.building import PolicyHolder
from extauth.changes import Change, Source
from extauth.decisions import Allow, Decision, Deny, Reason
from extauth.httpd import StatusServer
from extauth.metrics import DecisionLog, Metrics, shown
from extauth.origins import failure_site
from extauth.policy import Policy
from extauth.sourcehealth import SourceHealth
from extauth.tracing import CheckTracing
from extauth.wire import AUTHORIZATION_SERVICE, CHECK_METHOD
from extauth.wire import ext_authz_pb2 as pb

log = logging.getLogger(__name__)

# A Check request is Envoy's view of one request's headers (60 KiB by default): anything
# far larger is refused by grpc before it is parsed.
MAX_CHECK_BYTES = 256 * 1024
# Distinct unknown config ids logged per policy version; the rest are counted only.
WARN_LIMIT = 20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Settings:
    """How the server listens and answers; what it reads is its sources' (`cli.sources_for`)."""

    grpc_address: str = "127.0.0.1:9001"
    default_config: str | None = None
    shutdown_grace: float = 5.0
    # After health turns NOT_SERVING, keep answering Checks this long before closing the
    # port, so that Envoy's health check (every second) moves traffic away first.
    shutdown_delay: float = 0.0
    # /metrics, /healthz, /readyz; None: not served (metrics are still kept).
    http_address: str | None = None
    # The status page at / of http_address (--no-status-page: off, a 404).
    status_page: bool = True
    usage_label: str | None = None
    decision_log: bool = False
    decision_log_sample: float = 1.0
    # --workers: every worker binds the same gRPC port (SO_REUSEPORT).
    reuse_port: bool = False
    # --workers: this worker's own gRPC port as well (never shared), which Envoy lists
    # as an endpoint and health-checks: Checks balanced by Envoy, not by the kernel.
    worker_grpc_address: str | None = None
    # TLS on the gRPC port (PEM files); with grpc_client_ca, clients must present a
    # certificate that CA signed (mutual TLS).
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_client_ca: Path | None = None
    # A span per Check (extauth/tracing.py): --otel or an OTEL_EXPORTER_OTLP_* endpoint.
    otel: bool = False


def grpc_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials, or None for plaintext. Raises OSError (ssl.SSLError
    included) when a file cannot be read or is not a matching PEM certificate and key:
    grpc itself would only find out when it binds."""
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    check.load_cert_chain(settings.grpc_tls_cert, settings.grpc_tls_key)
    ca = None
    if settings.grpc_client_ca is not None:
        check.load_verify_locations(settings.grpc_client_ca)
        ca = settings.grpc_client_ca.read_bytes()
    return grpc.ssl_server_credentials(
        [(settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def source_health(sources: list[Source]) -> list[SourceHealth]:
    """The sources' health objects (the status page and `extauth_source_*`)."""
    return [source.health for source in sources]


def request_headers(http: pb.AttributeContext.HttpRequest) -> Mapping[str, str]:
    """Envoy sends `headers` (a map) unless the filter sets `encode_raw_headers`, in which
    case it sends `header_map` with possibly non-UTF-8 raw values."""
    headers = http.headers
    if headers or not http.header_map.headers:
        return headers
    merged: dict[str, str] = {}
    for item in http.header_map.headers:
        value = item.value or item.raw_value.decode("utf-8", errors="replace")
        name = item.key.lower()
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    return merged


class Saying(enum.Enum):
    NEW = "new"  # not said under this policy: say it now
    SAID = "said"  # said already, or past the limit and said so
    FULL = "full"  # no room: say that, once per policy


class Said(Generic[T]):
    """What has been said, and under which policy: each thing once per policy, and at
    most WARN_LIMIT things, since config ids and headers come from whoever reaches the
    port. Things said under an older policy make room first (a config since fixed drops
    out); with no room left, `say` answers FULL once per policy, then SAID.

    Policies are held weakly: a policy long replaced (a million keys, perhaps) is not
    kept alive by a line once logged under it."""

    def __init__(self) -> None:
        self._said: dict[T, weakref.ref[Policy]] = {}
        self._full_under: weakref.ref[Policy] | None = None

    def say(self, policy: Policy, thing: T) -> Saying:
        under = self._said.get(thing)
        if under is not None and under() is policy:
            return Saying.SAID
        if under is None and len(self._said) >= WARN_LIMIT:
            if self._full_under is not None and self._full_under() is policy:
                # Full under this policy already: every entry is its own, none to scan
                # for (a flood of made-up config ids costs a lookup each, not 20).
                return Saying.SAID
            stale = next((k for k, p in self._said.items() if p() is not policy), None)
            if stale is None:
                self._full_under = weakref.ref(policy)
                return Saying.FULL
            del self._said[stale]
        # Said under an older policy: moved to the end (a dict keeps a replaced key in
        # its first place), so that `under` lists things in the order this policy said them.
        self._said.pop(thing, None)
        self._said[thing] = weakref.ref(policy)
        return Saying.NEW

    def under(self, policy: Policy) -> list[T]:
        """What has been said under `policy`, in the order it was first said. Read from a
        copy: the status page asks from a worker thread while Checks say things on the
        event loop, and iterating the dict as it changes raises RuntimeError."""
        return [thing for thing, p in self._said.copy().items() if p() is policy]


class AuthorizationService:
    def __init__(
        self,
        holder: PolicyHolder,
        metrics: Metrics | None = None,
        decision_log: DecisionLog | None = None,
        tracing: CheckTracing | None = None,
    ) -> None:
        self._holder = holder
        self._metrics = metrics or Metrics()
        self._decision_log = decision_log
        self._tracing = tracing
        self._cache = responses.AllowCache(None)
        # Config ids warned about (None: a route without one).
        self._unknown: Said[str | None] = Said()
        # (config id, header) pairs a route's ext_authz filter did not send: problems
        # for /readyz and the status page until the policy or the Envoy config changes.
        self._unsent: Said[tuple[str, str]] = Said()

    async def check(
        self,
        request: pb.CheckRequest | None,
        context: grpc.aio.ServicerContext[pb.CheckRequest | None, bytes],
    ) -> bytes:
        start = time.perf_counter()
        if request is None:
            # Not a CheckRequest (parse_check): denied, counted as an internal error and
            # not logged; Envoy never sends one.
            return self._failed(start, context)
        policy = self._holder.current
        cache = self._cache
        if cache.policy is not policy:
            # A new policy: every finished answer of the old one goes with it.
            cache = self._cache = responses.AllowCache(policy)
        try:
            attributes = request.attributes
            http = attributes.request.http
            headers = request_headers(http)
            route = attributes.context_extensions
            by_host = cache.config_of_host
            key = deciding.cache_key(policy, route, headers, http.host, by_host)
            hit = cache.get(key) if key is not None else None
            decision: Decision
            if hit is not None and deciding.fits(hit[0], headers, route):
                decision, encoded = hit
            else:
                decision = deciding.decide(
                    policy, route, headers, http.path, host=http.host, by_host=by_host, keyed=key
                )
                encoded = responses.encode(decision)
                if key is not None and isinstance(decision, Allow):
                    cache.put(key, decision, encoded)
        except Exception as exc:
            # The message or a traceback's locals may quote request data (a key): log
            # only the exception type and where it was raised.
            log.error("check: internal error (%s); denying", failure_site(exc))
            return self._failed(start, context)
        if isinstance(decision, Deny) and decision.reason in (
            Reason.NO_CONFIG,
            Reason.UNKNOWN_CONFIG,
        ):
            self._warn_config(policy, decision)
        elif isinstance(decision, Deny) and decision.reason is Reason.KEY_SOURCE_NOT_SENT:
            self._not_sent(policy, decision)
        seconds = time.perf_counter() - start
        self._metrics.record(decision, seconds)
        if self._decision_log is not None:
            self._decision_log.write(decision, headers, http.path)
        if self._tracing is not None:
            self._tracing.record(context.invocation_metadata(), headers, decision, seconds)
        return encoded

    def _failed(
        self, start: float, context: grpc.aio.ServicerContext[pb.CheckRequest | None, bytes]
    ) -> bytes:
        failed = Deny(Reason.INTERNAL, None)
        seconds = time.perf_counter() - start
        self._metrics.record(failed, seconds)
        if self._tracing is not None:
            self._tracing.record(context.invocation_metadata(), {}, failed, seconds)
        return responses.encode(failed)

    def _not_sent(self, policy: Policy, decision: Deny) -> None:
        """Say once which AuthConfig reads a header Envoy does not send: each such request
        is denied, and the fix is in the Envoy config (or the AuthConfig), not the client."""
        found = (decision.config_id or "", decision.hint)
        if self._unsent.say(policy, found) is Saying.NEW:
            log.warning("check: %s; denying", unsent_problem(*found))

    def unsent_problems(self) -> list[str]:
        """The unsent key headers seen under the current policy."""
        return [unsent_problem(*found) for found in self._unsent.under(self._holder.current)]

    def _warn_config(self, policy: Policy, decision: Deny) -> None:
        """Log a route's config problem once per policy version, not once per request."""
        said = self._unknown.say(policy, decision.config_id)
        if said is Saying.FULL:
            log.warning(
                "check: more than %d unknown config ids since the last policy change; "
                "not logging more (extauth_decisions_total counts them)",
                WARN_LIMIT,
            )
        if said is not Saying.NEW:
            return
        if decision.reason is Reason.NO_CONFIG:
            log.warning(
                "check: route has no config_id, its host matches no AuthConfig's hosts "
                "and there is no --default-config; denying"
            )
        else:
            log.warning(
                "check: AuthConfig '%s' is not loaded; denying", shown(decision.config_id or "")
            )


def unsent_problem(config_id: str, header: str) -> str:
    return (
        f"AuthConfig {config_id} reads its API key from the header {header!r}, which the "
        f"route's Envoy ext_authz filter does not send (allowed_headers): add it there "
        f"(make envoy-configs, or extauth validate --envoy-config to compare)"
    )


def parse_check(data: bytes) -> pb.CheckRequest | None:
    """The CheckRequest in `data`, or None when it is not one. grpc would log a traceback
    for every malformed message (a kilobyte of log per request from anyone on the port);
    Check answers None with a deny instead."""
    try:
        return pb.CheckRequest.FromString(data)
    except DecodeError:
        return None


def authorization_handler(service: AuthorizationService) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        AUTHORIZATION_SERVICE,
        {
            CHECK_METHOD: grpc.unary_unary_rpc_method_handler(
                service.check,
                request_deserializer=parse_check,
                # None: the handler returns finished bytes, which grpc sends as they are.
                response_serializer=None,
            )
        },
    )


class Server:
    """Wires a source, the policy holder and the gRPC server together."""

    def __init__(self, settings: Settings, sources: list[Source]) -> None:
        self.settings = settings
        self.sources = sources
        self.holder = PolicyHolder(settings.default_config, settings.usage_label)
        self.health = health.aio.HealthServicer()
        self.metrics = Metrics()
        self.metrics.track_expiries(lambda: self.holder.current.expiries)
        for source in self.sources:
            source.register_metrics(self.metrics.registry)
        self.metrics.track_sources(source_health(self.sources))
        self.usage = statuspage.UsageHistory(lambda: self.metrics.usage_counts)
        self._checks: AuthorizationService | None = None
        page = statuspage.StatusPage(
            lambda: self.holder.current,
            source_health(self.sources),
            self.usage,
            self._serving_problems,
        )
        self.status = StatusServer(
            self.metrics.registry,
            self.is_ready,
            self.problems,
            page.render if settings.status_page else None,
        )
        self.port: int | None = None
        # Set once every source's initial state is loaded and the port is listening.
        self.ready = asyncio.Event()
        self._stopping = False
        self._tracing: CheckTracing | None = None

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self._stopping

    def problems(self) -> list[str]:
        """What /readyz says beside its verdict (a Kubernetes API server not answering)."""
        return [
            *(problem for source in self.sources for problem in source.problems()),
            *self._serving_problems(),
        ]

    def _serving_problems(self) -> list[str]:
        return [] if self._checks is None else self._checks.unsent_problems()

    def _published(self, policy: Policy) -> None:
        """Tell the sources that report on their objects (AuthConfig status) what the
        policy made of them."""
        self.metrics.policy_loaded(policy)
        for source in self.sources:
            source.policy_published(policy)

    def _update(self, changes: list[Change]) -> None:
        with memory.collector_paused():
            self._published(self.holder.update(changes))
        if sum(len(c.upserted) for c in changes) >= memory.SETTLE_AFTER:
            memory.settle()

    async def run(self, stop: asyncio.Event) -> None:
        self.metrics.track_tasks(asyncio.get_running_loop())
        if self.settings.http_address:
            # Up before the first sync: liveness answers and readiness says "not yet".
            await self.status.start(self.settings.http_address)
        started = time.monotonic()
        streams = [aiter(source.changes()) for source in self.sources]
        # Every source's complete initial state, then serve; a stop signal before that
        # (an unreachable API server, say) ends the wait instead of being ignored.
        initial: asyncio.Future[list[Change]] = asyncio.ensure_future(
            asyncio.gather(*(anext(s) for s in streams))
        )
        stopped: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
        waiting: list[asyncio.Future[Any]] = [initial, stopped]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not initial.done():
            log.info("stopping before the first sync")
            initial.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await initial
            await self.status.stop()
            return
        stopped.cancel()
        self._update(list(initial.result()))
        log.info("initial state read and compiled in %.1f s", time.monotonic() - started)

        decision_log = (
            DecisionLog(self.settings.decision_log_sample) if self.settings.decision_log else None
        )
        if self.settings.otel:
            self._tracing = tracing.start()
            log.info("tracing Checks (OpenTelemetry, OTLP/gRPC)")
        checks = AuthorizationService(self.holder, self.metrics, decision_log, self._tracing)
        self._checks = checks
        credentials = grpc_credentials(self.settings)

        def listening(address: str, reuse_port: bool) -> tuple[grpc.aio.Server, int]:
            # grpc turns SO_REUSEPORT on by default: a second extauth on the same port
            # would silently share traffic (with a different config, perhaps). Refuse
            # instead, unless this process is one of --workers on their shared port.
            server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", 1 if reuse_port else 0),
                    ("grpc.max_receive_message_length", MAX_CHECK_BYTES),
                ]
            )
            server.add_generic_rpc_handlers((authorization_handler(checks),))
            # One health servicer for every port: draining turns them all NOT_SERVING.
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            if credentials is None:
                return server, server.add_insecure_port(address)
            return server, server.add_secure_port(address, credentials)

        server, self.port = listening(self.settings.grpc_address, self.settings.reuse_port)
        servers = [server]
        if self.settings.worker_grpc_address is not None:
            servers.append(listening(self.settings.worker_grpc_address, reuse_port=False)[0])
        for each in servers:
            await each.start()
        for service in ("", AUTHORIZATION_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving Check on %s (port %d%s, %s)",
            self.settings.grpc_address,
            self.port,
            ""
            if self.settings.worker_grpc_address is None
            else f"; this worker's own: {self.settings.worker_grpc_address}",
            "plaintext"
            if credentials is None
            else "TLS, client certificates required"
            if self.settings.grpc_client_ca
            else "TLS",
        )
        self.ready.set()
        self.metrics.ready.set(1)

        queue: asyncio.Queue[Change] = asyncio.Queue()
        tasks = [asyncio.create_task(self._pump(stream, queue)) for stream in streams]
        tasks.append(asyncio.create_task(self._apply(queue)))
        if self.settings.http_address and self.settings.status_page:
            tasks.append(asyncio.create_task(self._sample_usage()))
        try:
            await stop.wait()
        finally:
            log.info("shutting down: readiness off, draining in-flight checks")
            self._stopping = True
            self.metrics.ready.set(0)
            await self.health.enter_graceful_shutdown()
            if self.settings.shutdown_delay > 0:
                await asyncio.sleep(self.settings.shutdown_delay)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.gather(*(each.stop(self.settings.shutdown_grace) for each in servers))
            await self.status.stop()
            if self._tracing is not None:
                await asyncio.to_thread(self._tracing.shutdown)
            log.info("stopped")

    async def _sample_usage(self) -> None:
        """The status page's usage chart: per-team totals once a step."""
        while True:
            self.usage.sample()
            await asyncio.sleep(self.usage.step)

    @staticmethod
    async def _pump(stream: AsyncIterator[Change], queue: asyncio.Queue[Change]) -> None:
        async for change in stream:
            await queue.put(change)

    async def _apply(self, queue: asyncio.Queue[Change]) -> None:
        """Apply every change that is waiting, then publish one policy for all of them:
        a burst of events (a kubectl apply of 1,000 Secrets) costs one publish. A large
        change (a file of 100,000 keys) is applied a few thousand definitions at a time,
        with Checks answered in between, rather than in one stretch of the loop."""
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            with memory.collector_paused():
                for change in batch:
                    for _ in self.holder.builder.steps(change):
                        await asyncio.sleep(0)
                policy = self.holder.publish()
                self._published(policy)
            _warn_unadmitted(policy, batch)
            if sum(len(c.upserted) for c in batch) >= memory.SETTLE_AFTER:
                memory.settle()


# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# A file read in a worker thread would otherwise make every Check wait that long for its
# turn, several times over; measured with a 100,000-key file landing (bench/bigfile.py):
# Check p50 while it is read 6.2 ms at 5 ms, 3.2 ms at 1 ms. Costs nothing when nothing
# else runs.
SWITCH_INTERVAL = 0.001


# Past this many Secrets in one batch (a bulk import), checking each against every rule
# costs more than the warning is worth.
_WARN_UNADMITTED_UP_TO = 1000


def _warn_unadmitted(policy: Policy, batch: list[Change]) -> None:
    """Say so when a Secret added or edited while serving is admitted by no AuthConfig:
    the newcomer's `keys new` whose key is then denied everywhere, with no other clue."""
    keys = [d for c in batch for d in c.upserted if isinstance(d, ApiKey)]
    if len(keys) > _WARN_UNADMITTED_UP_TO:
        return
    for key in keys:
        if policy.keys.get(key.digest) is key and not deciding.admitted_anywhere(policy, key):
            log.warning(
                "policy: Secret %s/%s (%s) is admitted by no AuthConfig: its key is denied "
                "everywhere (add it to apiKeySecretRefs or give it a selected label)",
                key.namespace,
                key.name,
                key.origin,
            )


async def serve(settings: Settings, sources: list[Source]) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Server(settings, sources).run(stop)
