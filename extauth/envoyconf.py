"""Envoy configurations for extauth, built from one description (`make envoy-configs`).

The files in envoy/ (local runs, each provider-key mode), envoy/compose/ and the demo's
run-time config all come from `build()`, so routes, ext_authz settings and the access log
cannot drift apart between them; tests/test_envoyconf.py fails if a committed file is not
what `build()` makes, and validates every one with `envoy --mode validate`.

How Envoy puts the real provider key on the upstream request (`ProviderKey`):
- "file": the credential_injector filter with a generic secret read over file-based SDS;
  rewriting the file (atomically) rotates the key without a restart. Recommended.
- "env": `Authorization: Bearer %ENVIRONMENT(OPENAI_API_KEY)%` added by the route.
- "inline": the key written into the config file itself. Least secure: anyone who can read
  the config (or its ConfigMap) has the key.
- "passthrough": no injection; the client's own `Authorization` goes upstream.
In every mode the client's vanity key is stripped by extauth and any client-sent
`Authorization` is overwritten (except in passthrough, where it is the point).

What every config does to give an attacker nothing (issue 11):
- the upstream's certificate is verified (a trusted CA bundle, the provider's host name in
  its SAN): the provider key never goes to whoever answers on the path;
- header names with underscores are refused (400): `x_org` would otherwise reach a WSGI or
  CGI upstream as the same variable as the injected `x-org`;
- the access log takes identity and team from ext_authz's dynamic metadata (what extauth
  decided), never from request headers, and cuts client-chosen values short;
- the ext_authz link is health checked over grpc.health.v1, failing endpoints are ejected,
  and a Check that finds a connection refused or reset is retried on another endpoint;
- the limits of an edge: 10 s to send request headers, 25,000 client connections in
  all, 32 KiB buffered per connection, 100 streams per HTTP/2 connection; paths are
  normalized before routes match;
- Envoy's admin listens on 127.0.0.1 only; where something outside the pod or container
  must reach readiness or stats, a separate listener exposes just those two paths.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

# Envoy's limit on request headers, written into every config: ext_authz fails a request
# with 500 when the headers extauth injects would push it past it, so extauth checks the
# same number before it allows (and counts) anything.
from extauth import loader
from extauth.building import compile_policy
from extauth.changes import Change, Definition
from extauth.deciding import ALLOWED_HEADERS, MAX_REQUEST_HEADERS
from extauth.decisions import Reason
from extauth.responses import _DENIALS
from extauth.sentheaders import GUARD_NAME, SentHeaders, sent_headers
from extauth.sources.listing import walk
from extauth.workers import worker_grpc_port

# The guard's 431 says what extauth's own would.
TOO_MANY_MESSAGE = _DENIALS[Reason.TOO_MANY_HEADERS][2]

ProviderKey = Literal["file", "env", "inline", "passthrough"]
PROVIDER_KEYS: tuple[ProviderKey, ...] = ("file", "env", "inline", "passthrough")

# How a request's AuthConfig is named, as each gateway's generated Envoy config does it:
# - "config_id": one ext_authz filter, every route names its AuthConfig in a context
#   extension (hand-written Envoy);
# - "istio": one ext_authz filter on the listener and no per-route settings at all
#   (AuthorizationPolicy CUSTOM); extauth picks the AuthConfig by host (spec.hosts);
# - "envoy-gateway": one disabled ext_authz filter per SecurityPolicy, enabled on its
#   routes with the policy's contextExtensions;
# - "kgateway": one disabled ext_authz filter per GatewayExtension, enabled on the routes
#   of each TrafficPolicy with that policy's contextExtensions;
# - "agentgateway": its own data plane, not Envoy, sends each AgentgatewayPolicy's
#   extAuth.grpc.contextExtensions in the Check; reproduced with one enabled filter and
#   the context extension on the routes of each host.
Routing = Literal["config_id", "istio", "envoy-gateway", "kgateway", "agentgateway"]
EXT_AUTHZ = "envoy.filters.http.ext_authz"
# The recipes' hosts (deploy/gateways/) and the AuthConfig (namespace.name) each is bound
# to; the Istio shape adds a catch-all virtual host, whose hosts no AuthConfig claims.
GATEWAY_HOSTS: dict[str, str] = {
    "red.example.com": "gateways.red",
    "blue.example.com": "gateways.blue",
    "*.wild.example.com": "gateways.wild",
}
# The port of the Gateway server in the Istio shape: Istio adds `*.x:<that port>` beside a
# wildcard host `*.x`, which the recipe's AuthConfig must claim as well.
ISTIO_GATEWAY_PORT = 443
# kgateway names its filter after the GatewayExtension (deploy/gateways/kgateway.yaml).
KGATEWAY_FILTER = "ext_auth/gateways/extauth"

CONFIG_ID = "agentgateway-system.apikey-auth"
SECRET_NAME = "provider-key"  # noqa: S105 (the SDS resource name, not a secret)
SDS_FILE = "provider-key.yaml"
ENV_VAR = "OPENAI_API_KEY"
INLINE_PLACEHOLDER = "sk-REPLACE-ME-inline-keys-are-readable-by-anyone-with-the-config"
CHAT_PATH = "/v1/chat/completions"
EXT_AUTHZ_TIMEOUT = "0.5s"
# The CA bundle of Debian/Ubuntu (and the official Envoy image): the provider's public CA.
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
# Client-chosen values in the access log are cut to this many characters.
LOG_VALUE_LIMIT = 256
REQUEST_ID_LIMIT = 64

# An edge's limits (Envoy's defaults have none; see its "edge proxy" best practices): a
# client gets this long to send its request headers, however it trickles them, and all
# clients together this many connections (probes on the ops listener are exempt).
REQUEST_HEADERS_TIMEOUT = "10s"
MAX_DOWNSTREAM_CONNECTIONS = 25_000

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        return self.host.replace(".", "").isdigit()


@dataclass(frozen=True)
class GrpcTls:
    """TLS on the ext_authz link: Envoy verifies extauth's certificate (against `ca`, with
    `server_name` in its SAN) and presents its own client certificate."""

    ca: str
    cert: str
    key: str
    server_name: str


@dataclass(frozen=True)
class Target:
    """Where things are: the same config shape for localhost, compose and Kubernetes."""

    listen: Endpoint
    admin: Endpoint
    extauth: Endpoint | tuple[Endpoint, ...]
    upstream: str  # URL: http://host:port or https://host
    secrets_dir: str
    # CA bundle that must have signed an https upstream's certificate.
    upstream_ca: str = SYSTEM_CA
    # A listener serving only /ready and /stats/prometheus (from the admin on 127.0.0.1)
    # for probes and scrapers outside the container; None: no such listener.
    ops: Endpoint | None = None
    grpc_tls: GrpcTls | None = None
    routing: Routing = "config_id"
    # An OpenTelemetry collector (OTLP/gRPC) for Envoy's spans; None: no tracing. Envoy
    # passes its ext_authz span to extauth (traceparent in the Check's gRPC metadata), so
    # `extauth serve --otel` exporting to the same collector joins the trace.
    tracing: Endpoint | None = None
    # The directory (under the repository) of the AuthConfigs this Envoy serves: its
    # ext_authz filter then sends only the headers they read (`allowed_headers`, the list
    # also passed to extauth, which denies a key source outside it) and a Lua filter
    # guards the header count. None: every header is sent, and extauth counts them.
    authconfigs: str | None = None
    # `extauth serve --workers N` behind each extauth address: Envoy lists each worker's
    # own port (workers.worker_grpc_port) instead of the shared one, and balances and
    # health-checks the workers itself; the kernel spreads only connections, and Envoy
    # holds few (BENCHMARKS.md, "Workers"). 1: the shared port, as it is.
    workers: int = 1

    @property
    def extauth_endpoints(self) -> tuple[Endpoint, ...]:
        given = self.extauth if isinstance(self.extauth, tuple) else (self.extauth,)
        if self.workers == 1:
            return given
        every = range(self.workers)
        return tuple(Endpoint(e.host, worker_grpc_port(e.port, i)) for e in given for i in every)

    def upstream_endpoint(self) -> tuple[Endpoint, bool]:
        parts = urlsplit(self.upstream)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        return Endpoint(parts.hostname or "", port), tls


LOCAL = Target(
    listen=Endpoint("127.0.0.1", 8080),
    admin=Endpoint("127.0.0.1", 9901),
    extauth=Endpoint("127.0.0.1", 9001),
    upstream="http://127.0.0.1:8000",
    secrets_dir="envoy/secrets",
    authconfigs="authconfigs",
)
# Inside a container the admin stays on loopback; the ops listener takes the port that
# Prometheus (compose) and the readiness probe (Kubernetes) already use.
COMPOSE = Target(
    listen=Endpoint("0.0.0.0", 8080),  # noqa: S104 (inside a container)
    admin=Endpoint("127.0.0.1", 9900),
    extauth=Endpoint("extauth", 9001),
    upstream="http://upstream:8000",
    secrets_dir="/etc/envoy/secrets",
    ops=Endpoint("0.0.0.0", 9901),  # noqa: S104 (/ready and /stats/prometheus only)
    authconfigs="authconfigs",  # compose.yaml mounts them
)

KUBERNETES = Target(
    listen=Endpoint("0.0.0.0", 8080),  # noqa: S104 (inside a pod)
    admin=Endpoint("127.0.0.1", 9900),
    extauth=Endpoint("extauth.extauth-system.svc.cluster.local", 9001),  # headless Service
    upstream="https://api.openai.com",
    secrets_dir="/etc/envoy/secrets",
    ops=Endpoint("0.0.0.0", 9901),  # noqa: S104 (the readiness probe; not in the Service)
)

# The ext_authz link over mutual TLS (`extauth serve --grpc-tls-cert ... --grpc-client-ca`).
CERTS_DIR = "envoy/certs"
LOCAL_MTLS = dataclasses.replace(
    LOCAL,
    grpc_tls=GrpcTls(
        ca=f"{CERTS_DIR}/ca.crt",
        cert=f"{CERTS_DIR}/envoy.crt",
        key=f"{CERTS_DIR}/envoy.key",
        server_name="extauth",
    ),
)

# Istio's shape: AuthConfigs chosen by host, several virtual hosts, no per-route settings.
# The gateway shapes send every header: their control planes let a recipe name the headers
# (Istio's includeRequestHeadersInCheck, Envoy Gateway's headersToExtAuth) but not add the
# header-count guard, without which a request near the limit would fail with 500.
UNFILTERED = dataclasses.replace(LOCAL, authconfigs=None)
ISTIO = dataclasses.replace(UNFILTERED, routing="istio")
# Traces to a collector on the OTLP/gRPC port (an OpenTelemetry Collector, Jaeger, Tempo).
OTLP_PORT = 4317
LOCAL_TRACING = dataclasses.replace(LOCAL, tracing=Endpoint("127.0.0.1", OTLP_PORT))

# Committed files: path -> (target, provider-key mode).
FILES: dict[str, tuple[Target, ProviderKey]] = {
    "envoy/envoy.yaml": (LOCAL, "file"),
    "envoy/envoy-key-env.yaml": (LOCAL, "env"),
    "envoy/envoy-key-inline.yaml": (LOCAL, "inline"),
    "envoy/envoy-passthrough.yaml": (LOCAL, "passthrough"),
    "envoy/envoy-grpc-mtls.yaml": (LOCAL_MTLS, "file"),
    "envoy/envoy-istio.yaml": (ISTIO, "file"),
    # What the gateways of deploy/gateways/ send extauth (tests/e2e/test_gateways.py).
    "tests/e2e/gateways/envoy-gateway.yaml": (
        dataclasses.replace(UNFILTERED, routing="envoy-gateway"),
        "passthrough",
    ),
    "tests/e2e/gateways/kgateway.yaml": (
        dataclasses.replace(UNFILTERED, routing="kgateway"),
        "passthrough",
    ),
    "tests/e2e/gateways/agentgateway.yaml": (
        dataclasses.replace(UNFILTERED, routing="agentgateway"),
        "passthrough",
    ),
    "envoy/envoy-tracing.yaml": (LOCAL_TRACING, "file"),
    # For `extauth serve --workers 2`: each worker an endpoint (`extauth envoy-config
    # --workers N` prints any of these files for N workers).
    "envoy/envoy-workers.yaml": (dataclasses.replace(LOCAL, workers=2), "file"),
    "envoy/compose/envoy.yaml": (COMPOSE, "file"),
    "deploy/kubernetes/envoy-config/envoy.yaml": (KUBERNETES, "file"),
}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _extension(name: str, type_name: str, **fields: Any) -> dict[str, Any]:
    """A named extension (filter, resource monitor) configured by one typed message."""
    return {"name": name, "typed_config": _typed(type_name, **fields)}


def _address(endpoint: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}


def _cluster(name: str, endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if all(e.is_ip for e in endpoints) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(e)}} for e in endpoints]}
            ],
        },
    }
    if cluster["type"] == "STRICT_DNS":
        cluster["dns_lookup_family"] = "V4_ONLY"
    return cluster


def _upstream_tls(endpoint: Endpoint, ca: str) -> dict[str, Any]:
    """Verified TLS to the provider: without a trusted CA and a name match, anyone on the
    path with any certificate would receive `Authorization: Bearer <provider key>`."""
    san_type = "IP_ADDRESS" if endpoint.is_ip else "DNS"
    context: dict[str, Any] = {
        "common_tls_context": {
            "validation_context": {
                "trusted_ca": {"filename": ca},
                "match_typed_subject_alt_names": [
                    {"san_type": san_type, "matcher": {"exact": endpoint.host}}
                ],
            }
        }
    }
    if not endpoint.is_ip:
        context["sni"] = endpoint.host
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", **context
        ),
    }


def _extauth_cluster(target: Target) -> dict[str, Any]:
    """The ext_authz link: how Envoy notices an extauth endpoint going away before a
    request does, and keeps sending Checks to the ones that are serving."""
    cluster = _cluster("extauth", target.extauth_endpoints)
    cluster["connect_timeout"] = "0.25s"  # a Check has 0.5 s in all
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            # Recycled connections and a stream cap per connection: with
            # `extauth serve --workers N` on its shared port, the kernel spreads
            # connections (not requests) over the workers, so Envoy must keep
            # opening new ones (a config for N workers lists each worker's own port
            # instead, and Envoy balances: `Target.workers`).
            common_http_protocol_options={"max_requests_per_connection": 1000},
            explicit_http_config={
                "http2_protocol_options": {
                    "max_concurrent_streams": 64,
                    # A peer that vanished without a FIN (a killed pod) is found in
                    # seconds, not at the kernel's TCP timeout.
                    "connection_keepalive": {"interval": "10s", "timeout": "2s"},
                }
            },
        )
    }
    # extauth answers grpc.health.v1 for its Authorization service, NOT_SERVING as soon
    # as it starts draining: Envoy stops choosing it before its port closes.
    cluster["health_checks"] = [
        {
            "timeout": "0.25s",
            "interval": "1s",
            # Not the 60 s default: Checks from ext_authz do not count as traffic here.
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": "envoy.service.auth.v3.Authorization"},
        }
    ]
    # An endpoint whose connections fail is ejected for a while, even between checks.
    cluster["outlier_detection"] = {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 5,
        "consecutive_gateway_failure": 3,
        "interval": "1s",
        "base_ejection_time": "5s",
        "max_ejection_percent": 50,
    }
    # Retries are what carry Checks over an endpoint's restart, but must not multiply
    # the load of an overloaded link: a budget (a quarter of active Checks, at least 8)
    # instead of Envoy's default of 3 concurrent retries, which fails a burst.
    cluster["circuit_breakers"] = {
        "thresholds": [
            {
                "max_connections": 1024,
                "max_pending_requests": 1024,
                "max_requests": 4096,
                "retry_budget": {
                    "budget_percent": {"value": 25.0},
                    "min_retry_concurrency": 8,
                },
            }
        ]
    }
    tls = target.grpc_tls
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                sni=tls.server_name,
                common_tls_context={
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": tls.cert},
                            "private_key": {"filename": tls.key},
                        }
                    ],
                    "validation_context": {
                        "trusted_ca": {"filename": tls.ca},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": tls.server_name}}
                        ],
                    },
                },
            ),
        }
    return cluster


def _upstream_cluster(target: Target) -> dict[str, Any]:
    upstream, tls = target.upstream_endpoint()
    cluster = _cluster("upstream", (upstream,))
    if tls:
        cluster["transport_socket"] = _upstream_tls(upstream, target.upstream_ca)
    return cluster


def _per_route(config_id: str, filter_name: str = EXT_AUTHZ) -> dict[str, Any]:
    return {
        filter_name: _typed(
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            check_settings={"context_extensions": {"config_id": config_id}},
        )
    }


def _gateway_filter(routing: Routing, config_id: str) -> str:
    """The name of the ext_authz filter a gateway enables on a route bound to `config_id`."""
    if routing == "envoy-gateway":
        # One filter per SecurityPolicy: securitypolicy/<namespace>/<name>.
        return f"{EXT_AUTHZ}/securitypolicy/{config_id.replace('.', '/', 1)}"
    if routing == "kgateway":
        return KGATEWAY_FILTER
    return EXT_AUTHZ


def _virtual_hosts(routing: Routing, host_rewrite: str | None) -> list[dict[str, Any]]:
    if routing == "config_id":
        return [{"name": "api", "domains": ["*"], "routes": _routes(host_rewrite)}]
    hosts: list[dict[str, Any]] = []
    for host, config_id in GATEWAY_HOSTS.items():
        per_route = (
            None
            if routing == "istio"
            else _per_route(config_id, _gateway_filter(routing, config_id))
        )
        hosts.append(
            {
                "name": host.replace("*", "wildcard"),
                "domains": _domains(host, routing),
                "routes": _routes(host_rewrite, per_route),
            }
        )
    if routing == "istio":
        # Hosts no AuthConfig claims still reach extauth, which denies them.
        hosts.append({"name": "other", "domains": ["*"], "routes": _routes(host_rewrite, None)})
    return hosts


def _domains(host: str, routing: Routing) -> list[str]:
    """The host with any port too, as Istio writes a gateway's domains, but for a wildcard
    host: Envoy allows one `*` in a domain (`*.a.com:*` would match nothing), so Istio adds
    the Gateway server's port instead."""
    if not host.startswith("*"):
        return [host, f"{host}:*"]
    return [host, f"{host}:{ISTIO_GATEWAY_PORT}"] if routing == "istio" else [host]


