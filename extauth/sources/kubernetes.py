"""Secrets (type extauth.solo.io/apikey) and AuthConfigs from a Kubernetes API server.

List, then watch from the list's resourceVersion, one watcher thread per (kind,
namespace); the official client is synchronous, so the threads hand changes to the event
loop. Each event becomes a one-definition `Change` (incremental: a Secret edit costs one
index entry, whatever the number of keys). Watches resume from the last resourceVersion
seen (events and bookmarks); a 410 Gone means that version was compacted away, so the
watcher lists again and publishes the difference from what it knew. Errors (API server
restarts, network) back off exponentially up to 30 s and resume.

Objects are read as raw JSON and validated with the same models as files. An object that
does not validate is rejected with a log line; its last good version (if any) keeps
serving. AuthConfigs get a `status` (Accepted or Rejected with the reason, and the
observedGeneration); the write is skipped when the status is already right, so any number
of replicas converge without a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from pydantic import ValidationError

from extauth import manifests
from extauth.manifests import Origin
from extauth.resources import APIKEY_SECRET_TYPE, AuthConfig, Secret
from extauth.snapshot import (
    ApiKey,
    Change,
    Definition,
    Owner,
    PlacedAuthConfig,
    Removal,
    removal_of,
)

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "extauth.solo.io", "v1", "authconfigs"
Kind = Literal["Secret", "AuthConfig"]


class Gone(Exception):
    """The resourceVersion to watch from was compacted away (HTTP 410)."""


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # Our watch loops retry with backoff and say so once per attempt; urllib3's own
    # retries underneath would only multiply the log lines.
    configuration.retries = 0
    return client.ApiClient(configuration)


def _origin(kind: Kind, owner: Owner) -> Origin:
    return Origin(f"kubernetes:{kind}/{owner[0]}/{owner[1]}", 0, 0)


@dataclass
class _Known:
    resource_version: str
    generation: int | None
    definition: Definition | None  # None: never had a good version


class _Watcher:
    """List and watch one kind in one namespace (or all), emitting Changes."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: Kind,
        namespace: str | None,
        emit: Callable[[Change], None],
        stop: threading.Event,
        *,
        write_status: bool,
        watch_timeout: int,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._emit = emit
        self._stop = stop
        self._write_status = write_status
        self._watch_timeout = watch_timeout
        self._known: dict[Owner, _Known] = {}
        self._response: Any = None
        self.relists = 0
        self.synced = threading.Event()

    @property
    def where(self) -> str:
        return f"{self.kind}s in {self.namespace or 'all namespaces'}"

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        resource_version: str | None = None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
                backoff = 0.5
            except Gone:
                log.info(
                    "kubernetes: %s: resourceVersion expired (410 Gone); relisting", self.where
                )
                resource_version = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning(
                    "kubernetes: %s: %s; retrying in %.1fs", self.where, _describe(exc), backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def close(self) -> None:
        """Unblock a watch that is waiting for events (called on shutdown)."""
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    def _list_call(self, **kwargs: Any) -> Any:
        options = {"_preload_content": False, **kwargs}
        if self.kind == "Secret":
            options["field_selector"] = f"type={APIKEY_SECRET_TYPE}"
            if self.namespace:
                return self._core.list_namespaced_secret(self.namespace, **options)
            return self._core.list_secret_for_all_namespaces(**options)
        if self.namespace:
            return self._custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, **options
            )
        return self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **options)

    def _relist(self) -> str:
        items: dict[Owner, dict[str, Any]] = {}
        token: str | None = None
        resource_version = ""
        while True:
            kwargs: dict[str, Any] = {"limit": 500, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            page = json.loads(self._list_call(**kwargs).data)
            for item in page.get("items", []):
                items[_owner(item)] = item
            metadata = page.get("metadata", {})
            resource_version = str(metadata.get("resourceVersion", resource_version))
            token = metadata.get("continue")
            if not token:
                break

        upserted: list[Definition] = []
        removed: list[Removal] = []
        for owner in sorted(set(self._known) - set(items)):
            gone = self._known.pop(owner)
            if gone.definition is not None:
                removed.append(removal_of(gone.definition))
        for owner in sorted(items):
            definition = self._accept(items[owner])
            if definition is not None:
                upserted.append(definition)
        first = not self.synced.is_set()
        if not first:
            self.relists += 1
        log.info("kubernetes: %s: listed %d object(s)", self.where, len(items))
        self._emit(Change(tuple(upserted), tuple(removed)))
        self.synced.set()
        return resource_version

    def _watch(self, resource_version: str) -> str:
        response = self._list_call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _request_timeout=(10, self._watch_timeout + 15),
        )
        self._response = response
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind, item = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if item.get("code") == 410:
                        raise Gone
                    raise RuntimeError(f"watch error: {item.get('message', item)}")
                resource_version = item.get("metadata", {}).get("resourceVersion", resource_version)
                if kind in ("ADDED", "MODIFIED"):
                    definition = self._accept(item)
                    if definition is not None:
                        self._emit(Change((definition,)))
                elif kind == "DELETED":
                    gone = self._known.pop(_owner(item), None)
                    if gone is not None and gone.definition is not None:
                        self._emit(Change(removed=(removal_of(gone.definition),)))
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return resource_version

    # -- one object ------------------------------------------------------------------------

    def _accept(self, item: dict[str, Any]) -> Definition | None:
        """The object's new definition, or None when nothing changes for the policy."""
        owner = _owner(item)
        metadata = item.get("metadata", {})
        generation = metadata.get("generation")
        known = self._known.get(owner)
        if (
            known is not None
            and self.kind == "AuthConfig"
            and generation is not None
            and known.generation == generation
        ):
            # A status-only update (ours, most likely): the spec is unchanged.
            known.resource_version = metadata.get("resourceVersion", "")
            return None
        definition: Definition | None = None
        problem: str | None = None
        try:
            if self.kind == "Secret":
                definition = ApiKey.from_secret(
                    Secret.model_validate(item), _origin(self.kind, owner)
                )
            else:
                definition = PlacedAuthConfig(
                    AuthConfig.model_validate(item), _origin(self.kind, owner)
                )
        except ValidationError as exc:
            problem = "; ".join(manifests.error_messages(exc))
        except ValueError as exc:  # a Secret entry that is not UTF-8 text, and the like
            problem = str(exc)
        previous = known.definition if known else None
        self._known[owner] = _Known(
            metadata.get("resourceVersion", ""), generation, definition or previous
        )
        if problem is not None:
            keeping = "keeping its last good version" if previous else "not loaded"
            log.error(
                "kubernetes: %s %s rejected (%s): %s", self.kind, "/".join(owner), keeping, problem
            )
        if self.kind == "AuthConfig":
            self._set_status(item, owner, generation, problem)
        return definition

    def _set_status(
        self, item: dict[str, Any], owner: Owner, generation: int | None, problem: str | None
    ) -> None:
        if not self._write_status:
            return
        status: dict[str, Any] = {
            "state": "Rejected" if problem else "Accepted",
            "reason": problem or "",
            "observedGeneration": generation,
        }
        current = item.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return  # already right: replicas converge without writing
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                owner[0],
                PLURAL,
                owner[1],
                {"status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=10,
            )
        except ApiException as exc:
            log.warning(
                "kubernetes: cannot write status of AuthConfig %s: %s",
                "/".join(owner),
                _describe(exc),
            )


