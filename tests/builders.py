"""Build snapshots from YAML text for unit tests: the same path the file source takes;
and ask the service for a decision on them without a server."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

from extauth import manifests
from extauth.apikeys import ApiKey
from extauth.changes import Change
from extauth.deciding import decide
from extauth.decisions import Allow, Deny
from extauth.loader import definitions
from extauth.policy import Policy
from extauth.server import AuthorizationService
from extauth.wire import ext_authz_pb2 as pb


def snapshot(*documents: str, path: str = "t.yaml") -> Change:
    text = "\n---\n".join(textwrap.dedent(d) for d in documents)
    result = manifests.parse_text(text, path)
    assert result.ok, [str(p) for p in result.problems]
    return Change(definitions(result.resources))


def key_fields(key: ApiKey) -> tuple[object, ...]:
    """Every field of the key, mappings as dicts: a field added to ApiKey is compared too."""
    return tuple(dict(v) if isinstance(v, Mapping) else v for v in key.fields)


def merge(*changes: Change) -> Change:
    return Change(
        tuple(d for c in changes for d in c.upserted), tuple(r for c in changes for r in c.removed)
    )


def secret(
    name: str,
    key: str,
    namespace: str = "ns",
    labels: dict[str, str] | None = None,
    **metadata: str,
) -> str:
    entries = {"api-key": key, **{k.replace("_", "-"): v for k, v in metadata.items()}}
    data = ", ".join(f"{k}: {v!r}" for k, v in entries.items())
    label_text = ", ".join(f"{k}: {v}" for k, v in (labels or {}).items())
    return (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        f"metadata: {{name: {name}, namespace: {namespace}, labels: {{{label_text}}}}}\n"
        f"stringData: {{{data}}}\n"
    )


def authconfig(name: str, *api_key_auths: str, namespace: str = "ns") -> str:
    entries = "".join(
        "    - apiKeyAuth:\n" + textwrap.indent(textwrap.dedent(body).strip(), " " * 8) + "\n"
        for body in api_key_auths
    )
    return (
        "apiVersion: extauth.solo.io/v1\nkind: AuthConfig\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  configs:\n{entries}"
    )


ROUTE = {"config_id": "ns.cfg"}
REFS = "headerName: x-key\nk8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}]}"


def allowed(
    policy: Policy, headers: dict[str, str], route: dict[str, str] = ROUTE, now: float | None = None
) -> Allow | Deny:
    """The decision on a request to `route` with `headers`, at `now`."""
    return decide(policy, route, headers, "/", now)


def expr_config(expr: str) -> str:
    """An AuthConfig of two named entries (teamkeys, partnerkeys) under `expr`."""
    return (
        "apiVersion: extauth.solo.io/v1\nkind: AuthConfig\nmetadata: {name: cfg, namespace: ns}\n"
        f"spec:\n  booleanExpr: {expr!r}\n  configs:\n"
        "    - name: teamkeys\n      apiKeyAuth:\n        headerName: x-team-key\n"
        "        k8sSecretApikeyStorage: {labelSelector: {kind: team}}\n"
        "        headersFromMetadataEntry: {x-org: {name: org}}\n"
        "    - name: partnerkeys\n      apiKeyAuth:\n        headerName: x-partner-key\n"
        "        k8sSecretApikeyStorage: {labelSelector: {kind: partner}}\n"
        "        clientIdHeader: x-partner\n"
    )


def check_at_once(service: AuthorizationService, request: pb.CheckRequest) -> pb.CheckResponse:
    """The service's answer to `request`, run without an event loop: a Check the service
    answers from what it holds never awaits, so one that does is a failure."""
    coroutine = service.check(request, None)  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as done:
        return pb.CheckResponse.FromString(done.value)
    raise AssertionError("check awaited")
