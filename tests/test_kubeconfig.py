"""Credentials for the Kubernetes API server (extauth/sources/kubeconfig.py), without one.

Every bad kubeconfig is a `KubeConfigError` naming the file and field, and no message or
repr carries a token, a key or a plugin's output. What is sent to a real API server (and
what a 401 does) is tests/kube/test_apiserver.py's.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauth.sources import kubeconfig
from extauth.sources.kubeconfig import KubeConfigError
from tests import certs
from tests.harness import run_cli

TOKEN = "sekret-token-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[certs.Pair, certs.Pair]:
    directory = tmp_path_factory.mktemp("pki")
    authority = certs.ca(directory)
    return authority, certs.leaf(directory, "client", authority)


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def config(
    user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "n"}}],
        "current-context": "ctx",
        **extra,
    }


def refused(path: Path, context: str | None = None) -> str:
    with pytest.raises(KubeConfigError) as caught:
        kubeconfig.load(str(path), context)
    message = str(caught.value)
    assert TOKEN not in message
    assert "PRIVATE KEY" not in message
    return message


def test_the_current_context_or_the_named_one(tmp_path: Path) -> None:
    document = config(user={"token": TOKEN})
    document["clusters"].append({"name": "other", "cluster": {"server": "https://[fd00::1]:443"}})
    document["contexts"].append({"name": "two", "context": {"cluster": "other", "user": "u"}})
    path = write(tmp_path / "config", document)
    target = kubeconfig.load(str(path))
    assert (target.server, target.namespace, target.bearer()) == (
        "https://127.0.0.1:6443",
        "n",
        TOKEN,
    )
    assert kubeconfig.load(str(path), "two").server == "https://[fd00::1]:443"
    assert TOKEN not in repr(target)
    assert "no context named 'three'" in refused(path, "three")


def test_kubeconfig_files_are_merged_first_one_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = config(user={"token": "first"})
    del first["current-context"]
    second = config(user={"token": "second"}, cluster={"server": "https://second:1"})
    second["clusters"][0]["name"] = "other-cluster"
    paths = [write(tmp_path / "a", first), tmp_path / "missing", write(tmp_path / "b", second)]
    monkeypatch.setenv("KUBECONFIG", ":".join(map(str, paths)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    target = kubeconfig.load()
    # current-context from b; context, cluster and user from a, which named them first
    assert (target.server, target.bearer()) == ("https://127.0.0.1:6443", "first")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(KubeConfigError, match="KUBECONFIG: none of"):
        kubeconfig.load()


def test_relative_paths_are_read_beside_the_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: tuple[certs.Pair, certs.Pair]
) -> None:
    authority, client = pki
    home = tmp_path / "home"
    home.mkdir()
    for name, source in (("ca.crt", authority.cert), ("c.crt", client.cert), ("c.key", client.key)):
        (home / name).write_bytes(source.read_bytes())
    (home / "token").write_text(TOKEN + "\n")
    user = {"client-certificate": "c.crt", "client-key": "c.key", "tokenFile": "token"}
    path = write(
        home / "config",
        config(user=user, cluster={"server": "https://h:1", "certificate-authority": "ca.crt"}),
    )
    monkeypatch.chdir(tmp_path)  # not where the files are
    target = kubeconfig.load(str(path))
    assert target.ca_pem == authority.cert.read_text()
    assert target.client_cert() == (client.cert.read_bytes(), client.key.read_bytes())
    assert target.bearer() == TOKEN


def test_data_fields_are_base64_and_checked(
    tmp_path: Path, pki: tuple[certs.Pair, certs.Pair]
) -> None:
    authority, client = pki

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    user = {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}
    cluster = {"server": "https://h:1", "certificate-authority-data": b64(authority.cert)}
    good = kubeconfig.load(str(write(tmp_path / "good", config(user=user, cluster=cluster))))
    assert good.client_cert() == (client.cert.read_bytes(), client.key.read_bytes())
    secret_ish = base64.b64encode(b"-----BEGIN PRIVATE KEY----- not a key").decode()
    cases = {
        "not base64": ({**user, "client-key-data": "%%%" + secret_ish}, cluster),
        "a key that is no key": ({**user, "client-key-data": secret_ish}, cluster),
        "a CA that is no CA": (user, {**cluster, "certificate-authority-data": secret_ish}),
        "a certificate alone": ({"client-certificate-data": b64(client.cert)}, cluster),
    }
    messages = {}
    for name, (u, c) in cases.items():
        message = refused(write(tmp_path / "bad", config(user=u, cluster=c)))
        assert secret_ish not in message
        messages[name] = message
    assert "client-key-data is not valid base64" in messages["not base64"]
    assert "not a PEM certificate and its private key" in messages["a key that is no key"]
    assert "certificate-authority: no PEM certificate" in messages["a CA that is no CA"]
    assert "client-key is missing" in messages["a certificate alone"]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("clusters: [", "not valid YAML"),
        ("[1, 2]", "not a mapping"),
        ("clusters: 5", "clusters is not a list"),
        ("current-context: ''", "no current-context"),
        (
            "{current-context: x, contexts: [{name: x, context: {cluster: nowhere}}]}",
            "names cluster 'nowhere', which is not there",
        ),
        ("[" * 5_000, "not valid YAML"),
    ],
    ids=["yaml", "list", "clusters", "no-context", "no-cluster", "deep"],
)
def test_malformed_kubeconfigs_are_named(tmp_path: Path, document: str, expected: str) -> None:
    path = tmp_path / "config"
    path.write_text(document)
    assert expected in refused(path)


def test_what_cannot_be_read_is_named(tmp_path: Path) -> None:
    assert "cannot be read (No such file or directory)" in refused(tmp_path / "absent")
    path = write(tmp_path / "config", config(user={"client-certificate": "d", "client-key": "d"}))
    (tmp_path / "d").mkdir()
    assert "client-certificate: " in refused(path)
    path = write(tmp_path / "config", config(user={"tokenFile": "absent-token"}))
    assert "token file" in refused(path)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"auth-provider": {"name": "oidc", "config": {"id-token": TOKEN}}}, "auth-provider:"),
        ({"username": "admin", "password": TOKEN}, "username: basic authentication"),
        ({"exec": {"command": "x", "apiVersion": "v9"}}, "apiVersion must be one of"),
        ({"exec": {"apiVersion": kubeconfig.EXEC_API_VERSIONS[0]}}, "exec: no command"),
    ],
    ids=["auth-provider", "basic", "exec-version", "exec-command"],
)
def test_unsupported_users_are_refused_naming_the_field(
    tmp_path: Path, user: dict[str, Any], expected: str
) -> None:
    assert expected in refused(write(tmp_path / "config", config(user=user)))


def plugin(tmp_path: Path, body: str, name: str = "plugin") -> Path:
    """An exec credential plugin: a shell script; each run appends a line to `runs`."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\n{body}\n")
    script.chmod(0o755)
    return script


