"""Where the Kubernetes API server is and who extauth is to it: in-cluster or a kubeconfig.

Read without the official client, whose package costs ~22 MB of memory in the serving
process just by being imported (BENCHMARKS.md). What is understood:

- in a pod (`KUBERNETES_SERVICE_HOST` set and no kubeconfig given): the service account's
  token, CA and namespace directory; the token file is read again whenever it changes
  (the kubelet rotates it);
- a kubeconfig (`--kubeconfig`, else `KUBECONFIG`, a list of files merged as kubectl does,
  else `~/.kube/config`): the current context or the one named; the cluster's `server`,
  `certificate-authority`/`-data`, `insecure-skip-tls-verify`, `tls-server-name`; the
  user's `client-certificate`/`-key` and their `-data`, `token`, `tokenFile`, and `exec`
  credential plugins (ExecCredential v1 and v1beta1, token or client certificate,
  `expirationTimestamp` honoured, run again on a 401). Relative paths are resolved against
  the directory of the file that names them.

Legacy `auth-provider` (gcp, azure, oidc) and `username`/`password` are refused at startup,
naming the field: the first two are gone from client-go since 1.26 and basic auth from the
API server since 1.19; an exec plugin (`gke-gcloud-auth-plugin`, `kubelogin`) does the same.

Every mistake is a `KubeConfigError` at startup that names the file and field; no message
quotes a token, a key or a plugin's output.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from extauth.sources import StartupError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
# A plugin prints one small JSON object; more than this is garbage, not a credential.
EXEC_OUTPUT_LIMIT = 1024 * 1024
EXEC_TIMEOUT = 60.0
# A credential whose expiry is this close is fetched again before it is used.
EXPIRY_MARGIN = 10.0
# A kubeconfig is a small YAML file; anything larger is not one.
KUBECONFIG_LIMIT = 4 * 1024 * 1024


class KubeConfigError(StartupError):
    """The credentials cannot be loaded: says which file and field, never their values."""


class CredentialError(Exception):
    """A credential could not be refreshed while serving (a plugin failed, a token file
    went missing): the request fails and is retried like any API error."""


@dataclass(frozen=True)
class ExecPlugin:
    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    api_version: str
    cluster: Mapping[str, Any] | None  # given to the plugin when provideClusterInfo
    install_hint: str
    where: str  # the file and user, for messages


@dataclass
class Target:
    """One API server and the credentials to present to it."""

    server: str
    where: str  # what the settings came from (a file and context, or "in-cluster")
    ca_pem: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str | None = None
    token_file: Path | None = None
    exec_plugin: ExecPlugin | None = None
    namespace: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _file_token: tuple[tuple[int, int, int], str] | None = field(default=None, repr=False)
    _exec_token: str | None = field(default=None, repr=False)
    _exec_expiry: float | None = field(default=None, repr=False)
    _exec_cert: tuple[bytes, bytes] | None = field(default=None, repr=False)
    # Counts every change of the client certificate: the connections are made anew.
    cert_version: int = 0

    def __repr__(self) -> str:  # never the token or key: only where it points
        return f"Target(server={self.server!r}, where={self.where!r})"

    def bearer(self) -> str | None:
        """The token to send now: a rotated token file read again, an expired plugin
        credential fetched again."""
        if self.exec_plugin is not None:
            with self._lock:
                if self._exec_expiry is not None and time.time() >= self._exec_expiry:
                    self._run_plugin()
                if self._exec_token is not None:
                    return self._exec_token
        if self.token_file is not None:
            return self._read_token_file()
        return self.token

    def client_cert(self) -> tuple[bytes, bytes] | None:
        if self.exec_plugin is not None:
            with self._lock:
                if self._exec_cert is not None:
                    return self._exec_cert
        if self.cert_pem is not None and self.key_pem is not None:
            return self.cert_pem, self.key_pem
        return None

    def unauthorized(self) -> bool:
        """The API server answered 401: fetch what can be fetched again. True when the
        request is worth one more try (a new credential was obtained)."""
        if self.exec_plugin is not None:
            with self._lock:
                self._run_plugin()
            return True
        if self.token_file is not None:
            with self._lock:
                self._file_token = None
            return True
        return False

    def start(self) -> None:
        """Everything that can fail, once, at startup: the plugin run, the token file read,
        the TLS settings checked."""
        try:
            if self.exec_plugin is not None:
                with self._lock:
                    self._run_plugin()
            if self.token_file is not None:
                self._read_token_file()
            ssl_context(self)
        except CredentialError as exc:
            raise KubeConfigError(str(exc)) from None

    def _read_token_file(self) -> str:
        assert self.token_file is not None
        path = self.token_file
        try:
            found = path.stat()
            signature = (found.st_ino, found.st_size, found.st_mtime_ns)
            cached = self._file_token
            if cached is not None and cached[0] == signature:
                return cached[1]
            if found.st_size > KUBECONFIG_LIMIT:
                raise CredentialError(f"token file {path}: larger than a token")
            token = path.read_text().strip()
        except OSError as exc:
            cached = self._file_token
            if cached is not None:
                # Mid-rotation (the kubelet swaps a symlink), or gone: the last token
                # read is still the best there is; the API server decides.
                log.warning("kubernetes: token file %s: %s", path, exc.strerror or exc)
                return cached[1]
            raise CredentialError(
                f"token file {path}: cannot be read ({exc.strerror or type(exc).__name__})"
            ) from None
        except UnicodeDecodeError:
            raise CredentialError(f"token file {path}: not text") from None
        if not token:
            raise CredentialError(f"token file {path}: empty")
        self._file_token = (signature, token)
        return token

    def _run_plugin(self) -> None:
        """Run the exec plugin (the lock held); raises CredentialError."""
        plugin = self.exec_plugin
        assert plugin is not None
        info: dict[str, Any] = {
            "apiVersion": plugin.api_version,
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
        if plugin.cluster is not None:
            info["spec"]["cluster"] = dict(plugin.cluster)
        env = {**os.environ, **dict(plugin.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        what = f"{plugin.where}: exec plugin {plugin.command!r}"
        hint = f" ({plugin.install_hint})" if plugin.install_hint else ""
        try:
            # stderr is the plugin's own word to the operator: passed through, as
            # client-go does, never read into a message here.
            with subprocess.Popen(
                [plugin.command, *plugin.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=env,
            ) as proc:
                assert proc.stdout is not None
                output, over = _read_bounded(proc, EXEC_OUTPUT_LIMIT, EXEC_TIMEOUT)
                if over is not None:
                    proc.kill()
                    proc.wait()
                    raise CredentialError(f"{what}: {over}")
                code = proc.wait()
        except FileNotFoundError:
            raise CredentialError(f"{what}: not found{hint}") from None
        except PermissionError:
            raise CredentialError(f"{what}: not executable{hint}") from None
        except OSError as exc:
            raise CredentialError(f"{what}: cannot run ({exc.strerror})") from None
        if code != 0:
            raise CredentialError(f"{what}: exited with status {code}")
        self._take_credential(output, what)

    def _take_credential(self, output: bytes, what: str) -> None:
        plugin = self.exec_plugin
        assert plugin is not None
        try:
            found = json.loads(output)
        except (ValueError, RecursionError):
            raise CredentialError(f"{what}: printed something that is not JSON") from None
        if not isinstance(found, dict) or found.get("kind") != "ExecCredential":
            raise CredentialError(f"{what}: printed JSON that is not an ExecCredential")
        if found.get("apiVersion") != plugin.api_version:
            raise CredentialError(
                f"{what}: printed an ExecCredential of another apiVersion "
                f"(expected {plugin.api_version})"
            )
        status = found.get("status")
        if not isinstance(status, dict):
            raise CredentialError(f"{what}: its ExecCredential has no status")
        token = status.get("token")
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if token is not None and (not isinstance(token, str) or not token):
            raise CredentialError(f"{what}: status.token is not a string")
        if (cert is None) != (key is None):
            raise CredentialError(
                f"{what}: status has only one of clientCertificateData and clientKeyData"
            )
        if cert is not None and not (isinstance(cert, str) and isinstance(key, str)):
            raise CredentialError(f"{what}: status.clientCertificateData/KeyData not strings")
        if token is None and cert is None:
            raise CredentialError(f"{what}: status has neither a token nor a client certificate")
        expiry: float | None = None
        stamp = status.get("expirationTimestamp")
        if stamp is not None:
            try:
                expiry = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise CredentialError(
                    f"{what}: status.expirationTimestamp is not an RFC 3339 time"
                ) from None
            expiry -= EXPIRY_MARGIN
        new_cert = (cert.encode(), key.encode()) if cert is not None and key is not None else None
        if new_cert is not None:
            _check_pair(new_cert, f"{what}: status.clientCertificateData/clientKeyData")
        if new_cert != self._exec_cert:
            self.cert_version += 1
        self._exec_token, self._exec_cert, self._exec_expiry = token, new_cert, expiry


def _read_bounded(
    proc: subprocess.Popen[bytes], limit: int, timeout: float
) -> tuple[bytes, str | None]:
    """The process's stdout, unless it prints more than `limit` or outlives `timeout`."""
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    result: list[str | None] = [None]

    def watchdog() -> None:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                result[0] = f"gave no answer in {timeout:.0f} s"
                with contextlib.suppress(OSError):
                    proc.kill()
                return
            time.sleep(0.05)

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return b"", f"printed more than {limit // 1024} KiB"
        chunks.append(chunk)
    guard.join(timeout + 1)
    return b"".join(chunks), result[0]


