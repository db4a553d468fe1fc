"""Which `extauth serve --workers 2` worker answers Envoy's Checks (not part of `make test`).

Two ways for Envoy to reach the workers, each run at Envoy `--concurrency` 1 and 2:
- "shared": the committed envoy/envoy.yaml, one endpoint, the port the workers share
  (SO_REUSEPORT): the kernel places each *connection* on a worker by a hash of its
  addresses, and every Check on it goes there. Envoy keeps one HTTP/2 connection per
  worker thread and endpoint (more only past `max_concurrent_streams` in flight) and
  replaces it after `max_requests_per_connection`.
- "per-worker": the config `extauth envoy-config --workers 2` makes: each worker's own
  port an endpoint, balanced round-robin and health-checked by Envoy.
It sends `--requests` requests one at a time and prints Envoy's per-endpoint stats for
the extauth cluster (admin `/clusters`: connections and requests per endpoint) beside
the decisions each worker counted (its own /metrics, port + i).

    .venv/bin/python bench/spread.py [--requests 3000] [--runs 2] [--modes shared,per-worker]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import harness  # noqa: E402


def decisions(port: int) -> int:
    """Decisions a worker counted: the sum of its `extauth_decisions_total` series."""
    text = harness.request(port, "/metrics").body.decode()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("extauth_decisions_total")
        )
    )


def endpoint_stats(admin: int) -> dict[str, dict[str, int]]:
    """The extauth cluster's per-endpoint counters that say how Checks travelled:
    endpoint -> connections and requests (health checks not among them)."""
    text = harness.request(admin, "/clusters").body.decode()
    found: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "extauth" and parts[2] in ("cx_total", "rq_total"):
            found.setdefault(parts[1], {})[parts[2]] = int(parts[3])
    return found


def run(mode: str, concurrency: int, requests: int, work: Path, upstream: int) -> str:
    http = harness.free_ports(2)
    server = harness.Extauth(
        ROOT / "authconfigs",
        work / f"extauth-{http}.log",
        "--workers",
        "2",
        "--http-address",
        f"127.0.0.1:{http}",
    )
    try:
        server.wait_ready(60)
        harness.wait_until(
            lambda: True if all(_serving(p) for p in (http, http + 1)) else None,
            30,
            "both workers",
        )
        if mode == "shared":
            config, listen = harness.envoy_config(extauth=server.port, upstream=upstream, work=work)
        else:
            config, listen = harness.local_envoy_config(
                extauth=server.port, upstream=f"http://127.0.0.1:{upstream}", work=work, workers=2
            )
        config_path = work / f"envoy-{concurrency}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with (work / f"envoy-{concurrency}.log").open("wb") as log:
            envoy = subprocess.Popen(
                [
                    harness.envoy_binary(),
                    "-c",
                    str(config_path),
                    "--use-dynamic-base-id",
                    "--concurrency",
                    str(concurrency),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            admin = config["admin"]["address"]["socket_address"]["port_value"]
            try:
                harness.wait_until(lambda: _ready(admin), 30, "envoy")
                harness.wait_until(
                    lambda: _healthy(admin, 1 if mode == "shared" else 2), 30, "health checks"
                )
                before = [decisions(http), decisions(http + 1)]
                for _ in range(requests):
                    # A key no Secret holds: a 401, decided by extauth all the same.
                    harness.request(listen, "/", {"vanity-auth": "not-a-key"})
                after = [decisions(http) - before[0], decisions(http + 1) - before[1]]
                stats = endpoint_stats(admin)
            finally:
                envoy.terminate()
                envoy.wait(10)
    finally:
        server.stop()
    endpoints = "; ".join(
        f"{address}: {counts.get('cx_total', 0)} connections, {counts.get('rq_total', 0)} Checks"
        for address, counts in sorted(stats.items())
    )
    return (
        f"{mode}, envoy --concurrency {concurrency}: {requests} requests; Envoy's extauth "
        f"endpoints: {endpoints}; decisions by worker 0 / 1: {after[0]} / {after[1]}"
    )


def _serving(port: int) -> bool:
    try:
        return harness.request(port, "/readyz").status == 200
    except OSError:
        return False


def _healthy(admin: int, count: int) -> bool | None:
    body = harness.request(admin, "/stats?filter=^cluster.extauth.health_check.healthy$")
    text = body.body.decode()
    return True if ":" in text and int(text.split(":")[1]) == count else None


def _ready(admin: int) -> bool | None:
    try:
        return True if harness.request(admin, "/ready").status == 200 else None
    except OSError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--modes", default="shared,per-worker")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, harness.echo_upstream() as upstream:
        for mode in args.modes.split(","):
            for concurrency in (1, 2):
                for _ in range(args.runs):
                    started = time.monotonic()
                    line = run(mode, concurrency, args.requests, Path(tmp), upstream)
                    print(f"{line} ({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
