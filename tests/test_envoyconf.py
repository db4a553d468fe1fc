"""The Envoy configs: committed files are what the generator makes, and Envoy accepts each."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from extauth import envoyconf
from tests import certs, harness
from tests.harness import ROOT


def test_committed_configs_are_current() -> None:
    assert envoyconf.main(["--check"]) == 0, "run `make envoy-configs` and commit the result"


def _validate(config: dict[str, object], tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    harness.relocate_secrets(config, secrets)
    if envoyconf.CERTS_DIR in str(config):
        issuer = certs.ca(tmp_path / "certs", "ca")
        certs.leaf(tmp_path / "certs", "envoy", issuer)
        certs.relocate(config, envoyconf.CERTS_DIR, tmp_path / "certs")
    harness.write_provider_key(secrets, "Bearer sk-validate")
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = harness.validate_envoy_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("relative", list(envoyconf.FILES))
def test_envoy_accepts_every_committed_config(relative: str, tmp_path: Path) -> None:
    _validate(copy.deepcopy(harness.load_envoy_config(ROOT / relative)), tmp_path)


def test_envoy_accepts_a_real_provider_upstream_over_tls(tmp_path: Path) -> None:
    target = dataclasses.replace(envoyconf.LOCAL, upstream="https://api.openai.com")
    config = envoyconf.build(target, "file")
    upstream = config["static_resources"]["clusters"][1]
    assert upstream["type"] == "STRICT_DNS"
    tls = upstream["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.openai.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": envoyconf.SYSTEM_CA}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.openai.com"}}
    ]
    _validate(config, tmp_path)


def test_broken_config_is_rejected_by_validate(tmp_path: Path) -> None:
    # Guards the test above: validate mode really rejects a bad config.
    config = envoyconf.build(envoyconf.LOCAL, "passthrough")
    config["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert harness.validate_envoy_config(path).returncode != 0
