"""`make demo`: the vanity-key story on localhost, with real processes.

Starts the mock upstream (or points at a real provider), `extauth serve` on authconfigs/
and a real Envoy configured by `envoyconf` (the provider key injected from a file), waits
until each is ready, prints the curl commands of the story with what each should show,
and stops everything on Ctrl-C. Everything it writes goes to `.demo/` (logs, the Envoy
config, the provider-key file).

The steps are data (`steps()`) so tests/e2e/test_demo.py can replay exactly what is printed.

The demo must not lie: it refuses to start when a port it needs is taken (another demo,
say, whose processes would otherwise answer its readiness checks), a child counts as ready
only once the child itself listens on its port, and a closed terminal (SIGHUP) stops
everything it started, as Ctrl-C does; children also get SIGTERM from the kernel if the
runner dies without cleaning up (PR_SET_PDEATHSIG, on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from extauth import envoyconf

ROOT = envoyconf.ROOT
DEMO_KEY = "sk-demo-not-a-real-provider-key"
CHAT_BODY = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'


@dataclass(frozen=True)
class Step:
    title: str
    command: str
    expect: str  # a substring of the command's output


@dataclass
class Child:
    name: str
    address: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    # The loopback port the child itself must be listening on before `ready` is believed.
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def state(self) -> str:
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        return "running" if code is None else f"exited ({code})"


def steps(port: int, metrics_port: int, mock: bool) -> list[Step]:
    url = f"http://127.0.0.1:{port}/openai"
    post = f"-H 'content-type: application/json' -d {shlex.quote(CHAT_BODY)}"
    status = "-s -o /dev/null -w '%{http_code}\\n'"
    allowed = '"x-org": "developers"' if mock else "200"
    allowed_cmd = (
        f"curl -s {url} -H 'vanity-auth: team1-key' {post}"
        if mock
        else f"curl {status} {url} -H 'vanity-auth: team1-key' {post}"
    )
    return [
        Step("No key: extauth denies, Envoy answers 401", f"curl {status} {url} {post}", "401"),
        Step(
            "A wrong key: 401, and the body says why (never echoing the key)",
            f"curl -s {url} -H 'vanity-auth: guessed' {post}",
            '"error": "invalid_api_key"',
        ),
        Step(
            "The team's vanity key: allowed; Envoy swaps in the provider key; "
            + ("the upstream shows the x-org it saw" if mock else "the provider answers"),
            allowed_cmd,
            allowed,
        ),
        Step(
            "A spoofed x-org never survives: the upstream sees the key's team",
            allowed_cmd.replace("-H 'vanity-auth", "-H 'x-org: admins' -H 'vanity-auth"),
            allowed,
        ),
        Step(
            "Usage per team, from extauth's metrics (--usage-label x-org)",
            f"curl -s http://127.0.0.1:{metrics_port}/metrics | grep '^extauth_usage_total'",
            'team="developers"',
        ),
    ]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (localhost)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else "envoy"


def build_children(args: argparse.Namespace, run: Path) -> list[Child]:
    mock = args.upstream is None
    upstream_url = args.upstream or f"http://127.0.0.1:{args.upstream_port}"
    target = envoyconf.local(
        listen=args.port,
        admin=args.admin_port,
        extauth=args.extauth_port,
        upstream=upstream_url,
        secrets_dir=str(run / "secrets"),
        upstream_ca=str(args.upstream_ca),
        authconfigs="authconfigs",
    )
    (run / "envoy.yaml").write_text(envoyconf.config_text(target, "file"))
    secrets = run / "secrets"
    secrets.mkdir(exist_ok=True)
    key = os.environ.get(envoyconf.ENV_VAR) or DEMO_KEY
    tmp = secrets / ".provider-key.tmp"
    tmp.write_text(yaml.safe_dump(envoyconf.sds_secret(f"Bearer {key}")))
    tmp.chmod(0o600)
    tmp.replace(secrets / envoyconf.SDS_FILE)

    python = sys.executable
    children: list[Child] = []
    if mock:
        children.append(
            Child(
                "upstream (mock LLM)",
                f"127.0.0.1:{args.upstream_port}",
                [python, "-m", "extauth.demo.upstream", "--port", str(args.upstream_port)],
                run / "upstream.log",
                lambda: _http_ok(f"http://127.0.0.1:{args.upstream_port}/healthz"),
                args.upstream_port,
            )
        )
    children.append(
        Child(
            "extauth",
            f"127.0.0.1:{args.extauth_port} (gRPC), :{args.metrics_port} (metrics)",
            [
                python,
                "-m",
                "extauth.cli",
                "serve",
                "--config-dir",
                str(ROOT / "authconfigs"),
                "--grpc-address",
                f"127.0.0.1:{args.extauth_port}",
                "--http-address",
                f"127.0.0.1:{args.metrics_port}",
                "--usage-label",
                "x-org",
                "--decision-log",
            ],
            run / "extauth.log",
            lambda: _http_ok(f"http://127.0.0.1:{args.metrics_port}/readyz"),
            args.extauth_port,
        )
    )
    children.append(
        Child(
            "envoy",
            f"127.0.0.1:{args.port} (admin :{args.admin_port})",
            [
                _envoy_binary(),
                "-c",
                str(run / "envoy.yaml"),
                "--use-dynamic-base-id",
                "--concurrency",
                "2",
                "--log-level",
                "warning",
            ],
            run / "envoy.log",
            lambda: _http_ok(f"http://127.0.0.1:{args.admin_port}/ready"),
            args.port,
        )
    )
    return children


def _table(children: list[Child]) -> str:
    rows = [("process", "pid", "address", "state", "log")]
    for child in children:
        pid = str(child.proc.pid) if child.proc else "-"
        rows.append((child.name, pid, child.address, child.state(), str(child.log)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def taken_ports(ports: dict[str, int]) -> list[str]:
    """Which of the demo's loopback ports cannot be bound now, as `--option PORT` texts."""
    taken: list[str] = []
    for option, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As servers bind: a port whose old connections linger in TIME_WAIT is free,
            # one that something listens on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or "error")
                taken.append(f"--{option} {port} ({why})")
    return taken


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on `port` (IPv4 and IPv6), from /proc/net."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                inodes.add(fields[9])
    return inodes


