"""Turn a `Decision` into the serialized `CheckResponse` Envoy expects.

Allow: gRPC OK plus an `OkHttpResponse` whose headers overwrite whatever the client sent.
Both `append: false` and `append_action: OVERWRITE_IF_EXISTS_OR_ADD` are set because
Envoy's default for an unset `append` has changed between releases; either one alone
means "overwrite" to every Envoy we know of.

Deny: a non-OK gRPC status plus a `DeniedHttpResponse` with the HTTP status, a
`www-authenticate` challenge on 401s, the reason in `x-ext-auth-reason`, and a short JSON
body. Deny responses depend only on (reason, config, hint), so each is serialized once;
an Allow's bytes are kept per policy and key by `AllowCache`.
Neither form ever contains the key the client sent.
"""

from __future__ import annotations

import functools
import json
import time

from google.protobuf.wrappers_pb2 import BoolValue

from extauth.decisions import Allow, Decision, Reason
from extauth.hosts import MAX_REQUEST_HOST, HostTable
from extauth.wire import ext_authz_pb2 as pb

GRPC_OK = 0
GRPC_INVALID_ARGUMENT = 3
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16

_OVERWRITE = pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# reason -> (HTTP status, gRPC status, message)
_DENIALS: dict[Reason, tuple[pb.StatusCode, int, str]] = {
    Reason.MISSING: (pb.Unauthorized, GRPC_UNAUTHENTICATED, "API key missing"),
    Reason.INVALID: (pb.Unauthorized, GRPC_UNAUTHENTICATED, "API key invalid"),
    Reason.EXPIRED: (pb.Unauthorized, GRPC_UNAUTHENTICATED, "API key expired"),
    Reason.MISSING_METADATA: (
        pb.Forbidden,
        GRPC_PERMISSION_DENIED,
        "API key lacks metadata this route requires",
    ),
    Reason.NO_CONFIG: (
        pb.Forbidden,
        GRPC_PERMISSION_DENIED,
        "no AuthConfig is bound to this route",
    ),
    Reason.UNKNOWN_CONFIG: (
        pb.Forbidden,
        GRPC_PERMISSION_DENIED,
        "the AuthConfig bound to this route is not loaded",
    ),
    Reason.AMBIGUOUS: (
        pb.BadRequest,
        GRPC_INVALID_ARGUMENT,
        "the API key parameter appears twice or in an encoded spelling; send it once, as is",
    ),
    Reason.TOO_MANY_PARAMETERS: (
        pb.BadRequest,
        GRPC_INVALID_ARGUMENT,
        "too many query parameters",
    ),
    Reason.TOO_MANY_HEADERS: (
        pb.RequestHeaderFieldsTooLarge,
        GRPC_RESOURCE_EXHAUSTED,
        "too many request headers",
    ),
    Reason.KEY_SOURCE_NOT_SENT: (
        pb.InternalServerError,
        GRPC_INTERNAL,
        "the gateway does not pass on the header this route's API key is read from",
    ),
    Reason.NOT_READY: (pb.ServiceUnavailable, GRPC_UNAVAILABLE, "authorization is starting"),
    Reason.INTERNAL: (pb.InternalServerError, GRPC_INTERNAL, "authorization failed"),
}


def encode(decision: Decision) -> bytes:
    if isinstance(decision, Allow):
        return allow_bytes(decision)
    return deny_bytes(decision.reason, decision.config_id, decision.hint)


