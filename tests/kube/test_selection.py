"""Secrets no AuthConfig selects cost a stub, and are read again when one starts to.

In-process (`KubernetesSource` into a `PolicyHolder`, as the server wires them), so the
test sees both what Check would admit and what the source keeps of each Secret.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from extauth import deciding
from extauth.building import PolicyHolder
from extauth.sources import reselect
from extauth.sources.kubernetes import KubernetesSource
from extauth.sources.records import Stub
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster

pytestmark = pytest.mark.kube


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[Cluster]:
    name = f"sel-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield Cluster(cluster.kubeconfig, cluster.api, name, cluster.kubelite)
    if cluster.kubelite is None:
        cluster.core.delete_namespace(name)


def _auth(labels: dict[str, str] | None = None, refs: list[str] | None = None) -> dict[str, Any]:
    storage: dict[str, Any] = {}
    if labels:
        storage["labelSelector"] = labels
    if refs:
        storage["apiKeySecretRefs"] = [{"name": name} for name in refs]
    return {"headerName": "x-api-key", "k8sSecretApikeyStorage": storage}


def _secret(name: str, key: str, labels: dict[str, str], **entries: str) -> dict[str, Any]:
    return {
        "type": "extauth.solo.io/apikey",
        "metadata": {"name": name, "labels": labels},
        "stringData": {"api-key": key, **entries},
    }


class Running:
    """A source feeding a policy holder on the test's event loop."""

    def __init__(self, source: KubernetesSource) -> None:
        self.source = source
        self.holder = PolicyHolder()

    async def run(self) -> None:
        async for change in self.source.changes():
            self.holder.update([change])

    def admits(self, namespace: str, config: str, key: str) -> bool:
        policy = self.holder.current
        name = f"{namespace}.{config}"
        return name in policy.configs and deciding.grant(policy, name, key) is not None

    def record(self, owner: tuple[str, str]) -> Any:
        (secrets,) = [t for t in self.source.translators if t.kind == "Secret"]
        return secrets.known.get(owner)


async def _until(what: str, probe: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_selection_changes_move_secrets_both_ways(namespace: Cluster) -> None:
    """Created or widened to select a stubbed Secret: its key is admitted (read again, at
    the version edited while unselected, never the one before). Narrowed or deleted: the
    Secret is dropped to a stub again, no key material kept."""
    ns = namespace.namespace
    namespace.create_authconfig("a", _auth({"team": "a"}))
    core = namespace.core
    core.create_namespaced_secret(ns, _secret("sa", "key-a", {"team": "a"}))
    padding = "x" * 8000  # what a stub must not hold
    core.create_namespaced_secret(ns, _secret("sb", "key-b", {"team": "b"}, pad=padding))
    running = Running(KubernetesSource([ns], kubeconfig=str(namespace.kubeconfig)))

    async def main() -> None:
        task = asyncio.ensure_future(running.run())
        try:
            await _until("ready", lambda: running.admits(ns, "a", "key-a"))
            stub = running.record((ns, "sb"))
            assert isinstance(stub, Stub)
            assert stub.definition is None
            assert dict(stub.labels) == {"team": "b"}  # nothing else: no key, no entries
            assert "key-b" not in repr([getattr(stub, s) for s in Stub.__slots__])
            version = stub.version
            # Edited while unselected: still a stub, at the new version.
            core.patch_namespaced_secret("sb", ns, {"stringData": {"api-key": "key-b2"}})
            await _until(
                "the edit", lambda: getattr(running.record((ns, "sb")), "version", 0) != version
            )
            assert isinstance(running.record((ns, "sb")), Stub)
            # An AuthConfig created to select it: the edited key is admitted, the old not.
            namespace.create_authconfig("b", _auth({"team": "b"}))
            await _until("key-b2 admitted", lambda: running.admits(ns, "b", "key-b2"))
            assert not running.admits(ns, "b", "key-b")
            assert not isinstance(running.record((ns, "sb")), Stub)
            # Narrowed: dropped to a stub again.
            namespace.patch_authconfig("b", _auth({"team": "c"}))
            await _until("sb dropped", lambda: isinstance(running.record((ns, "sb")), Stub))
            # The record turns into a stub in the source a moment before the change that
            # narrows the AuthConfig reaches the policy: wait for the policy, too.
            await _until("key-b2 refused", lambda: not running.admits(ns, "b", "key-b2"))
            assert running.admits(ns, "a", "key-a")  # the other Secret untouched
            # Selected by name (a targeted read), then the AuthConfig deleted.
            namespace.create_authconfig("ref", _auth(refs=["sb"]))
            await _until("key-b2 admitted by ref", lambda: running.admits(ns, "ref", "key-b2"))
            namespace.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "ref")
            await _until(
                "sb dropped after the delete",
                lambda: isinstance(running.record((ns, "sb")), Stub),
            )
            await _until(
                "sb's key gone from the policy",
                lambda: all(k.name != "sb" for k in running.holder.current.keys.values()),
            )
            assert running.source.reselector is not None
            assert running.source.reselector.reads >= 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_many_newly_selected_secrets_are_relisted(
    namespace: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More stubs to read than a few GETs: the watcher lists again, and every key of the
    new selection is admitted. One whose labels alone are over the size limit is refused
    with a reason, as when it is selected, and kept as a record without a definition."""
    monkeypatch.setattr(reselect, "MAX_GETS", 2)
    ns = namespace.namespace
    namespace.create_authconfig("a", _auth({"team": "a"}))
    core = namespace.core
    for i in range(5):
        core.create_namespaced_secret(ns, _secret(f"m{i}", f"key-m{i}", {"team": "m"}))
    heavy = {"team": "m", **{f"l{i}": "v" * 60 for i in range(300)}}  # ~20 KB of labels
    core.create_namespaced_secret(ns, _secret("heavy", "key-heavy", heavy))
    running = Running(KubernetesSource([ns], kubeconfig=str(namespace.kubeconfig)))

    async def main() -> None:
        task = asyncio.ensure_future(running.run())
        try:
            await _until("ready", lambda: running.source.reselector is not None)
            await _until("ready", lambda: "a" in str(list(running.holder.current.configs)))
            heavy = running.record((ns, "heavy"))
            assert not isinstance(heavy, Stub)
            assert heavy.definition is None
            namespace.create_authconfig("m", _auth({"team": "m"}))
            await _until(
                "every m key admitted",
                lambda: all(running.admits(ns, "m", f"key-m{i}") for i in range(5)),
            )
            assert running.source.reselector is not None
            assert running.source.reselector.relists >= 1
            assert not running.admits(ns, "m", "key-heavy")  # over the limit: refused
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
