"""`make bench-kube`: extauth against a Kubernetes API server holding many API-key Secrets.

kube-lite (the real k8s.io/apiserver over a real etcd, state on /dev/shm so etcd's fsyncs do
not dominate) is filled with --secrets Secrets (default 100,000) and one AuthConfig that
selects them all; then `extauth serve --kubernetes` starts and the run measures:

1. ready: seconds from start until /readyz answers 200; every key admitted by then
   (`extauth_api_keys` equals the count, and a random sample passes Check);
2. RSS once ready, and its peak (VmHWM);
3. revoke: seconds from deleting one Secret until Check denies its key (median of 5);
4. relist after 410 Gone: kube-lite runs without the watch cache and compacts etcd every
   30 s, extauth restarts its watches every 5 s; ConfigMap churn moves etcd's
   revision until the Secret watch gets 410 Gone and relists everything. Seconds from the
   410 to the end of the relist, RSS peak after it, and a revoke after it.

Targets (issue 12): every key admitted when ready, ready <= 60 s after the API server has
the Secrets, revoke <= 1 s, RSS <= 150 MB. Not part of `make test` (a small run of this
code path is: tests/kube/test_bench_kube.py). Results: a table and .bench/kube.json.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import re
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from extauth import crds
from tests import harness
from tests.kube.kubelite import KubeLite, unavailable_reason

NAMESPACE = "bench"
CONFIG_ID = f"{NAMESPACE}.everyone"


class Api:
    """Plain HTTPS to the API server, one keep-alive connection per thread: the official
    client costs ~10 ms of Python per create, which would make filling it the benchmark."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        server = config["clusters"][0]["cluster"]["server"]
        host, port = server.split("//")[1].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.context = ssl.create_default_context(
            cafile=config["clusters"][0]["cluster"]["certificate-authority"]
        )
        self.context.check_hostname = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPSConnection] = []

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for attempt in (1, 2):
            connection = self._connection(fresh=attempt == 2)
            try:
                connection.request(method, path, payload, headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                if attempt == 2:
                    raise
                continue  # an idle keep-alive connection the server closed: once more
            return response.status, json.loads(data) if data else None
        raise AssertionError("unreachable")

    def _connection(self, *, fresh: bool) -> http.client.HTTPSConnection:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is not None and fresh:
            connection.close()
            connection = None
        if connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.context)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection


def secret(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "extauth.solo.io/apikey",
        "metadata": {"name": f"key-{i:06d}", "labels": {"team": "bench", "org": f"o{i % 50}"}},
        "data": {
            "api-key": base64.b64encode(f"bench-key-{i}".encode()).decode(),
            "x-org": base64.b64encode(f"org-{i % 50}".encode()).decode(),
        },
    }


def fill(api: Api, count: int, threads: int) -> float:
    def create(i: int) -> None:
        status, _ = api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret(i))
        if status != 201:
            raise RuntimeError(f"creating Secret {i}: HTTP {status}")

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(create, range(count)), 1):
            if done % 10_000 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done:,} Secrets created ({rate:,.0f}/s)", flush=True)
    return time.monotonic() - started


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def allowed(stub: external_auth_pb2_grpc.AuthorizationStub, key: str) -> bool:
    request = external_auth_pb2.CheckRequest()
    request.attributes.context_extensions["config_id"] = CONFIG_ID
    request.attributes.request.http.path = "/"
    request.attributes.request.http.headers["x-api-key"] = key
    reply: external_auth_pb2.CheckResponse = stub.Check(request, timeout=5)
    return bool(reply.status.code == 0)


def until(probe: Callable[[], bool], timeout: float, what: str, step: float = 0.005) -> float:
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


def install(api: Api, namespaces: tuple[str, ...], headers: dict[str, Any] | None) -> None:
    """The CRD, and in each namespace an AuthConfig `everyone` selecting team=bench
    (setting `headers` from metadata, when given)."""
    for namespace in namespaces:
        api.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    status, _ = api.call(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crds.build()
    )
    assert status == 201, status
    auth: dict[str, Any] = {
        "headerName": "x-api-key",
        "k8sSecretApikeyStorage": {"labelSelector": {"team": "bench"}},
    }
    if headers is not None:
        auth["headersFromMetadataEntry"] = headers
    for namespace in namespaces:
        path = f"/apis/{crds.GROUP}/{crds.VERSION}/namespaces/{namespace}/{crds.PLURAL}"
        body = {
            "apiVersion": f"{crds.GROUP}/{crds.VERSION}",
            "kind": "AuthConfig",
            "metadata": {"name": "everyone"},
            "spec": {"configs": [{"apiKeyAuth": auth}]},
        }
        until(lambda p=path, b=body: api.call("POST", p, b)[0] == 201, 30, "the CRD", 0.2)  # type: ignore[misc]


