"""Two AuthConfigs in a cluster claiming one host: the older keeps it, whatever the names;
the newer's status says which host it was refused and by whom, and the refusal lifts
when the older goes. Against a real API server (kube-lite), through Check."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from kubernetes import client

from tests.harness import wait_until
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster, authconfig_body

pytestmark = pytest.mark.kube

HOST = "api.conflict.example.com"


def allowed(address: str, host: str, key: str) -> bool:
    message = external_auth_pb2.CheckRequest()
    message.attributes.request.http.path = "/"
    message.attributes.request.http.host = host
    message.attributes.request.http.headers["x-api-key"] = key
    with grpc.insecure_channel(address) as channel:
        reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(message, timeout=5)
    return bool(reply.status.code == 0)


def create(cluster: Cluster, name: str, hosts: list[str], secret: str) -> None:
    body: dict[str, Any] = authconfig_body(
        name, {"headerName": "x-api-key", "apiKeySecretRefs": [{"name": secret}]}
    )
    body["spec"]["hosts"] = hosts
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)


def reason(cluster: Cluster, name: str) -> str | None:
    status = cluster.get_authconfig(name).get("status") or {}
    return status.get("reason") if status.get("state") == "Accepted" else None


@pytest.fixture(scope="module")
def extauth(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = cluster.extauth(tmp_path_factory.mktemp("kube-hosts") / "extauth.log")
    try:
        server.wait_ready()
        yield server.address
    finally:
        server.stop()


def test_the_older_keeps_the_host_and_the_newer_is_told(extauth: str, cluster: Cluster) -> None:
    ns = cluster.namespace
    cluster.create_secret("host-old", "k-host-old")
    cluster.create_secret("host-new", "k-host-new")
    # "zzz" is the older: the name a tenant picks decides nothing.
    create(cluster, "zzz-older", [HOST], "host-old")
    wait_until(lambda: reason(cluster, "zzz-older") == "" or None, 10, "older Accepted")
    time.sleep(1.1)  # creationTimestamp counts seconds
    create(cluster, "aaa-newer", [HOST.upper(), "own.conflict.example.com"], "host-new")
    try:
        wait_until(
            lambda: allowed(extauth, "own.conflict.example.com", "k-host-new") or None,
            10,
            "newer loaded",
        )
        assert allowed(extauth, HOST, "k-host-old")
        assert not allowed(extauth, HOST, "k-host-new")
        told = wait_until(
            lambda: (reason(cluster, "aaa-newer") or "") or None, 10, "the newer's status"
        )
        assert f"host '{HOST}' is already claimed by AuthConfig {ns}/zzz-older" in told
        assert reason(cluster, "zzz-older") == ""
        conditions = {
            c["type"]: c for c in cluster.get_authconfig("aaa-newer")["status"]["conditions"]
        }
        assert conditions["Accepted"]["status"] == "True"
        assert "already claimed" in conditions["Accepted"]["message"]

        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "zzz-older")
        wait_until(lambda: allowed(extauth, HOST, "k-host-new") or None, 10, "the host taken over")
        wait_until(lambda: reason(cluster, "aaa-newer") == "" or None, 10, "the refusal lifted")
    finally:
        for name in ("zzz-older", "aaa-newer"):
            with contextlib.suppress(client.exceptions.ApiException):  # deleted by the test
                cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        cluster.delete_secret("host-old")
        cluster.delete_secret("host-new")
