"""`make soak`: load through a real Envoy for a while, with config reloads, and report.

1. Starts extauth (authconfigs/ plus a file this script rewrites) and Envoy (the generated
   config, with routes answered by Envoy itself so no upstream skews the figures), all on
   loopback.
2. Measures capacity: `hey` at high concurrency with a valid key for a few seconds.
3. Soaks at half that rate (open loop, `hey -q`): 80 % valid-key requests, 20 % without a
   key, while the churn Secret is rewritten every few seconds (a config reload each time).
4. Samples extauth's RSS, open file descriptors and asyncio tasks from its /metrics.
5. Prints a report and writes it as JSON: errors, wrong statuses, RSS growth after warm-up,
   fd and task counts, reloads. Exit 1 if a criterion fails: zero errors, every valid
   request 200 and every keyless one 401, RSS growth <= 5 %, no fd or task growth.

Usage: python bench/soak.py [--duration SECONDS] [--reload-every SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadtools import ensure_tool, hey  # noqa: E402
from extauth import envoyconf  # noqa: E402
from tests import harness  # noqa: E402

BODY = '{"model":"m","messages":[]}'
CHURN = """apiVersion: v1
kind: Secret
type: extauth.solo.io/apikey
metadata: {{name: churn, namespace: agentgateway-system}}
stringData: {{api-key: churn-key-{n}, x-org: churn-{n}}}
"""


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def run_hey(
    tool: str,
    url: str,
    seconds: float,
    rate: float | None,
    headers: dict[str, str],
    concurrency: int,
) -> dict[str, Any]:
    """hey's figures as the report records them."""
    result = hey(
        tool, url, seconds=seconds, concurrency=concurrency, headers=headers, rate=rate, body=BODY
    )
    return {
        "statuses": result.statuses,
        "requests_per_second": result.requests_per_second,
        "errors": result.errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--reload-every", type=float, default=3)
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "soak.json")
    args = parser.parse_args()
    tool = ensure_tool("hey", "hey")

    work = Path(tempfile.mkdtemp(prefix="extauth-soak-"))
    config_dir = work / "config"
    shutil.copytree(ROOT / "authconfigs", config_dir)
    (config_dir / "churn.yaml").write_text(CHURN.format(n=0))
    ports = {
        name: harness.free_port() for name in ("listen", "admin", "extauth", "http", "upstream")
    }
    extauth = harness.Extauth(
        config_dir,
        work / "extauth.log",
        "--http-address",
        f"127.0.0.1:{ports['http']}",
        "--usage-label",
        "x-org",
        port=ports["extauth"],
    )
    target = envoyconf.local(
        listen=ports["listen"],
        admin=ports["admin"],
        extauth=ports["extauth"],
        upstream=f"http://127.0.0.1:{ports['upstream']}",
        secrets_dir=str(work / "secrets"),
    )
    harness.write_provider_key(work / "secrets", "Bearer sk-soak")
    config = yaml.safe_load(envoyconf.config_text(target))
    # Envoy answers itself: the soak measures Envoy + extauth, not a Python upstream.
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for route in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
        del route["route"]
        route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}
    envoy = harness.Envoy(config, work)
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    reloads = 0
    try:
        extauth.wait_ready()
        envoy.wait_ready()
        url = f"http://127.0.0.1:{ports['listen']}/openai"
        valid = {"vanity-auth": "team1-key"}
        print("measuring capacity (5 s, 32 connections) ...", flush=True)
        capacity = run_hey(tool, url, 5, None, valid, 32)["requests_per_second"]
        rate = capacity / 2
        print(
            f"capacity {capacity:.0f} req/s; soaking at {rate:.0f} req/s for {args.duration:.0f} s",
            flush=True,
        )
        time.sleep(2)
        idle_before = metrics(ports["http"])

        def reload_loop() -> None:
            nonlocal reloads
            while not stop.wait(args.reload_every):
                reloads += 1
                tmp = config_dir / ".churn.tmp"
                tmp.write_text(CHURN.format(n=reloads))
                tmp.replace(config_dir / "churn.yaml")

        def sample_loop() -> None:
            while not stop.wait(5):
                found = metrics(ports["http"])
                samples.append(
                    {
                        "t": time.monotonic(),
                        "rss": found.get("process_resident_memory_bytes", 0),
                        "fds": found.get("process_open_fds", 0),
                        "tasks": found.get("extauth_asyncio_tasks", 0),
                        "reloads": found.get("extauth_policy_reloads_total", 0),
                    }
                )

        threads = [
            threading.Thread(target=reload_loop, daemon=True),
            threading.Thread(target=sample_loop, daemon=True),
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        results: dict[str, dict[str, Any]] = {}

        def run(name: str, share: float, headers: dict[str, str]) -> None:
            results[name] = run_hey(tool, url, args.duration, rate * share, headers, 8)

        loads = [
            threading.Thread(target=run, args=("valid", 0.8, valid)),
            threading.Thread(target=run, args=("keyless", 0.2, {})),
        ]
        for thread in loads:
            thread.start()
        for thread in loads:
            thread.join()
        stop.set()
        for thread in threads:
            thread.join(10)
        time.sleep(2)
        final = metrics(ports["http"])  # idle again: what is left is what leaked
    finally:
        stop.set()
        envoy.stop()
        extauth.stop()

    warm = [s for s in samples if s["t"] - started >= args.warmup] or samples
    # Why valid requests failed, from Envoy's access log (flags, authz reason).
    flags: dict[str, int] = {}
    for line in (work / "envoy.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("status") not in (200, 401):
                label = f"{entry.get('status')} {entry.get('flags')} {entry.get('authz_reason')}"
                flags[label] = flags.get(label, 0) + 1
    rss0, rss1 = warm[0]["rss"], max(s["rss"] for s in warm[-3:])
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(),
        "duration_s": args.duration,
        "capacity_rps": round(capacity, 1),
        "soak_rate_rps": round(rate, 1),
        "valid": results["valid"],
        "keyless": results["keyless"],
        "config_reloads_written": reloads,
        "policy_reloads_seen": final.get("extauth_policy_reloads_total", 0),
        "rss_after_warmup_mb": round(rss0 / 2**20, 1),
        "rss_end_mb": round(rss1 / 2**20, 1),
        "rss_growth_pct": round(100 * (rss1 - rss0) / rss0, 2) if rss0 else None,
        "fds_idle_before_after": [
            idle_before.get("process_open_fds"),
            final.get("process_open_fds"),
        ],
        "asyncio_tasks_idle_before_after": [
            idle_before.get("extauth_asyncio_tasks"),
            final.get("extauth_asyncio_tasks"),
        ],
        "envoy_response_flags_of_non_2xx_valid": flags,
        "work_dir": str(work),
    }
    checks = {
        "no errors": not results["valid"]["errors"] and not results["keyless"]["errors"],
        "every valid request 200": set(results["valid"]["statuses"]) == {200},
        "every keyless request 401": set(results["keyless"]["statuses"]) == {401},
        "RSS growth <= 5 %": report["rss_growth_pct"] is not None and report["rss_growth_pct"] <= 5,
        "no fd growth": final.get("process_open_fds", 0) <= idle_before.get("process_open_fds", 0),
        "no task growth": final.get("extauth_asyncio_tasks", 0)
        <= idle_before.get("extauth_asyncio_tasks", 0),
        "reloads applied": report["policy_reloads_seen"] >= reloads,
    }
    report["checks"] = checks
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if all(checks.values()):
        shutil.rmtree(work, ignore_errors=True)
        return 0
    print(f"logs kept in {work}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
