"""Metrics, per-team usage, the decision log and the status endpoint, on a live server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from extauth.cli import SourceSettings, sources_for
from extauth.expiries import Expiries
from extauth.metrics import Metrics
from extauth.server import Server, Settings
from tests.builders import authconfig, secret
from tests.harness import request

CONFIG = authconfig(
    "cfg",
    """
    headerName: x-key
    k8sSecretApikeyStorage: {apiKeySecretRefs: [{name: a}, {name: b}, {name: c}]}
    """,
)


def check_request(key: str | None) -> external_auth_pb2.CheckRequest:
    message = external_auth_pb2.CheckRequest()
    message.attributes.context_extensions["config_id"] = "ns.cfg"
    http = message.attributes.request.http
    http.path = "/v1/chat?api_key=from-query"
    http.headers["x-request-id"] = "req-42"
    if key:
        http.headers["x-key"] = key
    return message


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_usage_and_decision_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "all.yaml").write_text(
        "---\n".join(
            [
                secret("a", "key-a", x_org="red"),
                secret("b", "key-b", x_org="red"),
                secret("c", "key-c"),
                CONFIG,
            ]
        )
    )
    settings = Settings(
        grpc_address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        usage_label="x-org",
        decision_log=True,
    )

    async def main() -> str:
        server = Server(settings, sources_for(SourceSettings(config_dir=tmp_path)))
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 10)
        assert server.status.port is not None
        port = server.status.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            for key in ("key-a", "key-b", "key-c", "wrong", None):
                await stub.Check(check_request(key))
        metrics = await asyncio.to_thread(request, port, "/metrics")
        assert metrics.status == 200
        assert (await asyncio.to_thread(request, port, "/healthz")).status == 200
        assert (await asyncio.to_thread(request, port, "/readyz")).status == 200
        assert (await asyncio.to_thread(request, port, "/nope")).status == 404
        stop.set()
        await asyncio.wait_for(task, 10)
        return metrics.body.decode()

    with caplog.at_level(logging.INFO, logger="extauth.decisions"):
        text = asyncio.run(main())

    decisions = samples(text, "extauth_decisions_total")
    assert decisions[(("config", "ns.cfg"), ("result", "allow"))] == 3
    assert decisions[(("config", "ns.cfg"), ("result", "invalid_api_key"))] == 1
    assert decisions[(("config", "ns.cfg"), ("result", "missing_api_key"))] == 1
    usage = samples(text, "extauth_usage_total")
    assert usage == {
        (("config", "ns.cfg"), ("team", "red")): 2,
        (("config", "ns.cfg"), ("team", "-")): 1,
    }
    assert samples(text, "extauth_api_keys") == {(): 3}
    assert samples(text, "extauth_authconfigs") == {(): 1}
    assert samples(text, "extauth_check_duration_seconds_count") == {(): 5}
    assert samples(text, "extauth_policy_reloads_total") == {(): 1}

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "extauth.decisions"]
    assert [line["result"] for line in lines] == ["allow", "allow", "allow", "deny", "deny"]
    assert lines[0]["identity"] == "a"
    assert lines[0]["team"] == "red"
    assert lines[0]["request_id"] == "req-42"
    assert lines[0]["path"] == "/v1/chat"  # the query string (which may hold a key) is cut
    assert lines[3]["reason"] == "invalid_api_key"
    for key in ("key-a", "key-b", "key-c", "wrong", "from-query"):
        assert key not in caplog.text
        assert key not in text


def test_readyz_is_not_ready_before_the_first_snapshot_and_while_stopping(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(CONFIG)

    async def main() -> None:
        server = Server(
            Settings(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0"),
            sources_for(SourceSettings(config_dir=tmp_path)),
        )
        assert not server.is_ready()
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 10)
        assert server.is_ready()
        stop.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not server.is_ready()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_expiring_and_expired_keys_are_counted() -> None:
    now = time.time()
    metrics = Metrics()
    expiries = (now + 3600, now + 6 * 86400, now + 30 * 86400, now - 10)
    metrics.track_expiries(lambda: Expiries.of(expiries))
    assert metrics.registry.get_sample_value("extauth_api_keys_expiring_soon") == 2
    assert metrics.registry.get_sample_value("extauth_api_keys_expired") == 1