def credential(status: dict[str, Any], version: str = "client.authentication.k8s.io/v1") -> str:
    document = {"apiVersion": version, "kind": "ExecCredential", "status": status}
    return f"cat <<'EOF'\n{json.dumps(document)}\nEOF"


def exec_config(tmp_path: Path, command: str, **more: Any) -> Path:
    spec = {"command": command, "apiVersion": "client.authentication.k8s.io/v1", **more}
    return write(tmp_path / "config", config(user={"exec": spec}))


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("version", kubeconfig.EXEC_API_VERSIONS)
def test_an_exec_plugin_token_is_kept_until_it_expires(tmp_path: Path, version: str) -> None:
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    script = plugin(tmp_path, credential({"token": TOKEN, "expirationTimestamp": later}, version))
    # A relative command is beside the kubeconfig (as client-go has it).
    spec = {"command": "./plugin", "apiVersion": version, "env": [{"name": "A", "value": "b"}]}
    target = kubeconfig.load(str(write(tmp_path / "config", config(user={"exec": spec}))))
    assert script.exists()
    assert [target.bearer(), target.bearer()] == [TOKEN, TOKEN]
    assert runs(tmp_path) == 1
    assert target.unauthorized()  # a 401: run again
    assert runs(tmp_path) == 2


def test_an_expired_exec_credential_is_fetched_again(tmp_path: Path) -> None:
    status = {"token": TOKEN, "expirationTimestamp": "2000-01-01T00:00:00Z"}
    target = kubeconfig.load(str(exec_config(tmp_path, str(plugin(tmp_path, credential(status))))))
    target.bearer()
    target.bearer()
    assert runs(tmp_path) == 3


