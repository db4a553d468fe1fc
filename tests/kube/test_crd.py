"""The AuthConfig CRD is generated from the models: the committed file is current, every
field the models accept survives the API server unchanged (nothing pruned, security
settings included), and each cross-field rule refuses a bad object with its message."""

from __future__ import annotations

import copy
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from extauth import crds
from extauth.resources import AuthConfig
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster

pytestmark = pytest.mark.kube

# Between them, every field of the models (the coverage test checks it), each with a value
# the models accept; the first two carry the security settings.
EXAMPLES: list[dict[str, Any]] = [
    {
        "booleanExpr": "teams || (partners && !legacy)",
        "hosts": ["api.example.com", "*.Example.com:8443", "[::1]:8080"],
        "configs": [
            {
                "name": "teams",
                "apiKeyAuth": {
                    "headerName": "x-api-key",
                    "mode": "Optional",
                    "requireHashedKeys": True,
                    "allNamespaces": True,
                    "forwardCredential": False,
                    "clientIdHeader": "x-client-id",
                    "k8sSecretApikeyStorage": {
                        "labelSelector": {"team": "red", "tier": "gold"},
                        "apiKeySecretRefs": [{"name": "one", "namespace": "keys"}, {"name": "two"}],
                    },
                    "headersFromMetadataEntry": {
                        "x-org": {"name": "x-org", "required": True},
                        "x-plan": {"name": "plan"},
                    },
                },
            },
            {
                "name": "partners",
                "apiKeyAuth": {
                    "keySources": [{"header": "x-partner-key"}, {"query": "key"}, {"cookie": "k"}],
                    "mode": "Strict",
                    "requireHashedKeys": False,
                    "forwardCredential": True,
                    "k8sSecretApikeyStorage": {"labelSelector": {"matchLabels": {"p": "yes"}}},
                },
            },
            {
                "name": "legacy",
                "apiKeyAuth": {
                    "labelSelector": {"legacy": "true"},
                    "apiKeySecretRefs": [{"name": "old", "namespace": "elsewhere"}],
                    "headersFromMetadata": {"x-team": {"name": "team", "required": False}},
                },
            },
        ],
    },
    {"configs": [{"apiKeyAuth": {"apiKeySecretRefs": [{"name": "solo"}]}}]},
]


def _paths(value: Any, prefix: str) -> Iterator[str]:
    """The field paths an object uses, spelled as `crds.field_paths` spells them."""
    if isinstance(value, dict):
        for key, item in value.items():
            # Map-typed fields: their keys are data, not fields.
            if prefix.endswith(("headersFromMetadataEntry", "headersFromMetadata")):
                yield from _paths(item, f"{prefix}{{}}")
            elif prefix.endswith("labelSelector"):
                return
            else:
                yield f"{prefix}.{key}"
                yield from _paths(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item, f"{prefix}[]")


def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AuthConfig",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"crd-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    if cluster.kubelite is None:
        cluster.core.delete_namespace(name)


def test_committed_crd_is_current() -> None:
    assert crds.main(["--check"]) == 0, "run `make crd` and commit the result"


def test_every_field_has_a_description() -> None:
    def walk(schema: dict[str, Any], path: str) -> Iterator[str]:
        for name, prop in (schema.get("properties") or {}).items():
            if not prop.get("description") and name != "metadata":
                yield f"{path}.{name}"
            yield from walk(prop, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from walk(schema[key], f"{path}[]")

    root = crds.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert list(walk(root, "")) == []
    # No description left behind for a field the models no longer have.
    models = {m for m, _ in crds.DESCRIPTIONS}
    fields = {(m, f) for m in models for f in m.model_fields}
    assert set(crds.DESCRIPTIONS) == fields


def test_examples_use_every_field_and_the_models_accept_them() -> None:
    used = {p for spec in EXAMPLES for p in _paths(spec, "spec")}
    assert set(crds.field_paths()) - used == set()
    for spec in EXAMPLES:
        AuthConfig.model_validate(_body("ok", spec) | {"metadata": {"name": "ok"}})


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_every_field_round_trips_unchanged(cluster: Cluster, namespace: str, index: int) -> None:
    """Created without client-side validation (as GitOps tools and client libraries do):
    a field the schema did not declare would be pruned, silently, and come back missing."""
    sent = copy.deepcopy(EXAMPLES[index])
    cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _body(f"every-{index}", sent)
    )
    stored: Any = cluster.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, f"every-{index}"
    )
    assert stored["spec"] == EXAMPLES[index]


