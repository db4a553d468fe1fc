"""The recipes users paste (deploy/gateways/): every document parses, the core Kubernetes
kinds pass Kubernetes' own schemas strictly, the AuthConfigs pass extauth's `validate`,
and each recipe binds the hosts and AuthConfigs that the Envoy configs run end to end by
tests/e2e/test_gateways.py bind (envoyconf.GATEWAY_HOSTS): a recipe that drifted from its
tested shape fails here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from extauth import cli, envoyconf, hosts
from tests.harness import ROOT

RECIPES = ROOT / "deploy" / "gateways"
FILES = sorted(RECIPES.glob("*.yaml"))
KUBERNETES_VERSION = "1.37.0"
# Kinds of Kubernetes itself (kubernetes-validate has their schemas); the rest are CRDs.
CORE = {"v1", "networking.k8s.io/v1", "apps/v1", "policy/v1", "rbac.authorization.k8s.io/v1"}


def documents(path: Path) -> list[dict[str, Any]]:
    found = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert found, path
    return found


def of_kind(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents(path) if d["kind"] == kind}


def test_there_is_a_recipe_per_gateway() -> None:
    assert {p.stem for p in FILES} == {
        "istio",
        "istio-install",
        "envoy-gateway",
        "kgateway",
        "agentgateway",
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_document_parses_and_core_kinds_validate_strictly(path: Path) -> None:
    core = 0
    for document in documents(path):
        assert isinstance(document, dict)
        assert {"apiVersion", "kind", "metadata"} <= set(document), document
        assert document["metadata"]["name"]
        if document["apiVersion"] in CORE:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            core += 1
    # Every recipe but the install file opens extauth's port to its gateway alone.
    assert core >= (0 if path.stem == "istio-install" else 2)


@pytest.mark.parametrize(
    "path", [p for p in FILES if p.stem != "istio-install"], ids=lambda p: p.name
)
def test_authconfigs_pass_validate(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AuthConfigs, through `extauth validate -`: the Secrets are the user's (`extauth
    keys new`), so references to them are warnings, never errors."""
    configs = [d for d in documents(path) if d["kind"] == "AuthConfig"]
    assert {c["metadata"]["name"] for c in configs} == {"red", "blue", "wild"}
    text = yaml.safe_dump_all(configs).encode()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text)))
    assert cli.main(["validate", "-"]) == 0, capsys.readouterr()
    assert "3 AuthConfig(s)" in capsys.readouterr().out


