"""The ext_authz link over mutual TLS: `extauth serve --grpc-tls-cert --grpc-tls-key
--grpc-client-ca` behind the committed envoy/envoy-grpc-mtls.yaml, through a real Envoy.

Certificates are made for the test: one CA signs extauth's server certificate (name
`extauth`) and Envoy's client certificate. A client without a certificate from that CA,
plaintext or TLS, gets no Check answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauth import envoyconf
from tests import certs, harness
from tests.harness import ROOT, request, upstream_headers, wait_until

pytestmark = pytest.mark.e2e

VALID = {"vanity-auth": "team1-key"}


@dataclass
class Link:
    extauth: harness.Extauth
    ca: certs.Pair
    envoy_cert: certs.Pair
    rogue: certs.Pair
    certs_dir: Path
    work: Path


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> int | None:
    """The health status over the given channel, or None when no answer came."""
    options = [("grpc.ssl_target_name_override", "extauth")]
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return None
        return int(reply.status)


def _client(ca: certs.Pair, pair: certs.Pair | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert.read_bytes(),
        private_key=pair.key.read_bytes() if pair else None,
        certificate_chain=pair.cert.read_bytes() if pair else None,
    )


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    work = tmp_path_factory.mktemp("grpc-tls")
    pki = work / "certs"
    ca = certs.ca(pki, "ca")
    server = certs.leaf(pki, "extauth", ca, "extauth")
    envoy_cert = certs.leaf(pki, "envoy", ca, "envoy")
    rogue_ca = certs.ca(work / "rogue", "rogue-ca")
    rogue = certs.leaf(work / "rogue", "envoy", rogue_ca, "envoy")
    extauth = harness.Extauth(
        ROOT / "authconfigs",
        work / "extauth.log",
        "--grpc-tls-cert",
        str(server.cert),
        "--grpc-tls-key",
        str(server.key),
        "--grpc-client-ca",
        str(ca.cert),
    )
    try:
        wait_until(
            lambda: True if _health(extauth.address, _client(ca, envoy_cert)) == 1 else None,
            20,
            "extauth to serve over TLS",
        )
        yield Link(extauth, ca, envoy_cert, rogue, pki, work)
    finally:
        extauth.stop()


def _envoy(link: Link, name: str, certs_dir: Path, upstream: int) -> tuple[harness.Envoy, int]:
    """envoy/envoy-grpc-mtls.yaml as committed, on test ports, with certificates from
    `certs_dir` (ca.crt, envoy.crt, envoy.key)."""
    work = link.work / name
    work.mkdir()
    config, listen = harness.envoy_config(
        extauth=link.extauth.port,
        upstream=upstream,
        work=work,
        source=ROOT / "envoy" / "envoy-grpc-mtls.yaml",
    )
    certs.relocate(config, envoyconf.CERTS_DIR, certs_dir)
    envoy = harness.Envoy(config, work)
    envoy.wait_ready()
    return envoy, listen


def test_envoy_with_its_client_certificate_gets_decisions(link: Link) -> None:
    with harness.echo_upstream() as upstream:
        envoy, listen = _envoy(link, "good", link.certs_dir, upstream)
        try:
            # Envoy's grpc.health.v1 checks go over the same mutual TLS.
            wait_until(
                lambda: (
                    True
                    if b"cluster.extauth.health_check.healthy: 1"
                    in request(envoy.admin_port, "/stats?filter=health_check.healthy").body
                    else None
                ),
                10,
                "Envoy's health check of extauth to pass",
            )
            allowed = request(listen, "/v1/chat/completions", VALID)
            denied = request(listen, "/v1/chat/completions", {"vanity-auth": "wrong"})
        finally:
            envoy.stop()
    assert allowed.status == 200
    assert upstream_headers(allowed)["x-org"] == ["developers"]
    assert denied.status == 401
    assert "TLS, client certificates required" in link.extauth.log()


def test_envoy_with_a_certificate_from_another_ca_is_refused(link: Link, tmp_path: Path) -> None:
    # Envoy's own trust in extauth is intact; only its client certificate is foreign.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("envoy.crt", "envoy.key"):
        (foreign / name).write_bytes((link.rogue.cert.parent / name).read_bytes())
    (foreign / "ca.crt").write_bytes(link.ca.cert.read_bytes())
    with harness.recording_upstream() as upstream:
        envoy, listen = _envoy(link, "foreign", foreign, upstream.server_address[1])
        try:
            response = request(listen, "/v1/chat/completions", VALID)
        finally:
            envoy.stop()
        assert upstream.received == []
    assert response.status == 503  # fail closed: no decision, no request through


def test_clients_without_a_trusted_certificate_get_no_answer(link: Link) -> None:
    address = link.extauth.address
    assert _health(address, None) is None  # plaintext
    assert _health(address, _client(link.ca, None)) is None  # TLS, no client certificate
    assert _health(address, _client(link.ca, link.rogue)) is None  # another CA's
    assert _health(address, _client(link.ca, link.envoy_cert)) == 1
