"""Lists and readiness against a real API server: every page of a list is loaded, and the
initial state waits for every watcher's complete list, whatever arrives in between."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from kubernetes import client

from extauth.apikeys import ApiKey
from extauth.changes import Change, PlacedAuthConfig
from extauth.server import Server, Settings
from extauth.sources import apiserver, watching
from extauth.sources.kubernetes import KubernetesSource, Translator
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster, authconfig_body, connect
from tests.kube.kubelite import KubeLite, unavailable_reason

pytestmark = pytest.mark.kube

PAGE = 50
SELECTOR = {
    "headerName": "x-api-key",
    "k8sSecretApikeyStorage": {"labelSelector": {"tier": "paged"}},
    "headersFromMetadataEntry": {"x-org": {"name": "x-org"}},
}


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[Cluster]:
    """A namespace of the test's own, so lists hold exactly what the test created."""
    name = f"list-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield Cluster(cluster.kubeconfig, cluster.api, name, cluster.kubelite)
    if cluster.kubelite is None:
        cluster.core.delete_namespace(name)


def _secret(name: str, key: str, org: str) -> dict[str, Any]:
    return {
        "type": "extauth.solo.io/apikey",
        "metadata": {"name": name, "labels": {"tier": "paged"}},
        "stringData": {"api-key": key, "x-org": org},
    }


def test_every_page_of_a_list_is_loaded_when_ready(namespace: Cluster) -> None:
    count = 3 * PAGE  # three pages
    for i in range(count):
        namespace.core.create_namespaced_secret(
            namespace.namespace, _secret(f"k{i:03d}", f"paged-key-{i}", f"org-{i}")
        )
    namespace.create_authconfig("paged", SELECTOR)

    source = KubernetesSource(
        [namespace.namespace], kubeconfig=str(namespace.kubeconfig), page_size=PAGE
    )
    config_id = f"{namespace.namespace}.paged"

    async def main() -> None:
        server = Server(Settings(grpc_address="127.0.0.1:0"), [source])
        stop = asyncio.Event()
        task = asyncio.create_task(server.run(stop))
        try:
            await asyncio.wait_for(server.ready.wait(), 30)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                denied = []
                for i in range(count):
                    request = external_auth_pb2.CheckRequest()
                    request.attributes.context_extensions["config_id"] = config_id
                    request.attributes.request.http.path = "/"
                    request.attributes.request.http.headers["x-api-key"] = f"paged-key-{i}"
                    reply = await stub.Check(request, timeout=5)
                    headers = [(h.header.key, h.header.value) for h in reply.ok_response.headers]
                    if reply.status.code != 0 or headers != [("x-org", f"org-{i}")]:
                        denied.append(i)
                assert denied == [], f"{len(denied)} of {count} keys not admitted when ready"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    (secrets,) = (w for w in source.watchers if w.kind == "Secret")
    assert secrets.lists == 1


