"""An outdated CRD is noticed: extauth reads the installed one at start-up and reports
every model field its schema would prune, in the log, a metric and AuthConfig status."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauth import crds
from tests import harness
from tests.harness import request, wait_until
from tests.kube.conftest import GROUP, PLURAL, VERSION, apply_crd_body, connect
from tests.kube.kubelite import KubeLite, unavailable_reason

pytestmark = pytest.mark.kube

# What the hand-kept CRD lacked before it was generated from the models.
MISSING = [
    "spec.configs[].apiKeyAuth.mode",
    "spec.configs[].apiKeyAuth.requireHashedKeys",
    "spec.booleanExpr",
]


def _outdated() -> dict[str, Any]:
    crd = copy.deepcopy(crds.build())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    del spec["properties"]["booleanExpr"]
    spec.pop("x-kubernetes-validations")  # its rules name booleanExpr
    auth = spec["properties"]["configs"]["items"]["properties"]["apiKeyAuth"]
    del auth["properties"]["mode"], auth["properties"]["requireHashedKeys"]
    return crd


def test_pruned_fields_are_found_in_a_schema() -> None:
    root = _outdated()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert crds.pruned_by(root) == MISSING
    current = crds.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert crds.pruned_by(current) == []
    # A schema that keeps unknown fields prunes nothing below it.
    assert (
        crds.pruned_by({"properties": {"spec": {"x-kubernetes-preserve-unknown-fields": True}}})
        == []
    )
    assert crds.pruned_by({"type": "object"}) == list(crds.field_paths())
    # A schema of a shape no API server would accept is read as declaring nothing.
    assert crds.pruned_by({"properties": ["spec"]}) == list(crds.field_paths())


def test_an_outdated_crd_is_reported(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs kube-lite (a CRD of its own): {reason}")
    kubelite = KubeLite(tmp_path / "kl")
    kubelite.start()
    api = connect(kubelite.kubeconfig)
    extauth: harness.Extauth | None = None
    try:
        apply_crd_body(api, _outdated())
        from kubernetes import client

        client.CoreV1Api(api).create_namespace({"metadata": {"name": "old"}})
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            "old",
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "AuthConfig",
                "metadata": {"name": "hashed"},
                "spec": {
                    "configs": [
                        {
                            "apiKeyAuth": {
                                "requireHashedKeys": True,
                                "apiKeySecretRefs": [{"name": "k"}],
                            }
                        }
                    ]
                },
            },
        )
        stored: Any = custom.get_namespaced_custom_object(GROUP, VERSION, "old", PLURAL, "hashed")
        assert "requireHashedKeys" not in yaml.safe_dump(stored)  # the harm: pruned, silently

        http_port = harness.free_port()
        extauth = harness.kube_extauth(
            kubelite.kubeconfig,
            tmp_path / "extauth.log",
            "--http-address",
            f"127.0.0.1:{http_port}",
        )
        extauth.wait_ready()
        log = extauth.log()
        assert "the installed AuthConfig CRD is outdated" in log
        for path in MISSING:
            assert path in log
        metrics = request(http_port, "/metrics").body.decode()
        assert "extauth_crd_pruned_fields 3.0" in metrics

        def status() -> dict[str, Any] | None:
            found: Any = custom.get_namespaced_custom_object(
                GROUP, VERSION, "old", PLURAL, "hashed"
            )
            current: dict[str, Any] | None = found.get("status")
            return current

        written = wait_until(status, 10, "the status")
        assert written["state"] == "Accepted"
        assert "spec.configs[].apiKeyAuth.requireHashedKeys" in written["reason"]
        conditions = {c["type"]: c for c in written["conditions"]}
        assert conditions["SchemaCurrent"]["status"] == "False"
        assert conditions["SchemaCurrent"]["reason"] == "CRDOutdated"
    finally:
        if extauth is not None:
            extauth.stop()
        api.close()
        kubelite.stop()
