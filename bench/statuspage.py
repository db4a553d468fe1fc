"""The status page's render time and the /metrics scrape size at scale (not in `make test`).

An in-process server on a config directory of N keys (in files of 1,000) and M AuthConfigs
(each admitting its share of the keys by label, and every key by ref for the first one),
usage counted per team (`--usage-label x-org`, 100 teams); an allow and a deny per
AuthConfig fill the decision and usage metrics. Then: the page's first render (which works
out who each AuthConfig admits) and later renders (cached until the policy changes), as
the HTTP client sees them, an identities page, and the size of /metrics in both formats.

    .venv/bin/python bench/statuspage.py [--keys 10000] [--configs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extauth.cli import SourceSettings, sources_for
from extauth.server import Server, Settings
from tests.builders import authconfig, secret
from tests.harness import request

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def write(root: Path, keys: int, configs: int, distinct: bool) -> None:
    for start in range(0, keys, 1000):
        docs = [
            secret(
                f"k-{i:06}",
                f"key-{i}",
                labels={"g": f"g{i % configs}", **({"id": f"i{i}"} if distinct else {})},
                x_org=f"team-{i % 100}",
            )
            for i in range(start, min(start + 1000, keys))
        ]
        (root / f"keys-{start:06}.yaml").write_text("---\n".join(docs))
    docs = [
        authconfig(
            f"c-{c:03}",
            f"headerName: x-key\nk8sSecretApikeyStorage: {{labelSelector: {{g: g{c}}}}}",
        )
        for c in range(configs)
    ]
    (root / "configs.yaml").write_text("---\n".join(docs))


async def check(address: str, config: str, key: str) -> None:
    message = external_auth_pb2.CheckRequest()
    message.attributes.context_extensions["config_id"] = config
    message.attributes.request.http.headers["x-key"] = key
    async with grpc.aio.insecure_channel(address) as channel:
        await external_auth_pb2_grpc.AuthorizationStub(channel).Check(message)


async def main(keys: int, configs: int, distinct: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write(root, keys, configs, distinct)
        settings = Settings(
            grpc_address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            usage_label="x-org",
        )
        server = Server(settings, sources_for(SourceSettings(config_dir=root)))
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        await asyncio.wait_for(server.ready.wait(), 300)
        port = server.status.port
        assert port is not None
        address = f"127.0.0.1:{server.port}"
        for c in range(configs):
            await check(address, f"ns.c-{c:03}", f"key-{c}")
            await check(address, f"ns.c-{c:03}", "wrong")

        def timed(path: str, accept: str | None = None) -> tuple[float, int]:
            start = time.perf_counter()
            found = request(port, path, {"accept": accept} if accept else {})
            assert found.status == 200
            return time.perf_counter() - start, len(found.body)

        first, size = await asyncio.to_thread(timed, "/")
        later = [(await asyncio.to_thread(timed, "/"))[0] for _ in range(10)]
        listing, listing_size = await asyncio.to_thread(timed, "/?config=ns.c-007&page=1")
        _, plain = await asyncio.to_thread(timed, "/metrics")
        _, om = await asyncio.to_thread(timed, "/metrics", OPENMETRICS)
        stop.set()
        await asyncio.wait_for(task, 30)
    print(f"{keys} keys, {configs} AuthConfigs{', every key a label set of its own' * distinct}")
    print(
        f"status page: first render {first * 1000:.0f} ms, then median "
        f"{statistics.median(later) * 1000:.1f} ms; {size} bytes"
    )
    print(f"identities page: {listing * 1000:.1f} ms; {listing_size} bytes")
    print(f"/metrics: {plain} bytes (text), {om} bytes (OpenMetrics)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--configs", type=int, default=100)
    parser.add_argument(
        "--distinct-labels",
        action="store_true",
        help="every key a label set of its own (the worst case for grouping)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.keys, args.configs, args.distinct_labels))
