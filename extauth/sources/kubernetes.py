"""Secrets (type extauth.solo.io/apikey) and AuthConfigs from a Kubernetes API server.

One watcher thread per (kind, namespace) turns its `watching.Watcher` events into
one-definition `Change`s (incremental: a Secret edit costs one index entry, whatever the
number of keys). A list (the first, or a relist after 410 Gone) is published as one change
when its `Listed` marker arrives, with removals for what the list no longer holds. The
source's first change, the initial state, waits for every watcher's first `Listed`: a
watcher that lists and then sees events does not stand in for one that has not listed yet.

Objects are read as raw JSON and validated with the same models as files. An object that
does not validate is rejected with a log line; its last good version (if any) keeps
serving. An object is known by uid and resourceVersion: an unchanged one (a relist) is not
validated again, and a good version of a deleted object never stands in for a broken one
recreated under its name.

AuthConfigs get a `status` (state, reason, observedGeneration, and an `Accepted`
condition). Replicas converge without a leader: the write is skipped when the status is
already right, a transition time is kept while the condition holds, and every write is
conditional on the resourceVersion it was computed from, so a replica that has not yet seen
a newer spec cannot overwrite the status written for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Gauge
from pydantic import ValidationError

from extauth import crds, manifests
from extauth.manifests import Origin
from extauth.resources import AuthConfig, Secret
from extauth.snapshot import (
    ApiKey,
    Change,
    Definition,
    Owner,
    PlacedAuthConfig,
    Removal,
    removal_of,
)
from extauth.sources.watching import (
    DEFAULT_PAGE_SIZE,
    GROUP,
    PLURAL,
    VERSION,
    Deleted,
    Event,
    Kind,
    Listed,
    RawObject,
    Upserted,
    Watcher,
    describe,
    key_of,
    owner_of,
    run_in_thread,
)

log = logging.getLogger(__name__)

# A condition message is bounded by the API (32 KiB); a reason this long is unreadable.
_MESSAGE_LIMIT = 4096


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


def _path(definition: Definition) -> str:
    return definition.path if isinstance(definition, ApiKey) else definition.origin.path


class Folded:
    """Changes folded into one: the last word on each definition wins.

    A change applies its removals before its upserts, so concatenating two changes would
    get "created, then deleted" backwards; folding keeps only what holds at the end.
    """

    def __init__(self) -> None:
        self._last: dict[str, Definition | Removal] = {}

    def add(self, change: Change) -> None:
        for removal in change.removed:
            self._last[removal.source] = removal
        for definition in change.upserted:
            self._last[_path(definition)] = definition

    def change(self) -> Change:
        upserted = [d for d in self._last.values() if not isinstance(d, Removal)]
        removed = [r for r in self._last.values() if isinstance(r, Removal)]
        self._last = {}
        return Change(tuple(upserted), tuple(removed))


@dataclass(slots=True)
class _Known:
    uid: str
    resource_version: str
    generation: int | None
    definition: Definition | None  # None: never had a good version
    problem: str | None  # why the latest version was rejected


Emit = Callable[[Change, bool], None]  # (change, whether it ends a complete list)


class Translator:
    """One watcher's events as Changes, and AuthConfig status written back."""

    def __init__(
        self,
        kind: Kind,
        emit: Emit,
        custom: client.CustomObjectsApi | None,
    ) -> None:
        self.kind = kind
        self._emit = emit
        self._custom = custom  # None: write no status
        # Model fields the installed CRD prunes (see check_crd), said in every status.
        self.pruned: list[str] = []
        self.known: dict[Owner, _Known] = {}
        self._listing = 0
        self._seen: set[Owner] = set()
        self._pending = Folded()
        self.listed = threading.Event()  # set at the first Listed
        self.relists = 0

    def take(self, event: Event) -> None:
        if isinstance(event, Upserted):
            if event.listing:
                if event.listing != self._listing:
                    self._listing, self._seen = event.listing, set()
                self._seen.add(owner_of(event.object))
                self._pending.add(self._accept(event.object))
            else:
                change = self._accept(event.object)
                if not change.empty:
                    self._emit(change, False)
        elif isinstance(event, Deleted):
            gone = self.known.pop(owner_of(event.object), None)
            if gone is not None and gone.definition is not None:
                self._emit(Change(removed=(removal_of(gone.definition),)), False)
        elif isinstance(event, Listed):
            self._listed(event)

    def _listed(self, event: Listed) -> None:
        seen = self._seen if event.listing == self._listing else set()
        removed: list[Removal] = []
        for owner in sorted(set(self.known) - seen):
            gone = self.known.pop(owner)
            if gone.definition is not None:
                removed.append(removal_of(gone.definition))
        self._pending.add(Change(removed=tuple(removed)))
        self._seen = set()
        if event.relist:
            self.relists += 1
        self._emit(self._pending.change(), True)
        self.listed.set()

    # -- one object ------------------------------------------------------------------------

    def _accept(self, item: RawObject) -> Change:
        """What changes for the policy with this version of the object."""
        owner = owner_of(item)
        uid, resource_version = key_of(item)
        generation = (item.get("metadata") or {}).get("generation")
        known = self.known.get(owner)
        same_object = known is not None and known.uid == uid
        if known is not None and same_object:
            if known.resource_version == resource_version:
                return Change()  # a relist of an object we hold as it is
            if (
                self.kind == "AuthConfig"
                and generation is not None
                and known.generation == generation
            ):
                # Status or metadata only: the spec is unchanged. Write the status only
                # if no one has written it for this generation yet (a write of ours
                # refused as a conflict, say).
                known.resource_version = resource_version
                self._set_status(item, owner, generation, known.problem, only_if_behind=True)
                return Change()
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
        except (ValueError, TypeError) as exc:  # a Secret entry that is not UTF-8 text, ...
            problem = str(exc)
        # A broken version keeps the last good one of the same object, never that of an
        # object deleted meanwhile under the same name.
        previous = known.definition if known is not None and same_object else None
        self.known[owner] = _Known(
            uid,
            resource_version,
            generation if isinstance(generation, int) else None,
            definition or previous,
            problem,
        )
        if problem is not None:
            keeping = "keeping its last good version" if previous else "not loaded"
            log.error(
                "kubernetes: %s %s rejected (%s): %s", self.kind, "/".join(owner), keeping, problem
            )
        if self.kind == "AuthConfig":
            self._set_status(item, owner, generation, problem)
        if definition is not None:
            return Change((definition,))
        if known is not None and not same_object and known.definition is not None:
            return Change(removed=(removal_of(known.definition),))
        return Change()

    def _set_status(
        self,
        item: RawObject,
        owner: Owner,
        generation: Any,
        problem: str | None,
        *,
        only_if_behind: bool = False,
    ) -> None:
        if self._custom is None:
            return
        current: dict[str, Any] = dict(item.get("status") or {})
        if only_if_behind and current.get("observedGeneration") == generation:
            return
        status = status_for(generation, problem, current, self.pruned)
        if status is None:
            return  # already right: replicas converge without writing
        resource_version = (item.get("metadata") or {}).get("resourceVersion", "")
        try:
            self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                owner[0],
                PLURAL,
                owner[1],
                # The resourceVersion makes the write conditional: if the object changed
                # since (a newer spec, another replica's status), 409, and the event for
                # that change decides again.
                {"metadata": {"resourceVersion": resource_version}, "status": status},
                _content_type="application/merge-patch+json",
                _request_timeout=10,
            )
        except ApiException as exc:
            if exc.status == 409:
                log.debug("kubernetes: status of AuthConfig %s: changed meanwhile", owner)
                return
            log.warning(
                "kubernetes: cannot write status of AuthConfig %s: %s",
                "/".join(owner),
                describe(exc),
            )


