"""`make demo`: the vanity-key story on localhost, with real processes.

Starts the mock upstream (or points at a real provider), `extauth serve` on authconfigs/
and a real Envoy configured by `envoyconf` (the provider key injected from a file), waits
until each is ready, prints the curl commands of the story with what each should show,
and stops everything on Ctrl-C. Everything it writes goes to `.demo/` (logs, the Envoy
config, the provider-key file).

The steps are data (`steps()`) so tests/e2e/test_demo.py can replay exactly what is printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
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


def _start(child: Child, timeout: float) -> None:
    # Own session: Ctrl-C reaches the runner only, which stops children in order.
    with child.log.open("wb") as log:
        child.proc = subprocess.Popen(
            child.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    deadline = time.monotonic() + timeout
    while not child.ready():
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
    parser.add_argument("--port", type=int, default=8080, help="Envoy's listener")
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--extauth-port", type=int, default=9001)
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--upstream-port", type=int, default=8000)
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".demo")
    args = parser.parse_args(argv)
    if args.upstream and not os.environ.get(envoyconf.ENV_VAR):
        parser.error(f"--upstream needs the provider key in ${envoyconf.ENV_VAR}")

    run: Path = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    children = build_children(args, run)
    stopping = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
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
        print("\nstopping ...", flush=True)
        _stop(children)
        print(_table(children), flush=True)