def test_istio_authconfigs_claim_the_tested_hosts() -> None:
    configs = of_kind(RECIPES / "istio.yaml", "AuthConfig")
    claimed = {
        hosts.normalize(pattern): f"gateways.{name}"
        for name, config in configs.items()
        for pattern in config["spec"]["hosts"]
    }
    for host, config_id in envoyconf.GATEWAY_HOSTS.items():
        assert claimed[host] == config_id
    policy = next(iter(of_kind(RECIPES / "istio.yaml", "AuthorizationPolicy").values()))
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["rules"] == [{}]  # every request is checked, whatever its host
    (mesh,) = documents(RECIPES / "istio-install.yaml")
    (provider,) = mesh["spec"]["meshConfig"]["extensionProviders"]
    assert provider["name"] == policy["spec"]["provider"]["name"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["failOpen"] is False
    assert (grpc["service"], grpc["port"]) == ("extauth.extauth-system.svc.cluster.local", 9001)


def _routes(path: Path) -> dict[str, str]:
    """HTTPRoute name -> its one hostname."""
    found = {}
    for name, route in of_kind(path, "HTTPRoute").items():
        (hostname,) = route["spec"]["hostnames"]
        found[name] = hostname
    return found


def test_envoy_gateway_policies_name_the_tested_authconfigs() -> None:
    path = RECIPES / "envoy-gateway.yaml"
    routes = _routes(path)
    config = harness_config("tests/e2e/gateways/envoy-gateway.yaml")
    filters = {f["name"] for f in _hcm(config)["http_filters"]}
    for name, policy in of_kind(path, "SecurityPolicy").items():
        (target,) = policy["spec"]["targetRefs"]
        ext = policy["spec"]["extAuth"]
        (extension,) = ext["contextExtensions"]
        assert extension == {
            "name": "config_id",
            "type": "Value",
            "value": envoyconf.GATEWAY_HOSTS[routes[target["name"]]],
        }
        assert ext["failOpen"] is False
        assert ext["grpc"]["backendRefs"] == [
            {"name": "extauth", "namespace": "extauth-system", "port": 9001}
        ]
        # The filter Envoy Gateway makes for this policy is the one the tested config has.
        assert f"{envoyconf.EXT_AUTHZ}/securitypolicy/gateways/{name}" in filters


def test_kgateway_policies_name_the_tested_authconfigs() -> None:
    path = RECIPES / "kgateway.yaml"
    routes = _routes(path)
    (extension,) = of_kind(path, "GatewayExtension").values()
    namespace, name = extension["metadata"]["namespace"], extension["metadata"]["name"]
    assert f"ext_auth/{namespace}/{name}" == envoyconf.KGATEWAY_FILTER
    assert extension["spec"]["extAuth"]["failOpen"] is False
    for policy in of_kind(path, "TrafficPolicy").values():
        (target,) = policy["spec"]["targetRefs"]
        ext = policy["spec"]["extAuth"]
        assert ext["extensionRef"] == {"name": name}
        assert ext["contextExtensions"] == {
            "config_id": envoyconf.GATEWAY_HOSTS[routes[target["name"]]]
        }


def test_agentgateway_policies_name_the_tested_authconfigs() -> None:
    path = RECIPES / "agentgateway.yaml"
    routes = _routes(path)
    policies = of_kind(path, "AgentgatewayPolicy")
    assert set(policies) == set(routes)
    for policy in policies.values():
        (target,) = policy["spec"]["targetRefs"]
        ext = policy["spec"]["traffic"]["extAuth"]
        assert ext["failureMode"] == "FailClosed"
        assert ext["grpc"]["contextExtensions"] == {
            "config_id": envoyconf.GATEWAY_HOSTS[routes[target["name"]]]
        }


def harness_config(relative: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / relative).read_text())
    return loaded


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


@pytest.mark.parametrize("routing", ["envoy-gateway", "kgateway", "agentgateway"])
def test_every_route_of_a_context_shape_names_an_authconfig(routing: str) -> None:
    """A route without the per-route setting would be unchecked (Envoy Gateway, kgateway)
    or fall back to hosts: every route of the tested shapes carries its config_id."""
    config = harness_config(f"tests/e2e/gateways/{routing}.yaml")
    for vhost in _hcm(config)["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            (setting,) = route["typed_per_filter_config"].values()
            config_id = setting["check_settings"]["context_extensions"]["config_id"]
            assert config_id == envoyconf.GATEWAY_HOSTS[vhost["domains"][0]]


def test_the_istio_recipe_claims_every_domain_of_its_virtual_hosts() -> None:
    """extauth matches a host as Envoy matches domains: each domain of a virtual host, but
    `host:*` (which extauth's `host` takes), must select that host's AuthConfig in the
    recipe, or a request Envoy routes there (`x.wild.example.com:443`, by the port Istio
    adds to a wildcard) is judged by none, or by --default-config."""
    table, conflicts = hosts.build(
        (0, f"gateways.{name}", hosts.normalize_all(config["spec"]["hosts"]))
        for name, config in of_kind(RECIPES / "istio.yaml", "AuthConfig").items()
    )
    assert conflicts == []
    config = harness_config("envoy/envoy-istio.yaml")
    for vhost in _hcm(config)["route_config"]["virtual_hosts"]:
        if vhost["domains"] == ["*"]:
            continue
        (config_id,) = {envoyconf.GATEWAY_HOSTS[vhost["domains"][0]]}
        for domain in vhost["domains"]:
            host = domain.replace("*", "x")  # a host each domain takes: `x.wild...`, `red...:x`
            assert table.lookup(host) == config_id, domain
