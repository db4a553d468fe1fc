"""The `extauth` command: `serve` runs the service, `validate` checks manifests offline."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import shtab
import yaml
from pydantic import ValidationError

from extauth import (
    __version__,
    envoyconf,
    inspecting,
    keys,
    loader,
    logformat,
    manifests,
    ranges,
    resources,
    sentheaders,
    tracing,
    workers,
)
from extauth.building import compile_policy
from extauth.changes import Change, Definition, Source
from extauth.manifests import DEFAULT_LIMITS, Limits
from extauth.origins import Problem
from extauth.policy import Policy
from extauth.server import Settings, grpc_credentials, serve
from extauth.sources import StartupError
from extauth.sources.files import ConfigDirError, FileSource
from extauth.sources.listing import ListingError, walk
from extauth.sources.tuning import DEFAULTS as KUBE_DEFAULTS
from extauth.sources.tuning import Tuning

log = logging.getLogger("extauth")
_R = TypeVar("_R")


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
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    # The port as a number: `:00` is port 0 and `:09001` port 9001, for every check and
    # lock that reads the string (a unit on `:00` would otherwise bind ports 1, 2, ...).
    return f"{host}:{int(port)}"


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number between 0 and 1")
    return number


def _namespace(value: str) -> str:
    try:
        return resources.check_namespace(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Any:
    """An argparse type: a number of `kind` in [low, high], refused with the range (and
    NaN refused: `ranges.parse`)."""

    def parse(value: str) -> int | float:
        try:
            return ranges.parse(value, kind, low, high)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


ENV_PREFIX = "EXTAUTH_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def environment_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> list[str]:
    """Take `serve`'s defaults from EXTAUTH_<OPTION> variables; the command line wins.

    Every option has one (`--config-dir` is EXTAUTH_CONFIG_DIR); flags take 1/true/yes/on
    or 0/false/no/off; repeatable options take a comma-separated list. Returns the
    problems, each naming its variable.
    """
    problems: list[str] = []
    defaults: dict[str, Any] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "log_level", "log_format"):
            continue
        name = ENV_PREFIX + action.dest.upper()
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            defaults[action.dest] = _from_environment(action, raw)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
    parser.set_defaults(**defaults)
    return problems


def _from_environment(action: argparse.Action, raw: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not one of 1/true/yes/on or 0/false/no/off")
    convert = action.type if callable(action.type) else str
    if isinstance(action, argparse._AppendAction):
        return [convert(part.strip()) for part in raw.split(",")]
    value = convert(raw)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{raw!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _pair(value: str) -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return name, text


@dataclass(frozen=True)
class _Option:
    """One option as a row of a table: the commands' options are declared as data, so
    that adding one is a line and the options two commands share are one table."""

    flag: str | tuple[str, ...]
    type: Callable[[str], Any] | None = None
    default: Any = None
    metavar: str | None = None
    help: str | None = None
    action: str | None = None

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        settings = {
            "type": self.type,
            "default": self.default,
            "metavar": self.metavar,
            "help": self.help,
            "action": self.action,
        }
        # Left out when unset, so that argparse's own defaults (False for a flag) hold.
        flags = (self.flag,) if isinstance(self.flag, str) else self.flag
        parser.add_argument(*flags, **{k: v for k, v in settings.items() if v is not None})


def _add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: Iterable[_Option]
) -> None:
    for option in options:
        option.add_to(parser)


def _ranged(record: type[Any], prefix: str = "") -> tuple[_Option, ...]:
    """An option for each ranged field of a settings record (`ranges.py`), as the record
    declares it: `--<prefix><field>`, its range, default, unit and help."""
    return tuple(
        _Option(
            "--" + (prefix + each.name).replace("_", "-"),
            _bounded(each.kind, each.range.low, each.range.high),
            each.default,
            each.range.unit,
            each.range.help,
        )
        for each in ranges.fields_of(record)
    )


def _made(record: type[_R], args: argparse.Namespace, prefix: str = "") -> _R:
    """The settings record the options `_ranged(record, prefix)` made have given."""
    given = {each.name: getattr(args, prefix + each.name) for each in ranges.fields_of(record)}
    return record(**given)


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """The same limits for `serve`, `validate` and `inspect`: what one passes, the others
    read (`manifests.Limits`)."""
    group = parser.add_argument_group("limits per file (a file over one is refused, alone)")
    _add_options(group, _ranged(Limits))


def _sources(verb: str) -> tuple[_Option, ...]:
    """Where resources come from, for `serve` (which watches) and `inspect` (which reads)."""
    # fmt: off
    return (
        _Option("--config-dir", Path, None, "DIR",
                f"{verb} this directory of Secret and AuthConfig YAML"),
        _Option("--kubernetes", action="store_true",
                help=f"{verb} Secrets and AuthConfigs in a cluster (in-cluster config or "
                "KUBECONFIG)"),
        _Option("--namespace", _namespace, None, "NS",
                f"with --kubernetes: {verb} only this namespace (repeatable; default: all)",
                action="append"),
        _Option("--kubeconfig", None, None, "PATH", "with --kubernetes: kubeconfig file"),
        _Option("--kube-context", None, None, "NAME",
                "with --kubernetes: this kubeconfig context (default: its current-context)"),
    )
    # fmt: on


# `keys new`, after the Secret's name.
# fmt: off
_NEW_KEY = (
    _Option(("--namespace", "-n"), _namespace, "default", help="the Secret's namespace"),
    _Option("--meta", _pair, [], "ENTRY=VALUE",
            "metadata entry, e.g. x-org=platform (repeatable)", action="append"),
    _Option("--label", _pair, [], "KEY=VALUE",
            "Secret label, for AuthConfig label selectors (repeatable)", action="append"),
    _Option("--bytes", _bounded(int, 16, 1024), keys.DEFAULT_BYTES,
            help="random bytes in the key (at least 16: 128 bits)"),
    _Option("--hashed", action="store_true",
            help="store only the key's SHA-256 (api-key-hash) in the Secret"),
    _Option("--expires-at", metavar="RFC3339",
            help="add an expires-at entry, e.g. 2027-01-31T00:00:00Z"),
    _Option(("--output", "-o"), Path, None, "FILE",
            "write the manifest to FILE (mode 0600, only once it is complete and valid) "
            "instead of standard output"),
    _Option("--force", action="store_true", help="with --output: replace FILE if it exists"),
)
# fmt: on


# What `serve` takes for --kubernetes alone, in a help section of its own titled so
# (rather than "with --kubernetes:" at the head of each line): the source's tuning, each
# number as `sources.tuning.Tuning` declares it, and whether to write status.
_SERVE_KUBERNETES = (
    *_ranged(Tuning, "kube_"),
    _Option("--no-status", action="store_true", help="do not write AuthConfig status"),
)


# What `serve` takes besides, in the order its help lists them.
# fmt: off
_SERVE = (
    _Option("--grpc-address", _address, "127.0.0.1:9001", "HOST:PORT",
            "where Envoy's ext_authz filter reaches the Authorization service"),
    _Option("--default-config", _config_id, None, "NS.NAME",
            "AuthConfig for routes that set no config_id context extension"),
    _Option("--http-address", _address, None, "HOST:PORT",
            "serve /metrics (Prometheus), /healthz, /readyz and the status page (/) here"),
    _Option("--no-status-page", action="store_true",
            help="do not serve the status page at / of --http-address (404 instead)"),
    _Option("--usage-label", None, None, "ENTRY",
            "count allowed requests per value of this Secret metadata entry (e.g. x-org)"),
    _Option("--decision-log", action="store_true",
            help="log one JSON line per decision (logger extauth.decisions; never a key)"),
    _Option("--decision-log-sample", _fraction, 1.0, "FRACTION",
            "log only this fraction of decisions (0..1)"),
    _Option("--workers", _bounded(int, 1, 64), 1, "N",
            "processes sharing the gRPC port (SO_REUSEPORT); worker i also serves gRPC "
            "alone on that port + 1 + i (list those in Envoy: extauth envoy-config "
            "--workers N) and --http-address on its port + i"),
    _Option("--grpc-tls-cert", Path, None, "PEM",
            "serve the gRPC port over TLS with this certificate (chain); needs --grpc-tls-key"),
    _Option("--grpc-tls-key", Path, None, "PEM", "its private key"),
    _Option("--grpc-client-ca", Path, None, "PEM",
            "with --grpc-tls-cert: require client certificates signed by this CA (Envoy's)"),
    _Option("--shutdown-delay", _bounded(float, 0, 600), 0.0, "SECONDS",
            "on SIGTERM, report NOT_SERVING but keep answering this long before closing "
            "the port (longer than Envoy's 1 s health-check interval: 2 is a good value)"),
    _Option("--shutdown-grace", _bounded(float, 0, 3600), 5.0, "SECONDS",
            "how long SIGTERM waits for in-flight checks"),
    _Option("--otel", action="store_true",
            help="trace every Check with OpenTelemetry, exported over OTLP/gRPC as the "
            "standard OTEL_* variables say (needs the otel extra; an "
            "OTEL_EXPORTER_OTLP_ENDPOINT turns it on too)"),
)
# fmt: on


def _limits(args: argparse.Namespace) -> Limits:
    return _made(Limits, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extauth",
        description="Envoy ext_authz service for API-key AuthConfigs.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"extauth {__version__}")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--log-level", default="INFO", choices=levels, help="log verbosity")
    log_format_help = (
        f"log lines as text or as one JSON object each (default: text, or {ENV_PREFIX}LOG_FORMAT)"
    )
    parser.add_argument(
        "--log-format", default=None, choices=logformat.FORMATS, help=log_format_help
    )
    # The same flag after the subcommand (`extauth serve --log-level DEBUG`); SUPPRESS
    # keeps a subcommand's absent flag from overriding one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=levels,
        help="log verbosity (default: INFO)",
    )
    common.add_argument(
        "--log-format", default=argparse.SUPPRESS, choices=logformat.FORMATS, help=log_format_help
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        under: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **settings: Any
    ) -> argparse.ArgumentParser:
        """Every command takes the logging flags and shows defaults the same way."""
        return under.add_parser(name, parents=[common], formatter_class=_Formatter, **settings)

    run = command(
        commands,
        "serve",
        help="serve Envoy's Authorization/Check over gRPC",
        epilog=f"Every option can also be set in the environment as {ENV_PREFIX}<OPTION> "
        f"({ENV_PREFIX}CONFIG_DIR, {ENV_PREFIX}GRPC_ADDRESS, ...; flags take true/false, "
        f"{ENV_PREFIX}NAMESPACE a comma-separated list); the command line wins.",
    )
    _add_options(run, (*_sources("watch"), *_SERVE))
    _add_options(run.add_argument_group("with --kubernetes"), _SERVE_KUBERNETES)
    _add_limits(run)

    check = command(
        commands,
        "validate",
        help="check manifests; exit 1 on any problem",
    )
    check.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="files or directories (read as serve reads them); - for standard input",
    )
    check.add_argument(
        "--output",
        choices=["text", "json"],
        default="text",
        help="text: `file:line: message` lines; json: one object for tools",
    )
    check.add_argument(
        "--envoy-config",
        type=Path,
        metavar="FILE",
        help="also check this Envoy config against the AuthConfigs: every header they read "
        "a key from must pass its ext_authz filters' allowed_headers",
    )
    _add_limits(check)

    keys_cmd = command(commands, "keys", help="API key helpers")
    keys_sub = keys_cmd.add_subparsers(dest="keys_command", required=True)
    new = command(
        keys_sub,
        "new",
        help="generate a key and print its Secret manifest (the key itself goes to stderr)",
    )
    new.add_argument("name", help="Secret name: the identity of the key's holder")
    _add_options(new, _NEW_KEY)
    look = command(
        commands,
        "inspect",
        help="what each AuthConfig admits: identities, headers, expiry (never a key)",
    )
    _add_options(look, _sources("read"))
    look.add_argument("--output", choices=["text", "json"], default="text", help="report format")
    look.add_argument(
        "--limit",
        type=_bounded(int, 0, 10**9),
        default=50,
        metavar="N",
        help="text: at most N identities per AuthConfig (0: all)",
    )
    _add_limits(look)

    completion = command(
        commands,
        "completion",
        help='print a shell completion script (bash: eval "$(extauth completion bash)")',
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])

    envoy = command(
        commands,
        "envoy-config",
        help="print a shipped Envoy config for `serve --workers N` (each worker an endpoint)",
    )
    envoy.add_argument(
        "--like",
        choices=list(envoyconf.FILES),
        default="envoy/envoy.yaml",
        metavar="FILE",
        help="the shipped config to start from: " + ", ".join(envoyconf.FILES),
    )
    envoy.add_argument(
        "--workers",
        type=_bounded(int, 1, 64),
        default=1,
        metavar="N",
        help="extauth's --workers: Envoy balances over each worker's own port (1: the "
        "config as shipped)",
    )
    envoy.add_argument(
        "--authconfigs",
        type=Path,
        metavar="DIR",
        help="the AuthConfigs this Envoy serves, for the configs that send extauth only the "
        "headers they read (allowed_headers; default: the repository's authconfigs/)",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    serve_parser = _subparser(parser, "serve")
    environ = os.environ if environ is None else environ
    problems = environment_defaults(serve_parser, environ)
    args = parser.parse_args(argv)
    log_format = args.log_format or environ.get(ENV_PREFIX + "LOG_FORMAT") or "text"
    if log_format not in logformat.FORMATS:
        problems.append(
            f"{ENV_PREFIX}LOG_FORMAT: {log_format!r} is not one of {', '.join(logformat.FORMATS)}"
        )
        log_format = "text"
    if problems and args.command == "serve":
        for problem in problems:
            print(f"extauth serve: {problem}", file=sys.stderr)
        return 2
    # Every line the process writes from here on, one record per line (logformat.py).
    logformat.configure(args.log_level, log_format, sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    # A file name need not be UTF-8 (it reaches Python as lone surrogates): printed
    # escaped, as stderr already does, never a UnicodeEncodeError in place of the report.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.command == "validate":
        return validate(args.paths, _limits(args), args.output, args.envoy_config)
    if args.command == "keys":
        return new_key(args)
    if args.command == "inspect":
        return inspect(args)
    if args.command == "completion":
        sys.stdout.write(shtab.complete(parser, shell=args.shell))
        return 0
    if args.command == "envoy-config":
        try:
            text = envoyconf.variant(args.like, args.workers, args.authconfigs)
        except (ValueError, ListingError) as exc:
            print(f"extauth envoy-config: {exc}", file=sys.stderr)
            return 2
        sys.stdout.write(text)
        return 0
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
    reading = _reading(args, write_status=not args.no_status, kube=_made(Tuning, args, "kube_"))
    otel = tracing.wanted(args.otel, os.environ if environ is None else environ)
    if otel and not tracing.available():
        print(
            "extauth serve: tracing needs the otel extra: pip install 'extauth[otel]'",
            file=sys.stderr,
        )
        return 2
    settings = Settings(
        grpc_address=args.grpc_address,
        default_config=args.default_config,
        shutdown_grace=args.shutdown_grace,
        shutdown_delay=args.shutdown_delay,
        http_address=args.http_address,
        status_page=not args.no_status_page,
        usage_label=args.usage_label,
        decision_log=args.decision_log,
        decision_log_sample=args.decision_log_sample,
        grpc_tls_cert=args.grpc_tls_cert,
        grpc_tls_key=args.grpc_tls_key,
        grpc_client_ca=args.grpc_client_ca,
        otel=otel,
    )

    def serve_one(settings: Settings) -> int:
        return _serve_one(settings, reading)

    try:
        # Read once here so that a missing or unreadable file stops the start, with
        # its name, before any source is loaded.
        grpc_credentials(settings)
    except (OSError, RuntimeError) as exc:
        print(f"extauth serve: cannot use the gRPC TLS files: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        if args.grpc_address.endswith(":0"):
            print("extauth serve: --workers needs a fixed --grpc-address port", file=sys.stderr)
            return 2
        clash = workers.port_problem(args.grpc_address, args.http_address, args.workers)
        if clash is not None:
            print(f"extauth serve: {clash}", file=sys.stderr)
            return 2
        return workers.run_workers(settings, args.workers, serve_one)
    if args.grpc_address.endswith(":0"):
        return serve_one(settings)
    try:
        # The same claim on the port as a --workers unit takes, held until exit.
        with workers.port_lock(args.grpc_address):
            return serve_one(settings)
    except workers.PortTaken as exc:
        log.error("cannot listen on %s: %s", args.grpc_address, exc)
        return 2


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """What the service reads: the config directory, a Kubernetes API server, or both."""

    config_dir: Path | None = None
    kubernetes: bool = False
    namespaces: tuple[str, ...] = ()
    kubeconfig: str | None = None
    kube_context: str | None = None
    write_status: bool = True
    # --kube-watch-timeout, --kube-heartbeat, ...: how the Kubernetes source paces itself.
    kube: Tuning = KUBE_DEFAULTS
    # Keep every Kubernetes Secret whole, even those no AuthConfig selects (inspect
    # reports those; serve keeps them as stubs).
    kube_every_secret: bool = False
    # --max-file-bytes, --max-documents, --max-depth: what one config file may hold.
    limits: Limits = DEFAULT_LIMITS


def _reading(args: argparse.Namespace, **settings: Any) -> SourceSettings:
    """The sources as `serve` and `inspect` both take them (`_sources`, `_LIMITS`)."""
    return SourceSettings(
        config_dir=args.config_dir,
        kubernetes=args.kubernetes,
        namespaces=tuple(args.namespace or ()),
        kubeconfig=args.kubeconfig,
        kube_context=args.kube_context,
        limits=_limits(args),
        **settings,
    )


def sources_for(settings: SourceSettings) -> list[Source]:
    """The wiring: the command line is the one place that knows which sources exist; the
    server is given them."""
    sources: list[Source] = []
    if settings.config_dir is not None:
        sources.append(FileSource(settings.config_dir, limits=settings.limits))
    if settings.kubernetes:
        # Imported here: the Kubernetes source (and urllib3) only loaded when used.
        from extauth.sources.kubernetes import KubernetesSource

        sources.append(
            KubernetesSource(
                list(settings.namespaces) or None,
                kubeconfig=settings.kubeconfig,
                kube_context=settings.kube_context,
                write_status=settings.write_status,
                tuning=settings.kube,
                # AuthConfigs in files may select Secrets this source would otherwise
                # keep as stubs: with a --config-dir, every Secret is kept whole.
                every_secret=settings.kube_every_secret or settings.config_dir is not None,
            )
        )
    return sources


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise LookupError(name)


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


def _serve_one(settings: Settings, reading: SourceSettings) -> int:
    try:
        _run(serve(settings, sources_for(reading)))
    except (ConfigDirError, StartupError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except RuntimeError as exc:
        if "bind" not in str(exc).lower():
            raise
        # grpc's message names the address it could not bind; a worker has two.
        where = settings.grpc_address
        if settings.worker_grpc_address is not None:
            where = f"{where} or on this worker's own {settings.worker_grpc_address}"
        log.error("cannot listen on %s: %s", where, exc)
        return 2
    except OSError as exc:  # the --http-address port
        log.error("cannot listen on %s: %s", settings.http_address, exc.strerror or exc)
        return 2
    return 0


def new_key(args: argparse.Namespace) -> int:
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
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            keys.write_new(args.output, text, force=args.force)
        except FileExistsError:
            print(f"{args.output} exists; pass --force to replace it", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"# wrote {args.output}", file=sys.stderr)
    print(f"# the key (shown once; give it to {args.name}'s holder): {key}", file=sys.stderr)
    return 0


def inspect(args: argparse.Namespace) -> int:
    if args.config_dir is None and not args.kubernetes:
        print("extauth inspect: give --config-dir DIR, --kubernetes, or both", file=sys.stderr)
        return 2
    settings = _reading(
        args,
        write_status=False,
        kube_every_secret=True,  # the Secrets no AuthConfig admits are reported
    )
    try:
        changes = asyncio.run(_initial_state(sources_for(settings)))
    except (ConfigDirError, StartupError) as exc:
        print(f"extauth inspect: {exc}", file=sys.stderr)
        return 2
    result = inspecting.report(compile_policy(_merged(changes)))
    if args.output == "json":
        sys.stdout.write(result.to_json() + "\n")
    else:
        sys.stdout.write(inspecting.render(result, args.limit))
    return 0


async def _initial_state(sources: Sequence[Source]) -> list[Change]:
    """Each source's first change (its complete state), then the sources are closed."""
    streams = [source.changes() for source in sources]
    try:
        return [await anext(aiter(stream)) for stream in streams]
    finally:
        for stream in streams:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()