def test_the_plugin_is_told_about_the_cluster_when_asked(tmp_path: Path) -> None:
    script = plugin(
        tmp_path, f'echo "$KUBERNETES_EXEC_INFO" > {tmp_path}/info\n' + credential({"token": TOKEN})
    )
    kubeconfig.load(str(exec_config(tmp_path, str(script), provideClusterInfo=True)))
    info = json.loads((tmp_path / "info").read_text())
    assert info["kind"] == "ExecCredential"
    assert info["spec"]["interactive"] is False
    assert info["spec"]["cluster"]["server"] == "https://127.0.0.1:6443"


def test_an_exec_plugin_may_give_a_client_certificate(
    tmp_path: Path, pki: tuple[certs.Pair, certs.Pair]
) -> None:
    _, client = pki
    status = {
        "clientCertificateData": client.cert.read_text(),
        "clientKeyData": client.key.read_text(),
    }
    target = kubeconfig.load(str(exec_config(tmp_path, str(plugin(tmp_path, credential(status))))))
    assert target.client_cert() == (client.cert.read_bytes(), client.key.read_bytes())
    assert target.bearer() is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("exit 3", "exited with status 3"),
        (f"echo '{TOKEN} is not json'", "printed something that is not JSON"),
        ('echo \'{"kind": "Other"}\'', "printed JSON that is not an ExecCredential"),
        (credential({"token": TOKEN}, "client.authentication.k8s.io/v1beta1"), "apiVersion"),
        (credential({}), "neither a token nor a client certificate"),
        (credential({"clientKeyData": TOKEN}), "only one of clientCertificateData"),
        (credential({"token": TOKEN, "expirationTimestamp": "soon"}), "expirationTimestamp"),
        (f"yes {TOKEN}", "printed more than 1024 KiB"),
        ("printf '%.0s[' $(seq 1 100000)", "not JSON"),
    ],
    ids=["fails", "garbage", "kind", "version", "empty", "half-cert", "expiry", "huge", "deep"],
)
def test_a_plugin_that_misbehaves_is_a_clear_startup_error(
    tmp_path: Path, body: str, expected: str
) -> None:
    message = refused(exec_config(tmp_path, str(plugin(tmp_path, body))))
    assert expected in message
    assert "exec plugin" in message


def test_a_missing_plugin_says_how_to_install_it(tmp_path: Path) -> None:
    path = exec_config(tmp_path, "no-such-plugin-anywhere", installHint="apt-get install it")
    message = refused(path)
    assert "not found (apt-get install it)" in message


def test_a_plugin_that_never_answers_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubeconfig, "EXEC_TIMEOUT", 0.5)
    started = time.monotonic()
    script = plugin(tmp_path, "exec sleep 60")
    assert "gave no answer" in refused(exec_config(tmp_path, str(script)))
    assert time.monotonic() - started < 30  # a deadline, not a timing measurement


def test_in_cluster_reads_the_service_account_and_a_rotated_token(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("PEM")
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "namespace").write_text("extauth-system")
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    target = kubeconfig.in_cluster(environ, tmp_path)
    assert (target.server, target.namespace) == ("https://[fd00::1]:6443", "extauth-system")
    assert target.bearer() == TOKEN
    # The kubelet swaps the file in (a new inode): read again.
    (tmp_path / "token.new").write_text("rotated")
    (tmp_path / "token.new").replace(tmp_path / "token")
    assert target.bearer() == "rotated"
    # Gone for a moment (mid-swap): the last token read still serves.
    (tmp_path / "token").unlink()
    assert target.bearer() == "rotated"
    v4 = kubeconfig.in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path)
    assert v4.server == "https://10.0.0.1:443"
    with pytest.raises(KubeConfigError, match="not a port number"):
        kubeconfig.in_cluster({**environ, "KUBERNETES_SERVICE_PORT": "http"}, tmp_path)
    with pytest.raises(KubeConfigError, match=r"ca\.crt"):
        kubeconfig.in_cluster(environ, tmp_path / "absent")


def test_serve_with_a_bad_kubeconfig_exits_2_saying_why(tmp_path: Path) -> None:
    path = write(tmp_path / "config", config(user={"client-key-data": "!!" + TOKEN}))
    # Port 0: the default port's lock is not this test's to depend on (a demo may hold it).
    result = run_cli(
        "serve", "--kubernetes", "--kubeconfig", str(path), "--grpc-address", "127.0.0.1:0"
    )
    assert result.returncode == 2
    assert "cannot start: kubeconfig" in result.stderr
    assert "client-key-data is not valid base64" in result.stderr
    assert "Traceback" not in result.stderr
    assert TOKEN not in result.stderr + result.stdout