def test_untyped_items_on_later_pages_are_all_loaded(tmp_path: Path) -> None:
    """kube-apiserver sends every list item without apiVersion/kind; kube-lite does so on
    the pages after the first, until a CRD is installed (so: a kube-lite of its own)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs kube-lite: {reason}")
    kubelite = KubeLite(tmp_path / "kl")
    kubelite.start()
    api = connect(kubelite.kubeconfig)
    stack = contextlib.ExitStack()
    try:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "paged"}})
        for i in range(3 * PAGE):
            core.create_namespaced_secret("paged", _secret(f"k{i:03d}", f"key-{i}", "o"))

        def raw_page(token: str | None) -> dict[str, Any]:
            options: dict[str, Any] = {"limit": PAGE, "_preload_content": False}
            if token:
                options["_continue"] = token
            response: Any = core.list_namespaced_secret("paged", **options)
            page: dict[str, Any] = json.loads(response.data)
            return page

        second = raw_page(raw_page(None)["metadata"]["continue"])
        assert [item.get("kind") for item in second["items"]] == [None] * PAGE  # the trap

        ours = stack.enter_context(apiserver.connect(str(kubelite.kubeconfig)))
        watcher = watching.Watcher(
            ours, "Secret", "paged", threading.Event(), watching.Pacing(1, page_size=PAGE)
        )
        emitted: list[tuple[Change, bool]] = []
        translator = Translator("Secret", lambda c, listed: emitted.append((c, listed)), None)
        for event in watcher._list():
            translator.take(event)
        ((initial, complete),) = emitted
        assert complete
        assert sorted(d.owner[1] for d in initial.upserted) == [
            f"k{i:03d}" for i in range(3 * PAGE)
        ]
        assert all(r.definition is not None for r in translator.known.values())
    finally:
        stack.close()
        api.close()
        kubelite.stop()


def test_list_items_are_typed_from_their_list() -> None:
    page: watching.RawList = {
        "apiVersion": "v1",
        "kind": "SecretList",
        "items": [{"metadata": {"name": "a"}}, {"kind": "Forged", "metadata": {"name": "b"}}],
    }
    items = watching.typed_items(page, "Secret")
    assert [(i["apiVersion"], i["kind"]) for i in items] == [("v1", "Secret")] * 2
    # A list that does not say what it is: the kind the watcher lists.
    bare: watching.RawList = {"items": [{"metadata": {"name": "c"}}]}
    (item,) = watching.typed_items(bare, "AuthConfig")
    assert (item["apiVersion"], item["kind"]) == ("extauth.solo.io/v1", "AuthConfig")


@pytest.mark.parametrize("every_secret", [True, False], ids=["every-secret", "stubs"])
def test_not_ready_until_every_watcher_has_listed(
    namespace: Cluster, monkeypatch: pytest.MonkeyPatch, every_secret: bool
) -> None:
    """The race: the Secret watcher lists, then receives an event, all before the
    AuthConfig list arrives. Two changes are queued by then; the initial state must still
    wait for the AuthConfig list (it used to be published with no AuthConfig at all).
    By default (unselected Secrets kept as stubs) the Secret watcher does not even list
    before every AuthConfig is known, so the race cannot begin."""
    namespace.create_authconfig("raced", SELECTOR)
    namespace.core.create_namespaced_secret(namespace.namespace, _secret("before", "kb", "o"))
    release = threading.Event()
    real_call = watching.Watcher._call

    def held(self: watching.Watcher, **kwargs: Any) -> Any:
        if self.kind == "AuthConfig" and not kwargs.get("watch"):
            release.wait(30)  # the AuthConfig list is slow to come
        return real_call(self, **kwargs)

    monkeypatch.setattr(watching.Watcher, "_call", held)
    source = KubernetesSource(
        [namespace.namespace], kubeconfig=str(namespace.kubeconfig), every_secret=every_secret
    )

    async def wait_for(what: str, probe: Any) -> None:
        deadline = time.monotonic() + 15
        while not probe():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def main() -> Change:
        stream = source.changes()
        first = asyncio.ensure_future(anext(stream))
        try:
            await wait_for("the watchers", lambda: len(source.translators) == 2)
            secrets, configs = source.translators
            assert (secrets.kind, configs.kind) == ("Secret", "AuthConfig")
            if every_secret:
                await wait_for("the Secret list", secrets.listed.is_set)
            else:
                await asyncio.sleep(0.5)
                assert not secrets.listed.is_set(), "Secrets listed before the AuthConfigs"
            namespace.core.create_namespaced_secret(
                namespace.namespace, _secret("after", "ka", "o")
            )
            if every_secret:
                await wait_for(
                    "the Secret event", lambda: (namespace.namespace, "after") in secrets.known
                )
            await asyncio.sleep(0.3)  # the queue has two items, handed to the loop
            assert not first.done(), "initial state published before the AuthConfig list"
            release.set()
            return await asyncio.wait_for(first, 15)
        finally:
            release.set()
            if not first.done():
                first.cancel()
            await stream.aclose()

    initial = asyncio.run(main())
    configs = [d for d in initial.upserted if isinstance(d, PlacedAuthConfig)]
    keys = sorted(d.name for d in initial.upserted if isinstance(d, ApiKey))
    assert [c.config.metadata.name for c in configs] == ["raced"]
    assert keys == ["after", "before"]


def test_relist_removes_what_vanished_and_keeps_what_stayed(namespace: Cluster) -> None:
    """A relist (as after 410 Gone) publishes the difference: deletions made while the watch
    was down are removals, unchanged objects are not validated or published again."""
    for name in ("stays", "goes"):
        namespace.core.create_namespaced_secret(
            namespace.namespace, _secret(name, f"key-{name}", "o")
        )
    body = authconfig_body("relisted", SELECTOR)
    namespace.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace.namespace, PLURAL, body
    )
    stop = threading.Event()
    api = namespace.server
    watcher = watching.Watcher(api, "Secret", namespace.namespace, stop, watching.Pacing(1))
    emitted: list[tuple[Change, bool]] = []
    translator = Translator("Secret", lambda c, listed: emitted.append((c, listed)), None)
    for event in watcher._list():
        translator.take(event)
    ((initial, complete),) = emitted
    assert complete
    assert sorted(d.owner[1] for d in initial.upserted) == ["goes", "stays"]
    namespace.core.delete_namespaced_secret("goes", namespace.namespace)
    emitted.clear()
    for event in watcher._list():
        translator.take(event)
    ((relisted, complete),) = emitted
    assert complete
    assert relisted.upserted == ()  # "stays" is unchanged: nothing to publish
    assert [r.owner for r in relisted.removed] == [(namespace.namespace, "goes")]
    api.close()


def test_a_list_that_outlives_its_snapshot_is_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A continue token expires when etcd compacts past the list's revision (a long list of
    many pages): the list starts over instead of backing off, and completes."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs kube-lite with fast compaction: {reason}")
    kubelite = KubeLite(tmp_path / "kl", ("--watch-cache=false", "--etcd-compaction-interval=1s"))
    kubelite.start()
    api = connect(kubelite.kubeconfig)
    stack = contextlib.ExitStack()
    try:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "slow"}})
        for i in range(7):
            core.create_namespaced_secret("slow", _secret(f"k{i}", f"key-{i}", "o"))
        real_call = watching.Watcher._call
        held: list[str] = []

        def slow_first_page(self: watching.Watcher, **kwargs: Any) -> Any:
            response = real_call(self, **kwargs)
            if kwargs.get("watch") or held:
                return response
            token = json.loads(response.data)["metadata"]["continue"]
            held.append(token)
            deadline = time.monotonic() + 30
            n = 0
            while True:  # until etcd has compacted past the list's revision
                core.create_namespaced_config_map("slow", {"metadata": {"name": f"c{n}"}})
                n += 1
                try:
                    core.list_namespaced_secret("slow", limit=3, _continue=token)
                except client.exceptions.ApiException as exc:
                    if exc.status == 410:
                        break
                assert time.monotonic() < deadline, "no compaction in 30 s"
                time.sleep(0.2)
            return response

        monkeypatch.setattr(watching.Watcher, "_call", slow_first_page)
        stop = threading.Event()
        ours = stack.enter_context(apiserver.connect(str(kubelite.kubeconfig)))
        watcher = watching.Watcher(ours, "Secret", "slow", stop, watching.Pacing(1, page_size=3))
        emitted: list[tuple[Change, bool]] = []
        translator = Translator("Secret", lambda c, listed: emitted.append((c, listed)), None)
        events = watcher.events()
        for event in events:
            translator.take(event)
            if isinstance(event, watching.Listed):
                break
        stop.set()
        events.close()
        assert held, "the first page was not held back"
        assert "the list outlived its snapshot" in caplog.text
        assert "retrying in" not in caplog.text  # started over at once, no backoff
        ((initial, complete),) = emitted
        assert complete
        assert sorted(d.owner[1] for d in initial.upserted) == [f"k{i}" for i in range(7)]
    finally:
        stack.close()
        api.close()
        kubelite.stop()
