"""The `extauth` command as users run it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extauth import cli, manifests, workers
from extauth.resources import Secret
from extauth.server import Settings
from extauth.sources.files import FileSource
from extauth.sources.tuning import DEFAULTS as KUBE_DEFAULTS
from extauth.sources.tuning import Tuning
from tests import harness
from tests.builders import authconfig, secret
from tests.harness import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_validate_examples_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(ROOT / "authconfigs")]) == 0
    assert capsys.readouterr().out.strip() == (
        "OK: 2 file(s), 1 API key Secret(s), 1 AuthConfig(s)"
    )


def test_validate_reports_file_line_problems_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "shared"))
    (tmp_path / "b.yaml").write_text(secret("b", "shared"))
    (tmp_path / "c.yaml").write_text(
        authconfig("cfg", "headerNmae: x\nk8sSecretApikeyStorage: {labelSelector: {a: b}}")
    )
    assert cli.main(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines == [  # sorted by file and line
        f"{tmp_path}/b.yaml:1: Secret ns/b holds the same API key as Secret ns/a "
        f"({tmp_path}/a.yaml:1), which comes first; refused",
        f"{tmp_path}/c.yaml:7: document 1 (AuthConfig ns/cfg): "
        "spec.configs[0].apiKeyAuth.headerNmae: Extra inputs are not permitted",
    ]
    assert "shared" not in captured.out
    assert "2 error(s) in 3 file(s)" in captured.err


def test_validate_warnings_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text(authconfig("cfg", "apiKeySecretRefs: [{name: ghost}]"))
    assert cli.main(["validate", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "warning: AuthConfig ns/cfg references Secret ns/ghost, which is not loaded" in out
    assert "1 warning(s)" in out


def test_validate_missing_path_and_empty_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().out == f"{tmp_path / 'nope'}: does not exist\n"
    # Empty: serve starts on it (and warns), so validate warns and passes.
    assert cli.main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}: warning: no *.yaml or *.yml files whose names do not start with" in out
    assert "OK: 0 file(s)" in out


def test_validate_selects_the_files_serve_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One rule (listing.py) for both: what validate checks is what serve loads."""
    (tmp_path / "team.YAML").write_text(secret("upper", "key-upper"))
    (tmp_path / "notes.txt").write_text(secret("txt", "key-txt"))
    (tmp_path / ".hidden.yaml").write_text(secret("hidden", "key-hidden"))
    outside = tmp_path.parent / f"{tmp_path.name}-linked"
    outside.mkdir()
    (outside / "linked.yml").write_text(secret("linked", "key-linked"))
    (tmp_path / "team").symlink_to(outside)
    (tmp_path / "loop").symlink_to(tmp_path)
    assert cli.main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OK: 2 file(s), 2 API key Secret(s)" in out
    assert f"{tmp_path}/loop: warning: a symlink to a directory already read" in out
    loaded = FileSource(tmp_path).scan()
    assert sorted(d.owner[1] for d in loaded.upserted) == ["linked", "upper"]
    # Named on the command line, a file serve would not read is an error, not an OK.
    for name in ("notes.txt", ".hidden.yaml"):
        assert cli.main(["validate", str(tmp_path / name)]) == 1
        assert "not read: extauth reads only *.yaml or *.yml files" in capsys.readouterr().out
    assert cli.main(["validate", str(tmp_path / "team.YAML")]) == 0
    capsys.readouterr()
    # A port of its own: another unit on the default 9001 (a neighbour on a shared
    # machine) would be refused first, before the config is read.
    result = run_cli(
        "serve",
        "--config-dir",
        str(tmp_path / "notes.txt"),
        "--grpc-address",
        f"127.0.0.1:{harness.free_port()}",
    )
    assert result.returncode == 2
    assert "not read: extauth reads only" in result.stderr


def test_serve_rejects_bad_arguments() -> None:
    result = run_cli("serve", "--config-dir", ".", "--default-config", "no-dot")
    assert result.returncode == 2
    assert "is not NAMESPACE.NAME" in result.stderr
    result = run_cli("serve", "--config-dir", ".", "--grpc-address", "nowhere")
    assert result.returncode == 2
    assert "is not HOST:PORT" in result.stderr
    result = run_cli(
        "serve", "--config-dir", ".", "--grpc-address", "127.0.0.1:0", "--workers", "2"
    )
    assert result.returncode == 2
    assert "--workers needs a fixed --grpc-address port" in result.stderr
    result = run_cli("serve", "--config-dir", ".", "--workers", "0")
    assert result.returncode == 2
    assert "--workers: must be at least 1" in result.stderr


