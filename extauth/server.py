"""The gRPC server: Envoy's Authorization/Check, the standard health service, and signals.

One request, start to finish: `check()` reads the current policy reference once, pulls
route settings, headers and path out of the parsed request, calls `decide.decide()` and
returns the bytes `responses.encode()` made. The handler is registered with our own
message classes under Envoy's method path, and its response serializer is the identity:
responses are already bytes, so deny responses can be cached pre-serialized.

Fail closed: any exception inside Check becomes a deny (500), never an allow and never a
gRPC error that Envoy might be configured to let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
import traceback
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauth import decide, memory, responses
from extauth.httpd import StatusServer
from extauth.manifests import DEFAULT_LIMITS, Limits
from extauth.metrics import DecisionLog, Metrics, shown
from extauth.policy import Policy, PolicyHolder
from extauth.snapshot import ApiKey, Change
from extauth.sources import Source
from extauth.sources.files import FileSource
from extauth.wire import AUTHORIZATION_SERVICE, CHECK_METHOD
from extauth.wire import ext_authz_pb2 as pb

log = logging.getLogger(__name__)

# A Check request is Envoy's view of one request's headers (60 KiB by default): anything
# far larger is refused by grpc before it is parsed.
MAX_CHECK_BYTES = 256 * 1024
# Distinct unknown config ids logged per policy version; the rest are counted only.
WARN_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Settings:
    config_dir: Path | None = None
    grpc_address: str = "127.0.0.1:9001"
    default_config: str | None = None
    shutdown_grace: float = 5.0
    # After health turns NOT_SERVING, keep answering Checks this long before closing the
    # port, so that Envoy's health check (every second) moves traffic away first.
    shutdown_delay: float = 0.0
    # /metrics, /healthz, /readyz; None: not served (metrics are still kept).
    http_address: str | None = None
    usage_label: str | None = None
    decision_log: bool = False
    decision_log_sample: float = 1.0
    kubernetes: bool = False
    namespaces: tuple[str, ...] = ()
    kubeconfig: str | None = None
    write_status: bool = True
    kube_watch_timeout: int = 300
    kube_heartbeat: float = 10.0
    kube_request_timeout: float = 5.0
    kube_max_secret_bytes: int = 16 * 1024
    kube_status_rate: float = 50.0
    # Keep every Kubernetes Secret whole, even those no AuthConfig selects (inspect
    # reports those; serve keeps them as stubs).
    kube_every_secret: bool = False
    # --workers: every worker binds the same gRPC port (SO_REUSEPORT).
    reuse_port: bool = False
    # TLS on the gRPC port (PEM files); with grpc_client_ca, clients must present a
    # certificate that CA signed (mutual TLS).
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_client_ca: Path | None = None
    # --max-file-bytes, --max-documents, --max-depth: what one config file may hold.
    limits: Limits = DEFAULT_LIMITS


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


def sources_for(settings: Settings) -> list[Source]:
    sources: list[Source] = []
    if settings.config_dir is not None:
        sources.append(FileSource(settings.config_dir, limits=settings.limits))
    if settings.kubernetes:
        # Imported here: the kubernetes client is only loaded when it is used.
        from extauth.sources.kubernetes import KubernetesSource

        sources.append(
            KubernetesSource(
                list(settings.namespaces) or None,
                kubeconfig=settings.kubeconfig,
                write_status=settings.write_status,
                watch_timeout=settings.kube_watch_timeout,
                heartbeat=settings.kube_heartbeat,
                request_timeout=settings.kube_request_timeout,
                max_secret_bytes=settings.kube_max_secret_bytes,
                status_rate=settings.kube_status_rate,
                # AuthConfigs in files may select Secrets this source would otherwise
                # keep as stubs: with a --config-dir, every Secret is kept whole.
                every_secret=settings.kube_every_secret or settings.config_dir is not None,
            )
        )
    return sources


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


class AuthorizationService:
    def __init__(
        self,
        holder: PolicyHolder,
        metrics: Metrics | None = None,
        decision_log: DecisionLog | None = None,
    ) -> None:
        self._holder = holder
        self._metrics = metrics or Metrics()
        self._decision_log = decision_log
        self._warned_policy: Policy | None = None
        # Config ids warned about (None: a route without one) under `_warned_policy`, and
        # whether the limit was reached: a flag of its own, since None is an id here.
        self._warned: set[str | None] = set()
        self._warned_enough = False

    async def check(
        self,
        request: pb.CheckRequest | None,
        context: grpc.aio.ServicerContext[pb.CheckRequest | None, bytes],
    ) -> bytes:
        start = time.perf_counter()
        if request is None:
            # Not a CheckRequest (parse_check): denied, counted as an internal error and
            # not logged; Envoy never sends one.
            return self._failed(start)
        policy = self._holder.current
        try:
            attributes = request.attributes
            http = attributes.request.http
            headers = request_headers(http)
            decision = decide.decide(policy, attributes.context_extensions, headers, http.path)
            encoded = responses.encode(decision)
        except Exception as exc:
            # The message or a traceback's locals may quote request data (a key): log
            # only the exception type and where it was raised.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            log.error(
                "check: internal error (%s at %s:%s); denying",
                type(exc).__name__,
                frame.filename,
                frame.lineno,
            )
            return self._failed(start)
        if isinstance(decision, decide.Deny) and decision.reason in (
            decide.Reason.NO_CONFIG,
            decide.Reason.UNKNOWN_CONFIG,
        ):
            self._warn_config(policy, decision)
        self._metrics.record(decision, time.perf_counter() - start)
        if self._decision_log is not None:
            self._decision_log.write(decision, headers, http.path)
        return encoded

    def _failed(self, start: float) -> bytes:
        failed = decide.Deny(decide.Reason.INTERNAL, None)
        self._metrics.record(failed, time.perf_counter() - start)
        return responses.encode(failed)

    def _warn_config(self, policy: Policy, decision: decide.Deny) -> None:
        """Log a route's config problem once per policy version, not once per request."""
        if policy is not self._warned_policy:
            self._warned_policy, self._warned, self._warned_enough = policy, set(), False
        if self._warned_enough or decision.config_id in self._warned:
            return
        if len(self._warned) >= WARN_LIMIT:
            # Config ids come from whoever reaches the port: a bounded number of lines.
            self._warned_enough = True
            log.warning(
                "check: more than %d unknown config ids since the last policy change; "
                "not logging more (extauth_decisions_total counts them)",
                WARN_LIMIT,
            )
            return
        self._warned.add(decision.config_id)
        if decision.reason is decide.Reason.NO_CONFIG:
            log.warning("check: route has no config_id and there is no --default-config; denying")
        else:
            log.warning(
                "check: AuthConfig '%s' is not loaded; denying", shown(decision.config_id or "")
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

    def __init__(self, settings: Settings, sources: list[Source] | None = None) -> None:
        self.settings = settings
        self.sources = sources if sources is not None else sources_for(settings)
        self.holder = PolicyHolder(settings.default_config, settings.usage_label)
        self.health = health.aio.HealthServicer()
        self.metrics = Metrics()
        self.metrics.track_expiries(lambda: self.holder.current.expiries)
        for source in self.sources:  # a source's own metrics (the Kubernetes CRD check)
            register = getattr(source, "register_metrics", None)
            if register is not None:
                register(self.metrics.registry)
        files = [s for s in self.sources if isinstance(s, FileSource)]
        self.metrics.track_unreadable(lambda: sum(s.unreadable for s in files))
        self.status = StatusServer(self.metrics.registry, self.is_ready, self.problems)
        self.port: int | None = None
        # Set once every source's initial state is loaded and the port is listening.
        self.ready = asyncio.Event()
        self._stopping = False

    def is_ready(self) -> bool:
        return self.ready.is_set() and not self._stopping

    def problems(self) -> list[str]:
        """What /readyz says beside its verdict (a Kubernetes API server not answering)."""
        found: list[str] = []
        for source in self.sources:
            report = getattr(source, "problems", None)
            if report is not None:
                found.extend(report())
        return found

    def _update(self, changes: list[Change]) -> None:
        with memory.collector_paused():
            self.metrics.policy_loaded(self.holder.update(changes))
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

        # grpc turns SO_REUSEPORT on by default: a second extauth on the same port would
        # silently share traffic (with a different config, perhaps). Refuse instead,
        # unless this process is one of --workers, which share the port on purpose.
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
                ("grpc.max_receive_message_length", MAX_CHECK_BYTES),
            ]
        )
        decision_log = (
            DecisionLog(self.settings.decision_log_sample) if self.settings.decision_log else None
        )
        checks = AuthorizationService(self.holder, self.metrics, decision_log)
        server.add_generic_rpc_handlers((authorization_handler(checks),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        credentials = grpc_credentials(self.settings)
        if credentials is None:
            self.port = server.add_insecure_port(self.settings.grpc_address)
        else:
            self.port = server.add_secure_port(self.settings.grpc_address, credentials)
        await server.start()
        for service in ("", AUTHORIZATION_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving Check on %s (port %d, %s)",
            self.settings.grpc_address,
            self.port,
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
            await server.stop(self.settings.shutdown_grace)
            await self.status.stop()
            log.info("stopped")

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
                self.metrics.policy_loaded(policy)
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
        if policy.keys.get(key.digest) is key and not policy.admitted_anywhere(key):
            log.warning(
                "policy: Secret %s/%s (%s) is admitted by no AuthConfig: its key is denied "
                "everywhere (add it to apiKeySecretRefs or give it a selected label)",
                key.namespace,
                key.name,
                key.origin,
            )


async def serve(settings: Settings) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Server(settings).run(stop)
