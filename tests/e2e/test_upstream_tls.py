"""The provider key only goes to an upstream whose certificate Envoy verified.

A real Envoy, configured by `envoyconf.build` for an https upstream, in front of a local
TLS server that records every request: with a certificate from a CA the config trusts
and the provider's name, the request (and the key) arrives; self-signed, or signed by
the trusted CA for another name, the handshake fails and the server receives nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import certs, harness
from tests.harness import ROOT, request

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "Bearer sk-provider-secret"
VALID = {"vanity-auth": "team1-key"}


@pytest.fixture(scope="module")
def extauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Extauth]:
    work = tmp_path_factory.mktemp("tls-extauth")
    server = harness.Extauth(ROOT / "authconfigs", work / "extauth.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, certs.Pair]:
    work = tmp_path_factory.mktemp("pki")
    trusted = certs.ca(work / "trusted", "trusted-ca")
    return {
        "trusted-ca": trusted,
        "good": certs.leaf(work / "trusted", "localhost", trusted, "localhost"),
        "wrong-name": certs.leaf(work / "trusted", "other", trusted, "api.example.com"),
        "self-signed": certs.ca(work / "rogue", "localhost"),
    }


def _through_envoy(
    extauth: harness.Extauth, pki: dict[str, certs.Pair], served: str, work: Path
) -> tuple[harness.Response, harness._Recorder]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[served].cert, pki[served].key)
    with harness.recording_upstream(context) as upstream:
        config, listen = harness.local_envoy_config(
            extauth=extauth.port,
            upstream=f"https://localhost:{upstream.server_address[1]}",
            work=work,
            provider_key=PROVIDER_KEY,
            upstream_ca=str(pki["trusted-ca"].cert),
        )
        envoy = harness.Envoy(config, work)
        try:
            envoy.wait_ready()
            response = request(listen, "/v1/chat/completions", VALID)
        finally:
            envoy.stop()
        return response, upstream


def test_upstream_with_a_trusted_certificate_receives_the_request(
    extauth: harness.Extauth, pki: dict[str, certs.Pair], tmp_path: Path
) -> None:
    response, upstream = _through_envoy(extauth, pki, "good", tmp_path)
    assert response.status == 200
    (seen,) = upstream.received
    assert ["authorization", PROVIDER_KEY] in seen["headers"]


@pytest.mark.parametrize("served", ["self-signed", "wrong-name"])
def test_upstream_that_cannot_prove_its_name_never_receives_the_key(
    extauth: harness.Extauth, pki: dict[str, certs.Pair], served: str, tmp_path: Path
) -> None:
    response, upstream = _through_envoy(extauth, pki, served, tmp_path)
    assert response.status == 503
    assert upstream.received == []
    assert upstream.handshake_failures >= 1
    assert b"sk-provider-secret" not in response.body