def revoke(api: Api, stub: external_auth_pb2_grpc.AuthorizationStub, i: int) -> float:
    key = f"bench-key-{i}"
    if not allowed(stub, key):
        raise RuntimeError(f"key {i} not admitted before its revocation")
    status, _ = api.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/secrets/key-{i:06d}")
    if status != 200:
        raise RuntimeError(f"deleting Secret {i}: HTTP {status}")
    started = time.monotonic()
    until(lambda: not allowed(stub, key), 30, f"key {i} to be denied")
    return time.monotonic() - started


def metric(http_port: int, name: str) -> float:
    body = harness.request(http_port, "/metrics").body.decode()
    found = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def _stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run(
    count: int,
    threads: int,
    sample: int,
    work: Path,
    compaction: int = 30,
    watch_timeout: int = 5,
) -> dict[str, Any]:
    # The watch cache off: a watch from a compacted revision gets 410 (with it, the cache
    # would replay). etcd compacts every `compaction` seconds: long enough for a paged list
    # of every Secret to finish within one snapshot, as kube-apiserver's 5 minutes are.
    flags = ("--watch-cache=false", f"--etcd-compaction-interval={compaction}s")
    kubelite = KubeLite(work / "kube-lite", flags)
    kubelite.start()
    extauth: harness.Extauth | None = None
    churning = threading.Event()
    results: dict[str, Any] = {"secrets": count}
    api = Api(kubelite.kubeconfig)
    try:
        install(api, (NAMESPACE,), {"x-org": {"name": "x-org"}})
        print(f"creating {count:,} Secrets ({threads} threads) ...", flush=True)
        results["fill_seconds"] = round(fill(api, count, threads), 1)

        http_port = harness.free_port()
        started = time.monotonic()
        extauth = harness.Extauth(
            None,
            work / "extauth.log",
            "--kubernetes",
            "--kubeconfig",
            str(kubelite.kubeconfig),
            "--http-address",
            f"127.0.0.1:{http_port}",
            "--kube-watch-timeout",
            str(watch_timeout),
        )
        pid = extauth.proc.pid
        until(lambda: _ready(http_port, extauth), 600, "extauth to turn ready", step=0.05)
        results["ready_seconds"] = round(time.monotonic() - started, 2)
        results["rss_ready_mb"] = round(rss_kb(pid) / 1024, 1)
        results["rss_peak_mb"] = round(rss_kb(pid, "VmHWM") / 1024, 1)
        results["keys_when_ready"] = int(metric(http_port, "extauth_api_keys"))
        print(
            f"ready after {results['ready_seconds']} s, RSS {results['rss_ready_mb']} MB, "
            f"{results['keys_when_ready']:,} keys",
            flush=True,
        )

        with grpc.insecure_channel(extauth.address) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            picks = random.Random(12).sample(range(count), min(count, sample + 10))  # noqa: S311
            denied = [i for i in picks[:sample] if not allowed(stub, f"bench-key-{i}")]
            results["sample_checked"] = len(picks[:sample])
            results["sample_denied"] = len(denied)
            revokes = [revoke(api, stub, i) for i in picks[sample : sample + 5]]
            results["revoke_seconds_median"] = round(statistics.median(revokes), 3)
            results["revoke_seconds_max"] = round(max(revokes), 3)

            # Churn elsewhere until a Secret watch restarts from a compacted version.
            def churn() -> None:
                n = 0
                while not churning.is_set():
                    api.call(
                        "POST",
                        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
                        {"metadata": {"name": f"churn-{n}"}, "data": {"n": str(n)}},
                    )
                    n += 1
                    time.sleep(0.05)

            churner = threading.Thread(target=churn, daemon=True)
            churner.start()
            log = extauth.log
            until(
                lambda: "Secrets in all namespaces: resourceVersion expired" in log(),
                4 * compaction + 60,
                "a 410 Gone on the Secret watch",
                step=0.2,
            )
            churning.set()
            until(lambda: _relisted(log()) is not None, 600, "the relist", step=0.1)
            gone_at, listed_at = _relisted(log()) or (0.0, 0.0)
            results["relist_seconds"] = round(listed_at - gone_at, 2)
            results["rss_peak_after_relist_mb"] = round(rss_kb(pid, "VmHWM") / 1024, 1)
            results["rss_after_relist_mb"] = round(rss_kb(pid) / 1024, 1)
            results["keys_after_relist"] = int(metric(http_port, "extauth_api_keys"))
            results["revoke_after_relist_seconds"] = round(revoke(api, stub, picks[sample + 5]), 3)
    finally:
        churning.set()
        if extauth is not None:
            extauth.stop()
        api.close()
        kubelite.stop()
    return results


