"""The `extauth` command: `serve` runs the service, `validate` checks manifests offline."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from extauth import __version__, keys, manifests, resources, workers
from extauth.manifests import Problem
from extauth.policy import compile_policy
from extauth.server import Settings, grpc_credentials, serve
from extauth.snapshot import Change, Definition, definitions
from extauth.sources.files import ConfigDirError

log = logging.getLogger("extauth")


def _config_id(value: str) -> str:
    """NAMESPACE.NAME, each part as resources.py defines it (namespaces have no dots)."""
    namespace, _, name = value.partition(".")
    try:
        resources.check_namespace(namespace)
        resources.check_name(name)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE.NAME") from None
    return value


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number between 0 and 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extauth", description="Envoy ext_authz service for API-key AuthConfigs."
    )
    parser.add_argument("--version", action="version", version=f"extauth {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="serve Envoy's Authorization/Check over gRPC")
    run.add_argument(
        "--config-dir",
        type=Path,
        help="directory of Secret and AuthConfig YAML (watched)",
    )
    run.add_argument(
        "--kubernetes",
        action="store_true",
        help="watch Secrets and AuthConfigs in a cluster (in-cluster config or KUBECONFIG)",
    )
    run.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="with --kubernetes: watch only this namespace (repeatable; default: all)",
    )
    run.add_argument("--kubeconfig", metavar="PATH", help="with --kubernetes: kubeconfig file")
    run.add_argument(
        "--kube-watch-timeout",
        type=int,
        default=300,
        metavar="SECONDS",
        help="with --kubernetes: restart each watch this often (server-side timeout)",
    )
    run.add_argument(
        "--no-status",
        action="store_true",
        help="with --kubernetes: do not write AuthConfig status",
    )
    run.add_argument("--grpc-address", type=_address, default="127.0.0.1:9001")
    run.add_argument(
        "--default-config",
        type=_config_id,
        metavar="NS.NAME",
        help="AuthConfig for routes that set no config_id context extension",
    )
    run.add_argument(
        "--http-address",
        type=_address,
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz here",
    )
    run.add_argument(
        "--usage-label",
        metavar="ENTRY",
        help="count allowed requests per value of this Secret metadata entry (e.g. x-org)",
    )
    run.add_argument(
        "--decision-log",
        action="store_true",
        help="log one JSON line per decision (logger extauth.decisions; never a key)",
    )
    run.add_argument(
        "--decision-log-sample",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="log only this fraction of decisions (0..1)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing the gRPC port (SO_REUSEPORT); worker i serves "
        "--http-address on its port + i",
    )
    run.add_argument(
        "--grpc-tls-cert",
        type=Path,
        metavar="PEM",
        help="serve the gRPC port over TLS with this certificate (chain); needs --grpc-tls-key",
    )
    run.add_argument("--grpc-tls-key", type=Path, metavar="PEM", help="its private key")
    run.add_argument(
        "--grpc-client-ca",
        type=Path,
        metavar="PEM",
        help="with --grpc-tls-cert: require client certificates signed by this CA (Envoy's)",
    )
    run.add_argument(
        "--shutdown-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on SIGTERM, report NOT_SERVING but keep answering this long before closing "
        "the port (longer than Envoy's 1 s health-check interval: 2 is a good value)",
    )
    run.add_argument(
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long SIGTERM waits for in-flight checks",
    )

    check = commands.add_parser("validate", help="check manifests; exit 1 on any problem")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    keys_cmd = commands.add_parser("keys", help="API key helpers")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser(
        "new",
        help="generate a key and print its Secret manifest (the key itself goes to stderr)",
    )
    new.add_argument("name", help="Secret name: the identity of the key's holder")
    new.add_argument("--namespace", "-n", default="default")
    new.add_argument(
        "--meta",
        action="append",
        type=_pair,
        default=[],
        metavar="ENTRY=VALUE",
        help="metadata entry, e.g. x-org=platform (repeatable)",
    )
    new.add_argument(
        "--label",
        action="append",
        type=_pair,
        default=[],
        metavar="KEY=VALUE",
        help="Secret label, for AuthConfig label selectors (repeatable)",
    )
    new.add_argument(
        "--bytes", type=int, default=keys.DEFAULT_BYTES, help="random bytes in the key"
    )
    new.add_argument(
        "--hashed",
        action="store_true",
        help="store only the key's SHA-256 (api-key-hash) in the Secret",
    )
    new.add_argument(
        "--expires-at",
        metavar="RFC3339",
        help="add an expires-at entry, e.g. 2027-01-31T00:00:00Z",
    )
    return parser


def _pair(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return name, text


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if args.command == "validate":
        return validate(args.paths)
    if args.command == "keys":
        return new_key(args)
    if args.config_dir is None and not args.kubernetes:
        print("extauth serve: give --config-dir DIR, --kubernetes, or both", file=sys.stderr)
        return 2
    if args.namespace and not args.kubernetes:
        print("extauth serve: --namespace needs --kubernetes", file=sys.stderr)
        return 2
    if (args.grpc_tls_cert is None) != (args.grpc_tls_key is None):
        print("extauth serve: --grpc-tls-cert and --grpc-tls-key go together", file=sys.stderr)
        return 2
    if args.grpc_client_ca is not None and args.grpc_tls_cert is None:
        print("extauth serve: --grpc-client-ca needs --grpc-tls-cert", file=sys.stderr)
        return 2
    settings = Settings(
        config_dir=args.config_dir,
        grpc_address=args.grpc_address,
        default_config=args.default_config,
        shutdown_grace=args.shutdown_grace,
        shutdown_delay=args.shutdown_delay,
        http_address=args.http_address,
        usage_label=args.usage_label,
        decision_log=args.decision_log,
        decision_log_sample=args.decision_log_sample,
        kubernetes=args.kubernetes,
        namespaces=tuple(args.namespace or ()),
        kubeconfig=args.kubeconfig,
        write_status=not args.no_status,
        kube_watch_timeout=args.kube_watch_timeout,
        grpc_tls_cert=args.grpc_tls_cert,
        grpc_tls_key=args.grpc_tls_key,
        grpc_client_ca=args.grpc_client_ca,
    )
    try:
        # Read once here so that a missing or unreadable file stops the start, with
        # its name, before any source is loaded.
        grpc_credentials(settings)
    except (OSError, RuntimeError) as exc:
        print(f"extauth serve: cannot use the gRPC TLS files: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("extauth serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        if args.grpc_address.endswith(":0"):
            print("extauth serve: --workers needs a fixed --grpc-address port", file=sys.stderr)
            return 2
        return workers.run_workers(settings, args.workers, _serve_one)
    if args.grpc_address.endswith(":0"):
        return _serve_one(settings)
    try:
        # The same claim on the port as a --workers unit takes, held until exit.
        with workers.port_lock(args.grpc_address):
            return _serve_one(settings)
    except workers.PortTaken as exc:
        log.error("cannot listen on %s: %s", args.grpc_address, exc)
        return 2


def _run(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when it is installed (Linux): the same code, a faster event loop (measured:
    +16 % Check throughput for a no-op gRPC handler, see BENCHMARKS.md)."""
    try:
        import uvloop
    except ImportError:
        log.info("event loop: asyncio")
        asyncio.run(main)
        return
    log.info("event loop: uvloop %s", metadata.version("uvloop"))
    uvloop.run(main)