def _ext_authz_filters(routing: Routing) -> list[dict[str, Any]]:
    if routing == "envoy-gateway":
        names = sorted({_gateway_filter(routing, c) for c in GATEWAY_HOSTS.values()})
        return [_ext_authz(name, disabled=True) for name in names]
    if routing == "kgateway":
        return [_ext_authz(KGATEWAY_FILTER, disabled=True)]
    return [_ext_authz(EXT_AUTHZ)]


_DEFAULT = object()


def _routes(host_rewrite: str | None, per_route: Any = _DEFAULT) -> list[dict[str, Any]]:
    """The routes of a virtual host; `per_route`: their typed_per_filter_config (None:
    none; by default the config_id context extension of the local configs)."""

    def action(**extra: Any) -> dict[str, Any]:
        route: dict[str, Any] = {"cluster": "upstream", "timeout": "120s", **extra}
        if host_rewrite:
            route["host_rewrite_literal"] = host_rewrite
        return route

    settings = _per_route(CONFIG_ID) if per_route is _DEFAULT else per_route
    routes: list[dict[str, Any]] = [
        # OpenAI's chat API behind a short path: POST /openai -> /v1/chat/completions.
        {"match": {"path": "/openai"}, "route": action(prefix_rewrite=CHAT_PATH)},
        # Everything else as is (OpenAI SDKs with base_url pointed at Envoy).
        {"match": {"prefix": "/"}, "route": action()},
    ]
    if settings is not None:
        for route in routes:
            # A copy each: a shared dict would be written as a YAML alias.
            route["typed_per_filter_config"] = copy.deepcopy(settings)
    return routes