def owns_port(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port`.

    Where /proc cannot tell (not Linux), assume it does: the port check at start-up
    still stands.
    """
    if not Path("/proc/net/tcp").exists():
        return True
    inodes = _listening_inodes(port)
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the runner dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the runner's own signal handling still stops its children


def _start(child: Child, timeout: float) -> None:
    # Own session: Ctrl-C and a closed terminal reach the runner only, which stops the
    # children in order.
    with child.log.open("wb") as log:
        child.proc = subprocess.Popen(
            child.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            preexec_fn=_die_with_parent,  # the runner starts no threads
        )
    deadline = time.monotonic() + timeout
    while not (owns_port(child.proc.pid, child.port) and child.ready()):
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}); see {child.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s; see {child.log}")
        time.sleep(0.1)


def _stop(children: list[Child]) -> None:
    for child in reversed(children):  # Envoy first, the upstream last
        if child.proc is None or child.proc.poll() is not None:
            continue
        child.proc.send_signal(signal.SIGTERM)
        try:
            child.proc.wait(10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="a real provider instead of the mock (e.g. https://api.openai.com); "
        f"the provider key comes from ${envoyconf.ENV_VAR}",
    )
    parser.add_argument(
        "--upstream-ca",
        type=Path,
        default=Path(envoyconf.SYSTEM_CA),
        metavar="PEM",
        help="CA bundle an https upstream's certificate must chain to (its host name must "
        "also be in the certificate)",
    )
    defaults = "(default: %(default)s)"
    parser.add_argument("--port", type=int, default=8080, help=f"Envoy's listener {defaults}")
    parser.add_argument("--admin-port", type=int, default=9901, help=f"Envoy's admin {defaults}")
    parser.add_argument(
        "--extauth-port", type=int, default=9001, help=f"extauth's gRPC port {defaults}"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help=f"extauth's /metrics, /healthz, /readyz {defaults}",
    )
    parser.add_argument(
        "--upstream-port", type=int, default=8000, help=f"the mock upstream's port {defaults}"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=ROOT / ".demo",
        help="logs, the Envoy config and the provider-key file (default: .demo/)",
    )
    args = parser.parse_args(argv)
    if args.upstream and not os.environ.get(envoyconf.ENV_VAR):
        parser.error(f"--upstream needs the provider key in ${envoyconf.ENV_VAR}")
    ports = {
        "port": args.port,
        "admin-port": args.admin_port,
        "extauth-port": args.extauth_port,
        "metrics-port": args.metrics_port,
    }
    if args.upstream is None:
        ports["upstream-port"] = args.upstream_port
    if len(set(ports.values())) != len(ports):
        print("demo: every port must be different", file=sys.stderr)
        return 2
    taken = taken_ports(ports)
    if taken:
        print(
            "demo: cannot start, port(s) taken: "
            + ", ".join(taken)
            + ". Stop what holds them (another `make demo`?) or pick other ports, "
            "e.g. make demo DEMO_ARGS='--port 8081'",
            file=sys.stderr,
        )
        return 2

    run: Path = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    children = build_children(args, run)
    stopping = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    try:
        for child in children:
            print(f"starting {child.name} ...", flush=True)
            _start(child, timeout=60)
        print("\n" + _table(children) + "\n", flush=True)
        print("The story, step by step (copy and paste into another terminal):\n")
        for number, step in enumerate(
            steps(args.port, args.metrics_port, args.upstream is None), 1
        ):
            print(f"# {number}. {step.title}")
            print(f"$ {step.command}")
            print(f"expect: {step.expect}\n")
        print(
            f"Envoy's access log (JSON, with identity and x-org, never a key): {run}/envoy.log\n"
            f"extauth's decision log: {run}/extauth.log\n"
            "demo ready: press Ctrl-C to stop everything",
            flush=True,
        )
        while not stopping:
            exited = [c for c in children if c.proc and c.proc.poll() is not None]
            if exited:
                print(f"\n{exited[0].name} stopped unexpectedly; stopping the demo", flush=True)
                print(_table(children), flush=True)
                return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        _say("\nstopping ...")
        _stop(children)
        _say(_table(children))


def _say(text: str) -> None:
    """Print while stopping; the terminal may be gone (SIGHUP), which must not keep the
    children running."""
    with contextlib.suppress(OSError):
        print(text, flush=True)