def _owner(item: dict[str, Any]) -> Owner:
    metadata = item.get("metadata", {})
    return (metadata.get("namespace", "default"), metadata.get("name", ""))


def _lines(response: Any) -> Iterator[str]:
    for line in iter_resp_lines(response):
        if line:
            yield line if isinstance(line, str) else line.decode("utf-8")


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class KubernetesSource:
    """Both kinds, in the given namespaces (or all), as one stream of Changes."""

    def __init__(
        self,
        namespaces: list[str] | None = None,
        *,
        kubeconfig: str | None = None,
        write_status: bool = True,
        watch_timeout: int = 300,
    ) -> None:
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self._kubeconfig = kubeconfig
        self._write_status = write_status
        self._watch_timeout = watch_timeout
        self.watchers: list[_Watcher] = []

    @property
    def relists(self) -> int:
        """Relists after the initial one (410 Gone): for tests and metrics."""
        return sum(w.relists for w in self.watchers)

    async def changes(self) -> AsyncGenerator[Change, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change] = asyncio.Queue()
        stop = threading.Event()
        api = load_api_client(self._kubeconfig)

        def emit(change: Change) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, change)

        self.watchers = [
            _Watcher(
                api,
                kind,
                namespace,
                emit,
                stop,
                write_status=self._write_status,
                watch_timeout=self._watch_timeout,
            )
            for namespace in self.namespaces
            for kind in ("Secret", "AuthConfig")
        ]
        threads = [
            threading.Thread(target=w.run, name=f"watch-{w.kind}-{w.namespace}", daemon=True)
            for w in self.watchers
        ]
        for thread in threads:
            thread.start()
        try:
            # The initial state: every watcher's first list, as one change.
            initial: list[Change] = []
            while len(initial) < len(self.watchers):
                initial.append(await queue.get())
            yield Change(
                tuple(d for c in initial for d in c.upserted),
                tuple(r for c in initial for r in c.removed),
            )
            while True:
                yield await queue.get()
        finally:
            stop.set()
            for watcher in self.watchers:
                watcher.close()
            deadline = time.monotonic() + 2
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