def _access_log(traced: bool = False) -> list[dict[str, Any]]:
    """One JSON line per request: who (identity, team) and what, never a key.

    Identity, team and config come from ext_authz's dynamic metadata, that is from what
    extauth decided: a client's own `x-org` never reaches the log (on a denied request the
    fields are empty). The path is logged without its query string (a key may travel
    there), and client-chosen values are cut short; Envoy's JSON formatter escapes them.
    """
    metadata = "envoy.filters.http.ext_authz"
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": _typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                log_format={
                    "json_format": {
                        "time": "%START_TIME%",
                        "request_id": f"%REQ(X-REQUEST-ID):{REQUEST_ID_LIMIT}%",
                        "method": "%REQ(:METHOD):16%",
                        "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)"
                        f":{LOG_VALUE_LIMIT}%",
                        "status": "%RESPONSE_CODE%",
                        # UAEX: denied by extauth; UAEX with 503: extauth unreachable or
                        # too slow; UF/URX: the upstream failed.
                        "flags": "%RESPONSE_FLAGS%",
                        "duration_ms": "%DURATION%",
                        "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
                        "config_id": f"%DYNAMIC_METADATA({metadata}:config_id)%",
                        "identity": f"%DYNAMIC_METADATA({metadata}:identity)%",
                        # The x-org extauth injected (from the key's Secret).
                        "x_org": f"%DYNAMIC_METADATA({metadata}:headers:x-org)%",
                        "authz_reason": f"%DYNAMIC_METADATA({metadata}:reason)%",
                        # The trace this request's spans (Envoy's, extauth's) belong to.
                        **({"trace_id": "%TRACE_ID%"} if traced else {}),
                    },
                    "formatters": [
                        {
                            "name": "envoy.formatter.req_without_query",
                            "typed_config": _typed(
                                "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
                            ),
                        }
                    ],
                },
            ),
        }
    ]