@pytest.mark.parametrize(
    ("grpc", "http", "message"),
    [
        # Worker 0's own gRPC port (9002) is worker 1's HTTP port (9001 + 1).
        ("9001", "9001", "overlap at 9001, 9002"),
        ("9001", "9003", "overlap at 9003"),
        ("9010", "9009", "overlap at 9010"),
        ("65534", None, "needs gRPC ports 65534-65536"),
        ("9001", "65535", "needs HTTP ports 65535-65536"),
    ],
)
def test_serve_refuses_workers_whose_ports_collide(
    grpc: str, http: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Worker i serves gRPC alone on --grpc-address's port + 1 + i and HTTP on
    --http-address's + i: a layout where two land on one port is refused before anything
    starts (otherwise one worker would fail to bind after the others had loaded). In
    process: the refusal comes before any fork or port."""
    http_args = ["--http-address", f"127.0.0.1:{http}"] if http else []
    serve = ["serve", "--config-dir", ".", "--workers", "2", "--grpc-address"]
    assert cli.main([*serve, f"127.0.0.1:{grpc}", *http_args], environ={}) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("port", ["00", "000", "0"])
def test_serve_refuses_workers_on_port_zero_in_any_spelling(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Port 0 spelt `00` is still port 0: the workers' own ports would be 1 and 2, well
    known ports a root process binds without a word. Refused, as `:0` is, before any fork
    (in process)."""
    serve = ["serve", "--config-dir", ".", "--workers", "2", "--grpc-address"]
    assert cli.main([*serve, f"127.0.0.1:{port}"], environ={}) == 2
    assert "--workers needs a fixed --grpc-address port" in capsys.readouterr().err
    assert workers.port_problem(f"127.0.0.1:{port}", None, 2) is not None


def test_each_worker_gets_its_own_http_port_and_port_zero_stays_zero() -> None:
    """Worker i serves HTTP on --http-address's port + i; with port 0 each worker takes a
    port of the kernel's choosing, never 0 + i (1, 2, ...: well-known ports)."""
    settings = Settings(grpc_address="127.0.0.1:9001", http_address="0.0.0.0:9090")
    made = [workers.worker_settings(settings, i) for i in (0, 1)]
    assert [m.http_address for m in made] == ["0.0.0.0:9090", "0.0.0.0:9091"]
    assert [m.worker_grpc_address for m in made] == ["127.0.0.1:9002", "127.0.0.1:9003"]
    ephemeral = Settings(grpc_address="127.0.0.1:9001", http_address="127.0.0.1:0")
    assert [workers.worker_settings(ephemeral, i).http_address for i in (0, 1, 2)] == [
        "127.0.0.1:0"
    ] * 3
    assert [workers.worker_http_port(0, i) for i in (0, 1, 2)] == [0, 0, 0]


def test_addresses_are_read_with_their_port_as_a_number() -> None:
    """One port, one spelling: `:09001` names the port `:9001` does, so the lock that keeps
    two units off one port, and the derived worker ports, see the same number."""
    assert cli._address("127.0.0.1:09001") == "127.0.0.1:9001"
    assert cli._address("[::1]:00") == "[::1]:0"
    with pytest.raises(argparse.ArgumentTypeError):
        cli._address("127.0.0.1:\u0669\u0660\u0660\u0661")  # Arabic-Indic 9001


def test_workers_restart_back_off_then_give_up() -> None:
    """A worker dying soon after each start is started again at once, then after a
    growing pause; the fifth death in a row stops the unit. One that served a while
    before it died starts the count afresh, and each worker counts alone."""
    restarts = workers.Restarts()
    quick = workers.QUICK_DEATH / 2
    assert [restarts.delay(0, quick) for _ in range(4)] == [0.0, 1.0, 2.0, 4.0]
    assert restarts.delay(1, quick) == 0.0
    assert restarts.delay(0, quick) is None
    assert restarts.delay(0, workers.QUICK_DEATH + 1) == 0.0
    assert restarts.delay(0, quick) == 0.0
    assert max(restarts.delay(2, quick) or 0.0 for _ in range(4)) <= workers.MAX_BACKOFF


def test_envoy_config_lists_each_worker_as_an_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    def endpoints(*args: str) -> list[tuple[str, int]]:
        assert cli.main(["envoy-config", *args]) == 0
        config = yaml.safe_load(capsys.readouterr().out)
        (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "extauth"]
        found = [
            endpoint["endpoint"]["address"]["socket_address"]
            for group in cluster["load_assignment"]["endpoints"]
            for endpoint in group["lb_endpoints"]
        ]
        assert cluster["health_checks"][0]["grpc_health_check"]
        return [(a["address"], a["port_value"]) for a in found]

    assert endpoints() == [("127.0.0.1", 9001)]
    assert endpoints("--workers", "3") == [("127.0.0.1", p) for p in (9002, 9003, 9004)]
    host = "extauth.extauth-system.svc.cluster.local"
    assert endpoints("--like", "deploy/kubernetes/envoy-config/envoy.yaml", "--workers", "2") == [
        (host, 9002),
        (host, 9003),
    ]
    # As shipped with one worker: the committed file, byte for byte.
    assert cli.main(["envoy-config", "--like", "envoy/compose/envoy.yaml"]) == 0
    assert capsys.readouterr().out == (ROOT / "envoy/compose/envoy.yaml").read_text()


def test_serve_missing_config_dir_exits_with_message(tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--config-dir", str(tmp_path / "nope"), "--grpc-address", "127.0.0.1:0"
    )
    assert result.returncode == 2
    assert "cannot start" in result.stderr
    assert "does not exist" in result.stderr


def test_serve_port_in_use_exits_with_message(tmp_path: Path) -> None:
    first = harness.Extauth(ROOT / "authconfigs", tmp_path / "first.log")
    try:
        first.wait_ready()
        result = run_cli(
            "serve", "--config-dir", str(ROOT / "authconfigs"), "--grpc-address", first.address
        )
        assert result.returncode == 2
        assert f"cannot listen on {first.address}" in result.stderr
    finally:
        first.stop()


def test_http_port_in_use_exits_with_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--config-dir",
            str(ROOT / "authconfigs"),
            "--grpc-address",
            "127.0.0.1:0",
            "--http-address",
            f"127.0.0.1:{port}",
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = harness.Extauth(ROOT / "authconfigs", tmp_path / "serve.log")
    server.wait_ready()
    assert server.stop() == 0
    log = server.log()
    assert "readiness off, draining in-flight checks" in log
    assert "stopped" in log
    assert "team1-key" not in log


def test_keys_new_prints_a_valid_manifest_and_the_key_once(tmp_path: Path) -> None:
    result = run_cli(
        "keys",
        "new",
        "team2-apikey",
        "-n",
        "agentgateway-system",
        "--meta",
        "x-org=platform",
        "--label",
        "llm-provider=openai",
    )
    assert result.returncode == 0, result.stderr
    key = result.stderr.rsplit(": ", 1)[1].strip()
    assert len(key) >= 43  # 32 random bytes, URL-safe base64
    assert key not in result.stdout  # the manifest holds it only base64-encoded
    path = tmp_path / "team2.yaml"
    path.write_text(result.stdout)
    loaded = manifests.load_file(path)
    assert loaded.ok, loaded.problems
    secret = loaded.resources[0].resource
    assert isinstance(secret, Secret)
    assert secret.entries() == {"api-key": key, "x-org": "platform"}
    assert secret.metadata.labels == {"llm-provider": "openai"}
    assert cli.main(["validate", str(path)]) == 0
    again = run_cli("keys", "new", "team2-apikey")
    assert again.stderr.rsplit(": ", 1)[1].strip() != key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad_Name"], "is not a valid resource name"),
        (["ok", "--meta", "x-org=a\nb"], "contains control characters"),
        (["ok", "--meta", "novalue"], "is not NAME=VALUE"),
        (["ok", "--bytes", "8"], "at least 16"),
    ],
)
def test_keys_new_rejects_bad_input(args: list[str], message: str) -> None:
    result = run_cli("keys", "new", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not result.stdout


def _children(pid: int) -> list[int]:
    found = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in found.stdout.split()]


