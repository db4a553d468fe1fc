"""What `--keys` keys cost in memory, in process: the builder and its published policy
alone, the way BENCHMARKS.md measures 10,000,000 keys (no YAML, no gRPC, no server).

Keys are made as the file reader makes them (`apikeys.api_key`, 1,000 to a path, 100
label sets, 50 metadata sets, held in one tuple per path as the file source holds them),
published under one AuthConfig, and the RSS is read after a full collection; printed
with the bare interpreter's RSS (after these imports) and the bytes a key above it.

    .venv/bin/python bench/keymemory.py --keys 1000000 [--keys 2000000 ...]

With `--kubernetes`, the keys are made as the Kubernetes source makes them instead: each
its own origin path `kubernetes:Secret/bench/key-N`, line 0, and its rank (creation
time and uid, a 150-bit integer) as its document. Each `--keys` runs in a child process
of its own, so one figure never holds another's heap. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extauth.apikeys import ApiKey, api_key, digest, shared
from extauth.building import PolicyHolder
from extauth.changes import Change
from tests.builders import authconfig, snapshot

PER_PATH = 1000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure(count: int, kubernetes: bool) -> str:
    gc.collect()
    idle = rss_mb()
    labels = [shared({"group": f"g{i}"}) for i in range(100)]
    metadata = [shared({"x-org": f"team-{i}"}) for i in range(50)]
    started = time.perf_counter()
    gc.disable()  # as the sources load (`memory.collector_paused`)
    files: list[tuple[ApiKey, ...]] = []
    for start in range(0, count, PER_PATH):
        path = f"/etc/extauth/keys/secrets-{start // PER_PATH:05d}.yaml"
        files.append(
            tuple(
                api_key(
                    "bench",
                    f"key-{i}",
                    labels[i % 100],
                    digest(f"bench-key-{i:08d}-{'x' * 24}"),
                    None,
                    metadata[i % 50],
                    f"kubernetes:Secret/bench/key-{i}" if kubernetes else path,
                    0 if kubernetes else 2 + 11 * (i - start),
                    ((1_800_000_000 + i) << 128 | (i * 7919)) if kubernetes else 1 + i - start,
                    False,
                    None,
                )
                for i in range(start, min(start + PER_PATH, count))
            )
        )
    config = snapshot(
        authconfig(
            "cfg",
            "headerName: vanity-auth\nk8sSecretApikeyStorage: {labelSelector: {group: g0}}",
            namespace="bench",
        )
    )
    holder = PolicyHolder()
    holder.update([Change(tuple(k for keys in files for k in keys) + config.upserted)])
    gc.enable()
    gc.collect()
    rss = rss_mb()
    assert holder.current.key_count == count
    return (
        f"{count:,} keys: RSS {rss:,.0f} MB, the interpreter {idle:.0f} MB, "
        f"{(rss - idle) * 2**20 / count:.0f} bytes a key above it "
        f"(made and published in {time.perf_counter() - started:.1f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, action="append")
    parser.add_argument("--kubernetes", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = args.keys or [1_000_000]
    if args.child:
        print(measure(counts[0], args.kubernetes), flush=True)
        return 0
    for count in counts:
        kind = ["--kubernetes"] if args.kubernetes else []
        subprocess.run(
            [sys.executable, __file__, "--child", "--keys", str(count), *kind], check=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