def status_for(
    generation: Any,
    problem: str | None,
    current: dict[str, Any],
    pruned: Sequence[str] = (),
) -> dict[str, Any] | None:
    """The status to write, or None when `current` already says it.

    A condition's lastTransitionTime is kept while its status holds, so two replicas
    computing the same status write the same bytes, and a second write is skipped.
    `pruned`: model fields the installed CRD would drop, said in the reason (visible with
    any CRD, `kubectl get -o wide`) and in a `SchemaCurrent` condition.
    """
    accepted = problem is None
    outdated = (
        f"the installed AuthConfig CRD prunes {', '.join(pruned)}: settings there are lost "
        "before extauth sees them; apply deploy/kubernetes/base/crd.yaml"
        if pruned
        else ""
    )
    reason = (problem or outdated)[:_MESSAGE_LIMIT]
    conditions: list[dict[str, Any]] = [
        {
            "type": "Accepted",
            "status": "True" if accepted else "False",
            "reason": "Accepted" if accepted else "Rejected",
            "message": reason or "loaded: every configs entry is in force",
            "observedGeneration": generation,
        },
        {
            "type": "SchemaCurrent",
            "status": "False" if pruned else "True",
            "reason": "CRDOutdated" if pruned else "CRDCurrent",
            "message": outdated[:_MESSAGE_LIMIT]
            or "the installed CRD declares every field extauth reads",
            "observedGeneration": generation,
        },
    ]
    wanted: dict[str, Any] = {
        "state": "Accepted" if accepted else "Rejected",
        "reason": reason,
        "observedGeneration": generation,
    }
    old_conditions = current.get("conditions")
    old: dict[str, dict[str, Any]] = {}
    if isinstance(old_conditions, list):
        old = {str(c.get("type")): c for c in old_conditions if isinstance(c, dict)}
    same = all(
        all(old.get(c["type"], {}).get(k) == v for k, v in c.items()) for c in conditions
    ) and all(current.get(k) == v for k, v in wanted.items())
    if same and len(old) == len(conditions):
        return None
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for condition in conditions:
        previous = old.get(condition["type"], {})
        kept = previous.get("status") == condition["status"] and previous.get("lastTransitionTime")
        condition["lastTransitionTime"] = kept or now
    return {**wanted, "conditions": conditions}