def _serve_one(settings: Settings) -> int:
    try:
        _run(serve(settings))
    except ConfigDirError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except RuntimeError as exc:
        if "bind" not in str(exc).lower():
            raise
        log.error("cannot listen on %s: %s", settings.grpc_address, exc)
        return 2
    except OSError as exc:  # the --http-address port
        log.error("cannot listen on %s: %s", settings.http_address, exc.strerror or exc)
        return 2
    return 0


def new_key(args: argparse.Namespace) -> int:
    if args.bytes < 16:
        print("--bytes must be at least 16 (128 bits)", file=sys.stderr)
        return 2
    key = keys.new_key(args.bytes)
    try:
        metadata = dict(args.meta)
        if args.expires_at:
            metadata["expires-at"] = args.expires_at
        text = keys.manifest(
            args.name, args.namespace, key, metadata, dict(args.label), hashed=args.hashed
        )
    except ValidationError as exc:
        for message in manifests.error_messages(exc):
            print(f"error: {message}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    print(f"# the key (shown once; give it to {args.name}'s holder): {key}", file=sys.stderr)
    return 0


def validate(paths: Sequence[Path]) -> int:
    """Every problem as `file:line: message`; cross-file problems (duplicates, key
    conflicts, references to missing Secrets) are found by compiling a policy."""
    problems: list[Problem] = []
    found: list[Definition] = []
    files = 0
    for path in paths:
        if not path.exists():
            problems.append(Problem(str(path), 0, "no such file or directory"))
            continue
        for file in manifests.yaml_files(path):
            files += 1
            result = manifests.load_file(file)
            problems.extend(result.problems)
            if not result.ok:
                continue
            found.extend(definitions(result.resources))
    policy = compile_policy(Change(tuple(found)))
    problems.extend(policy.problems)
    for problem in problems:
        print(problem)
    errors = sum(not p.warning for p in problems)
    if errors:
        print(f"{errors} error(s) in {files} file(s)", file=sys.stderr)
        return 1
    if files == 0:
        print("no *.yaml or *.yml files found", file=sys.stderr)
        return 1
    print(
        f"OK: {files} file(s), {policy.key_count} API key Secret(s), "
        f"{len(policy.configs)} AuthConfig(s)"
        + (f", {len(problems)} warning(s)" if problems else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
