"""The manifests a cluster admin applies: each overlay renders, every object passes
Kubernetes' own schemas (strict: an unknown field fails), applies to the API server where it
serves the kind, and says what an admin checks for (least privilege, images from a
registry, disruption budgets, network policy, draining, scraping)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from tests.harness import ROOT
from tests.kube.conftest import Cluster

pytestmark = pytest.mark.kube

DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["cluster-wide", "namespaced"]
KUBERNETES_VERSION = "1.37.0"
# Kinds kube-lite does not serve (its README): applied only on a real cluster.
NOT_IN_KUBE_LITE = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "RoleBinding",
    "Deployment",
    "PodDisruptionBudget",
    "NetworkPolicy",
}


def _kubectl(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    config = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return subprocess.run(
        ["kubectl", *config, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _rendered:
        result = _kubectl("kustomize", str(DEPLOY / "overlays" / overlay))
        assert result.returncode == 0, result.stderr
        _rendered[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return _rendered[overlay]


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = (d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_the_kubernetes_schemas_strictly(overlay: str) -> None:
    documents = rendered(overlay)
    for document in documents:
        # Raises ValidationError (unknown fields included, strict) with the path.
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    assert {d["kind"] for d in documents} >= {
        "CustomResourceDefinition",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Service",
        "ClusterRole",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_unserved_kinds_match_the_official_models(overlay: str) -> None:
    """A second opinion on what kube-lite cannot apply: the client's typed models drop a
    field they do not know, and the round trip then differs."""
    api = client.ApiClient()
    checked = 0
    for document in rendered(overlay):
        if document["kind"] not in NOT_IN_KUBE_LITE:
            continue
        typed = api._ApiClient__deserialize(document, f"V1{document['kind']}")  # type: ignore[attr-defined]
        assert api.sanitize_for_serialization(typed) == document, document["kind"]
        checked += 1
    assert checked >= 9


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_applies_with_kubectl(cluster: Cluster, overlay: str) -> None:
    kinds = {d["kind"] for d in rendered(overlay)}
    result = _kubectl(
        "apply", "-k", str(DEPLOY / "overlays" / overlay), kubeconfig=cluster.kubeconfig
    )
    output = result.stdout + result.stderr
    if cluster.kubelite is None:
        assert result.returncode == 0, output
    else:
        # Everything kube-lite serves applies; it refuses only the kinds it does not serve.
        refused = set()
        for line in output.splitlines():
            if "no matches for kind" in line:
                refused.add(line.split('kind "')[1].split('"')[0])
        assert refused == NOT_IN_KUBE_LITE & kinds, output
        assert not [line for line in output.splitlines() if line.startswith("error")], output
    for applied in ("namespace/extauth-system", "configmap/envoy-config", "service/extauth"):
        assert applied in result.stdout
    assert "customresourcedefinition.apiextensions.k8s.io/authconfigs.extauth.solo.io" in (
        result.stdout
    )
    established = _kubectl(
        "wait",
        "--for=condition=Established",
        "crd/authconfigs.extauth.solo.io",
        "--timeout=30s",
        kubeconfig=cluster.kubeconfig,
    )
    assert established.returncode == 0, established.stderr
    printed = _kubectl("get", "authconfigs", "-A", kubeconfig=cluster.kubeconfig)
    assert printed.returncode == 0, printed.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_least_privilege(overlay: str) -> None:
    """kube-lite does not enforce RBAC: the rules are read and compared exactly."""
    documents = rendered(overlay)
    roles = {
        d["metadata"]["name"]: {
            (
                tuple(r["apiGroups"]),
                tuple(r["resources"]),
                tuple(r.get("resourceNames", ())),
                tuple(sorted(r["verbs"])),
            )
            for r in d["rules"]
        }
        for d in documents
        if d["kind"] == "ClusterRole"
    }
    assert roles == {
        "extauth": {
            (("",), ("secrets",), (), ("get", "list", "watch")),
            (("extauth.solo.io",), ("authconfigs",), (), ("get", "list", "watch")),
            (("extauth.solo.io",), ("authconfigs/status",), (), ("patch",)),
        },
        "extauth-crd-reader": {
            (
                ("apiextensions.k8s.io",),
                ("customresourcedefinitions",),
                ("authconfigs.extauth.solo.io",),
                ("get",),
            ),
        },
    }
    subject = [{"kind": "ServiceAccount", "name": "extauth", "namespace": "extauth-system"}]
    bindings = {
        (d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"])
        for d in documents
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
    }
    for document in documents:
        if document["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            assert document["subjects"] == subject
    args = one(documents, "Deployment", "extauth")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    if overlay == "cluster-wide":
        assert bindings == {
            ("ClusterRoleBinding", None, "extauth"),
            ("ClusterRoleBinding", None, "extauth-crd-reader"),
        }
        assert not [a for a in args if a.startswith("--namespace")]
    else:
        # Secrets are readable in agentgateway-system only, and extauth watches only there.
        assert bindings == {
            ("RoleBinding", "agentgateway-system", "extauth"),
            ("ClusterRoleBinding", None, "extauth-crd-reader"),
        }
        assert "--namespace=agentgateway-system" in args


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_a_cluster_admin_checks(overlay: str) -> None:
    documents = rendered(overlay)
    for name, port in (("extauth", "9090"), ("envoy", "9901")):
        deployment = one(documents, "Deployment", name)
        template = deployment["spec"]["template"]
        spec = template["spec"]
        labels = template["metadata"]["labels"]
        (container,) = spec["containers"]
        # An image from a registry, pinned: `latest` or a bare local name cannot be pulled
        # on a multi-node cluster.
        image = container["image"]
        assert ":" in image, image
        assert not image.endswith(":latest"), image
        assert "/" in image, image
        assert deployment["spec"]["replicas"] >= 2
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"]
        # Scraped.
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        # Drained: out of the endpoints first, then SIGTERM, all within the grace period.
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert spec["terminationGracePeriodSeconds"] > pause
        # Never all replicas down for a voluntary disruption.
        budget = one(documents, "PodDisruptionBudget", name)
        assert budget["spec"]["minAvailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()

    extauth = one(documents, "Deployment", "extauth")["spec"]["template"]["spec"]
    (container,) = extauth["containers"]
    assert extauth["serviceAccountName"] == "extauth"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--kubernetes" in container["args"]
    grace = next(a for a in container["args"] if a.startswith("--shutdown-grace="))
    delay = next(a for a in container["args"] if a.startswith("--shutdown-delay="))
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    stopping = pause + float(delay.split("=")[1]) + float(grace.split("=")[1])
    assert extauth["terminationGracePeriodSeconds"] > stopping

    # Only Envoy reaches the gRPC port.
    policy = one(documents, "NetworkPolicy", "extauth")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "extauth"}
    grpc_rules = [
        rule
        for rule in policy["spec"]["ingress"]
        if any(p["port"] in ("grpc", 9001) for p in rule.get("ports", [{"port": "grpc"}]))
    ]
    assert grpc_rules == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}],
            "ports": [{"protocol": "TCP", "port": "grpc"}],
        }
    ]
    # Envoy's admin port is not open to every client.
    envoy_policy = one(documents, "NetworkPolicy", "envoy")
    for rule in envoy_policy["spec"]["ingress"]:
        if any(p["port"] in ("admin", 9901) for p in rule["ports"]):
            assert rule.get("from"), rule