def _auth(**fields: Any) -> dict[str, Any]:
    return {"configs": [{"apiKeyAuth": {"apiKeySecretRefs": [{"name": "s"}], **fields}}]}


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "no keys": (
        {"configs": [{"apiKeyAuth": {"headerName": "x"}}]},
        "apiKeyAuth admits no keys",
    ),
    "empty matchLabels": (
        _auth(labelSelector={"matchLabels": {}}),
        crds.EMPTY_SELECTOR,
    ),
    "empty selector": (_auth(labelSelector={}), "should have at least 1 properties"),
    "headerName and keySources": (
        _auth(headerName="a", keySources=[{"header": "b"}]),
        "set either headerName or keySources, not both",
    ),
    "empty keySources": (_auth(keySources=[]), "keySources cannot be empty"),
    "two places in one key source": (
        _auth(keySources=[{"header": "a", "query": "b"}]),
        "a key source names exactly one of header, query or cookie",
    ),
    "a header from both metadata maps": (
        _auth(
            headersFromMetadataEntry={"x-org": {"name": "a"}},
            headersFromMetadata={"x-org": {"name": "b"}},
        ),
        "a header is set by both headersFromMetadataEntry and headersFromMetadata",
    ),
    "booleanExpr with an unnamed entry": (
        {"booleanExpr": "a", **_auth()},
        "with booleanExpr, every entry of configs needs a name",
    ),
    "booleanExpr with duplicate names": (
        {
            "booleanExpr": "a",
            "configs": [
                {"name": "a", "apiKeyAuth": {"apiKeySecretRefs": [{"name": "s"}]}},
                {"name": "a", "apiKeyAuth": {"apiKeySecretRefs": [{"name": "t"}]}},
            ],
        },
        "configs entry names must be unique",
    ),
    "booleanExpr naming a missing entry": (
        {
            "booleanExpr": "a || b",
            "configs": [{"name": "a", "apiKeyAuth": {"apiKeySecretRefs": [{"name": "s"}]}}],
        },
        "booleanExpr names an entry that no configs entry has",
    ),
    "an entry booleanExpr does not use": (
        {
            "booleanExpr": "a",
            "configs": [
                {"name": "a", "apiKeyAuth": {"apiKeySecretRefs": [{"name": "s"}]}},
                {"name": "b", "apiKeyAuth": {"apiKeySecretRefs": [{"name": "t"}]}},
            ],
        },
        "a configs entry is not used in booleanExpr",
    ),
    "a mode that does not exist": (_auth(mode="Lenient"), "supported values"),
    "every host": ({"hosts": ["*"], **_auth()}, crds.EVERY_HOST),
    "a wildcard inside a host": ({"hosts": ["a.*.com"], **_auth()}, "should match"),
    "a host twice": ({"hosts": ["a.com", "a.com"], **_auth()}, "Duplicate value"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_rule_refuses_with_its_message(cluster: Cluster, namespace: str, case: str) -> None:
    spec, message = REFUSED[case]
    with pytest.raises(client.exceptions.ApiException) as refused:
        cluster.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _body("refused", spec)
        )
    assert refused.value.status == 422
    assert message in str(refused.value.body)
    # The models refuse it too: the rule mirrors them, it does not invent a restriction.
    with pytest.raises(ValueError, match=r".") as model:
        AuthConfig.model_validate(_body("refused", spec))
    assert model.value is not None


def test_kubectl_explain_describes_the_fields(cluster: Cluster) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    explained = subprocess.run(
        [
            "kubectl",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "explain",
            "authconfig.spec.configs.apiKeyAuth.requireHashedKeys",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert explained.returncode == 0, explained.stderr
    assert "<no description>" not in explained.stdout
    words = " ".join(explained.stdout.split())  # kubectl wraps descriptions
    assert "never the key itself, so a leaked Secret leaks no usable key" in words
