"""extauth's own API client (extauth/sources/apiserver.py) against kube-lite.

kube-lite authenticates no one, so credentials are checked by `authproxy.AuthProxy` in
front of it (as kube-apiserver's authentication would); what passes is answered by
kube-lite itself. Also: the serving process never imports the official client.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauth.sources import apiserver, kubeconfig
from extauth.sources.apiserver import ApiError, ApiServer, path_of
from tests import certs
from tests.kube.authproxy import AuthProxy
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster

TOKEN = "first-sekret-token"


@dataclass
class Front:
    proxy: AuthProxy
    authority: certs.Pair
    client: certs.Pair
    namespace: str
    directory: Path

    def kubeconfig(self, user: dict[str, Any], **cluster: Any) -> Path:
        path = self.directory / f"kubeconfig-{uuid.uuid4().hex[:6]}"
        body = {
            "server": f"https://127.0.0.1:{self.proxy.port}",
            "certificate-authority": str(self.authority.cert),
            **cluster,
        }
        path.write_text(
            yaml.safe_dump(
                {
                    "clusters": [{"name": "c", "cluster": body}],
                    "users": [{"name": "u", "user": user}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        return path

    def list_configs(self, server: ApiServer) -> list[str]:
        found = server.get_json(path_of(GROUP, VERSION, PLURAL, self.namespace))
        return [item["metadata"]["name"] for item in found["items"]]


@pytest.fixture(scope="module")
def front(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    if cluster.kubelite is None:
        pytest.skip("the authenticating front is put before kube-lite (not a real cluster)")
    directory = tmp_path_factory.mktemp("front")
    authority = certs.ca(directory)
    server = certs.leaf(directory, "kube.example", authority, "kube.example")
    client = certs.leaf(directory, "client", authority)
    namespace = f"client-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": namespace}})
    ours = Cluster(cluster.kubeconfig, cluster.api, namespace, cluster.kubelite)
    ours.create_authconfig(
        "one", {"headerName": "x-api-key", "k8sSecretApikeyStorage": {"labelSelector": {"t": "p"}}}
    )
    ca = sorted((cluster.kubelite.state / "certs").glob("*.crt"))[0]
    proxy = AuthProxy(cluster.kubelite.api_port, ca, server, authority)
    try:
        yield Front(proxy, authority, client, namespace, directory)
    finally:
        proxy.close()


def test_a_rotated_token_file_is_read_again(front: Front, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text(front.authority.cert.read_text())
    (tmp_path / "token").write_text(TOKEN)
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}
    target = kubeconfig.in_cluster(environ, tmp_path)
    # The CA names kube.example; the service address is an IP (as in a pod, where the
    # certificate carries the service IP): here, the front's address with its name.
    target.server, target.tls_server_name = f"https://127.0.0.1:{front.proxy.port}", "kube.example"
    front.proxy.tokens = {TOKEN}
    with ApiServer(target) as server:
        assert front.list_configs(server) == ["one"]
        (tmp_path / "token.new").write_text("second-token")
        (tmp_path / "token.new").replace(tmp_path / "token")
        front.proxy.tokens = {"second-token"}
        assert front.list_configs(server) == ["one"]
    assert front.proxy.seen[-2:] == ["token", "token"]


def test_a_refusal_says_401_and_never_the_token_or_the_body(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    front.proxy.tokens = {"another"}
    path = front.kubeconfig({"token": TOKEN}, **{"tls-server-name": "kube.example"})
    with apiserver.connect(str(path)) as server, pytest.raises(ApiError) as refused:
        front.list_configs(server)
    assert refused.value.status == 401
    assert str(refused.value) == "HTTP 401 Unauthorized"
    shown = f"{refused.value!r} {refused.value} {server!r} {server.target!r} {caplog.text}"
    assert TOKEN not in shown  # the front's 401 body quotes it


def test_an_exec_plugin_is_run_again_on_401(front: Front, tmp_path: Path) -> None:
    current = tmp_path / "current"
    current.write_text(TOKEN)
    script = tmp_path / "plugin"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> {tmp_path}/runs\n"
        'printf \'{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", '
        f'"status": {{"token": "%s"}}}}\' "$(cat {current})"\n'
    )
    script.chmod(0o755)
    spec = {"command": str(script), "apiVersion": "client.authentication.k8s.io/v1"}
    path = front.kubeconfig({"exec": spec}, **{"tls-server-name": "kube.example"})
    front.proxy.tokens = {TOKEN}
    with apiserver.connect(str(path)) as server:
        assert front.list_configs(server) == ["one"]
        current.write_text("renewed")  # the old credential is revoked, a new one issued
        front.proxy.tokens = {"renewed"}
        assert front.list_configs(server) == ["one"]
    assert front.proxy.seen[-3:] == ["token", "refused", "token"]
    assert len((tmp_path / "runs").read_text().splitlines()) == 2


def test_a_client_certificate_from_the_kubeconfig_is_presented(front: Front) -> None:
    front.proxy.names = {"client"}
    front.proxy.tokens = set()
    data = {
        "client-certificate-data": base64.b64encode(front.client.cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(front.client.key.read_bytes()).decode(),
    }
    path = front.kubeconfig(data, **{"tls-server-name": "kube.example"})
    with apiserver.connect(str(path)) as server:
        assert front.list_configs(server) == ["one"]
    assert front.proxy.seen[-1] == "cert:client"


def test_the_server_name_is_checked_unless_told_otherwise(front: Front) -> None:
    """The front's certificate names kube.example, not 127.0.0.1."""
    front.proxy.tokens = {TOKEN}
    with apiserver.connect(str(front.kubeconfig({"token": TOKEN}))) as server:
        with pytest.raises(Exception, match="certificate") as mismatch:
            front.list_configs(server)
        assert TOKEN not in str(mismatch.value)
    insecure = front.kubeconfig(
        {"token": TOKEN},
        **{"certificate-authority": None, "insecure-skip-tls-verify": True},
    )
    with apiserver.connect(str(insecure)) as server:
        assert front.list_configs(server) == ["one"]


def test_the_serving_process_never_imports_the_official_client(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python reports every import it makes (-X importtime) to the log: the source's own
    client is there, the official one is not (it costs ~22 MB just imported)."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    extauth = cluster.extauth(tmp_path / "extauth.log")
    try:
        extauth.wait_ready()  # serving: every watch has listed
    finally:
        extauth.stop()
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in extauth.log().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert f"AuthConfigs in {cluster.namespace}: listed" in extauth.log()
    assert "extauth.sources.apiserver" in imported
    assert "urllib3" in imported
    assert not {name for name in imported if name.split(".")[0] == "kubernetes"}