def _credential_injector(secrets_dir: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.credential_injector",
        "typed_config": _typed(
            "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            overwrite=True,
            credential={
                "name": "envoy.http.injected_credentials.generic",
                "typed_config": _typed(
                    "envoy.extensions.http.injected_credentials.generic.v3.Generic",
                    credential={
                        "name": SECRET_NAME,
                        "sds_config": {
                            "path_config_source": {
                                "path": f"{secrets_dir}/{SDS_FILE}",
                                "watched_directory": {"path": secrets_dir},
                            }
                        },
                    },
                    header="Authorization",
                ),
            },
        ),
    }


def _authorization_header(value: str) -> list[dict[str, Any]]:
    return [
        {
            "header": {"key": "authorization", "value": value},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]


def _ops_listener(endpoint: Endpoint, admin: Endpoint) -> dict[str, Any]:
    """Readiness and Prometheus stats for probes and scrapers, and nothing else of the
    admin (which can drain listeners, change log levels and dump config)."""
    routes = [
        {"match": {"path": path}, "route": {"cluster": "admin"}}
        for path in ("/ready", "/stats/prometheus")
    ]
    return _http_listener(
        "ops",
        endpoint,
        # Readiness answers even when clients hold every connection the limit allows.
        {"ignore_global_conn_limit": True},
        route_config={
            "name": "ops",
            "virtual_hosts": [{"name": "ops", "domains": ["*"], "routes": routes}],
        },
        http_filters=[
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            }
        ],
    )


