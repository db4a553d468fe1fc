"""Decisions before status: the watch (straight to kube-lite) feeds a Translator whose
status writes go through our fault proxy, which hangs and resets them. Every change is
published at once all the same, and the status catches up once writes get through."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extauth.changes import Change, PlacedAuthConfig
from extauth.sources import apiserver
from extauth.sources.kubernetes import Translator
from extauth.sources.statuses import StatusWriter
from extauth.sources.watching import Pacing, Watcher
from tests.harness import wait_until
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster
from tests.kube.faultproxy import FaultProxy

pytestmark = [
    pytest.mark.kube,
    # Connections our fault proxy hangs or resets mid-handshake leave urllib3's SSL sockets
    # for the collector to close (a ResourceWarning then, at a random moment): the faults
    # are the point here, that cleanup is urllib3's.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning"
    ),
]


class Pipeline:
    def __init__(self, cluster: Cluster, writer: StatusWriter, proxy: FaultProxy) -> None:
        self.cluster = cluster
        self.writer = writer
        self.proxy = proxy
        self.changes: list[Change] = []
        self.results: list[str] = []

    def selector(self, name: str) -> dict[str, str] | None:
        """The label selector of the latest published definition of `name`."""
        for change in reversed(self.changes):
            for definition in change.upserted:
                if isinstance(definition, PlacedAuthConfig) and definition.owner[1] == name:
                    auth = definition.config.spec.configs[0].api_key_auth
                    return auth.selectors()[0]
        return None


@pytest.fixture
def pipeline(cluster: Cluster, tmp_path: Path) -> Iterator[Pipeline]:
    if cluster.kubelite is None:
        pytest.skip("the fault proxy fronts kube-lite (not a real cluster)")
    namespace = f"status-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": namespace}})
    ours = Cluster(cluster.kubeconfig, cluster.api, namespace, cluster.kubelite)
    proxy = FaultProxy(cluster.kubelite.api_port)
    proxied = apiserver.connect(str(proxy.kubeconfig(cluster.kubeconfig, tmp_path / "kubeconfig")))
    results: list[str] = []
    writer = StatusWriter(proxied, rate=100, timeout=1, count=results.append)
    found = Pipeline(ours, writer, proxy)
    found.results = results
    stop = threading.Event()
    watcher = Watcher(cluster.server, "AuthConfig", namespace, stop, Pacing(30))
    translator = Translator("AuthConfig", lambda change, _: found.changes.append(change), writer)

    def pump() -> None:
        for event in watcher.events():
            translator.take(event)

    threads = [
        threading.Thread(target=pump, daemon=True),
        threading.Thread(target=writer.run, args=(stop,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield found
    finally:
        stop.set()
        writer.wake()
        watcher.close()
        proxy.close()
        for thread in threads:
            thread.join(5)
        proxied.close()


def _spec(selector: dict[str, str]) -> dict[str, Any]:
    return {
        "configs": [
            {
                "apiKeyAuth": {
                    "headerName": "x-api-key",
                    "k8sSecretApikeyStorage": {"labelSelector": selector},
                }
            }
        ]
    }


def _status(cluster: Cluster) -> dict[str, Any]:
    return cluster.get_authconfig("team").get("status") or {}


def test_status_writes_that_hang_or_reset_lose_no_change(pipeline: Pipeline) -> None:
    cluster = pipeline.cluster
    pipeline.proxy.hang()
    cluster.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AuthConfig",
            "metadata": {"name": "team"},
            "spec": _spec({"tier": "wide"}),
        },
    )
    wait_until(lambda: pipeline.selector("team"), 10, "the new AuthConfig to be published")
    # Narrowed while its status write hangs: the narrowing is published all the same.
    cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        "team",
        {"spec": _spec({"tier": "narrow"})},
        _content_type="application/merge-patch+json",
    )
    wait_until(
        lambda: True if pipeline.selector("team") == {"tier": "narrow"} else None,
        10,
        "the narrowed AuthConfig to be published",
    )
    wait_until(lambda: True if "failed" in pipeline.results else None, 10, "a failed write")
    # Writes reset instead of hanging: still retried, still no change lost.
    pipeline.proxy.resume()
    pipeline.proxy.refuse()
    cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        "team",
        {"spec": _spec({"tier": "narrower"})},
        _content_type="application/merge-patch+json",
    )
    wait_until(
        lambda: True if pipeline.selector("team") == {"tier": "narrower"} else None,
        10,
        "the next edit to be published",
    )
    assert _status(cluster).get("observedGeneration") != 3  # nothing got through yet
    pipeline.proxy.resume()
    pipeline.writer.retry_now()  # what the heartbeat does when the API server is back
    status = wait_until(
        lambda: _status(cluster) if _status(cluster).get("observedGeneration") == 3 else None,
        30,
        "the status to catch up once writes get through",
    )
    assert status["state"] == "Accepted"
    # Counted once the PATCH has returned, a moment after the server applied it.
    wait_until(lambda: True if "written" in pipeline.results else None, 10, "a counted write")


def test_recreated_under_its_name_takes_its_new_spec_after_a_relist(cluster: Cluster) -> None:
    """Deleted and recreated while the watch was down (a 410 relist sees only the new
    object): the same name and generation 1 again, another uid. The relist publishes the
    new spec; generation alone would have kept the old one."""
    namespace = f"recreate-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": namespace}})
    ours = Cluster(cluster.kubeconfig, cluster.api, namespace, cluster.kubelite)

    def create(selector: dict[str, str]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AuthConfig",
            "metadata": {"name": "team"},
            "spec": _spec(selector),
        }
        ours.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    create({"tier": "wide"})
    changes: list[Change] = []
    translator = Translator("AuthConfig", lambda change, _: changes.append(change), None)
    watcher = Watcher(cluster.server, "AuthConfig", namespace, threading.Event(), Pacing(1))
    for event in watcher._list():
        translator.take(event)
    ours.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "team")
    create({"tier": "narrow"})
    assert ours.get_authconfig("team")["metadata"]["generation"] == 1
    for event in watcher._list():
        translator.take(event)
    (first, relisted) = changes
    (new,) = relisted.upserted
    assert isinstance(new, PlacedAuthConfig)
    assert new.config.spec.configs[0].api_key_auth.selectors() == [{"tier": "narrow"}]
    assert first.upserted[0] is not new
