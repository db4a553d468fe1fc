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
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

ProviderKey = Literal["file", "env", "inline", "passthrough"]
PROVIDER_KEYS: tuple[ProviderKey, ...] = ("file", "env", "inline", "passthrough")

CONFIG_ID = "agentgateway-system.apikey-auth"
SECRET_NAME = "provider-key"  # noqa: S105 (the SDS resource name, not a secret)
SDS_FILE = "provider-key.yaml"
ENV_VAR = "OPENAI_API_KEY"
INLINE_PLACEHOLDER = "sk-REPLACE-ME-inline-keys-are-readable-by-anyone-with-the-config"
CHAT_PATH = "/v1/chat/completions"
EXT_AUTHZ_TIMEOUT = "0.5s"

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        return self.host.replace(".", "").isdigit()


@dataclass(frozen=True)
class Target:
    """Where things are: the same config shape for localhost, compose and Kubernetes."""

    listen: Endpoint
    admin: Endpoint
    extauth: Endpoint
    upstream: str  # URL: http://host:port or https://host
    secrets_dir: str

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
)
COMPOSE = Target(
    listen=Endpoint("0.0.0.0", 8080),  # noqa: S104 (inside a container)
    admin=Endpoint("0.0.0.0", 9901),  # noqa: S104
    extauth=Endpoint("extauth", 9001),
    upstream="http://upstream:8000",
    secrets_dir="/etc/envoy/secrets",
)

KUBERNETES = Target(
    listen=Endpoint("0.0.0.0", 8080),  # noqa: S104 (inside a pod)
    admin=Endpoint("0.0.0.0", 9901),  # noqa: S104 (the readiness probe; not in the Service)
    extauth=Endpoint("extauth.extauth-system.svc.cluster.local", 9001),  # headless Service
    upstream="https://api.openai.com",
    secrets_dir="/etc/envoy/secrets",
)

# Committed files: path -> (target, provider-key mode).
FILES: dict[str, tuple[Target, ProviderKey]] = {
    "envoy/envoy.yaml": (LOCAL, "file"),
    "envoy/envoy-key-env.yaml": (LOCAL, "env"),
    "envoy/envoy-key-inline.yaml": (LOCAL, "inline"),
    "envoy/envoy-passthrough.yaml": (LOCAL, "passthrough"),
    "envoy/compose/envoy.yaml": (COMPOSE, "file"),
    "deploy/kubernetes/envoy-config/envoy.yaml": (KUBERNETES, "file"),
}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _cluster(
    name: str, endpoint: Endpoint, *, http2: bool = False, tls: bool = False
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if endpoint.is_ip else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": endpoint.host,
                                        "port_value": endpoint.port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if not endpoint.is_ip:
        cluster["dns_lookup_family"] = "V4_ONLY"
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                # Recycled connections and a stream cap per connection: with
                # `extauth serve --workers N`, the kernel spreads connections (not
                # requests) over the workers, so Envoy must keep opening new ones.
                common_http_protocol_options={"max_requests_per_connection": 1000},
                explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 64}},
            )
        }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", sni=endpoint.host
            ),
        }
    return cluster


def _per_route(config_id: str) -> dict[str, Any]:
    return {
        "envoy.filters.http.ext_authz": _typed(
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            check_settings={"context_extensions": {"config_id": config_id}},
        )
    }


def _routes(host_rewrite: str | None) -> list[dict[str, Any]]:
    def action(**extra: Any) -> dict[str, Any]:
        route: dict[str, Any] = {"cluster": "upstream", "timeout": "120s", **extra}
        if host_rewrite:
            route["host_rewrite_literal"] = host_rewrite
        return route

    return [
        # OpenAI's chat API behind a short path: POST /openai -> /v1/chat/completions.
        {
            "match": {"path": "/openai"},
            "route": action(prefix_rewrite=CHAT_PATH),
            "typed_per_filter_config": _per_route(CONFIG_ID),
        },
        # Everything else as is (OpenAI SDKs with base_url pointed at Envoy).
        {
            "match": {"prefix": "/"},
            "route": action(),
            "typed_per_filter_config": _per_route(CONFIG_ID),
        },
    ]