def _http_listener(
    name: str, endpoint: Endpoint, listener: dict[str, Any], **manager: Any
) -> dict[str, Any]:
    """A listener whose one filter is an HTTP connection manager (stats under `name`):
    the ingress and the ops listener differ only in the manager's fields and in a
    listener field or two."""
    connection_manager = _extension(
        "envoy.filters.network.http_connection_manager",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=name,
        **manager,
    )
    return {
        "name": name,
        "address": _address(endpoint),
        **listener,
        "filter_chains": [{"filters": [connection_manager]}],
    }


def _tracing(target: Target) -> dict[str, Any]:
    """The connection manager's tracing: a span per request, and one per ext_authz Check
    whose context Envoy sends to extauth, all exported to the collector. Envoy samples
    every request by default: lower `random_sampling` under heavy traffic (extauth follows
    Envoy's decision, carried in the traceparent's flags)."""
    if target.tracing is None:
        return {}
    return {
        "tracing": {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": _typed(
                    "envoy.config.trace.v3.OpenTelemetryConfig",
                    grpc_service={"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
                    service_name="envoy",
                ),
            },
            "random_sampling": {"value": 100.0},
        }
    }


def _otel_cluster(endpoint: Endpoint) -> dict[str, Any]:
    cluster = _cluster("otel", (endpoint,))
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": {}},
        )
    }
    return cluster


