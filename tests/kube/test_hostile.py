"""Objects a tenant with rights in one namespace can write, against extauth serve
--kubernetes on kube-lite: an AuthConfig nested 1,000 levels deep, a Secret copying
another team's key hash, an oversized Secret, a Secret kept alive by a finalizer. Each is
dealt with alone, and everything else keeps applying."""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2

from extauth.sources import bounds
from tests import harness
from tests.harness import request, wait_until
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster, authconfig_body
from tests.kube.test_kubernetes import allowed, becomes, check

pytestmark = pytest.mark.kube

AUTH = {
    "headerName": "x-api-key",
    "k8sSecretApikeyStorage": {"labelSelector": {"tier": "partner"}},
    "headersFromMetadataEntry": {"x-org": {"name": "x-org"}},
}


def _namespace(cluster: Cluster, prefix: str) -> Cluster:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    return Cluster(cluster.kubeconfig, cluster.api, name, cluster.kubelite)


def _serve(cluster: Cluster, log: Path, *extra: str) -> tuple[harness.Extauth, int]:
    http = harness.free_port()
    extauth = harness.kube_extauth(
        cluster.kubeconfig,
        log,
        "--http-address",
        f"127.0.0.1:{http}",
        *extra,
    )
    return extauth, http


@pytest.fixture
def tenant(cluster: Cluster) -> Cluster:
    return _namespace(cluster, "tenant")


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    """Read as extauth reads it: the client's own decoder cannot take the bomb."""
    response: Any = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, name, _preload_content=False
    )
    found: dict[str, Any] = bounds.loads(response.data).get("status") or {}
    return found


def _metric(http: int, name: str, labels: str) -> float:
    for line in request(http, "/metrics").body.decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _org(address: str, config_id: str, key: str) -> str | None:
    reply: external_auth_pb2.CheckResponse = check(address, config_id, key)
    if reply.status.code != 0:
        return None
    found = {h.header.key: h.header.value for h in reply.ok_response.headers}
    return found.get("x-org")


def _create_bomb(tenant: Cluster, deep: Any) -> None:
    tenant.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        tenant.namespace,
        PLURAL,
        authconfig_body(
            "bomb",
            {
                "headerName": "x-api-key",
                "k8sSecretApikeyStorage": {"labelSelector": {"tier": "partner", "d": deep}},
            },
        ),
    )


def test_an_authconfig_nested_1000_deep_is_rejected_alone(tenant: Cluster, tmp_path: Path) -> None:
    deep: Any = "x"
    for _ in range(1000):
        deep = {"a": deep}
    tenant.create_authconfig("partners", AUTH)
    tenant.create_secret("k", "k-deep", {"tier": "partner"}, x_org="red")
    extauth, http = _serve(tenant, tmp_path / "running.log", "--namespace", tenant.namespace)
    try:
        extauth.wait_ready()
        config_id = f"{tenant.namespace}.partners"
        becomes(extauth.address, config_id, "k-deep", True)
        # Accepted by the API server: the CRD preserves unknown fields there. (The
        # client's own serializer recurses: give it room, in this test process only.)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10_000)
        try:
            _create_bomb(tenant, deep)
        finally:
            sys.setrecursionlimit(limit)
        # The stream moves on: a later AuthConfig applies, a deletion revokes.
        tenant.create_authconfig("later", AUTH)
        becomes(extauth.address, f"{tenant.namespace}.later", "k-deep", True)
        status = wait_until(
            lambda: _status(tenant, "bomb").get("reason") or None,
            10,
            "the bomb's status",
        )
        assert "nested more than 32 levels" in status
        assert _status(tenant, "bomb")["state"] == "Rejected"
        assert "AuthConfig" in extauth.log()
        assert "nested more than 32 levels" in extauth.log()
        assert (
            _metric(http, "extauth_kube_objects_rejected_total", 'kind="AuthConfig",reason="limit"')
            == 1.0
        )
        assert (
            _metric(
                http, "extauth_rejected_resources_total", 'kind="AuthConfig",source="kubernetes"'
            )
            == 1.0
        )
        # Rejected now: a problem until it goes (the policy itself has none).
        assert _metric(http, "extauth_config_problems", "") == 1.0
        # The status page says so, with the reason.
        page = request(http, "/").body.decode()
        row = page.split(f'data-config="{tenant.namespace}.bomb"', 1)[1].split("</tr>", 1)[0]
        assert "Rejected" in row
        assert "nested more than 32 levels" in row
        # A fresh replica lists the bomb and turns ready all the same.
        fresh, _ = _serve(tenant, tmp_path / "fresh.log", "--namespace", tenant.namespace)
        try:
            fresh.wait_ready()
            assert allowed(fresh.address, config_id, "k-deep")
            assert "nested more than 32 levels" in fresh.log()
        finally:
            fresh.stop()
        tenant.delete_secret("k")
        becomes(extauth.address, config_id, "k-deep", False)
        tenant.custom.delete_namespaced_custom_object(
            GROUP, VERSION, tenant.namespace, PLURAL, "bomb"
        )
        wait_until(
            lambda: True if _metric(http, "extauth_config_problems", "") == 0.0 else None,
            10,
            "the deleted bomb to stop counting as a problem",
        )
    finally:
        extauth.stop()