def _access_log() -> list[dict[str, Any]]:
    """One JSON line per request: who (identity, x-org) and what, never a key.

    The path is logged without its query string (a key may travel there); neither the
    client's key header nor Authorization is logged.
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
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        "method": "%REQ(:METHOD)%",
                        "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                        "status": "%RESPONSE_CODE%",
                        # UAEX: denied by extauth; UAEX with 503: extauth unreachable or
                        # too slow; UF/URX: the upstream failed.
                        "flags": "%RESPONSE_FLAGS%",
                        "duration_ms": "%DURATION%",
                        "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
                        "config_id": f"%DYNAMIC_METADATA({metadata}:config_id)%",
                        "identity": f"%DYNAMIC_METADATA({metadata}:identity)%",
                        "x_org": "%REQ(X-ORG)%",
                        "authz_reason": f"%DYNAMIC_METADATA({metadata}:reason)%",
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


def build(target: Target, provider_key: ProviderKey) -> dict[str, Any]:
    upstream, tls = target.upstream_endpoint()
    virtual_host: dict[str, Any] = {
        "name": "api",
        "domains": ["*"],
        "routes": _routes(upstream.host if tls else None),
    }
    if provider_key == "env":
        virtual_host["request_headers_to_add"] = _authorization_header(
            f"Bearer %ENVIRONMENT({ENV_VAR})%"
        )
    elif provider_key == "inline":
        virtual_host["request_headers_to_add"] = _authorization_header(
            f"Bearer {INLINE_PLACEHOLDER}"
        )

    ext_authz = {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            transport_api_version="V3",
            # Fail closed: extauth down, slow or broken means the request is denied.
            failure_mode_allow=False,
            status_on_error={"code": "ServiceUnavailable"},
            grpc_service={
                "envoy_grpc": {"cluster_name": "extauth"},
                "timeout": EXT_AUTHZ_TIMEOUT,
            },
        ),
    }
    filters: list[dict[str, Any]] = [ext_authz]
    if provider_key == "file":
        filters.append(_credential_injector(target.secrets_dir))
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        }
    )

    def address(endpoint: Endpoint) -> dict[str, Any]:
        return {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}

    return {
        # SDS needs a node identity; harmless elsewhere.
        "node": {"id": "extauth-envoy", "cluster": "extauth-envoy"},
        "admin": {"address": address(target.admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": address(target.listen),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": _typed(
                                        "envoy.extensions.filters.network."
                                        "http_connection_manager.v3.HttpConnectionManager",
                                        stat_prefix="ingress",
                                        access_log=_access_log(),
                                        route_config={
                                            "name": "routes",
                                            "virtual_hosts": [virtual_host],
                                        },
                                        http_filters=filters,
                                    ),
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster("extauth", target.extauth, http2=True),
                _cluster("upstream", upstream, tls=tls),
            ],
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


def render(config: dict[str, Any], target: Target, provider_key: ProviderKey) -> str:
    header = (
        "# Generated by `make envoy-configs` from extauth/envoyconf.py: edit that, not this.\n"
        f"# Envoy in front of an upstream, asking extauth ({target.extauth.host}:"
        f"{target.extauth.port}) about every request.\n"
        f"# Provider key: {provider_key} (see extauth/envoyconf.py for the modes).\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


def config_text(target: Target, provider_key: ProviderKey = "file") -> str:
    """The config as written to a file: generated-by header, then YAML."""
    return render(build(target, provider_key), target, provider_key)


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


def local(*, listen: int, admin: int, extauth: int, upstream: str, secrets_dir: str) -> Target:
    """A loopback target on the given ports (the demo, the soak, the benchmarks)."""
    return Target(
        listen=Endpoint("127.0.0.1", listen),
        admin=Endpoint("127.0.0.1", admin),
        extauth=Endpoint("127.0.0.1", extauth),
        upstream=upstream,
        secrets_dir=secrets_dir,
    )


if __name__ == "__main__":
    sys.exit(main())
