"""Health an operator can alert on, read by real parsers (the classic text format and
OpenMetrics) from a live server: build info, a source's sync time and state, its errors,
rejected resources counted and kept in extauth_config_problems, the latency buckets past
Envoy's timeout. The Kubernetes side (a stopped API server) is in tests/kube/."""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from extauth import __version__
from extauth.server import Server, Settings
from extauth.sources.files import FileSource
from tests.builders import secret
from tests.harness import ROOT, Response, request
from tests.test_metrics import CONFIG, check_request

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def openmetrics_families(text: str) -> Iterator[Metric]:
    """The strict OpenMetrics parser (untyped upstream): any flaw in the text raises."""
    families: Iterator[Metric] = openmetrics_parser.text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
    return families


def parse(text: str, openmetrics: bool = False) -> Samples:
    found: Samples = {}
    families = openmetrics_families(text) if openmetrics else text_string_to_metric_families(text)
    for family in families:
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


async def scrape(port: int, accept: str | None = None) -> Response:
    headers = {"accept": accept} if accept else {}
    return await asyncio.to_thread(request, port, "/metrics", headers)


async def until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_source_health_rejections_and_both_exposition_formats(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "good.yaml").write_text(
        "---\n".join([secret("a", "key-a"), secret("c", "key-c"), CONFIG])
    )
    (config_dir / "broken.yaml").write_text("kind: Secret\nmetadata: [oops\n")
    started = time.time()

    async def main() -> None:
        source = FileSource(config_dir, resync_seconds=0.2)
        server = Server(Settings(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0"), [source])
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 10)
        port = server.status.port
        assert port is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            await stub.Check(check_request("key-a"))

        text = await scrape(port)
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        plain = parse(text.body.decode())
        assert plain["extauth_build_info"] == {
            (("python", platform.python_version()), ("version", __version__)): 1
        }
        assert plain["extauth_source_up"] == {(("source", "files"),): 1}
        (synced,) = plain["extauth_source_last_sync_timestamp_seconds"].values()
        assert synced >= started
        rejected = plain["extauth_rejected_resources_total"]
        assert rejected == {(("kind", "File"), ("source", "files")): 1}
        # The rejected file is a problem while it stays rejected, beside the policy's
        # own (CONFIG names Secret b, which only the rejected file would define).
        assert plain["extauth_config_problems"] == {(): 2}
        errors = plain["extauth_source_errors_total"]
        assert errors[(("reason", "unlistable"), ("source", "files"))] == 0
        buckets = {dict(k)["le"] for k in plain["extauth_check_duration_seconds_bucket"]}
        assert {"0.5", "1.0", "2.5", "+Inf"} <= buckets

        om = await scrape(port, OPENMETRICS)
        assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        body = om.body.decode()
        assert body.endswith("# EOF\n")
        strict = parse(body, openmetrics=True)  # the strict parser: any flaw raises
        assert strict["extauth_source_up"] == {(("source", "files"),): 1.0}
        assert strict["extauth_decisions_total"][(("config", "ns.cfg"), ("result", "allow"))] == 1
        assert "# TYPE extauth_source_errors counter" in body
        assert "# TYPE extauth_build_info gauge" in body
        # Every family extauth exports is in the README's table of metrics.
        readme = (ROOT / "README.md").read_text()
        for family in openmetrics_families(body):
            if family.name.startswith("extauth_"):
                assert f"| `{family.name}" in readme, family.name

        # Fixed: the problem count falls back once the file is fixed.
        (config_dir / "broken.yaml").write_text(secret("b", "key-b"))

        async def fixed() -> bool:
            found = parse((await scrape(port)).body.decode())
            return found["extauth_config_problems"] == {(): 0}

        await until(fixed, "the fixed file to clear the problem")

        # The directory goes away: the source is down, the last state serves, and
        # readiness says why without turning 503 (see README).
        config_dir.rename(tmp_path / "elsewhere")

        async def down() -> bool:
            found = parse((await scrape(port)).body.decode())
            return found["extauth_source_up"] == {(("source", "files"),): 0}

        await until(down, "the source to be reported down")
        found = parse((await scrape(port)).body.decode())
        errors = found["extauth_source_errors_total"]
        assert errors[(("reason", "unlistable"), ("source", "files"))] == 1
        ready = await asyncio.to_thread(request, port, "/readyz")
        assert ready.status == 200
        assert b"serving the last good state" in ready.body
        (tmp_path / "elsewhere").rename(config_dir)

        async def back() -> bool:
            found = parse((await scrape(port)).body.decode())
            return found["extauth_source_up"] == {(("source", "files"),): 1}

        await until(back, "the source to be reported up again")
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
