"""Each way Envoy puts the provider key on the upstream request, through a real Envoy.

The committed configs in envoy/ are started as shipped (ports and the secrets directory
moved), in front of extauth with authconfigs/ and an echo upstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from extauth import envoyconf
from tests import harness
from tests.harness import ROOT, request, upstream_headers, wait_until

pytestmark = pytest.mark.e2e

VANITY = {"vanity-auth": "team1-key", "authorization": "Bearer client-own-key"}
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


class Backends:
    def __init__(self, extauth: harness.Extauth, upstream: int, work: Path) -> None:
        self.extauth = extauth
        self.upstream = upstream
        self.work = work


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    work = tmp_path_factory.mktemp("keys")
    with harness.echo_upstream() as upstream:
        extauth = harness.Extauth(ROOT / "authconfigs", work / "extauth.log")
        try:
            extauth.wait_ready()
            yield Backends(extauth, upstream, work)
        finally:
            extauth.stop()


def start_envoy(
    backends: Backends, file: str, name: str, env: dict[str, str]
) -> tuple[harness.Envoy, int, Path]:
    work = backends.work / name
    work.mkdir()
    config, listen = harness.envoy_config(
        extauth=backends.extauth.port,
        upstream=backends.upstream,
        work=work,
        source=ROOT / file,
        provider_key="Bearer sk-test-file",
    )
    envoy = harness.Envoy(config, work, env=env)
    envoy.wait_ready()
    return envoy, listen, work / "secrets"


MODES = {
    "file": ("envoy/envoy.yaml", {}, "Bearer sk-test-file"),
    "env": ("envoy/envoy-key-env.yaml", {envoyconf.ENV_VAR: "sk-test-env"}, "Bearer sk-test-env"),
    "inline": ("envoy/envoy-key-inline.yaml", {}, f"Bearer {envoyconf.INLINE_PLACEHOLDER}"),
    "passthrough": ("envoy/envoy-passthrough.yaml", {}, "Bearer client-own-key"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_provider_key_mode(backends: Backends, mode: str) -> None:
    file, env, expected = MODES[mode]
    envoy, port, secrets = start_envoy(backends, file, mode, env)
    try:
        denied = request(port, "/openai", {"authorization": "Bearer client-own-key"}, "POST")
        assert denied.status == 401

        response = request(port, "/openai", VANITY, method="POST")
        assert response.status == 200
        assert response.json()["path"] == envoyconf.CHAT_PATH
        seen = upstream_headers(response)
        assert seen["authorization"] == [expected]
        assert seen["x-org"] == ["developers"]
        assert "vanity-auth" not in seen

        if mode == "file":
            # Rotation: rewrite the SDS file; Envoy picks it up without a restart.
            harness.write_provider_key(secrets, "Bearer sk-rotated")
            wait_until(
                lambda: (
                    True
                    if upstream_headers(request(port, "/openai", VANITY, "POST"))["authorization"]
                    == ["Bearer sk-rotated"]
                    else None
                ),
                10,
                "Envoy to pick up the rotated key",
            )
            assert envoy.proc.poll() is None
    finally:
        envoy.stop()

    log = envoy.log_path.read_text()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    allowed = [e for e in entries if e["status"] == 200]
    assert allowed
    assert allowed[0]["identity"] == "team1-apikey"
    assert allowed[0]["x_org"] == "developers"
    assert allowed[0]["config_id"] == envoyconf.CONFIG_ID
    assert allowed[0]["path"] == "/openai"
    for secret in ("team1-key", "sk-test", "sk-rotated", "client-own-key"):
        assert secret not in log
