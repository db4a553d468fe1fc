"""The cost of publishing one change among a million keys: the event loop's stall.

In process, no gRPC: a `PolicyHolder` loaded with `--keys` Secrets (one AuthConfig
selecting them by label), then, `--rounds` times, one Secret revoked and one redefined,
each its own batch. Prints the initial load, and per kind of change the median and
worst time of `update` (apply + publish: what the loop does between two Checks), and
the revocation time: from the Removal handed to the holder until `decide` denies the
key. `python bench/publish.py --keys 1000000`. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extauth.apikeys import api_key, digest, shared
from extauth.building import PolicyHolder
from extauth.changes import Change, Removal
from extauth.deciding import decide
from extauth.decisions import Allow, Deny
from tests.builders import authconfig, snapshot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    labels = shared({"group": "bench"})
    meta = shared({"x-org": "team"})
    keys = tuple(
        api_key(
            "bench",
            f"k{i}",
            labels,
            digest(f"key-{i}"),
            None,
            meta,
            "bench.yaml",
            i,
            i,
            False,
            None,
        )
        for i in range(args.keys)
    )
    config = snapshot(
        authconfig(
            "cfg",
            "headerName: vanity-auth\nk8sSecretApikeyStorage: {labelSelector: {group: bench}}",
            namespace="bench",
        )
    )
    holder = PolicyHolder()
    gc.freeze()
    started = time.perf_counter()
    holder.update([Change(keys + config.upserted)])
    print(f"initial load of {args.keys:,} keys: {time.perf_counter() - started:.2f} s")
    route = {"config_id": "bench.cfg"}
    revoke: list[float] = []
    redefine: list[float] = []
    for r in range(args.rounds):
        victim = keys[(r * 7919) % args.keys]
        headers = {"vanity-auth": f"key-{victim.line}"}
        assert isinstance(decide(holder.current, route, headers, "/"), Allow)
        started = time.perf_counter()
        holder.update([Change(removed=(Removal("Secret", victim.owner, victim.path),))])
        denied = isinstance(decide(holder.current, route, headers, "/"), Deny)
        revoke.append(time.perf_counter() - started)
        assert denied
        started = time.perf_counter()
        holder.update([Change((victim,))])
        redefine.append(time.perf_counter() - started)
        assert isinstance(decide(holder.current, route, headers, "/"), Allow)
    for name, times in (("revoke one key", revoke), ("define one key", redefine)):
        print(
            f"{name}: median {statistics.median(times) * 1000:.2f} ms, "
            f"worst {max(times) * 1000:.2f} ms over {len(times)} rounds"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
