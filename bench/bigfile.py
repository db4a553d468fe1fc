"""Check latency while the config directory takes in a big file (not part of `make test`).

The service keeps answering Checks from the current policy while a file is read in a
worker thread, but that thread competes for the GIL. This measures how much: a probe
process sends Checks at a steady rate over one channel and records each one's latency,
before and while a file lands in the directory, until the file's keys are admitted (or
its refusal is logged). Prints p50 / p99 / max per phase.

    .venv/bin/python bench/bigfile.py [--keys 100000] [--big-mb 200] [--rate 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import check_allowed, check_request, secret_doc, write_config
from tests import harness


def probe(address: str, rate: float, conn: Connection) -> None:
    """In a child process: (send time, latency) of a Check every 1/rate s, until told."""
    message = external_auth_pb2.CheckRequest.FromString(check_request(key_zero(), "bench.cfg-0"))
    samples: list[tuple[float, float]] = []
    with grpc.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        stub.Check(message, timeout=5)
        interval = 1 / rate
        next_at = time.monotonic()
        while not conn.poll():
            start = time.monotonic()
            reply = stub.Check(message, timeout=5)
            assert reply.status.code == 0
            samples.append((start, time.monotonic() - start))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    conn.send(samples)


def key_zero() -> str:
    from bench.run import key_of

    return key_of(0)


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.2f} ms "
        f"p99={p99 * 1000:.2f} ms max={ordered[-1] * 1000:.2f} ms"
    )


def run_case(name: str, text: str, expect_key: str | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "config"
        write_config(config, 1, 1)
        with harness_server(config, Path(work)) as server:
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.get_context("spawn").Process(
                target=probe, args=(server.address, args.rate, child)
            )
            proc.start()
            time.sleep(args.settle)
            dropped = time.monotonic()
            tmp = config / ".big.tmp"
            tmp.write_text(text)
            tmp.replace(config / "big.yaml")

            def applied() -> bool | None:
                if expect_key is not None:
                    found = check_allowed(server.address, expect_key, "bench.cfg-0")
                    return True if found else None
                return True if "big.yaml" in server.log() else None

            harness.wait_until(applied, 600, f"{name} to be applied")
            done = time.monotonic()
            time.sleep(args.settle)
            parent.send("stop")
            samples: list[tuple[float, float]] = parent.recv()
            proc.join()
            before = [lat for at, lat in samples if at < dropped]
            during = [lat for at, lat in samples if dropped <= at <= done]
            after = [lat for at, lat in samples if at > done]
            print(f"{name}: applied {done - dropped:.1f} s after the rename")
            print(f"  before: {summary(before)}")
            print(f"  during: {summary(during)}")
            print(f"  after:  {summary(after)}")
            refused = [line for line in server.log().splitlines() if "big.yaml" in line]
            if refused:
                print(f"  log: {refused[-1][:160]}")


class harness_server:
    def __init__(self, config: Path, work: Path) -> None:
        self.server = harness.Extauth(config, work / "extauth.log")

    def __enter__(self) -> harness.Extauth:
        self.server.wait_ready(timeout=120)
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--only", choices=["keys", "general", "big"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["keys", "general", "big"])
    if "keys" in only:
        # The fast path's layout, as `extauth keys new` writes it.
        text = "".join(secret_doc(i, 1) for i in range(1, args.keys + 1))
        run_case(f"{args.keys:,} keys (fast path)", text, secret_key(args.keys), args)
    if "general" in only:
        # The same keys in flow style: the general YAML loader.
        general = "".join(
            f"---\n{{apiVersion: v1, kind: Secret, type: extauth.solo.io/apikey, "
            f"metadata: {{name: key-{i}, namespace: bench, labels: {{group: g0}}}}, "
            f"stringData: {{api-key: {secret_key(i)}}}}}\n"
            for i in range(1, args.keys // 10 + 1)
        )
        last = secret_key(args.keys // 10)
        run_case(f"{args.keys // 10:,} keys (general loader)", general, last, args)
    if "big" in only:
        # One huge document: a single block scalar of `big_mb` megabytes.
        line = "  " + "x" * 98 + "\n"
        big = "big: |\n" + line * (args.big_mb * 1024 * 1024 // len(line))
        run_case(f"{args.big_mb} MB file", big, None, args)
    return 0


def secret_key(i: int) -> str:
    from bench.run import key_of

    return key_of(i)


if __name__ == "__main__":
    sys.exit(main())