def _check_pair(pair: tuple[bytes, bytes], what: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        load_cert_chain(context, pair)
    except (ssl.SSLError, OSError, ValueError):
        raise CredentialError(f"{what}: not a PEM certificate and its private key") from None


def load_cert_chain(context: ssl.SSLContext, pair: tuple[bytes, bytes]) -> None:
    """The pair from memory: written to files only this process can read, for the moment
    `load_cert_chain` (which takes paths) reads them, then removed."""
    with tempfile.TemporaryDirectory(prefix="extauth-tls-") as directory:
        Path(directory).chmod(0o700)
        paths = []
        for name, data in zip(("cert.pem", "key.pem"), pair, strict=True):
            path = Path(directory) / name
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
            paths.append(str(path))
        context.load_cert_chain(paths[0], paths[1])


def ssl_context(target: Target) -> ssl.SSLContext:
    """The TLS settings for `target` now (its client certificate may change)."""
    context = ssl.create_default_context()
    if target.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif target.ca_pem is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=target.ca_pem)
        except (ssl.SSLError, ValueError):
            raise CredentialError(
                f"{target.where}: certificate-authority: no PEM certificate in it"
            ) from None
    pair = target.client_cert()
    if pair is not None:
        try:
            load_cert_chain(context, pair)
        except (ssl.SSLError, OSError, ValueError):
            raise CredentialError(
                f"{target.where}: client-certificate/client-key: not a PEM certificate and "
                "its private key"
            ) from None
    return context


