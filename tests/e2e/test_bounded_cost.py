"""What a caller that reaches the gRPC port can make extauth keep or write: bounded.

A real `extauth serve` process, called directly over gRPC as an attacker on the port
would: unknown config ids share one metric label, each is logged at most once per policy
version up to a fixed number of lines, cut and escaped; an oversized Check is refused
before it is parsed; the decision log cuts the client's request id and path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from extauth.wire import AUTHORIZATION_SERVICE, CHECK_METHOD
from extauth.wire import ext_authz_pb2 as pb
from tests import harness
from tests.harness import ROOT, request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Extauth, int]]:
    work = tmp_path_factory.mktemp("bounded")
    http = harness.free_port()
    extauth = harness.Extauth(
        ROOT / "authconfigs",
        work / "extauth.log",
        "--http-address",
        f"127.0.0.1:{http}",
        "--decision-log",
    )
    try:
        extauth.wait_ready()
        yield extauth, http
    finally:
        extauth.stop()


def _check(
    channel: grpc.Channel, config_id: str, headers: dict[str, str] | None = None, path: str = "/"
) -> pb.CheckResponse:
    call = channel.unary_unary(
        f"/{AUTHORIZATION_SERVICE}/{CHECK_METHOD}",
        request_serializer=pb.CheckRequest.SerializeToString,
        response_deserializer=pb.CheckResponse.FromString,
    )
    check = pb.CheckRequest()
    check.attributes.context_extensions["config_id"] = config_id
    check.attributes.request.http.path = path
    check.attributes.request.http.headers.update(headers or {})
    response: pb.CheckResponse = call(check, timeout=5)
    return response


def test_unique_config_ids_do_not_grow_metrics_or_logs(
    service: tuple[harness.Extauth, int],
) -> None:
    extauth, http = service
    before = len(request(http, "/metrics").body)
    log_before = len(extauth.log())
    with grpc.insecure_channel(extauth.address) as channel:
        for i in range(3000):
            response = _check(channel, f"ns.{i:04d}-" + "x\n\x1b" * 700)
            assert response.denied_response.status.code == 403
    metrics = request(http, "/metrics").body.decode()
    growth = len(metrics.encode()) - before
    assert growth < 2000, growth
    assert 'extauth_decisions_total{config="(unknown)",result="unknown_auth_config"} 3000.0' in (
        metrics
    )
    log = extauth.log()[log_before:]
    warnings = [line for line in log.splitlines() if "is not loaded" in line]
    assert 0 < len(warnings) <= 21
    assert max(len(line) for line in warnings) < 400
    assert "\x1b" not in log
    assert "not logging more" in log
    print(f"\n/metrics grew {growth} bytes over 3,000 unknown config ids; log {len(log)} bytes")


def test_an_oversized_check_is_refused_before_it_is_parsed(
    service: tuple[harness.Extauth, int],
) -> None:
    extauth, _ = service
    with grpc.insecure_channel(extauth.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _check(channel, "ns." + "y" * (1024 * 1024))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # and the service goes on answering
        assert _check(channel, "agentgateway-system.apikey-auth").HasField("denied_response")
    assert "y" * 1000 not in extauth.log()


def test_decision_log_cuts_client_values(service: tuple[harness.Extauth, int]) -> None:
    extauth, _ = service
    with grpc.insecure_channel(extauth.address) as channel:
        _check(
            channel,
            "agentgateway-system.apikey-auth",
            {"x-request-id": "r" * 5000 + "\n{}", "vanity-auth": "team1-key"},
            "/" + "p" * 5000 + "?api_key=secret",
        )
    lines = [
        json.loads(line.partition(": ")[2])
        for line in Path(extauth.log_path).read_text().splitlines()
        if "extauth.decisions" in line and "r" * 64 in line
    ]
    assert lines
    assert len(lines[-1]["request_id"]) == 64
    assert len(lines[-1]["path"]) == 256
    assert lines[-1]["result"] == "allow"


def test_a_check_without_a_config_id_does_not_unbound_the_warnings(tmp_path: Path) -> None:
    # The "no config_id" warning and the "not logging more" marker both used None in the
    # set of warned ids: after one of the first and 19 unknown ids, the set never grew
    # past the limit and every further unknown id logged the marker again, one line per
    # Check for as long as a caller on the port cared to send them.
    extauth = harness.Extauth(ROOT / "authconfigs", tmp_path / "extauth.log")
    try:
        extauth.wait_ready()
        with grpc.insecure_channel(extauth.address) as channel:
            assert _check(channel, "").denied_response.status.code == 403
            for i in range(300):
                assert _check(channel, f"ns.unknown-{i}").denied_response.status.code == 403
    finally:
        extauth.stop()
    lines = extauth.log().splitlines()
    assert sum("no config_id" in line for line in lines) == 1
    assert sum("not logging more" in line for line in lines) == 1
    assert sum("is not loaded" in line for line in lines) < 20