def run_unselected(count: int, size: int, threads: int, work: Path) -> dict[str, Any]:
    """What a Secret no AuthConfig selects costs (issue 18): `count` Secrets of about
    `size` bytes each in one namespace, none selected, against the same extauth watching
    an empty namespace; both with an AuthConfig in their namespace."""
    kubelite = KubeLite(work / "kube-lite")
    kubelite.start()
    api = Api(kubelite.kubeconfig)
    results: dict[str, Any] = {"unselected": count, "bytes_each": size}
    try:
        install(api, (NAMESPACE, "empty"), None)
        filler = b"u" * (size * 3 // 4)

        def create(i: int) -> None:
            body = secret(i)
            body["metadata"]["labels"] = {"team": "other", "org": f"o{i % 50}"}
            # Distinct per Secret: equal metadata would be shared when kept whole.
            body["data"]["pad"] = base64.b64encode(b"%08d" % i + filler[8:]).decode()
            status, _ = api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", body)
            if status != 201:
                raise RuntimeError(f"creating Secret {i}: HTTP {status}")

        print(f"creating {count:,} unselected Secrets of {size:,} bytes ...", flush=True)
        with ThreadPoolExecutor(min(threads, 8 if size > 100_000 else threads)) as pool:
            list(pool.map(create, range(count)))
        # With a --config-dir (an empty one here), every Secret is kept whole: the
        # cost of an unselected Secret before stubs, for comparison.
        empty_dir = work / "no-files"
        empty_dir.mkdir()
        runs = {
            "empty": ("--namespace", "empty"),
            "stubs": ("--namespace", NAMESPACE),
            "whole": ("--namespace", NAMESPACE, "--config-dir", str(empty_dir)),
        }
        for run_name, extra in runs.items():
            http_port = harness.free_port()
            extauth = harness.Extauth(
                None,
                work / f"extauth-{run_name}.log",
                "--kubernetes",
                "--kubeconfig",
                str(kubelite.kubeconfig),
                "--http-address",
                f"127.0.0.1:{http_port}",
                *extra,
            )
            try:
                started = time.monotonic()
                until(lambda e=extauth, h=http_port: _ready(h, e), 600, "ready", step=0.05)  # type: ignore[misc]
                results[f"ready_seconds_{run_name}"] = round(time.monotonic() - started, 2)
                time.sleep(1)
                results[f"rss_mb_{run_name}"] = round(rss_kb(extauth.proc.pid) / 1024, 1)
                results[f"rss_peak_mb_{run_name}"] = round(
                    rss_kb(extauth.proc.pid, "VmHWM") / 1024, 1
                )
            finally:
                extauth.stop()
        whole = results["rss_mb_whole"] - results["rss_mb_empty"]
        results["bytes_per_unselected_secret_whole"] = round(whole * 1024 * 1024 / count)
        extra_mb = results["rss_mb_stubs"] - results["rss_mb_empty"]
        results["bytes_per_unselected_secret"] = round(extra_mb * 1024 * 1024 / count)
    finally:
        api.close()
        kubelite.stop()
    return results


def _ready(http_port: int, extauth: harness.Extauth) -> bool:
    if extauth.proc.poll() is not None:
        raise RuntimeError(f"extauth exited:\n{extauth.log()[-3000:]}")
    try:
        return harness.request(http_port, "/readyz").status == 200
    except OSError:
        return False


def _relisted(log: str) -> tuple[float, float] | None:
    """Times of the Secret watch's first 410 and of the relist that followed it."""
    lines = log.splitlines()
    gone = next(
        (i for i, line in enumerate(lines) if "Secrets in all namespaces: resourceVersion" in line),
        None,
    )
    if gone is None:
        return None
    for line in lines[gone + 1 :]:
        if "Secrets in all namespaces: listed" in line:
            return _stamp(lines[gone]), _stamp(line)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--sample", type=int, default=2_000, help="keys checked when ready")
    parser.add_argument("--out", type=Path, default=Path(".bench/kube.json"))
    parser.add_argument(
        "--unselected",
        type=int,
        default=0,
        help="instead: this many Secrets no AuthConfig selects, against none (issue 18)",
    )
    parser.add_argument("--unselected-bytes", type=int, default=16 * 1024)
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"bench-kube: {reason}", file=sys.stderr)
        return 2
    shm = Path("/dev/shm")  # noqa: S108 (etcd's state: fsyncs there cost nothing)
    work = Path(tempfile.mkdtemp(prefix="extauth-bench-kube-", dir=shm if shm.is_dir() else None))
    if args.unselected:
        try:
            found = run_unselected(args.unselected, args.unselected_bytes, args.threads, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for name, value in found.items():
            print(f"{name:<28}  {value}")
        return 0
    try:
        results = run(args.secrets, args.threads, args.sample, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = {
        "every key admitted when ready": results["keys_when_ready"] == args.secrets
        and results["sample_denied"] == 0,
        "ready <= 60 s": results["ready_seconds"] <= 60,
        "revoke <= 1 s": results["revoke_seconds_max"] <= 1,
        "RSS <= 150 MB": results["rss_peak_after_relist_mb"] <= 150,
    }
    results["targets"] = targets
    width = max(map(len, results))
    for name, value in results.items():
        if name != "targets":
            print(f"{name:<{width}}  {value}")
    for name, met in targets.items():
        print(f"{'met' if met else 'MISSED':<6}  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