def test_a_copied_key_hash_never_takes_the_key(cluster: Cluster, tmp_path: Path) -> None:
    """The victim's Secret is older: whichever namespace and name the copy has, every
    replica, every restart and every rotation leave the key with the victim."""
    victim = _namespace(cluster, "zzz-victim")
    attacker = _namespace(cluster, "aaa")  # sorts first by name
    victim.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        victim.namespace,
        PLURAL,
        authconfig_body("partners", {**AUTH, "allNamespaces": True}),
    )
    victim.create_secret("team", "k-victim", {"tier": "partner"}, x_org="victim")
    time.sleep(1.1)  # creationTimestamp has whole seconds
    digest = hashlib.sha256(b"k-victim").hexdigest()
    attacker.core.create_namespaced_secret(
        attacker.namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "extauth.solo.io/apikey",
            "metadata": {"name": "aaa", "labels": {"tier": "partner"}},
            "stringData": {"api-key-hash": f"sha256:{digest}", "x-org": "attacker"},
        },
    )
    config_id = f"{victim.namespace}.partners"
    running, _ = _serve(cluster, tmp_path / "running.log")
    try:
        running.wait_ready()
        wait_until(lambda: _org(running.address, config_id, "k-victim"), 10, "an allow")
        assert _org(running.address, config_id, "k-victim") == "victim"
        # A rotation of the victim's Secret: its key stays its own.
        victim.core.patch_namespaced_secret(
            "team", victim.namespace, {"stringData": {"api-key-next": "k-victim-next"}}
        )
        becomes(running.address, config_id, "k-victim-next", True)
        assert _org(running.address, config_id, "k-victim") == "victim"
        restarted, _ = _serve(cluster, tmp_path / "restarted.log")
        try:
            restarted.wait_ready()
            assert _org(restarted.address, config_id, "k-victim") == "victim"
            assert f"Secret {attacker.namespace}/aaa holds the same API key" in restarted.log()
        finally:
            restarted.stop()
        # Without allNamespaces (the default), the tenant's Secret is not even selected.
        victim.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            victim.namespace,
            PLURAL,
            "partners",
            {"spec": {"configs": [{"apiKeyAuth": AUTH}]}},
            _content_type="application/merge-patch+json",
        )
        victim.delete_secret("team")
        becomes(running.address, config_id, "k-victim", False)
    finally:
        running.stop()


def test_oversized_and_terminating_secrets(tenant: Cluster, tmp_path: Path) -> None:
    tenant.create_authconfig("partners", AUTH)
    tenant.create_secret("small", "k-small", {"tier": "partner"}, x_org="a" * 100)
    tenant.create_secret("big", "k-big", {"tier": "partner"}, x_org="b" * 3000)
    tenant.core.create_namespaced_secret(
        tenant.namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "extauth.solo.io/apikey",
            "metadata": {
                "name": "held",
                "labels": {"tier": "partner"},
                "finalizers": ["example.com/hold"],
            },
            "stringData": {"api-key": "k-held"},
        },
    )
    extauth, http = _serve(
        tenant,
        tmp_path / "extauth.log",
        "--namespace",
        tenant.namespace,
        "--kube-max-secret-bytes",
        "2048",
    )
    config_id = f"{tenant.namespace}.partners"
    try:
        extauth.wait_ready()
        assert allowed(extauth.address, config_id, "k-small")
        assert not allowed(extauth.address, config_id, "k-big")
        assert "over the limit of 2048 bytes per Secret (--kube-max-secret-bytes)" in (
            extauth.log()
        )
        assert (
            _metric(http, "extauth_kube_objects_rejected_total", 'kind="Secret",reason="limit"')
            == 1.0
        )
        assert allowed(extauth.address, config_id, "k-held")
        # Deleted, but a finalizer holds it: terminating counts as deleted.
        tenant.delete_secret("held")
        assert tenant.core.read_namespaced_secret("held", tenant.namespace).metadata
        becomes(extauth.address, config_id, "k-held", False)
        fresh, _ = _serve(tenant, tmp_path / "fresh.log", "--namespace", tenant.namespace)
        try:
            fresh.wait_ready()
            assert allowed(fresh.address, config_id, "k-small")
            assert not allowed(fresh.address, config_id, "k-held")
        finally:
            fresh.stop()
    finally:
        extauth.stop()
        tenant.core.patch_namespaced_secret(
            "held", tenant.namespace, {"metadata": {"finalizers": None}}
        )