def load(kubeconfig: str | None = None, context: str | None = None) -> Target:
    """In a pod (no kubeconfig given): the service account; else the kubeconfig. Raises
    KubeConfigError."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        target = in_cluster(os.environ)
    else:
        target = from_kubeconfig(kubeconfig, context)
    target.start()
    return target


def in_cluster(environ: Mapping[str, str], root: Path = SERVICE_ACCOUNT) -> Target:
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
    if not host:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_HOST is empty")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_PORT is not a port number")
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    where = f"in-cluster ({root})"
    ca_file = root / "ca.crt"
    target = Target(
        server=f"https://{host}:{int(port)}",
        where=where,
        ca_pem=_read_text(ca_file, f"{where}: ca.crt"),
        token_file=root / "token",
    )
    with contextlib.suppress(OSError):
        target.namespace = (root / "namespace").read_text().strip() or None
    return target


def _read_text(path: Path, what: str) -> str:
    try:
        return _read_bytes(path, what).decode()
    except UnicodeDecodeError:
        raise KubeConfigError(f"{what}: {path}: not text") from None


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > KUBECONFIG_LIMIT:
            raise KubeConfigError(f"{what}: {path}: too large")
        return path.read_bytes()
    except OSError as exc:
        raise KubeConfigError(
            f"{what}: {path}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None


def _files(kubeconfig: str | None) -> list[Path]:
    if kubeconfig is not None:
        return [Path(kubeconfig).expanduser()]
    listed = os.environ.get("KUBECONFIG", "")
    if listed:
        paths = [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
        found = [p for p in paths if p.exists()]
        if not found:
            raise KubeConfigError(f"KUBECONFIG: none of {listed!r} exists")
        return found
    return [Path("~/.kube/config").expanduser()]


@dataclass
class _Named:
    value: dict[str, Any]
    directory: Path
    file: Path


def _merge(paths: list[Path]) -> tuple[str, dict[str, dict[str, _Named]]]:
    """kubectl's merge: the first file to name a context, cluster or user wins; the first
    non-empty current-context wins."""
    current = ""
    found: dict[str, dict[str, _Named]] = {"clusters": {}, "users": {}, "contexts": {}}
    for path in paths:
        text = _read_text(path, "kubeconfig")
        try:
            document = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError):
            raise KubeConfigError(f"kubeconfig {path}: not valid YAML") from None
        if document is None:
            continue
        if not isinstance(document, dict):
            raise KubeConfigError(f"kubeconfig {path}: not a mapping")
        if not current and isinstance(document.get("current-context"), str):
            current = document["current-context"]
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            entries = document.get(section) or []
            if not isinstance(entries, list):
                raise KubeConfigError(f"kubeconfig {path}: {section} is not a list")
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise KubeConfigError(f"kubeconfig {path}: an entry of {section} has no name")
                body = entry.get(inner) or {}
                if not isinstance(body, dict):
                    raise KubeConfigError(
                        f"kubeconfig {path}: {section}[{entry['name']}].{inner} is not a mapping"
                    )
                found[section].setdefault(entry["name"], _Named(body, path.resolve().parent, path))
    return current, found


def from_kubeconfig(kubeconfig: str | None = None, context: str | None = None) -> Target:
    paths = _files(kubeconfig)
    current, found = _merge(paths)
    shown = ", ".join(map(str, paths))
    name = context or current
    if not name:
        raise KubeConfigError(f"kubeconfig {shown}: no current-context, and no context named")
    chosen = found["contexts"].get(name)
    if chosen is None:
        raise KubeConfigError(f"kubeconfig {shown}: no context named {name!r}")
    cluster_name = chosen.value.get("cluster")
    cluster = found["clusters"].get(str(cluster_name))
    if cluster is None:
        raise KubeConfigError(
            f"kubeconfig {chosen.file}: context {name!r} names cluster {cluster_name!r}, "
            "which is not there"
        )
    user_name = chosen.value.get("user")
    user = found["users"].get(str(user_name)) if user_name else None
    if user_name and user is None:
        raise KubeConfigError(
            f"kubeconfig {chosen.file}: context {name!r} names user {user_name!r}, "
            "which is not there"
        )
    where = f"kubeconfig {cluster.file} (context {name!r})"
    target = _cluster(cluster, where, str(cluster_name))
    namespace = chosen.value.get("namespace")
    target.namespace = namespace if isinstance(namespace, str) and namespace else None
    if user is not None:
        _user(target, user, f"kubeconfig {user.file} (user {user_name!r})")
    return target


def _string(body: Mapping[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise KubeConfigError(f"{where}: {key} is not a string")
    return value


def _data(body: Mapping[str, Any], key: str, where: str) -> bytes | None:
    value = _string(body, key, where)
    if value is None:
        return None
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KubeConfigError(f"{where}: {key} is not valid base64") from None


def _path(named: _Named, key: str, where: str) -> Path | None:
    value = _string(named.value, key, where)
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else named.directory / path


def _cluster(named: _Named, where: str, name: str) -> Target:
    body = named.value
    cwhere = f"kubeconfig {named.file} (cluster {name!r})"
    server = _string(body, "server", cwhere)
    if server is None:
        raise KubeConfigError(f"{cwhere}: no server")
    if not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"{cwhere}: server is not an http(s) URL")
    target = Target(server=server.rstrip("/"), where=where)
    ca_data = _data(body, "certificate-authority-data", cwhere)
    ca_path = _path(named, "certificate-authority", cwhere)
    if ca_data is not None:
        try:
            target.ca_pem = ca_data.decode()
        except UnicodeDecodeError:
            raise KubeConfigError(f"{cwhere}: certificate-authority-data is not PEM") from None
    elif ca_path is not None:
        target.ca_pem = _read_text(ca_path, f"{cwhere}: certificate-authority")
    insecure = body.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeConfigError(f"{cwhere}: insecure-skip-tls-verify is not true or false")
    target.insecure = insecure
    if insecure and target.ca_pem is not None:
        raise KubeConfigError(
            f"{cwhere}: insecure-skip-tls-verify with a certificate-authority: choose one"
        )
    target.tls_server_name = _string(body, "tls-server-name", cwhere)
    return target


_REFUSED = {
    "auth-provider": "legacy auth-provider is not supported: use an exec credential plugin "
    "(gke-gcloud-auth-plugin, kubelogin, ...)",
    "username": "basic authentication (username/password) is not supported",
    "password": "basic authentication (username/password) is not supported",
    "as": "impersonation is not supported",
}


def _user(target: Target, named: _Named, where: str) -> None:
    body = named.value
    for field_name, why in _REFUSED.items():
        if body.get(field_name):
            raise KubeConfigError(f"{where}: {field_name}: {why}")
    cert = _data(body, "client-certificate-data", where)
    cert_path = _path(named, "client-certificate", where)
    if cert is None and cert_path is not None:
        cert = _read_bytes(cert_path, f"{where}: client-certificate")
    key = _data(body, "client-key-data", where)
    key_path = _path(named, "client-key", where)
    if key is None and key_path is not None:
        key = _read_bytes(key_path, f"{where}: client-key")
    if (cert is None) != (key is None):
        missing = "client-key" if key is None else "client-certificate"
        raise KubeConfigError(f"{where}: a client certificate needs both; {missing} is missing")
    target.cert_pem, target.key_pem = cert, key
    target.token = _string(body, "token", where)
    token_file = _path(named, "tokenFile", where)
    if target.token is None and token_file is not None:
        target.token_file = token_file
    spec = body.get("exec")
    if spec is not None:
        target.exec_plugin = _exec(spec, named, where, target)


def _exec(spec: Any, named: _Named, where: str, target: Target) -> ExecPlugin:
    ewhere = f"{where}: exec"
    if not isinstance(spec, dict):
        raise KubeConfigError(f"{ewhere} is not a mapping")
    command = _string(spec, "command", ewhere)
    if command is None:
        raise KubeConfigError(f"{ewhere}: no command")
    if os.sep in command and not Path(command).is_absolute():
        command = str(named.directory / command)  # as client-go: beside the kubeconfig
    api_version = _string(spec, "apiVersion", ewhere)
    if api_version not in EXEC_API_VERSIONS:
        raise KubeConfigError(f"{ewhere}: apiVersion must be one of {', '.join(EXEC_API_VERSIONS)}")
    if spec.get("interactiveMode") == "Always":
        raise KubeConfigError(
            f"{ewhere}: interactiveMode Always needs a terminal; extauth has none"
        )
    args = spec.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise KubeConfigError(f"{ewhere}: args is not a list of strings")
    env_list = spec.get("env") or []
    env: list[tuple[str, str]] = []
    if not isinstance(env_list, list):
        raise KubeConfigError(f"{ewhere}: env is not a list")
    for entry in env_list:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("value"), str)
        ):
            raise KubeConfigError(f"{ewhere}: an env entry is not {{name, value}} strings")
        env.append((entry["name"], entry["value"]))
    cluster: dict[str, Any] | None = None
    if spec.get("provideClusterInfo"):
        cluster = {"server": target.server, "insecure-skip-tls-verify": target.insecure}
        if target.ca_pem is not None:
            cluster["certificate-authority-data"] = base64.b64encode(
                target.ca_pem.encode()
            ).decode()
        if target.tls_server_name:
            cluster["tls-server-name"] = target.tls_server_name
    hint = spec.get("installHint")
    return ExecPlugin(
        command=command,
        args=tuple(args),
        env=tuple(env),
        api_version=api_version,
        cluster=cluster,
        install_hint=hint if isinstance(hint, str) else "",
        where=where,
    )
