"""Two extauth replicas write AuthConfig status without a leader, and it never flaps: each
generation gets one state, observedGeneration never goes back, and a status that is already
right is not written again."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extauth.sources.statuses import status_for
from tests.harness import wait_until
from tests.kube.conftest import GROUP, PLURAL, VERSION, Cluster

pytestmark = pytest.mark.kube

AUTH = {"headerName": "x-api-key", "apiKeySecretRefs": [{"name": "holder"}]}


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[Cluster]:
    name = f"replicas-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield Cluster(cluster.kubeconfig, cluster.api, name, cluster.kubelite)
    if cluster.kubelite is None:
        cluster.core.delete_namespace(name)


def _record(cluster: Cluster, name: str, stop: threading.Event, seen: list[dict[str, Any]]) -> None:
    """Every version of the AuthConfig, as the API server hands them out, in order."""
    resource_version = ""
    while not stop.is_set():
        response: Any = cluster.custom.list_namespaced_custom_object(
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            watch=True,
            resource_version=resource_version,
            timeout_seconds=1,
            _preload_content=False,
            _request_timeout=5,
        )
        for line in response:
            for part in line.splitlines():
                if not part.strip():
                    continue
                event = json.loads(part)
                item = event["object"]
                resource_version = item["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    seen.append(item)
        response.release_conn()


def test_two_replicas_never_flap_status(namespace: Cluster, tmp_path: Path) -> None:
    namespace.create_secret("holder", "k-holder")
    namespace.create_authconfig("shared", AUTH)
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    recorder = threading.Thread(target=_record, args=(namespace, "shared", stop, seen))
    recorder.start()
    replicas = [namespace.extauth(tmp_path / f"extauth-{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()

        def observed(generation: int, state: str) -> bool | None:
            status = namespace.get_authconfig("shared").get("status") or {}
            done = (status.get("observedGeneration"), status.get("state")) == (generation, state)
            return True if done else None

        wait_until(lambda: observed(1, "Accepted"), 10, "generation 1 Accepted")
        namespace.patch_authconfig("shared", {**AUTH, "headerName": "host"})  # rejected
        wait_until(lambda: observed(2, "Rejected"), 10, "generation 2 Rejected")
        namespace.patch_authconfig("shared", {**AUTH, "headerName": "x-other"})
        wait_until(lambda: observed(3, "Accepted"), 10, "generation 3 Accepted")
        namespace.custom.patch_namespaced_custom_object(  # metadata only: no new generation
            GROUP,
            VERSION,
            namespace.namespace,
            PLURAL,
            "shared",
            {"metadata": {"labels": {"touched": "yes"}}},
            _content_type="application/merge-patch+json",
        )
        time.sleep(1.5)  # room for a late or repeated write to show up
    finally:
        for replica in replicas:
            replica.stop()
        stop.set()
        recorder.join(10)

    statuses = [(item["metadata"]["generation"], item.get("status") or {}) for item in seen]
    history: list[tuple[int, str]] = [
        (int(status["observedGeneration"]), str(status.get("state")))
        for _, status in statuses
        if status.get("observedGeneration") is not None
    ]
    generations = [g for g, _ in history]
    assert generations == sorted(generations), f"observedGeneration went back: {history}"
    states: dict[int, set[str]] = {}
    for generation, state in history:
        states.setdefault(generation, set()).add(state)
    assert states == {1: {"Accepted"}, 2: {"Rejected"}, 3: {"Accepted"}}, history
    # One write per generation: a status that is already right is left alone by both.
    writes: list[dict[str, Any]] = []
    previous: dict[str, Any] = {}
    for _, status in statuses:
        if status != previous:
            writes.append(status)
        previous = status
    assert len(writes) == 3, [(w.get("observedGeneration"), w.get("state")) for w in writes]
    # Transition times never go back either (they have a second's resolution: a test this
    # quick cannot tell a kept time from a new one; the unit test below does).
    times = [
        next(c for c in w["conditions"] if c["type"] == "Accepted")["lastTransitionTime"]
        for w in writes
    ]
    assert times == sorted(times)


def test_status_keeps_its_transition_time_while_it_holds() -> None:
    first = status_for(1, None, {})
    assert first is not None
    assert status_for(1, None, first) is None  # already right: no write
    again = status_for(2, None, first)  # a new generation, still accepted
    assert again is not None
    accepted = {c["type"]: c for c in again["conditions"]}["Accepted"]
    original = {c["type"]: c for c in first["conditions"]}["Accepted"]
    assert accepted["lastTransitionTime"] == original["lastTransitionTime"]
    rejected = status_for(3, "broken", again)
    assert rejected is not None
    assert rejected["state"] == "Rejected"
    assert {c["type"]: c for c in rejected["conditions"]}["Accepted"]["status"] == "False"
