"""End to end: HTTP client -> real Envoy (envoy/envoy.yaml) -> ext_authz gRPC -> extauth ->
echo upstream. Each test states one behaviour of the README scenario or the issue list.

The stack is started once for the module. The config directory holds the examples from
authconfigs/ unchanged plus the test resources below; tests that add or break files use
their own file names and clean up after themselves.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.harness import Response, request, upstream_headers, wait_until

pytestmark = pytest.mark.e2e

TEST_RESOURCES = """
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: partner-a, namespace: tests, labels: {tier: partner}}
stringData: {api-key: partner-a-key, x-org: partners, team: a}
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: partner-b, namespace: tests, labels: {tier: free}}
stringData: {api-key: partner-b-key, x-org: freeloaders}
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: partner-c, namespace: tests, labels: {tier: partner}}
stringData: {api-key: partner-c-key}
---
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {name: expired, namespace: tests, labels: {tier: partner}}
stringData: {api-key: expired-key, x-org: late, expires-at: "2020-01-01T00:00:00Z"}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {name: optional-auth, namespace: tests}
spec:
  configs:
    - apiKeyAuth:
        mode: Optional
        headerName: x-api-key
        k8sSecretApikeyStorage: {labelSelector: {tier: partner}}
        headersFromMetadataEntry:
          x-org: {name: x-org}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {name: label-auth, namespace: tests}
spec:
  configs:
    - apiKeyAuth:
        headerName: x-api-key
        k8sSecretApikeyStorage:
          labelSelector: {tier: partner}
        headersFromMetadataEntry:
          x-org: {name: x-org}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {name: required-auth, namespace: tests}
spec:
  configs:
    - apiKeyAuth:
        headerName: x-api-key
        k8sSecretApikeyStorage:
          apiKeySecretRefs:
            - {name: partner-a}
            - {name: partner-c}
        headersFromMetadataEntry:
          x-team: {name: team, required: true}
---
apiVersion: extauth.solo.io/v1
kind: AuthConfig
metadata: {name: sources-auth, namespace: tests}
spec:
  configs:
    - apiKeyAuth:
        keySources:
          - header: x-api-key
          - query: api_key
          - cookie: session-key
        clientIdHeader: x-client-id
        k8sSecretApikeyStorage:
          labelSelector: {tier: partner}