def _merged(changes: Sequence[Change]) -> Change:
    return Change(
        tuple(d for c in changes for d in c.upserted), tuple(r for c in changes for r in c.removed)
    )


STDIN = Path("-")


def validate(
    paths: Sequence[Path],
    limits: Limits = DEFAULT_LIMITS,
    output: str = "text",
    envoy_config: Path | None = None,
) -> int:
    """Every problem as `file:line: message`, sorted by file and line; cross-file problems
    (duplicates, key conflicts, references to missing Secrets) are found by compiling a
    policy. Files are read by the loader `serve` uses, with the same limits: same
    documents, same messages. `-` reads standard input (`kubectl get ... -o yaml | ...`)."""
    problems: list[Problem] = []
    found: list[Definition] = []
    files = 0
    for path in paths:
        if path == STDIN:
            files += 1
            result = _load_stdin(limits)
            problems.extend(result.problems)
            found.extend(result.definitions)
            continue
        # The files serve would read, by the same rule (listing.py), and the same errors.
        try:
            listing = walk(path)
        except ListingError as exc:
            problems.append(Problem(str(exc.path), 0, exc.reason))
            continue
        problems.extend(Problem(str(p), 0, reason) for p, reason in listing.unreadable.items())
        problems.extend(Problem(str(p), 0, note, warning=True) for p, note in listing.notes)
        for file in listing.files:
            files += 1
            result = loader.load_file(file, limits)
            problems.extend(result.problems)
            found.extend(result.definitions)  # empty when the file is rejected
    policy = compile_policy(Change(tuple(found)))
    problems.extend(policy.problems)
    problems.extend(_unadmitted(policy))
    if envoy_config is not None:
        problems.extend(_envoy_problems(envoy_config, policy, limits))
    problems.sort(key=lambda p: (p.path, p.line))  # stable: a line's problems keep their order
    errors = sum(not p.warning for p in problems)
    if output == "json":
        print(
            json.dumps(
                {
                    "ok": errors == 0,
                    "files": files,
                    "api_key_secrets": policy.key_count,
                    "authconfigs": len(policy.configs),
                    "problems": [
                        {
                            "path": p.path,
                            "line": p.line,
                            "severity": "warning" if p.warning else "error",
                            "message": p.message,
                        }
                        for p in problems
                    ],
                },
                indent=2,
            )
        )
        return 1 if errors else 0
    for problem in problems:
        print(problem)
    if errors:
        where = f" in {files} file(s)" if files else " (no file read)"
        print(f"{errors} error(s){where}", file=sys.stderr)
        return 1
    print(
        f"OK: {files} file(s), {policy.key_count} API key Secret(s), "
        f"{len(policy.configs)} AuthConfig(s)"
        + (f", {len(problems)} warning(s)" if problems else "")
    )
    return 0