def test_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    http = harness.free_ports(2)  # worker i serves HTTP on port + i
    server = harness.Extauth(
        ROOT / "authconfigs",
        tmp_path / "workers.log",
        "--workers",
        "2",
        "--http-address",
        f"127.0.0.1:{http}",
    )
    try:
        server.wait_ready()
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        for port in (http, http + 1):  # worker i: the HTTP port + i

            def ready(port: int = port) -> bool | None:
                try:  # on a loaded machine the worker may not listen yet
                    return True if harness.request(port, "/readyz").status == 200 else None
                except OSError:
                    return None

            harness.wait_until(ready, 20, f"worker on {port} to be ready")
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "[worker 0]" in log
    assert "[worker 1]" in log
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_dead_worker_is_started_again_alone(tmp_path: Path) -> None:
    """Each worker is an endpoint of its own in Envoy: one dying takes that endpoint out
    (health checks) while the others serve; the parent starts it again on its ports."""
    server = harness.Extauth(ROOT / "authconfigs", tmp_path / "workers.log", "--workers", "2")
    try:
        server.wait_ready()
        first, second = _children(server.proc.pid)
        os.kill(first, signal.SIGKILL)
        again = harness.wait_until(
            lambda: next((p for p in _children(server.proc.pid) if p not in (first, second)), None),
            20,
            "the dead worker to be started again",
        )
        own = [f"127.0.0.1:{workers.worker_grpc_port(server.port, i)}" for i in (0, 1)]
        harness.wait_until(
            lambda: True if all(harness.grpc_serving(a) for a in own) else None,
            20,
            "both workers' own ports to serve",
        )
        assert sorted(_children(server.proc.pid)) == sorted([second, again])
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0
    assert "exited (-9) after" in server.log()
    assert f"started it again as pid {again}" in server.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kube-watch-timeout", "-1"], "--kube-watch-timeout: must be at least 1 (got -1)"),
        (["--kube-watch-timeout", "0"], "--kube-watch-timeout: must be at least 1 (got 0)"),
        (["--kube-watch-timeout", "soon"], "'soon' is not a number"),
        (["--namespace", ""], "'' is not a valid namespace"),
        (["--namespace", "Bad_NS"], "'Bad_NS' is not a valid namespace"),
        (["--shutdown-grace", "-5"], "--shutdown-grace: must be at least 0"),
        (["--workers", "1000"], "--workers: must be at most 64 (got 1000)"),
        (["--kube-heartbeat", "0"], "--kube-heartbeat: must be at least 0.2 (got 0)"),
        (["--kube-request-timeout", "-1"], "--kube-request-timeout: must be at least 0.2"),
        (["--kube-max-secret-bytes", "10"], "--kube-max-secret-bytes: must be at least 256"),
        (["--kube-status-rate", "0"], "--kube-status-rate: must be at least 0.1 (got 0)"),
        # NaN is in no range, though it compares false with both bounds.
        (["--kube-heartbeat", "nan"], "--kube-heartbeat: 'nan' is not a number"),
        (["--shutdown-grace", "NaN"], "--shutdown-grace: 'NaN' is not a number"),
        (["--shutdown-delay", "inf"], "--shutdown-delay: 'inf' is not a number"),
        (["--max-file-bytes", "0"], "--max-file-bytes: must be at least 1 (got 0)"),
        (["--max-depth", "1001"], "--max-depth: must be at most 1000 (got 1001)"),
    ],
)
def test_serve_refuses_out_of_range_flags(args: list[str], message: str) -> None:
    result = run_cli("serve", "--kubernetes", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_whole_number_too_long_for_a_float_is_refused_as_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not an OverflowError traceback: argparse catches only ValueError and TypeError."""
    with pytest.raises(SystemExit) as refused:
        cli.main(["validate", "--max-depth", "9" * 400, str(tmp_path)], environ={})
    assert refused.value.code == 2
    assert "--max-depth: must be at most 1000 (got 999" in capsys.readouterr().err


def test_global_flags_work_before_and_after_the_subcommand() -> None:
    parser = cli.build_parser()
    after = parser.parse_args(["serve", "--config-dir", "d", "--log-level", "DEBUG"])
    assert after.log_level == "DEBUG"
    before = parser.parse_args(["--log-level", "ERROR", "serve", "--config-dir", "d"])
    assert before.log_level == "ERROR"
    neither = parser.parse_args(["validate", "x.yaml"])
    assert neither.log_level == "INFO"
    assert parser.parse_args(["keys", "new", "t", "--log-level", "WARNING"]).log_level == (
        "WARNING"
    )
    result = run_cli("serve", "--log-level", "LOUD")
    assert result.returncode == 2
    assert "invalid choice: 'LOUD'" in result.stderr


def test_every_serve_option_is_explained_with_its_default() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: 127.0.0.1:9001)" in text
    assert "(default: 300)" in text
    assert "EXTAUTH_CONFIG_DIR" in text
    serve = cli._subparser(cli.build_parser(), "serve")
    unexplained = [a.dest for a in serve._actions if a.option_strings and not a.help]
    assert unexplained == []


def test_the_kubernetes_tuning_and_file_limits_reach_their_records_as_given() -> None:
    """Each number is declared once, in its record (`Tuning`, `Limits`): the options are
    made from the fields, and what they are given makes the record back."""
    parser = cli.build_parser()
    plain = parser.parse_args(["serve", "--kubernetes"])
    assert cli._made(Tuning, plain, "kube_") == KUBE_DEFAULTS
    assert cli._limits(plain) == manifests.DEFAULT_LIMITS
    given = "--kube-watch-timeout 60 --kube-heartbeat 2.5 --kube-request-timeout 1"
    given += " --kube-max-secret-bytes 4096 --kube-status-rate 5 --max-file-bytes 1000"
    tuned = parser.parse_args(["serve", "--kubernetes", *given.split(), "--max-depth", "9"])
    assert cli._made(Tuning, tuned, "kube_") == Tuning(60, 2.5, 1.0, 4096, 5.0)
    assert cli._limits(tuned) == manifests.Limits(max_file_bytes=1000, max_depth=9)
    serve = cli._subparser(parser, "serve")
    flags = {flag for action in serve._actions for flag in action.option_strings}
    for record, prefix in ((Tuning, "--kube-"), (manifests.Limits, "--")):
        for field in dataclasses.fields(record):
            assert prefix + field.name.replace("_", "-") in flags


def test_serve_options_come_from_the_environment_and_the_command_line_wins() -> None:
    parser = cli.build_parser()
    serve = cli._subparser(parser, "serve")
    problems = cli.environment_defaults(
        serve,
        {
            "EXTAUTH_CONFIG_DIR": "/etc/extauth",
            "EXTAUTH_KUBERNETES": "true",
            "EXTAUTH_NAMESPACE": "team-a, team-b",
            "EXTAUTH_GRPC_ADDRESS": "0.0.0.0:9001",
            "EXTAUTH_WORKERS": "2",
            "EXTAUTH_DECISION_LOG": "0",
            "UNRELATED": "x",
        },
    )
    assert problems == []
    args = parser.parse_args(["serve", "--grpc-address", "127.0.0.1:7000"])
    assert args.config_dir == Path("/etc/extauth")
    assert args.kubernetes is True
    assert args.namespace == ["team-a", "team-b"]
    assert args.grpc_address == "127.0.0.1:7000"  # the command line wins
    assert args.workers == 2
    assert args.decision_log is False


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EXTAUTH_WORKERS", "0", "EXTAUTH_WORKERS: must be at least 1 (got 0)"),
        ("EXTAUTH_KUBERNETES", "maybe", "EXTAUTH_KUBERNETES: 'maybe' is not one of"),
        ("EXTAUTH_GRPC_ADDRESS", "nowhere", "EXTAUTH_GRPC_ADDRESS: 'nowhere' is not HOST:PORT"),
        ("EXTAUTH_NAMESPACE", "ok,Bad", "EXTAUTH_NAMESPACE: 'Bad' is not a valid namespace"),
        ("EXTAUTH_KUBE_REQUEST_TIMEOUT", "nan", "EXTAUTH_KUBE_REQUEST_TIMEOUT: 'nan' is not a"),
        ("EXTAUTH_MAX_DOCUMENTS", "0", "EXTAUTH_MAX_DOCUMENTS: must be at least 1 (got 0)"),
        # Past the largest float: compared as the whole number it is, not overflowing.
        ("EXTAUTH_KUBE_WATCH_TIMEOUT", "9" * 400, "WATCH_TIMEOUT: must be at most 3600 (got 99"),
    ],
)
def test_a_bad_environment_variable_is_named(
    variable: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--config-dir", "."], environ={variable: value}) == 2
    assert message in capsys.readouterr().err


def test_shell_completion_covers_the_subcommands() -> None:
    result = run_cli("completion", "bash")
    assert result.returncode == 0, result.stderr
    for word in ("serve", "validate", "keys", "--config-dir", "--grpc-address"):
        assert word in result.stdout
    checked = subprocess.run(
        ["bash", "-n"], input=result.stdout, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr


KUBECTL_LIST = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  type: extauth.solo.io/apikey
  metadata: {name: a, namespace: ns, resourceVersion: "12", uid: 3f0c}
  data: {api-key: a2V5LWE=}
- apiVersion: v1
  kind: Secret
  type: Opaque
  metadata: {name: other, namespace: ns}
- apiVersion: extauth.solo.io/v1
  kind: AuthConfig
  metadata: {name: cfg, namespace: ns, generation: 2}
  spec:
    configs:
    - apiKeyAuth:
        apiKeySecretRefs: [{name: a}]
metadata: {resourceVersion: ""}
"""


def test_validate_reads_standard_input_and_kubectl_lists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "extauth.cli", "validate", "-"],
        input=KUBECTL_LIST,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "OK: 1 file(s), 1 API key Secret(s), 1 AuthConfig(s)"