"""

# path prefix -> config_id (None: the route is disabled for ext_authz; "": no config_id)
TEST_ROUTES: dict[str, str | None] = {
    "/labels": "tests.label-auth",
    "/required": "tests.required-auth",
    "/sources": "tests.sources-auth",
    "/unknown": "tests.does-not-exist",
    "/optional": "tests.optional-auth",
    "/disabled": None,
    "/default": "",
}


def _route(prefix: str, config_id: str | None) -> dict[str, Any]:
    route: dict[str, Any] = {"match": {"prefix": prefix}, "route": {"cluster": "upstream"}}
    per_route: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
    }
    if config_id is None:
        per_route["disabled"] = True
    elif config_id:
        per_route["check_settings"] = {"context_extensions": {"config_id": config_id}}
    else:
        return route  # no per-route config: extauth's --default-config applies
    route["typed_per_filter_config"] = {"envoy.filters.http.ext_authz": per_route}
    return route


def envoy_config(extauth: int, upstream: int, work: Path) -> tuple[dict[str, Any], int]:
    """envoy/envoy.yaml as shipped, on test ports, with the test routes in front."""
    config, listen = harness.envoy_config(extauth=extauth, upstream=upstream, work=work)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    vhost = hcm["typed_config"]["route_config"]["virtual_hosts"][0]
    vhost["routes"] = [_route(p, c) for p, c in TEST_ROUTES.items()] + vhost["routes"]
    return config, listen


@dataclass
class Stack:
    port: int
    config_dir: Path
    extauth: harness.Extauth

    def get(self, path: str, **headers: str) -> Response:
        return request(self.port, path, {k.replace("_", "-"): v for k, v in headers.items()})

    def write(self, name: str, text: str) -> Path:
        """Write a resource file atomically (as editors and ConfigMaps do)."""
        path = self.config_dir / name
        tmp = self.config_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(path)
        return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e")
    config_dir = harness.config_dir(work, {"tests.yaml": TEST_RESOURCES}, authconfigs=True)
    with harness.echo_upstream() as upstream_port:
        extauth = harness.Extauth(
            config_dir,
            work / "extauth.log",
            "--default-config",
            "agentgateway-system.apikey-auth",
        )
        shipped = functools.partial(envoy_config, extauth.port, upstream_port, work)
        with harness.serving(extauth, shipped, work) as (_, listen):
            yield Stack(listen, config_dir, extauth)


# The README scenario -------------------------------------------------------------------


def test_request_without_key_is_401_missing(stack: Stack) -> None:
    response = stack.get("/v1/chat/completions")
    assert response.status == 401
    assert response.json()["error"] == "missing_api_key"
    assert "vanity-auth" in response.json()["message"]
    assert response.headers["www-authenticate"].startswith("APIKey")
    assert response.headers["x-ext-auth-reason"] == "missing_api_key"


def test_wrong_key_is_401_invalid_and_never_echoed(stack: Stack) -> None:
    response = stack.get("/v1/chat/completions", vanity_auth="guess-the-key-123")
    assert response.status == 401
    assert response.json()["error"] == "invalid_api_key"
    assert b"guess-the-key-123" not in response.body
    assert "guess-the-key-123" not in str(response.headers)
    assert "guess-the-key-123" not in stack.extauth.log()


def test_valid_key_injects_org_and_strips_key(stack: Stack) -> None:
    response = stack.get("/v1/chat/completions", vanity_auth="team1-key")
    assert response.status == 200
    seen = upstream_headers(response)
    assert seen["x-org"] == ["developers"]
    assert "vanity-auth" not in seen


def test_bearer_prefix_is_accepted(stack: Stack) -> None:
    response = stack.get("/v1/chat/completions", vanity_auth="Bearer team1-key")
    assert response.status == 200


def test_spoofed_org_is_overwritten(stack: Stack) -> None:
    response = stack.get("/v1/chat/completions", vanity_auth="team1-key", x_org="admins")
    assert response.status == 200
    assert upstream_headers(response)["x-org"] == ["developers"]


def test_spoofed_org_is_removed_when_key_has_no_such_metadata(stack: Stack) -> None:
    response = stack.get("/labels", x_api_key="partner-c-key", x_org="admins")
    assert response.status == 200
    assert "x-org" not in upstream_headers(response)


def test_key_not_referenced_by_the_config_is_401(stack: Stack) -> None:
    # partner-a-key is valid elsewhere (label-auth) but apikey-auth lists only team1.
    assert stack.get("/labels", x_api_key="partner-a-key").status == 200
    response = stack.get("/v1/chat/completions", vanity_auth="partner-a-key")
    assert response.status == 401
    assert response.json()["error"] == "invalid_api_key"


# Route binding ---------------------------------------------------------------------------


def test_route_without_config_id_uses_default_config(stack: Stack) -> None:
    assert stack.get("/default").status == 401
    assert stack.get("/default", vanity_auth="team1-key").status == 200


def test_unknown_config_is_denied(stack: Stack) -> None:
    response = stack.get("/unknown", vanity_auth="team1-key")
    assert response.status == 403
    assert response.json()["error"] == "unknown_auth_config"
    assert "tests.does-not-exist" in stack.extauth.log()


def test_disabled_route_passes_without_key(stack: Stack) -> None:
    response = stack.get("/disabled")
    assert response.status == 200
    assert response.json()["path"] == "/disabled"


# Label selectors and metadata ---------------------------------------------------------------


def test_label_selector_admits_matching_secrets_only(stack: Stack) -> None:
    ok = stack.get("/labels", x_api_key="partner-a-key")
    assert ok.status == 200
    assert upstream_headers(ok)["x-org"] == ["partners"]
    assert stack.get("/labels", x_api_key="partner-b-key").status == 401  # tier: free
    assert stack.get("/labels", x_api_key="team1-key").status == 401  # no tier label


def test_required_metadata_missing_is_denied(stack: Stack) -> None:
    ok = stack.get("/required", x_api_key="partner-a-key")
    assert ok.status == 200
    assert upstream_headers(ok)["x-team"] == ["a"]
    denied = stack.get("/required", x_api_key="partner-c-key")  # no `team` entry
    assert denied.status == 403
    assert denied.json()["error"] == "missing_required_metadata"


def test_expired_key_is_401_expired(stack: Stack) -> None:
    response = stack.get("/labels", x_api_key="expired-key")
    assert response.status == 401
    assert response.json()["error"] == "expired_api_key"


def test_optional_mode_through_envoy(stack: Stack) -> None:
    anonymous = stack.get("/optional", x_org="admins")
    assert anonymous.status == 200
    assert "x-org" not in upstream_headers(anonymous)  # no key: identity headers removed
    keyed = stack.get("/optional", x_api_key="partner-a-key", x_org="admins")
    assert upstream_headers(keyed)["x-org"] == ["partners"]
    assert stack.get("/optional", x_api_key="wrong").status == 401


# Key sources -----------------------------------------------------------------------------


def test_query_key_source_and_key_removed_from_query(stack: Stack) -> None:
    response = stack.get("/sources/x?model=gpt&api_key=partner-a-key&n=1")
    assert response.status == 200
    path = response.json()["path"]
    assert "partner-a-key" not in path
    assert "api_key" not in path
    assert "model=gpt" in path
    assert "n=1" in path
    assert upstream_headers(response)["x-client-id"] == ["partner-a"]


def test_cookie_key_source_and_key_removed_from_cookie(stack: Stack) -> None:
    response = stack.get("/sources", cookie="theme=dark; session-key=partner-a-key; lang=en")
    assert response.status == 200
    assert upstream_headers(response)["cookie"] == ["theme=dark; lang=en"]


def test_first_present_source_wins_and_client_id_is_overwritten(stack: Stack) -> None:
    # The header comes first in keySources: its (wrong) key decides, not the query's.
    assert stack.get("/sources?api_key=partner-a-key", x_api_key="wrong").status == 401
    response = stack.get("/sources", x_api_key="partner-c-key", x_client_id="someone-else")
    assert response.status == 200
    seen = upstream_headers(response)
    assert seen["x-client-id"] == ["partner-c"]
    assert "x-api-key" not in seen


# Live changes ----------------------------------------------------------------------------

REVOCABLE = """
apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {{name: {name}, namespace: tests, labels: {{tier: {tier}}}}}
stringData: {{api-key: {key}, x-org: {org}}}
"""


def _status_becomes(stack: Stack, path: str, key: str, status: int, timeout: float = 5) -> float:
    """Seconds until the request returns `status` (polled, a bounded wait)."""
    start = time.monotonic()
    wait_until(
        lambda: True if stack.get(path, x_api_key=key).status == status else None,
        timeout,
        f"{path} to answer {status}",
    )
    return time.monotonic() - start


def test_new_secret_is_admitted_and_deleted_secret_is_revoked(
    stack: Stack, record_property: Any
) -> None:
    path = stack.write(
        "revocable.yaml", REVOCABLE.format(name="revocable", tier="partner", key="rev-key", org="o")
    )
    admitted = _status_becomes(stack, "/labels", "rev-key", 200)
    path.unlink()
    revoked = _status_becomes(stack, "/labels", "rev-key", 401)
    record_property("admission_seconds", round(admitted, 3))
    record_property("revocation_seconds", round(revoked, 3))
    print(f"\nadmitted after {admitted:.3f}s, revoked after {revoked:.3f}s")
    assert stack.get("/labels", x_api_key="partner-a-key").status == 200


def test_label_edit_moves_key_in_and_out_of_selector(stack: Stack) -> None:
    text = REVOCABLE.format(name="relabel", tier="free", key="relabel-key", org="o")
    path = stack.write("relabel.yaml", text)
    try:
        _status_becomes(stack, "/sources", "relabel-key", 401)
        stack.write("relabel.yaml", text.replace("tier: free", "tier: partner"))
        _status_becomes(stack, "/sources", "relabel-key", 200)
    finally:
        path.unlink()
    _status_becomes(stack, "/sources", "relabel-key", 401)


def test_broken_yaml_keeps_last_good_state(stack: Stack) -> None:
    good = REVOCABLE.format(name="fragile", tier="partner", key="fragile-key", org="before")
    path = stack.write("fragile.yaml", good)
    try:
        _status_becomes(stack, "/labels", "fragile-key", 200)
        stack.write("fragile.yaml", good + "  oops: [unclosed\n")
        wait_until(
            lambda: (
                True
                if "rejected" in stack.extauth.log() and "fragile" in stack.extauth.log()
                else None
            ),
            5,
            "extauth to reject the broken file",
        )
        response = stack.get("/labels", x_api_key="fragile-key")
        assert response.status == 200
        assert upstream_headers(response)["x-org"] == ["before"]
        assert stack.get("/v1/chat/completions", vanity_auth="team1-key").status == 200
        # Fixing the file applies the fix.
        stack.write("fragile.yaml", good.replace("x-org: before", "x-org: after"))
        wait_until(
            lambda: (
                True
                if upstream_headers(stack.get("/labels", x_api_key="fragile-key")).get("x-org")
                == ["after"]
                else None
            ),
            5,
            "the fixed file to apply",
        )
    finally:
        path.unlink()


def test_duplicate_key_in_two_secrets_is_refused(stack: Stack) -> None:
    # Same key as partner-a (tests.yaml), different holder, in a file that sorts after it:
    # refused, partner-a keeps working as itself.
    dup = REVOCABLE.format(name="copycat", tier="partner", key="partner-a-key", org="thieves")
    path = stack.write("zz-copycat.yaml", dup)
    try:
        wait_until(
            lambda: True if "same API key" in stack.extauth.log() else None,
            5,
            "the conflict to be reported",
        )
        response = stack.get("/labels", x_api_key="partner-a-key")
        assert response.status == 200
        assert upstream_headers(response)["x-org"] == ["partners"]
    finally:
        path.unlink()