def build(target: Target, provider_key: ProviderKey) -> dict[str, Any]:
    upstream, tls = target.upstream_endpoint()
    virtual_hosts = _virtual_hosts(target.routing, upstream.host if tls else None)
    for virtual_host in virtual_hosts:
        if provider_key == "env":
            virtual_host["request_headers_to_add"] = _authorization_header(
                f"Bearer %ENVIRONMENT({ENV_VAR})%"
            )
        elif provider_key == "inline":
            virtual_host["request_headers_to_add"] = _authorization_header(
                f"Bearer {INLINE_PLACEHOLDER}"
            )

    filters: list[dict[str, Any]] = _ext_authz_filters(target.routing)
    if provider_key == "file":
        filters.append(_credential_injector(target.secrets_dir))
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        }
    )
    config = _config(target, virtual_hosts, filters)
    if target.authconfigs is not None:
        filter_headers(config, authconfig_headers(ROOT / target.authconfigs))
    return config


def authconfig_headers(directory: Path) -> SentHeaders:
    """What the AuthConfigs in `directory` (read as `extauth serve --config-dir` reads it)
    need Envoy to send. Raises ValueError when one of them is broken: a config generated
    from a broken AuthConfig would filter out what its fixed version reads."""
    definitions: list[Definition] = []
    for file in walk(directory).files:
        loaded = loader.load_file(file)
        errors = [p for p in loaded.problems if not p.warning]
        if errors:
            raise ValueError(f"{file}: {errors[0]}")
        definitions.extend(loaded.definitions)
    return sent_headers(compile_policy(Change(tuple(definitions))).configs.values())


def _header_count_guard(sent: SentHeaders) -> dict[str, Any]:
    """A Lua filter before ext_authz that answers 431 (with extauth's own body) when a
    request has more headers than `sent.limit`: extauth sees a filtered header map and
    cannot count them. It counts what Envoy counts: every entry, pseudo-headers and the
    ones Envoy added (x-forwarded-for, x-request-id) included."""
    body = json.dumps({"error": Reason.TOO_MANY_HEADERS.value, "message": TOO_MANY_MESSAGE})
    code = (
        "-- Generated by extauth/envoyconf.py: room for the headers extauth injects.\n"
        f"local limit = {sent.limit}\n"
        "function envoy_on_request(handle)\n"
        "  local count = 0\n"
        "  for _, _ in pairs(handle:headers()) do count = count + 1 end\n"
        "  if count > limit then\n"
        "    handle:respond({[':status'] = '431', ['content-type'] = 'application/json',\n"
        f"      ['x-ext-auth-reason'] = '{Reason.TOO_MANY_HEADERS.value}'}}, '{body}')\n"
        "  end\n"
        "end\n"
    )
    return _extension(
        GUARD_NAME,
        "envoy.extensions.filters.http.lua.v3.Lua",
        default_source_code={"inline_string": code},
    )


def _ext_authz_settings(node: Any) -> Iterator[dict[str, Any]]:
    """Every ext_authz filter config and per-route ExtAuthzPerRoute in a config."""
    if isinstance(node, dict):
        typed = node.get("@type", "")
        if typed.endswith(("ext_authz.v3.ExtAuthz", "ext_authz.v3.ExtAuthzPerRoute")):
            yield node
        for value in node.values():
            yield from _ext_authz_settings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _ext_authz_settings(value)


def filter_headers(config: dict[str, Any], sent: SentHeaders | None) -> None:
    """Make `config` send only `sent` to extauth (None: every header, as without this):
    the filters' allowed_headers, the list in each route's context extensions, and the
    header-count guard before the first ext_authz filter."""
    for settings in _ext_authz_settings(config):
        if settings["@type"].endswith("ExtAuthzPerRoute"):
            extensions = settings.get("check_settings", {}).get("context_extensions")
            if extensions is not None:
                extensions.pop(ALLOWED_HEADERS, None)
                if sent is not None:
                    extensions[ALLOWED_HEADERS] = sent.listed()
        elif sent is None:
            settings.pop("allowed_headers", None)
        else:
            settings["allowed_headers"] = {
                "patterns": [{"exact": n} for n in sent.names]
                + [{"prefix": p} for p in sent.prefixes]
            }
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network in chain["filters"]:
                filters = network["typed_config"].get("http_filters")
                if filters is None:
                    continue
                filters[:] = [f for f in filters if f["name"] != GUARD_NAME]
                first = next(
                    (i for i, f in enumerate(filters) if f["name"].startswith(EXT_AUTHZ)), None
                )
                if sent is not None and first is not None:
                    filters.insert(first, _header_count_guard(sent))


