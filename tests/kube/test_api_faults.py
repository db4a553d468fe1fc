"""extauth serve --kubernetes with a TCP proxy of ours between it and the API server, which
hangs, refuses and resets on command: a hung API server is noticed (log, metric, /readyz),
and once it answers again every change made meanwhile (through another path to the API
server, as through a second API server of the cluster) applies within seconds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.harness import request, wait_until
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster, authconfig_body
from tests.kube.faultproxy import FaultProxy
from tests.kube.test_kubernetes import allowed, becomes

pytestmark = [
    pytest.mark.kube,
    # Connections our fault proxy hangs or resets mid-handshake leave urllib3's SSL sockets
    # for the collector to close (a ResourceWarning then, at a random moment): the faults
    # are the point here, that cleanup is urllib3's.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]

# The promise: every change made while the API server did not answer applies
# within 5 s of its answering again.
RECOVERY = 5.0


class Proxied:
    def __init__(self, cluster: Cluster, proxy: FaultProxy, extauth: harness.Extauth, http: int):
        self.cluster = cluster
        self.proxy = proxy
        self.extauth = extauth
        self.http = http
        self.config_id = f"{cluster.namespace}.partners"

    def metric(self, name: str, labels: str | None = None) -> float | None:
        """The first sample of `name`, or the one with exactly these `labels`."""
        for line in request(self.http, "/metrics").body.decode().splitlines():
            if labels is not None:
                if line.startswith(f"{name}{{{labels}}} "):
                    return float(line.rsplit(" ", 1)[1])
            elif line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def source_up(self) -> float | None:
        return self.metric("extauth_source_up", 'source="kubernetes"')


@pytest.fixture
def proxied(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """extauth through the proxy; `request.param`: its --kube-heartbeat (default 1 s)."""
    if cluster.kubelite is None:
        pytest.skip("the fault proxy fronts kube-lite (not a real cluster)")
    namespace = f"faults-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": namespace}})
    ours = Cluster(cluster.kubeconfig, cluster.api, namespace, cluster.kubelite)
    ours.create_authconfig(
        "partners",
        {"headerName": "x-api-key", "k8sSecretApikeyStorage": {"labelSelector": {"t": "p"}}},
    )
    proxy = FaultProxy(cluster.kubelite.api_port)
    kubeconfig = proxy.kubeconfig(cluster.kubeconfig, tmp_path / "kubeconfig")
    http = harness.free_port()
    extauth = harness.kube_extauth(
        kubeconfig,
        tmp_path / "extauth.log",
        "--namespace",
        namespace,
        "--http-address",
        f"127.0.0.1:{http}",
        "--kube-heartbeat",
        str(getattr(request, "param", 1)),
        "--kube-request-timeout",
        "1",
    )
    try:
        extauth.wait_ready()
        yield Proxied(ours, proxy, extauth, http)
    finally:
        extauth.stop()
        proxy.close()


def _changes_meanwhile(cluster: Cluster) -> None:
    """Made straight to the API server, not through the proxy."""
    cluster.delete_secret("before")
    cluster.create_secret("during", "k-during", {"t": "p"})


def _applied(service: Proxied) -> float:
    """Seconds until every change `_changes_meanwhile` made is in force."""
    start = time.monotonic()
    wait_until(
        lambda: (
            True
            if not allowed(service.extauth.address, service.config_id, "k-before")
            and allowed(service.extauth.address, service.config_id, "k-during")
            else None
        ),
        RECOVERY,
        "the changes made meanwhile to apply",
    )
    return time.monotonic() - start


def test_a_hung_api_server_is_noticed_and_changes_apply_once_it_answers(
    proxied: Proxied,
) -> None:
    cluster, address = proxied.cluster, proxied.extauth.address
    cluster.create_secret("before", "k-before", {"t": "p"})
    becomes(address, proxied.config_id, "k-before", True)
    assert proxied.metric("extauth_kube_api_up") == 1.0
    assert proxied.source_up() == 1.0
    synced = proxied.metric("extauth_source_last_sync_timestamp_seconds", 'source="kubernetes"')
    assert synced is not None
    proxied.proxy.hang()
    hung = time.monotonic()
    wait_until(
        lambda: True if proxied.metric("extauth_kube_api_up") == 0.0 else None,
        30,
        "the metric to say the API server is lost",
    )
    noticed = time.monotonic() - hung
    assert proxied.source_up() == 0.0
    unanswered = 'reason="unanswered",source="kubernetes"'
    assert (proxied.metric("extauth_source_errors_total", unanswered) or 0) >= 1
    readiness = request(proxied.http, "/readyz")
    assert readiness.status == 200  # the last good state keeps serving (README)
    assert b"has not answered" in readiness.body
    assert "did not answer" in proxied.extauth.log()
    _changes_meanwhile(cluster)
    # Still the last state: the hung server has sent nothing new.
    assert allowed(address, proxied.config_id, "k-before")
    time.sleep(3)  # long enough for the watches' backoff to grow
    proxied.proxy.resume()
    applied = _applied(proxied)
    wait_until(
        lambda: True if proxied.metric("extauth_kube_api_up") == 1.0 else None,
        RECOVERY,
        "the metric to say the API server is back",
    )
    wait_until(
        lambda: True if proxied.source_up() == 1.0 else None,
        RECOVERY,
        "extauth_source_up to say the source syncs again",
    )
    later = proxied.metric("extauth_source_last_sync_timestamp_seconds", 'source="kubernetes"')
    assert later is not None
    assert later > synced
    assert b"has not answered" not in request(proxied.http, "/readyz").body
    print(f"\nhang noticed after {noticed:.1f}s; changes applied {applied:.2f}s after resume")


# A heartbeat far longer than the outage: the watches' own failures make it ask at once.
@pytest.mark.parametrize("proxied", [60], indirect=True)
def test_changes_during_a_crash_apply_once_the_api_server_is_back(proxied: Proxied) -> None:
    """Connections refused and reset for a while (a crash), an AuthConfig deleted and
    recreated under its name meanwhile: after the outage, the new object's spec holds,
    within seconds, however long the watches' backoff has grown."""
    cluster, address = proxied.cluster, proxied.extauth.address
    cluster.create_secret("before", "k-before", {"t": "p"})
    cluster.create_secret("narrow", "k-narrow", {"t": "p", "n": "y"})
    cluster.create_secret("wide", "k-wide", {"t": "p"})
    becomes(address, proxied.config_id, "k-before", True)
    becomes(address, proxied.config_id, "k-narrow", True)
    becomes(address, proxied.config_id, "k-wide", True)
    proxied.proxy.refuse()
    wait_until(lambda: True if "retrying in" in proxied.extauth.log() else None, 30, "a retry")
    assert proxied.source_up() == 0.0
    restarts = proxied.metric(
        "extauth_source_restarts_total", 'reason="connection",source="kubernetes"'
    )
    assert restarts is not None
    assert restarts >= 1
    _changes_meanwhile(cluster)
    cluster.custom.delete_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, "partners"
    )
    # The same name, generation 1 again: only its uid says it is another object.
    narrowed = authconfig_body(
        "partners",
        {"headerName": "x-api-key", "k8sSecretApikeyStorage": {"labelSelector": {"n": "y"}}},
    )
    cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, PLURAL, narrowed
    )
    time.sleep(8)  # the watches' backoff grows past several seconds
    proxied.proxy.resume()
    start = time.monotonic()
    wait_until(
        lambda: (
            True
            if not allowed(address, proxied.config_id, "k-before")
            and not allowed(address, proxied.config_id, "k-wide")  # only the new spec
            and allowed(address, proxied.config_id, "k-narrow")
            else None
        ),
        RECOVERY,
        "the recreated AuthConfig's spec and the deletion to apply",
    )
    print(f"\nchanges applied {time.monotonic() - start:.2f}s after the API server came back")
    assert "did not answer" in proxied.extauth.log()  # a watch's failure made it ask
