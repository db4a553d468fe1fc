"""Micro-benchmarks of the request path (pytest-benchmark).

`make test` runs them with --benchmark-disable: each body once, to catch crashes, no
timing. `make bench` runs them for real. Nothing here asserts a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from extauth import responses
from extauth.building import PolicyHolder
from extauth.deciding import decide
from extauth.decisions import Allow
from extauth.policy import Policy
from extauth.server import AuthorizationService
from extauth.wire import ext_authz_pb2 as pb
from tests.builders import authconfig, secret, snapshot

KEYS = 10_000
CONFIGS = 100


@pytest.fixture(scope="module")
def holder() -> PolicyHolder:
    documents = [
        secret(f"k{i}", f"key-{i:06d}", labels={"group": f"g{i % CONFIGS}"}, x_org=f"t{i % 50}")
        for i in range(KEYS)
    ]
    configs = [
        authconfig(
            f"cfg-{g}",
            f"headerName: vanity-auth\nk8sSecretApikeyStorage: {{labelSelector: {{group: g{g}}}}}\n"
            "headersFromMetadataEntry: {x-org: {name: x-org}}",
        )
        for g in range(CONFIGS)
    ]
    holder = PolicyHolder(usage_label="x-org")
    holder.update([snapshot(*documents, *configs)])
    return holder


HEADERS = {
    "user-agent": "python-httpx/0.27.0",
    "content-type": "application/json",
    "x-request-id": "0f5c3d2e-8b1a-4c7d-9e6f-2a3b4c5d6e7f",
    "vanity-auth": "key-000000",
}
ROUTE = {"config_id": "ns.cfg-0"}


def test_decide(benchmark: BenchmarkFixture, holder: PolicyHolder) -> None:
    policy: Policy = holder.current
    result = benchmark(decide, policy, ROUTE, HEADERS, "/openai")
    assert isinstance(result, Allow)


def test_encode_allow(benchmark: BenchmarkFixture, holder: PolicyHolder) -> None:
    decision = decide(holder.current, ROUTE, HEADERS, "/openai")
    assert isinstance(decision, Allow)
    raw = benchmark(responses.encode, decision)
    assert pb.CheckResponse.FromString(raw).status.code == 0


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    yield running
    running.close()


def test_check_handler(
    benchmark: BenchmarkFixture, holder: PolicyHolder, loop: asyncio.AbstractEventLoop
) -> None:
    service = AuthorizationService(holder)
    request = pb.CheckRequest()
    request.attributes.context_extensions.update(ROUTE)
    request.attributes.request.http.headers.update(HEADERS)
    request.attributes.request.http.path = "/openai"
    raw = request.SerializeToString()

    def one() -> bytes:
        parsed = pb.CheckRequest.FromString(raw)
        return loop.run_until_complete(service.check(parsed, None))  # type: ignore[arg-type]

    reply = pb.CheckResponse.FromString(benchmark(one))
    assert reply.status.code == 0
