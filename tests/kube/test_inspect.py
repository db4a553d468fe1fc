"""`extauth inspect --kubernetes`: the same report from a cluster's objects."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.kube.conftest import Cluster

pytestmark = pytest.mark.kube


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[Cluster]:
    name = f"inspect-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield Cluster(cluster.kubeconfig, cluster.api, name, cluster.kubelite)
    if cluster.kubelite is None:
        cluster.core.delete_namespace(name)


def test_inspect_reports_a_cluster_without_keys(namespace: Cluster) -> None:
    namespace.create_secret("gold", "k-inspect-gold", {"tier": "gold"}, x_org="gold-team")
    namespace.create_secret("stray", "k-inspect-stray", {"tier": "none"})
    namespace.create_authconfig(
        "gold",
        {
            "headerName": "x-api-key",
            "k8sSecretApikeyStorage": {"labelSelector": {"tier": "gold"}},
            "headersFromMetadataEntry": {"x-org": {"name": "x-org"}},
        },
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "extauth.cli",
            "inspect",
            "--kubernetes",
            "--kubeconfig",
            str(namespace.kubeconfig),
            "--namespace",
            namespace.namespace,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (view,) = report["authconfigs"]
    assert view["config_id"] == f"{namespace.namespace}.gold"
    assert [(i["name"], i["headers"]) for i in view["identities"]] == [
        ("gold", {"x-org": "gold-team"})
    ]
    assert report["unadmitted"] == [f"{namespace.namespace}/stray"]
    for key in ("k-inspect-gold", "k-inspect-stray"):
        assert key not in result.stdout
        assert key not in result.stderr
    # inspect only reads: it never writes status
    status = namespace.get_authconfig("gold").get("status")
    assert not status