def allow_bytes(decision: Allow) -> bytes:
    """An Allow's bytes, made afresh: the server keeps them per key (`AllowCache`)."""
    response = pb.CheckResponse(status=pb.RpcStatus(code=GRPC_OK))
    ok = response.ok_response
    for name, value in decision.set_headers:
        ok.headers.add(
            header=pb.HeaderValue(key=name, value=value),
            append=BoolValue(value=False),
            append_action=_OVERWRITE,
        )
    ok.headers_to_remove.extend(decision.remove_headers)
    ok.query_parameters_to_remove.extend(decision.remove_query)
    # What was injected goes in the metadata too: Envoy's access log reads the team from
    # here, from the decision, never from the request's own headers.
    response.dynamic_metadata.update(
        {
            "config_id": decision.config_id,
            "identity": decision.identity,
            # (Not the rewritten cookie: the client's other cookies are no one's business.)
            "headers": {k: v for k, v in decision.set_headers if k != "cookie"},
        }
    )
    return response.SerializeToString()


# Entries one policy's cache holds before it starts over (it refills from use): a few
# hundred bytes each, so some tens of MB at most.
CACHE_LIMIT = 100_000
# Hosts one policy's cache remembers the config id of (`AllowCache.config_of_host`).
HOST_LIMIT = 4096
_UNKNOWN = object()


class AllowCache:
    """The one cache of the request path: under one policy, (config id, key digest) ->
    the finished Allow and its bytes.

    Only a config whose answer depends on the key alone is cached (`deciding.cache_key`),
    and the cache belongs to the policy it was filled under: the server starts a new one
    when the policy changes, so a revoked or edited key never finds an old answer, and
    nothing of a superseded key outlives the policy that held it. An entry whose key has
    expired is not returned; the header limit is checked per request (`deciding.fits`).
    """

    __slots__ = ("_entries", "_hosts", "policy")

    def __init__(self, policy: object) -> None:
        self.policy = policy
        self._entries: dict[tuple[str, bytes], tuple[Allow, bytes]] = {}
        self._hosts: dict[str, str | None] = {}

    def config_of_host(self, table: HostTable, host: str) -> str | None:
        """`table.lookup(host)` (the policy's hosts), remembered: a gateway's hosts are
        few, and a hit is one probe instead of parsing the host (microseconds). Bounded:
        hosts come from clients, so it starts over past HOST_LIMIT entries, and a host
        longer than a name is never kept."""
        hosts = self._hosts
        found = hosts.get(host, _UNKNOWN)
        if found is not _UNKNOWN:
            return found  # type: ignore[return-value]
        found = table.lookup(host)
        if len(host) <= MAX_REQUEST_HOST:
            if len(hosts) >= HOST_LIMIT:
                hosts.clear()
            hosts[host] = found
        return found

    def get(self, key: tuple[str, bytes]) -> tuple[Allow, bytes] | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires_at = found[0].expires_at
        if expires_at is not None and expires_at <= time.time():
            return None
        return found

    def put(self, key: tuple[str, bytes], allow: Allow, encoded: bytes) -> None:
        if len(self._entries) >= CACHE_LIMIT:
            self._entries.clear()
        self._entries[key] = (allow, encoded)

    def __len__(self) -> int:
        return len(self._entries)


@functools.lru_cache(maxsize=4096)
def deny_bytes(reason: Reason, config_id: str | None, hint: str = "") -> bytes:
    http_status, grpc_status, message = _DENIALS[reason]
    if reason is Reason.MISSING and hint:
        message = f"{message}: send it in {hint}"
    headers = [("content-type", "application/json"), ("x-ext-auth-reason", reason.value)]
    if http_status == pb.Unauthorized:
        headers.append(("www-authenticate", 'APIKey realm="extauth"'))
    response = pb.CheckResponse(
        status=pb.RpcStatus(code=grpc_status, message=reason.value),
        denied_response=pb.DeniedHttpResponse(
            status=pb.HttpStatus(code=http_status),
            headers=[
                pb.HeaderValueOption(
                    header=pb.HeaderValue(key=k, value=v),
                    append=BoolValue(value=False),
                    append_action=_OVERWRITE,
                )
                for k, v in headers
            ],
            body=json.dumps({"error": reason.value, "message": message}),
        ),
    )
    response.dynamic_metadata.update({"config_id": config_id or "", "reason": reason.value})
    return response.SerializeToString()