def _ext_authz(name: str, *, disabled: bool = False) -> dict[str, Any]:
    """The ext_authz filter: fail closed, 0.5 s, retried on another endpoint. `disabled`:
    off unless a route enables it (Envoy Gateway's and kgateway's shape)."""
    ext_authz: dict[str, Any] = {
        "name": name,
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            transport_api_version="V3",
            # Fail closed: extauth down, slow or broken means the request is denied.
            failure_mode_allow=False,
            status_on_error={"code": "ServiceUnavailable"},
            grpc_service={
                "envoy_grpc": {"cluster_name": "extauth"},
                # A Check that could not reach an endpoint (refused, reset, draining)
                # is tried again on another one, inside the same timeout. Envoy makes
                # max_interval each try's timeout too: 0.25 s, half the Check's time.
                "retry_policy": {
                    "retry_on": "5xx,connect-failure,refused-stream,reset,"
                    "unavailable,cancelled,internal",
                    "num_retries": 3,
                    "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
                    "retry_host_predicate": [
                        {
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": _typed(
                                "envoy.extensions.retry.host.previous_hosts.v3."
                                "PreviousHostsPredicate"
                            ),
                        }
                    ],
                    "host_selection_retry_max_attempts": 3,
                },
                "timeout": EXT_AUTHZ_TIMEOUT,
            },
        ),
    }
    if disabled:
        ext_authz["disabled"] = True
    return ext_authz