def test_validate_reports_every_bad_entry_in_line_order_and_as_json(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        secret("late", "k-late", x_org=" spaced")
        + "---\n"
        + authconfig("cfg", "headerNmae: x\napiKeySecretRefs: [{name: a}]")
    )
    bad = secret("a", "", x_org="tab\tend ", expires_at="2027-W05-1T00:00Z")
    (tmp_path / "a.yaml").write_text(bad)
    (tmp_path / "c.yaml").write_text(secret("stray", "k-stray"))
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    places = [line.split(": ", 1)[0] for line in lines]
    assert places == sorted(places, key=lambda p: (p.rsplit(":", 1)[0], int(p.rsplit(":", 1)[1])))
    (first,) = [line for line in lines if "a.yaml" in line]
    assert "entry 'api-key' is empty" in first
    assert "entry 'x-org' has leading or trailing whitespace" in first
    assert "entry 'expires-at' is not an RFC 3339 time" in first
    as_json = run_cli("validate", str(tmp_path), "--output", "json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["files"] == 3
    severities = {(p["path"].rsplit("/", 1)[1], p["severity"]) for p in report["problems"]}
    assert ("a.yaml", "error") in severities
    assert ("b.yaml", "error") in severities
    for key in ("k-late", "k-stray"):
        assert key not in result.stdout + result.stderr + as_json.stdout


def test_validate_warns_about_a_secret_no_authconfig_admits(tmp_path: Path) -> None:
    (tmp_path / "all.yaml").write_text(
        secret("a", "key-a")
        + "---\n"
        + secret("stray", "key-stray")
        + "---\n"
        + authconfig("cfg", "apiKeySecretRefs: [{name: a}]")
    )
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "warning: Secret ns/stray is admitted by no AuthConfig: its key is denied everywhere"
        in result.stdout
    )
    assert "ns/a is admitted" not in result.stdout
    assert result.stdout.strip().endswith("1 warning(s)")
    # A file of keys checked alone is not a mistake.
    (tmp_path / "keys.yaml").write_text(secret("solo", "key-solo"))
    alone = run_cli("validate", str(tmp_path / "keys.yaml"))
    assert alone.returncode == 0
    assert "admitted by no AuthConfig" not in alone.stdout


def test_validate_of_a_missing_path_says_so_plainly() -> None:
    result = run_cli("validate", "/no/such/place.yaml")
    assert result.returncode == 1
    assert "1 error(s) (no file read)" in result.stderr


def test_validate_prints_a_file_name_that_is_not_utf8_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A file name that is not UTF-8 (bytes a POSIX file system allows) reaches Python as
    lone surrogates; printing it to a strict UTF-8 stdout (a UTF-8 locale,
    PYTHONIOENCODING=utf-8) raised UnicodeEncodeError: a traceback instead of the report."""
    (tmp_path / os.fsdecode(b"team-\xff.yaml")).write_text("kind: [\n")
    (tmp_path / "z.yaml").write_text("kind: [\n")
    found = subprocess.run(
        [sys.executable, "-m", "extauth.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert "Traceback" not in found.stderr
    assert found.returncode == 1
    assert f"{tmp_path}/team-\\udcff.yaml:2: YAML syntax error" in found.stdout
    assert f"{tmp_path / 'z.yaml'}:2: YAML syntax error" in found.stdout
    assert "2 error(s) in 2 file(s)" in found.stderr
