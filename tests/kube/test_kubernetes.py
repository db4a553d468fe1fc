"""extauth serve --kubernetes against a real API server: decisions through Check follow
Secrets and AuthConfigs as they are created, edited and deleted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from kubernetes import client

from tests import harness
from tests.harness import ROOT, request, upstream_headers, wait_until
from tests.kube.conftest import Cluster, connect
from tests.kube.kubelite import KubeLite, unavailable_reason

pytestmark = pytest.mark.kube

AUTH = {
    "headerName": "x-api-key",
    "k8sSecretApikeyStorage": {"labelSelector": {"tier": "partner"}},
    "headersFromMetadataEntry": {"x-org": {"name": "x-org"}},
}


def check(address: str, config_id: str, key: str | None) -> external_auth_pb2.CheckResponse:
    message = external_auth_pb2.CheckRequest()
    message.attributes.context_extensions["config_id"] = config_id
    message.attributes.request.http.path = "/"
    if key is not None:
        message.attributes.request.http.headers["x-api-key"] = key
    with grpc.insecure_channel(address) as channel:
        reply: external_auth_pb2.CheckResponse = external_auth_pb2_grpc.AuthorizationStub(
            channel
        ).Check(message, timeout=5)
        return reply


def allowed(address: str, config_id: str, key: str) -> bool:
    return bool(check(address, config_id, key).status.code == 0)


def becomes(address: str, config_id: str, key: str, expect: bool, timeout: float = 10) -> float:
    """Seconds until `key` is allowed (expect=True) or denied (False): a bounded poll."""
    start = time.monotonic()
    wait_until(
        lambda: True if allowed(address, config_id, key) == expect else None,
        timeout,
        f"{key} to be {'allowed' if expect else 'denied'}",
    )
    return time.monotonic() - start


class Service:
    def __init__(self, extauth: harness.Extauth, cluster: Cluster) -> None:
        self.extauth = extauth
        self.address = extauth.address
        self.cluster = cluster
        self.config_id = f"{cluster.namespace}.partners"


@pytest.fixture(scope="module")
def service(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    cluster.create_authconfig("partners", AUTH)
    extauth = cluster.extauth(tmp_path_factory.mktemp("kube-extauth") / "extauth.log")
    try:
        extauth.wait_ready()
        yield Service(extauth, cluster)
    finally:
        extauth.stop()


def test_key_admitted_after_create_and_denied_after_delete(
    service: Service, record_property: Any
) -> None:
    cluster = service.cluster
    assert not allowed(service.address, service.config_id, "k-create")
    cluster.create_secret("created", "k-create", {"tier": "partner"}, x_org="red")
    admitted = becomes(service.address, service.config_id, "k-create", True)
    reply = check(service.address, service.config_id, "k-create")
    assert [(h.header.key, h.header.value) for h in reply.ok_response.headers] == [("x-org", "red")]
    cluster.delete_secret("created")
    revoked = becomes(service.address, service.config_id, "k-create", False)
    record_property("k8s_admission_seconds", round(admitted, 3))
    record_property("k8s_revocation_seconds", round(revoked, 3))
    print(f"\nkubernetes: admitted after {admitted:.3f}s, revoked after {revoked:.3f}s")


def test_label_selector_membership_follows_label_edits(service: Service) -> None:
    cluster = service.cluster
    cluster.create_secret("relabel", "k-relabel", {"tier": "free"})
    try:
        time.sleep(0.3)
        assert not allowed(service.address, service.config_id, "k-relabel")
        cluster.core.patch_namespaced_secret(
            "relabel", cluster.namespace, {"metadata": {"labels": {"tier": "partner"}}}
        )
        becomes(service.address, service.config_id, "k-relabel", True)
        cluster.core.patch_namespaced_secret(
            "relabel", cluster.namespace, {"metadata": {"labels": {"tier": "gone"}}}
        )
        becomes(service.address, service.config_id, "k-relabel", False)
    finally:
        cluster.delete_secret("relabel")


def test_authconfig_edit_is_applied_and_status_written(service: Service) -> None:
    cluster = service.cluster
    cluster.create_secret("editor", "k-edit", {"tier": "partner"})
    cluster.create_authconfig("editable", AUTH)
    config_id = f"{cluster.namespace}.editable"
    try:
        becomes(service.address, config_id, "k-edit", True)
        status = wait_until(
            lambda: cluster.get_authconfig("editable").get("status") or None, 10, "status"
        )
        assert status["state"] == "Accepted"
        generation = cluster.get_authconfig("editable")["metadata"]["generation"]
        assert status["observedGeneration"] == generation
        conditions = {c["type"]: c for c in status["conditions"]}
        condition = conditions["Accepted"]
        assert conditions["SchemaCurrent"]["status"] == "True"  # the CRD is the current one
        assert (condition["status"], condition["reason"]) == ("True", "Accepted")
        assert condition["observedGeneration"] == generation
        assert condition["lastTransitionTime"]

        cluster.patch_authconfig("editable", {**AUTH, "headerName": "x-other"})
        becomes(service.address, config_id, "k-edit", False)  # x-api-key no longer read
        wait_until(
            lambda: (
                True
                if cluster.get_authconfig("editable")["status"]["observedGeneration"]
                == generation + 1
                else None
            ),
            10,
            "observedGeneration to follow the edit",
        )
    finally:
        cluster.custom.delete_namespaced_custom_object(
            "extauth.solo.io", "v1", cluster.namespace, "authconfigs", "editable"
        )
        cluster.delete_secret("editor")


def test_malformed_authconfig_is_refused_with_422(cluster: Cluster) -> None:
    with pytest.raises(client.exceptions.ApiException) as refused:
        cluster.create_authconfig("malformed", {"headerName": 42})
    assert refused.value.status == 422
    with pytest.raises(client.exceptions.ApiException) as empty:
        cluster.custom.create_namespaced_custom_object(
            "extauth.solo.io",
            "v1",
            cluster.namespace,
            "authconfigs",
            {
                "apiVersion": "extauth.solo.io/v1",
                "kind": "AuthConfig",
                "metadata": {"name": "noconfigs"},
                "spec": {"configs": []},
            },
        )
    assert empty.value.status == 422


def test_unworkable_authconfig_is_rejected_and_last_good_keeps_serving(service: Service) -> None:
    cluster = service.cluster
    cluster.create_secret("steady", "k-steady", {"tier": "partner"})
    cluster.create_authconfig("fragile", AUTH)
    config_id = f"{cluster.namespace}.fragile"
    try:
        becomes(service.address, config_id, "k-steady", True)
        # Passes the CRD schema, but names a header Envoy manages: extauth refuses it.
        cluster.patch_authconfig("fragile", {**AUTH, "headerName": "host"})
        status = wait_until(
            lambda: (
                (cluster.get_authconfig("fragile").get("status") or {}).get("state") == "Rejected"
                or None
            ),
            10,
            "status Rejected",
        )
        assert status
        reason = cluster.get_authconfig("fragile")["status"]["reason"]
        assert "managed by Envoy" in reason
        (condition,) = (
            c
            for c in cluster.get_authconfig("fragile")["status"]["conditions"]
            if c["type"] == "Accepted"
        )
        assert (condition["status"], condition["reason"]) == ("False", "Rejected")
        assert "managed by Envoy" in condition["message"]
        assert allowed(service.address, config_id, "k-steady")  # the last good version
        assert "rejected (keeping its last good version)" in service.extauth.log()
    finally:
        cluster.custom.delete_namespaced_custom_object(
            "extauth.solo.io", "v1", cluster.namespace, "authconfigs", "fragile"
        )
        cluster.delete_secret("steady")


def test_status_of_a_new_unworkable_authconfig(service: Service) -> None:
    cluster = service.cluster
    cluster.create_authconfig(
        "both",
        {"headerName": "x-id", "clientIdHeader": "x-id", "apiKeySecretRefs": [{"name": "x"}]},
    )
    try:
        wait_until(
            lambda: (
                (cluster.get_authconfig("both").get("status") or {}).get("state") == "Rejected"
                or None
            ),
            10,
            "status Rejected",
        )
        assert (
            "both a key source and injected" in cluster.get_authconfig("both")["status"]["reason"]
        )
        reply = check(service.address, f"{cluster.namespace}.both", "any")
        assert reply.denied_response.status.code == 403  # unknown config: fail closed
    finally:
        cluster.custom.delete_namespaced_custom_object(
            "extauth.solo.io", "v1", cluster.namespace, "authconfigs", "both"
        )


def test_watch_resumes_after_api_server_restart(service: Service) -> None:
    cluster = service.cluster
    if cluster.kubelite is None:
        pytest.skip("restarting the API server needs kube-lite (not a real cluster)")
    cluster.create_secret("steady-through", "k-steady-through", {"tier": "partner"})
    becomes(service.address, service.config_id, "k-steady-through", True)
    cluster.kubelite.stop_api_server()
    # While the API server is gone: the last good state keeps deciding, both ways.
    for _ in range(10):
        assert allowed(service.address, service.config_id, "k-steady-through")
        assert not allowed(service.address, service.config_id, "k-unknown")
        time.sleep(0.1)
    cluster.kubelite.start_api_server()
    api = connect(cluster.kubeconfig)
    try:
        fresh = Cluster(cluster.kubeconfig, api, cluster.namespace, cluster.kubelite)
        fresh.create_secret("after-restart", "k-restart", {"tier": "partner"})
        elapsed = becomes(service.address, service.config_id, "k-restart", True, timeout=40)
        print(f"\nkubernetes: admitted {elapsed:.2f}s after the API server came back")
        fresh.delete_secret("after-restart")
        becomes(service.address, service.config_id, "k-restart", False, timeout=10)
        fresh.delete_secret("steady-through")
    finally:
        api.close()


def test_relist_after_410_gone(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"410 Gone needs kube-lite with fast compaction: {reason}")
    kubelite = KubeLite(tmp_path / "kl", ("--watch-cache=false", "--etcd-compaction-interval=2s"))
    kubelite.start()
    api = connect(kubelite.kubeconfig)
    extauth: harness.Extauth | None = None
    try:
        from tests.kube.conftest import apply_crd

        apply_crd(api)
        namespace = "gone"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        cluster = Cluster(kubelite.kubeconfig, api, namespace, kubelite)
        cluster.create_authconfig("partners", AUTH)
        cluster.create_secret("early", "k-early", {"tier": "partner"})
        extauth = harness.kube_extauth(
            kubelite.kubeconfig,
            tmp_path / "extauth.log",
            "--kube-watch-timeout",
            "2",
        )
        extauth.wait_ready()
        config_id = f"{namespace}.partners"
        assert allowed(extauth.address, config_id, "k-early")
        # Advance etcd's revision elsewhere, let compaction pass the watch's version; the
        # Secret watch (no events of its own) restarts from a compacted version: 410.
        for i in range(30):
            client.CoreV1Api(api).create_namespaced_config_map(
                namespace, {"metadata": {"name": f"churn-{i}"}, "data": {"i": str(i)}}
            )
            time.sleep(0.2)
        wait_until(
            lambda: True if "410 Gone" in extauth.log() else None,
            30,
            "a 410 Gone and a relist",
        )
        assert "relisting" in extauth.log()
        # State is still right after the relist, and changes keep flowing.
        assert allowed(extauth.address, config_id, "k-early")
        cluster.delete_secret("early")
        becomes(extauth.address, config_id, "k-early", False)
    finally:
        if extauth is not None:
            extauth.stop()
        api.close()
        kubelite.stop()


def test_scenario_through_envoy(cluster: Cluster, tmp_path: Path) -> None:
    """The core scenario, with authconfigs/ applied to the API server instead of files."""
    namespace = cluster.namespace
    for path in sorted((ROOT / "authconfigs").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            document["metadata"]["namespace"] = namespace
            if document["kind"] == "Secret":
                cluster.core.create_namespaced_secret(namespace, document)
            else:
                for entry in document["spec"]["configs"]:
                    for ref in entry["apiKeyAuth"]["k8sSecretApikeyStorage"]["apiKeySecretRefs"]:
                        ref["namespace"] = namespace
                cluster.custom.create_namespaced_custom_object(
                    "extauth.solo.io", "v1", namespace, "authconfigs", document
                )
    with harness.echo_upstream() as upstream:
        extauth = harness.kube_extauth(
            cluster.kubeconfig,
            tmp_path / "extauth.log",
            "--default-config",
            f"{namespace}.apikey-auth",
        )

        def in_namespace() -> tuple[dict[str, Any], int]:
            config, listen = harness.envoy_config(
                extauth=extauth.port, upstream=upstream, work=tmp_path
            )
            # Routes name agentgateway-system.apikey-auth; the test namespace differs.
            text = yaml.safe_dump(config).replace(
                "agentgateway-system.apikey-auth", f"{namespace}.apikey-auth"
            )
            return yaml.safe_load(text), listen

        with harness.serving(extauth, in_namespace, tmp_path) as (_, listen):
            assert request(listen, "/v1/chat/completions").status == 401
            response = request(
                listen, "/v1/chat/completions", {"vanity-auth": "team1-key", "x-org": "admins"}
            )
            assert response.status == 200
            seen = upstream_headers(response)
            assert seen["x-org"] == ["developers"]
            assert "vanity-auth" not in seen


def test_not_ready_until_the_first_sync(tmp_path: Path) -> None:
    """An unreachable API server: /readyz stays 503 and Check is not served; retries are logged."""
    kubeconfig = tmp_path / "kubeconfig"
    port = harness.free_port()  # nothing listens here
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    http_port = harness.free_port()
    extauth = harness.kube_extauth(
        kubeconfig,
        tmp_path / "extauth.log",
        "--http-address",
        f"127.0.0.1:{http_port}",
    )
    try:
        wait_until(lambda: True if "retrying" in extauth.log() else None, 20, "a logged retry")
        assert request(http_port, "/readyz").status == 503
        assert request(http_port, "/healthz").status == 200
        assert not harness.grpc_serving(extauth.address)
    finally:
        assert extauth.stop() == 0