def check_crd(api: client.ApiClient) -> list[str] | None:
    """The model fields the installed AuthConfig CRD would prune; None if it cannot be read.

    An outdated CRD drops new settings (`requireHashedKeys`, `booleanExpr`) silently when a
    client skips validation: extauth would then enforce less than the AuthConfig says.
    """
    try:
        response: Any = client.ApiextensionsV1Api(api).read_custom_resource_definition(
            crds.NAME, _preload_content=False, _request_timeout=10
        )
        found = json.loads(response.data)
        versions = found.get("spec", {}).get("versions", [])
        (served,) = [v for v in versions if v.get("name") == VERSION] or [None]
        if served is None:
            log.error("kubernetes: the installed AuthConfig CRD does not serve %s", VERSION)
            return None
        root = served.get("schema", {}).get("openAPIV3Schema", {})
        # Inside the try: a schema of an unexpected shape must not stop extauth.
        pruned = crds.pruned_by(root)
    except Exception as exc:
        log.warning(
            "kubernetes: cannot read the AuthConfig CRD to check that it is current (%s)",
            describe(exc),
        )
        return None
    if pruned:
        log.error(
            "kubernetes: the installed AuthConfig CRD is outdated: it prunes %s; AuthConfigs "
            "using them lose those settings before extauth sees them. Apply "
            "deploy/kubernetes/base/crd.yaml (`make crd` makes it)",
            ", ".join(pruned),
        )
    else:
        log.info("kubernetes: the installed AuthConfig CRD declares every model field")
    return pruned


class KubernetesSource:
    """Both kinds, in the given namespaces (or all), as one stream of Changes."""

    def __init__(
        self,
        namespaces: Iterable[str] | None = None,
        *,
        kubeconfig: str | None = None,
        write_status: bool = True,
        watch_timeout: int = 300,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        listed = list(namespaces or ())
        self.namespaces: list[str | None] = list(listed) if listed else [None]
        self._kubeconfig = kubeconfig
        self._write_status = write_status
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self.watchers: list[Watcher] = []
        self.translators: list[Translator] = []
        # Model fields the installed CRD prunes; None until read (or if it cannot be).
        self.pruned: list[str] | None = None

    def register_metrics(self, registry: CollectorRegistry) -> None:
        gauge = Gauge(
            "extauth_crd_pruned_fields",
            "AuthConfig fields the installed CRD would prune (-1: not checked).",
            registry=registry,
        )
        gauge.set_function(lambda: -1 if self.pruned is None else len(self.pruned))

    @property
    def relists(self) -> int:
        """Relists after the initial one (410 Gone): for tests and metrics."""
        return sum(t.relists for t in self.translators)

    async def changes(self) -> AsyncGenerator[Change, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Change, bool]] = asyncio.Queue()
        stop = threading.Event()
        api = load_api_client(self._kubeconfig)
        custom = client.CustomObjectsApi(api) if self._write_status else None

        def emitter(index: int) -> Emit:
            def emit(change: Change, listed: bool) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (index, change, listed))

            return emit

        pairs = [(kind, namespace) for namespace in self.namespaces for kind in _KINDS]
        self.watchers = [
            Watcher(
                api,
                kind,
                namespace,
                stop,
                watch_timeout=self._watch_timeout,
                page_size=self._page_size,
            )
            for kind, namespace in pairs
        ]
        self.translators = [
            Translator(kind, emitter(index), custom) for index, (kind, _) in enumerate(pairs)
        ]
        # Before the first list, so the first status written already says it.
        self.pruned = await asyncio.to_thread(check_crd, api)
        for translator in self.translators:
            translator.pruned = self.pruned or []

        def pump(watcher: Watcher, translator: Translator) -> Callable[[], None]:
            def run() -> None:
                for event in watcher.events():
                    try:
                        translator.take(event)
                    except Exception as exc:
                        # Never expected; if it happens, one object is lost, not the
                        # stream. The type only: a message could quote the object.
                        log.error(
                            "kubernetes: %s: an event could not be applied (%s)",
                            watcher.where,
                            type(exc).__name__,
                        )

            return run

        threads = [
            run_in_thread(f"watch-{w.kind}-{w.namespace}", pump(w, t))
            for w, t in zip(self.watchers, self.translators, strict=True)
        ]
        try:
            # The initial state: everything until every watcher has listed once.
            initial = Folded()
            listed: set[int] = set()
            while len(listed) < len(self.watchers):
                index, change, complete = await queue.get()
                initial.add(change)
                if complete:
                    listed.add(index)
            yield initial.change()
            while True:
                yield (await queue.get())[1]
        finally:
            stop.set()
            for watcher in self.watchers:
                watcher.close()
            deadline = time.monotonic() + 2
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))


_KINDS: tuple[Kind, ...] = ("Secret", "AuthConfig")
