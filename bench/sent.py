"""What `allowed_headers` buys: the CheckRequest's size, and Check throughput through Envoy.

Two Envoys made by extauth/envoyconf.py for authconfigs/, one sending every header (as
without `allowed_headers`), one filtered as the committed envoy/envoy.yaml is (the list,
the context extension, the Lua header-count guard). Routes answer 200 themselves, so only
the ext_authz path is measured.

1. Size: one request (the headers of BENCHMARKS.md's earlier measurement) through each
   Envoy to a gRPC server that records the raw Check bytes.
2. Throughput: `extauth serve` on authconfigs/ behind both Envoys, `hey` closed loop
   against one then the other, alternating for --rounds; medians of req/s, p50, p99.

Usage: python bench/sent.py [--rounds 5] [--seconds 8] [--extauth-root DIR]
(--extauth-root: run extauth from another checkout, a `git worktree` of the commit before,
with this one's interpreter.)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import timeit
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadtools import ensure_tool, hey  # noqa: E402
from bench.run import answering_envoy_config, extauth_server, grpc_frame, h2load  # noqa: E402
from extauth import envoyconf  # noqa: E402
from extauth.wire import ext_authz_pb2 as pb  # noqa: E402
from tests import harness  # noqa: E402

KEY = "team1-key"
ALLOW = bytes([0x0A, 0x00, 0x1A, 0x00])
HEADERS = {
    "user-agent": "curl/8.5.0",
    "accept": "*/*",
    "content-type": "application/json",
    "x-request-id": "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
    "cookie": "session=abc123; theme=dark",
    "x-secret-other": "not-for-extauth",
}


def envoy_config(work: Path, extauth_port: int, filtered: bool) -> tuple[dict[str, Any], int]:
    config, _, listen = answering_envoy_config(work, extauth_port)
    envoyconf.filter_headers(
        config, envoyconf.authconfig_headers(ROOT / "authconfigs") if filtered else None
    )
    return config, listen


@contextmanager
def envoys(work: Path, extauth_port: int) -> Iterator[dict[str, int]]:
    """Both Envoys, running side by side: {"unfiltered": port, "filtered": port}."""
    started: list[harness.Envoy] = []
    ports: dict[str, int] = {}
    try:
        for name in ("unfiltered", "filtered"):
            directory = work / name
            directory.mkdir(parents=True, exist_ok=True)
            config, listen = envoy_config(directory, extauth_port, name == "filtered")
            envoy = harness.Envoy(config, directory)
            started.append(envoy)
            envoy.wait_ready()
            ports[name] = listen
        yield ports
    finally:
        for envoy in started:
            envoy.stop()


def measure_size(work: Path, key: str) -> dict[str, tuple[bytes, int]]:
    """(the CheckRequest as sent, headers in its map) for each Envoy."""
    seen: list[bytes] = []

    def check(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(request)
        return ALLOW

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.auth.v3.Authorization",
                {"Check": grpc.unary_unary_rpc_method_handler(check)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sizes: dict[str, tuple[bytes, int]] = {}
    try:
        with envoys(work / "size", port) as ports:
            for name, listen in ports.items():
                seen.clear()
                response = harness.request(
                    listen, "/openai", headers={**HEADERS, "vanity-auth": key}
                )
                assert response.status == 200, response.status
                (raw,) = seen
                parsed = pb.CheckRequest.FromString(raw)
                sizes[name] = (raw, len(parsed.attributes.request.http.headers))
    finally:
        server.stop(0)
    return sizes


def measure_throughput(
    work: Path,
    rounds: int,
    seconds: float,
    extauth_root: Path | None,
    frames: dict[str, bytes],
    requests: int,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[float]]]:
    """Through Envoy (hey, closed loop), then extauth alone (h2load, each Envoy's own
    CheckRequest replayed): the first says what a client sees, the second what extauth
    saves per Check without the noise of Envoy and hey on the same cores."""
    tool = ensure_tool("hey", "hey")
    results: dict[str, dict[str, list[float]]] = {}
    direct: dict[str, list[float]] = {}
    h2 = ensure_tool("h2load", "nghttp2-client")
    paths = {}
    for name, raw in frames.items():
        paths[name] = work / f"{name}.frame"
        paths[name].write_bytes(grpc_frame(raw))
    with extauth_server(ROOT / "authconfigs", work, root=extauth_root) as extauth:
        port = extauth.port
        with envoys(work / "load", port) as ports:
            headers = {**HEADERS, "vanity-auth": KEY}
            for listen in ports.values():  # warm-up
                hey(
                    tool,
                    f"http://127.0.0.1:{listen}/openai",
                    seconds=1,
                    concurrency=20,
                    headers=headers,
                )
            for _ in range(rounds):
                for name, listen in ports.items():
                    result = hey(
                        tool,
                        f"http://127.0.0.1:{listen}/openai",
                        seconds=seconds,
                        concurrency=20,
                        headers=headers,
                    )
                    row = results.setdefault(name, {"rps": [], "p50": [], "p99": [], "other": []})
                    # A Check past its 0.5 s on a busy machine is a 503: counted, not fatal.
                    row["other"].append(
                        sum(n for code, n in result.statuses.items() if code != 200)
                    )
                    row["rps"].append(result.requests_per_second)
                    row["p50"].append(result.latency_ms["50"])
                    row["p99"].append(result.latency_ms["99"])
        for _ in range(rounds):
            for name, path in paths.items():
                direct.setdefault(name, []).append(h2load(h2, port, path, requests, 4, 16))
    return results, direct


def in_process(frames: dict[str, bytes], rounds: int) -> dict[str, list[float]]:
    """Microseconds a Check takes inside extauth (parse, decide, the cached allow's
    bytes, metrics) for each Envoy's CheckRequest: the same service and policy, frames
    alternating, the best of 20,000 calls a round (a busy machine only adds to each)."""
    from extauth import loader
    from extauth.building import PolicyHolder
    from extauth.changes import Change
    from extauth.server import AuthorizationService
    from extauth.sources.listing import walk

    definitions = [
        d for f in walk(ROOT / "authconfigs").files for d in loader.load_file(f).definitions
    ]
    holder = PolicyHolder()
    holder.update([Change(tuple(definitions))])
    service = AuthorizationService(holder)

    def one(raw: bytes) -> bytes:
        coroutine = service.check(pb.CheckRequest.FromString(raw), None)  # type: ignore[arg-type]
        try:
            coroutine.send(None)
        except StopIteration as done:
            return bytes(done.value)
        raise RuntimeError("check awaited")

    for raw in frames.values():
        assert pb.CheckResponse.FromString(one(raw)).status.code == 0
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, raw in frames.items():
            best = min(timeit.repeat(functools.partial(one, raw), number=2000, repeat=10))
            out.setdefault(name, []).append(best / 2000 * 1e6)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--extauth-root", type=Path, default=None)
    parser.add_argument("--in-process-only", action="store_true")
    parser.add_argument("--save-frames", type=Path, default=None, help="DIR: keep the requests")
    parser.add_argument("--requests", type=int, default=20_000, help="h2load requests a run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sent-") as tmp:
        work = Path(tmp)
        for name, (raw, count) in measure_size(work, "k" * 44).items():
            print(f"CheckRequest {name}: {len(raw)} bytes, {count} headers in the map")
        frames = {name: raw for name, (raw, _) in measure_size(work / "key", KEY).items()}
        if args.save_frames is not None:
            for name, raw in frames.items():
                (args.save_frames / f"{name}.bin").write_bytes(raw)
        for name, micros in in_process(frames, args.rounds).items():
            print(
                f"in process, {name} CheckRequest: {statistics.median(micros):.2f} us a Check "
                f"(min {min(micros):.2f}, max {max(micros):.2f})"
            )
        if args.in_process_only:
            return 0
        results, direct = measure_throughput(
            work, args.rounds, args.seconds, args.extauth_root, frames, args.requests
        )
    ratios = [
        f / u for f, u in zip(results["filtered"]["rps"], results["unfiltered"]["rps"], strict=True)
    ]
    for name, row in results.items():
        print(
            f"{name}: req/s median {statistics.median(row['rps']):.0f} "
            f"(min {min(row['rps']):.0f}, max {max(row['rps']):.0f}); "
            f"p50 {statistics.median(row['p50']):.2f} ms, "
            f"p99 {statistics.median(row['p99']):.2f} ms; "
            f"answers other than 200: {sum(row['other']):.0f}"
        )
    for name, rates in direct.items():
        print(
            f"extauth alone, {name} CheckRequest ({len(frames[name])} bytes): Checks/s median "
            f"{statistics.median(rates):.0f} (min {min(rates):.0f}, max {max(rates):.0f})"
        )
    pairs = [f / u for f, u in zip(direct["filtered"], direct["unfiltered"], strict=True)]
    print(
        f"extauth alone, filtered / unfiltered, pair by pair: median "
        f"{statistics.median(pairs):.3f} (min {min(pairs):.3f}, max {max(pairs):.3f})"
    )
    print(
        f"filtered / unfiltered req/s, pair by pair: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
