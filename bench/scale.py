"""The scale section of `bench/run.py` alone: memory, readiness and one revocation at
`--keys` keys, without the throughput runs (which need a quiet machine; memory and
readiness do not). Not part of `make test`.

    .venv/bin/python bench/scale.py [--keys 1000000] [--configs 100]

Prints the server's RSS once ready (and after a full collection has had time to run),
the time from start to ready, and the time from rewriting one shard without a key until
Check denies it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import (
    SHARD,
    check_allowed,
    extauth_server,
    key_of,
    rss_mb,
    secret_doc,
    write_config,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--configs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        big = work / "config-big"
        write_config(big, args.keys, args.configs)
        started = time.monotonic()
        with extauth_server(big, work) as server:
            ready_s = time.monotonic() - started
            rss_ready = rss_mb(server.proc.pid)
            victim = args.keys // 2
            config_id = f"bench.cfg-{victim % args.configs}"
            assert check_allowed(server.address, key_of(victim), config_id)
            time.sleep(2)
            rss_settled = rss_mb(server.proc.pid)
            shard_start = victim - victim % SHARD
            text = "".join(
                secret_doc(i, args.configs)
                for i in range(shard_start, min(shard_start + SHARD, args.keys))
                if i != victim
            )
            path = big / f"secrets-{shard_start // SHARD:05d}.yaml"
            partial = big / f".{path.name}.tmp"
            partial.write_text(text)
            revoked_at = time.monotonic()
            partial.replace(path)
            while check_allowed(server.address, key_of(victim), config_id):
                time.sleep(0.01)
            revoke_s = time.monotonic() - revoked_at
            rss_after = rss_mb(server.proc.pid)
    print(
        f"keys {args.keys:,}: ready {ready_s:.1f} s, RSS {rss_ready:.0f} MB at ready, "
        f"{rss_settled:.0f} MB settled, {rss_after:.0f} MB after a revocation; "
        f"revoke one key {revoke_s:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