def _envoy_problems(path: Path, policy: Policy, limits: Limits) -> list[Problem]:
    """The Envoy config's mismatches with the AuthConfigs (sentheaders.envoy_problems),
    each reported at the config file."""
    try:
        with path.open("rb") as file:
            data = file.read(limits.max_file_bytes + 1)
    except OSError as exc:
        return [Problem(str(path), 0, f"cannot read the Envoy config: {exc.strerror}")]
    if len(data) > limits.max_file_bytes:
        return [Problem(str(path), 0, "Envoy config too large (see --max-file-bytes)")]
    try:
        text = data.decode("utf-8")
        # Depth, node and document counts first, from libyaml's events (no recursion).
        refused = manifests._prescan(text, str(path), limits)
        if refused is not None:
            return [refused]
        envoy = yaml.load(text, Loader=manifests._Loader)  # noqa: S506 (a safe loader)
    except (yaml.YAMLError, RecursionError, UnicodeDecodeError) as exc:
        return [Problem(str(path), 0, f"not a YAML Envoy config ({type(exc).__name__})")]
    return [Problem(str(path), 0, p) for p in sentheaders.envoy_problems(envoy, policy)]


def _load_stdin(limits: Limits) -> loader.FileLoad:
    """Standard input as one file named `-`, never more than the size limit read."""
    data = sys.stdin.buffer.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        return loader.FileLoad(
            (),
            (
                Problem(
                    "-",
                    0,
                    f"input too large (more than {limits.max_file_bytes} bytes; the limit is "
                    f"--max-file-bytes {limits.max_file_bytes})",
                ),
            ),
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return loader.FileLoad((), (Problem("-", 1, "input is not UTF-8 text"),))
    return loader.load_text(text, "-", limits)


def _unadmitted(policy: Policy) -> list[Problem]:
    """A warning per Secret that no AuthConfig admits: its key works nowhere, usually a
    forgotten ref or label. Only when there are AuthConfigs to admit it: a file of keys
    checked alone is not a mistake."""
    if not policy.configs:
        return []
    return [
        Problem(
            key.path,
            key.line,
            f"Secret {key.namespace}/{key.name} is admitted by no AuthConfig: its key is "
            "denied everywhere",
            warning=True,
        )
        for key in inspecting.unadmitted(policy)
    ]


if __name__ == "__main__":
    sys.exit(main())
