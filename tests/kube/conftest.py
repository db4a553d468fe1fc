"""The cluster the Kubernetes tests run against.

EXTAUTH_TEST_KUBECONFIG=path: any real cluster (tests that restart the API server or need
fast compaction are skipped there). Otherwise ../shared/kube-lite over etcd, started fresh
for the session. Neither available: every test here skips, saying why.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client, config

from extauth import crds
from extauth.sources import apiserver
from extauth.sources.apiserver import ApiServer
from tests import harness
from tests.kube.kubelite import KubeLite, unavailable_reason

GROUP, VERSION, PLURAL = "extauth.solo.io", "v1", "authconfigs"
_SERVERS: dict[Path, ApiServer] = {}


@dataclass
class Cluster:
    kubeconfig: Path
    api: client.ApiClient
    namespace: str
    kubelite: KubeLite | None

    @property
    def server(self) -> ApiServer:
        """extauth's own client for this cluster (the official one is the tests'): one per
        kubeconfig for the session, closed with the cluster."""
        found = _SERVERS.get(self.kubeconfig)
        if found is None:
            found = _SERVERS[self.kubeconfig] = apiserver.connect(str(self.kubeconfig))
        return found

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create_secret(
        self, name: str, key: str, labels: dict[str, str] | None = None, **meta: str
    ) -> None:
        self.core.create_namespaced_secret(
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "extauth.solo.io/apikey",
                "metadata": {"name": name, "labels": labels or {}},
                "stringData": {"api-key": key, **{k.replace("_", "-"): v for k, v in meta.items()}},
            },
        )

    def delete_secret(self, name: str) -> None:
        self.core.delete_namespaced_secret(name, self.namespace)

    def extauth(self, log: Path, *extra: str) -> harness.Extauth:
        """`extauth serve` reading this cluster's namespace, started (not yet ready)."""
        return harness.kube_extauth(
            self.kubeconfig,
            log,
            "--namespace",
            self.namespace,
            *extra,
        )

    def create_authconfig(self, name: str, api_key_auth: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, authconfig_body(name, api_key_auth)
        )

    def get_authconfig(self, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return cast(dict[str, Any], found)

    def patch_authconfig(self, name: str, api_key_auth: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            {"spec": {"configs": [{"apiKeyAuth": api_key_auth}]}},
            _content_type="application/merge-patch+json",
        )


def authconfig_body(name: str, api_key_auth: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AuthConfig",
        "metadata": {"name": name},
        "spec": {"configs": [{"apiKeyAuth": api_key_auth}]},
    }


def apply_crd(api: client.ApiClient) -> None:
    apply_crd_body(api, yaml.safe_load(crds.CRD_PATH.read_text()))


def apply_crd_body(api: client.ApiClient, body: dict[str, Any]) -> None:
    """Create or replace the CRD, and wait until it is established."""
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(body)
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
        current = extensions.read_custom_resource_definition(body["metadata"]["name"])
        assert current.metadata is not None
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(body["metadata"]["name"], body)
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = extensions.read_custom_resource_definition(body["metadata"]["name"])
        conditions = {c.type: c.status for c in ((crd.status and crd.status.conditions) or [])}
        if conditions.get("Established") == "True":
            return
        time.sleep(0.2)
    raise AssertionError("CRD not established in 30s")


def connect(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = os.environ.get("EXTAUTH_TEST_KUBECONFIG")
    kubelite: KubeLite | None = None
    if external:
        kubeconfig = Path(external)
    else:
        reason = unavailable_reason()
        if reason:
            pytest.skip(
                f"Kubernetes tests skipped: {reason}, and EXTAUTH_TEST_KUBECONFIG is not set"
            )
        kubelite = KubeLite(tmp_path_factory.mktemp("kube-lite"))
        kubelite.start()
        kubeconfig = kubelite.kubeconfig
    api = connect(kubeconfig)
    namespace = f"extauth-test-{uuid.uuid4().hex[:6]}"
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        apply_crd(api)
        yield Cluster(kubeconfig, api, namespace, kubelite)
    finally:
        if external:
            client.CoreV1Api(api).delete_namespace(namespace)
        api.close()
        for server in _SERVERS.values():
            server.close()
        _SERVERS.clear()
        if kubelite is not None:
            kubelite.stop()


@pytest.fixture(autouse=True)
def _collect_at_teardown() -> Iterator[None]:
    """Collect garbage before each test ends: a socket a test leaves unclosed is then
    reported (ResourceWarning, an error here) against that test, under that test's
    warning filters, never at a random later collection in an unrelated test."""
    yield
    gc.collect()
