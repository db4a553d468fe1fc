"""Envoy's admin is not for the network: it listens on 127.0.0.1 in every generated config,
and where probes and scrapers outside the container need it (compose, Kubernetes), a
separate listener passes on exactly two read-only paths. Through a real Envoy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from extauth import envoyconf
from tests import harness
from tests.harness import request

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("relative", list(envoyconf.FILES))
def test_every_committed_config_keeps_the_admin_on_loopback(relative: str) -> None:
    config = harness.load_envoy_config(harness.ROOT / relative)
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_ops_listener_serves_readiness_and_stats_and_nothing_else(tmp_path: Path) -> None:
    ops = harness.free_port()
    target = dataclasses.replace(
        envoyconf.local(
            listen=harness.free_port(),
            admin=harness.free_port(),
            extauth=harness.free_port(),
            upstream="http://127.0.0.1:1",
            secrets_dir=str(tmp_path / "secrets"),
        ),
        ops=envoyconf.Endpoint("127.0.0.1", ops),
    )
    harness.write_provider_key(tmp_path / "secrets", "Bearer sk-test")
    envoy = harness.Envoy(envoyconf.build(target, "file"), tmp_path)
    try:
        envoy.wait_ready()
        assert request(ops, "/ready").status == 200
        stats = request(ops, "/stats/prometheus")
        assert stats.status == 200
        assert b"envoy_cluster_upstream_cx_total" in stats.body
        for path in ("/config_dump", "/clusters", "/logging?level=trace", "/stats"):
            assert request(ops, path).status == 404, path
        for path in ("/quitquitquit", "/healthcheck/fail", "/drain_listeners"):
            assert request(ops, path, method="POST").status == 404, path
        assert request(envoy.admin_port, "/ready").status == 200  # still alive
    finally:
        envoy.stop()