def _config(
    target: Target, virtual_hosts: list[dict[str, Any]], filters: list[dict[str, Any]]
) -> dict[str, Any]:
    listeners = [
        _http_listener(
            "ingress",
            target.listen,
            {"per_connection_buffer_limit_bytes": 32768},
            # The edge: every client is external, whatever its
            # address (an empty list would mean loopback and RFC 1918,
            # so it names only 0.0.0.0/32, which no peer has). Envoy
            # then sets x-forwarded-for from the peer, makes its own
            # x-request-id and drops client-sent x-envoy-* headers:
            # x-envoy-original-path would forge the logged path,
            # x-envoy-retry-on and x-envoy-upstream-rq-timeout-ms
            # would steer Envoy's calls to the provider.
            use_remote_address=True,
            internal_address_config={
                "cidr_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 32}]  # noqa: S104
            },
            # `x_org: admins` is refused (400), not forwarded beside
            # the injected `x-org`: CGI, WSGI and others read both
            # spellings as one variable.
            common_http_protocol_options={
                "headers_with_underscores_action": "REJECT_REQUEST",
                "max_headers_count": MAX_REQUEST_HEADERS,
            },
            # A client trickling header bytes held its connection
            # and buffered headers for as long as it liked.
            request_headers_timeout=REQUEST_HEADERS_TIMEOUT,
            http2_protocol_options={
                "max_concurrent_streams": 100,
                "initial_stream_window_size": 65536,
                "initial_connection_window_size": 1048576,
            },
            # Routes match (and the upstream receives) the path with
            # dot segments resolved and slashes merged: `/a/../b`
            # cannot match one route and reach another.
            normalize_path=True,
            merge_slashes=True,
            access_log=_access_log(target.tracing is not None),
            **_tracing(target),
            route_config={
                "name": "routes",
                "virtual_hosts": virtual_hosts,
            },
            http_filters=filters,
        )
    ]
    clusters = [_extauth_cluster(target), _upstream_cluster(target)]
    if target.ops is not None:
        listeners.append(_ops_listener(target.ops, target.admin))
        clusters.append(_cluster("admin", (target.admin,)))
    if target.tracing is not None:
        clusters.append(_otel_cluster(target.tracing))

    return {
        # SDS needs a node identity; harmless elsewhere.
        "node": {"id": "extauth-envoy", "cluster": "extauth-envoy"},
        "admin": {"address": _address(target.admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "overload_manager": {
            "resource_monitors": [
                _extension(
                    "envoy.resource_monitors.global_downstream_max_connections",
                    "envoy.extensions.resource_monitors.downstream_connections.v3."
                    "DownstreamConnectionsConfig",
                    max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS,
                )
            ]
        },
    }


def sds_secret(value: str) -> dict[str, Any]:
    """The file credential_injector reads: the whole Authorization value, e.g. `Bearer sk-...`."""
    return {
        "resources": [
            _typed(
                "envoy.extensions.transport_sockets.tls.v3.Secret",
                name=SECRET_NAME,
                generic_secret={"secret": {"inline_string": value}},
            )
        ]
    }


_ROUTING_NOTES: dict[Routing, str] = {
    "config_id": "",
    "istio": (
        "# Istio's shape (AuthorizationPolicy CUSTOM, deploy/gateways/istio.yaml): one ext_authz\n"
        "# filter on the listener, no per-route context, several virtual hosts; extauth picks\n"
        "# the AuthConfig whose spec.hosts claims the request's host.\n"
    ),
    "envoy-gateway": (
        "# What Envoy Gateway generates from deploy/gateways/envoy-gateway.yaml: a disabled\n"
        "# ext_authz filter per SecurityPolicy, enabled on its routes with its contextExtensions.\n"
    ),
    "kgateway": (
        "# What kgateway generates from deploy/gateways/kgateway.yaml: a disabled ext_authz\n"
        "# filter per GatewayExtension, enabled per route with the TrafficPolicy's\n"
        "# contextExtensions.\n"
    ),
    "agentgateway": (
        "# What agentgateway (its own data plane, not Envoy) sends extauth for\n"
        "# deploy/gateways/agentgateway.yaml: each AgentgatewayPolicy's\n"
        "# extAuth.grpc.contextExtensions, here on the routes of its host.\n"
    ),
}


def render(config: dict[str, Any], target: Target, provider_key: ProviderKey) -> str:
    header = (
        "# Generated by `make envoy-configs` from extauth/envoyconf.py: edit that, not this.\n"
        "# Envoy in front of an upstream, asking extauth ("
        + ", ".join(f"{e.host}:{e.port}" for e in target.extauth_endpoints)
        + ") about every request.\n"
        f"# Provider key: {provider_key} (see extauth/envoyconf.py for the modes).\n"
    )
    if target.routing != "config_id":
        header += _ROUTING_NOTES[target.routing]
    if target.workers > 1:
        header += (
            f"# For `extauth serve --workers {target.workers}`: each worker's own port is an\n"
            "# endpoint (the --grpc-address port + 1 + i), balanced and health-checked by Envoy.\n"
        )
    if target.tracing is not None:
        header += (
            f"# Traces: Envoy's spans go to an OTLP/gRPC collector on "
            f"{target.tracing.host}:{target.tracing.port};\n"
            "# run extauth with --otel and OTEL_EXPORTER_OTLP_ENDPOINT naming the same one.\n"
        )
    if target.grpc_tls is not None:
        header += (
            f"# The ext_authz link is mutual TLS: Envoy trusts {target.grpc_tls.ca} for\n"
            f"# extauth's certificate (name {target.grpc_tls.server_name!r}) and presents\n"
            f"# {target.grpc_tls.cert}. Run extauth with --grpc-tls-cert, --grpc-tls-key\n"
            "# and --grpc-client-ca (the CA that signed Envoy's certificate).\n"
        )
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


def config_text(target: Target, provider_key: ProviderKey = "file") -> str:
    """The config as written to a file: generated-by header, then YAML."""
    return render(build(target, provider_key), target, provider_key)


def variant(like: str, workers: int, authconfigs: Path | None = None) -> str:
    """A committed file's config for `extauth serve --workers N` behind each of its extauth
    addresses (`extauth envoy-config`). A filtered one (`Target.authconfigs`) sends what
    the AuthConfigs in `authconfigs` read; None: the repository's, which an installed
    package does not have (ValueError, rather than a list made from nothing)."""
    target, mode = FILES[like]
    if target.authconfigs is not None:
        directory = authconfigs or ROOT / target.authconfigs
        if not directory.is_dir():
            raise ValueError(
                f"{like} sends extauth only the headers its AuthConfigs read: give "
                "--authconfigs DIR (the AuthConfigs this Envoy serves)"
            )
        target = dataclasses.replace(target, authconfigs=str(directory.resolve()))
    return config_text(dataclasses.replace(target, workers=workers), mode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for relative, (target, mode) in FILES.items():
        path = ROOT / relative
        text = config_text(target, mode)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {relative}")
    for relative in stale:
        print(f"stale: {relative} (run `make envoy-configs`)", file=sys.stderr)
    return 1 if stale else 0


def local(
    *,
    listen: int,
    admin: int,
    extauth: int | tuple[int, ...],
    upstream: str,
    secrets_dir: str,
    upstream_ca: str = SYSTEM_CA,
    grpc_tls: GrpcTls | None = None,
    authconfigs: str | None = None,
    workers: int = 1,
) -> Target:
    """A loopback target on the given ports (the demo, the soak, the benchmarks, tests);
    `authconfigs`: as in Target (the demo's are authconfigs/, so it filters); `workers`:
    each extauth port is a unit of that many (`Target.workers`)."""
    ports = extauth if isinstance(extauth, tuple) else (extauth,)
    return Target(
        listen=Endpoint("127.0.0.1", listen),
        admin=Endpoint("127.0.0.1", admin),
        extauth=tuple(Endpoint("127.0.0.1", p) for p in ports),
        upstream=upstream,
        secrets_dir=secrets_dir,
        upstream_ca=upstream_ca,
        grpc_tls=grpc_tls,
        authconfigs=authconfigs,
        workers=workers,
    )


if __name__ == "__main__":
    sys.exit(main())
