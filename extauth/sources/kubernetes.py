"""Secrets (type extauth.solo.io/apikey) and AuthConfigs from a Kubernetes API server.

One watcher thread per (kind, namespace) turns its `watching.Watcher` events into
one-definition `Change`s (incremental: a Secret edit costs one index entry, whatever the
number of keys). A list (the first, or a relist after 410 Gone) is published as one change
when its `Listed` marker arrives, with removals for what the list no longer holds. The
source's first change, the initial state, waits for every watcher's first `Listed`: a
watcher that lists and then sees events does not stand in for one that has not listed yet.

Objects are read as raw JSON, checked against `bounds` (depth, a Secret's size) and
validated with the same models as files. An object that fails is rejected alone with a log
line and a metric; its last good version (if any) keeps serving. An object is known by uid
and resourceVersion: an unchanged one (a relist) is not validated again, and a good
version of a deleted object never stands in for a broken one recreated under its name. A
terminating object (deletionTimestamp set, finalizers pending) counts as deleted.

AuthConfigs get a `status` (state, reason, observedGeneration, and an `Accepted`
condition), handed to `statuses.StatusWriter` after the change is published: no status
write can hold up or lose a change. `liveness.Heartbeat` notices an API server that does
not answer, kicks the watches, and wakes them when it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from extauth import crds, loader, manifests, memory
from extauth.apikeys import KUBERNETES_PREFIX, ApiKey, Owner, shared
from extauth.changes import Change, Definition, PlacedAuthConfig, Removal, removal_of
from extauth.origins import Origin
from extauth.policy import Policy
from extauth.resources import AuthConfig, Secret
from extauth.sourcehealth import SourceHealth, State
from extauth.sources import apiserver, bounds, liveness, statuses
from extauth.sources.apiserver import ApiServer, path_of
from extauth.sources.records import (
    ConfigRecord,
    Identity,
    Kept,
    Record,
    Records,
    Stub,
    uuid_number,
    version_of,
)
from extauth.sources.reselect import Reselector
from extauth.sources.selection import EMPTY, Selection, Selects
from extauth.sources.statuses import StatusWriter
from extauth.sources.tuning import DEFAULTS, Tuning
from extauth.sources.watching import (
    DEFAULT_PAGE_SIZE,
    GROUP,
    PLURAL,
    VERSION,
    Deleted,
    Event,
    Kind,
    Listed,
    Pacing,
    RawObject,
    Upserted,
    Watcher,
    describe,
    owner_of,
    run_in_thread,
)

log = logging.getLogger(__name__)


def _origin(kind: Kind, owner: Owner, rank: int = 0) -> Origin:
    return Origin(f"{KUBERNETES_PREFIX}{kind}/{owner[0]}/{owner[1]}", 0, rank)


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


Emit = Callable[[Change, bool], None]  # (change, whether it ends a complete list)


class Translator:
    """One watcher's events as Changes; AuthConfig status handed to a `StatusWriter`.

    Every object is handled alone: whatever one object holds or raises, the next event is
    taken, and its change is published before its status is even queued.

    With a `selection`, a Secret translator keeps a `Stub` of each Secret no AuthConfig
    selects, and an AuthConfig translator keeps the selection up to date (and calls
    `on_selection`); `reselect` and `fetched` then move Secrets between the two as the
    selection changes. Those run on another thread than the watcher's: a lock keeps one
    object's record and the change it makes together.
    """

    def __init__(
        self,
        kind: Kind,
        emit: Emit,
        status: StatusWriter | None,
        *,
        max_secret_bytes: int = DEFAULTS.max_secret_bytes,
        rejected: Callable[[str], None] = lambda reason: None,
        selection: Selection | None = None,
        on_selection: Callable[[], None] = lambda: None,
    ) -> None:
        self.kind = kind
        self._emit = emit
        self._status = status  # None: write no status
        self._max_secret_bytes = max_secret_bytes
        self._rejected = rejected  # counts a rejection, by reason
        self._selection = selection  # None: every Secret is kept whole
        self._on_selection = on_selection
        self.known: Records[Record] = Records()
        # Objects whose latest version is rejected (extauth_config_problems counts them),
        self.rejected_owners: dict[Owner, str] = {}  # and why: rejections are few
        # The list attempt in progress, or the last one: what records are stamped with.
        self._listing = 0
        self._in_list = False
        self._pending = Folded()
        self._lock = threading.RLock()
        self.listed = threading.Event()  # set at the first Listed
        self.relists = 0

    def take(self, event: Event) -> None:
        with self._lock:
            self._take(event)

    def _take(self, event: Event) -> None:
        if isinstance(event, Upserted):
            metadata = event.object.get("metadata") or {}
            if event.listing:
                self._listing, self._in_list = event.listing, True
            if metadata.get("deletionTimestamp"):
                # Terminating (a finalizer pending): deleted as far as keys go. In a list
                # it is not stamped, so the Listed that ends the list removes it too.
                self._publish(self._forget(owner_of(event.object)))
                return
            self._publish(self._accept(event.object))
        elif isinstance(event, Deleted):
            self._publish(self._forget(owner_of(event.object)))
        elif isinstance(event, Listed):
            self._listed(event)

    def _publish(self, change: Change) -> None:
        """During a list, with the list's change (published whole at its `Listed`, so
        nothing from outside the list can overtake it); otherwise at once."""
        if self._in_list:
            self._pending.add(change)
        elif not change.empty:
            self._emit(change, False)

    def _forget(self, owner: Owner) -> Change:
        if self._status is not None:
            self._status.forget(owner)
        self.rejected_owners.pop(owner, None)
        gone = self.known.pop(owner)
        if gone is not None:
            self._track(owner, None)
        if gone is not None and gone.definition is not None:
            return Change(removed=(removal_of(gone.definition),))
        return Change()

    def _listed(self, event: Listed) -> None:
        # What this list did not stamp, it no longer holds (an empty list stamped nothing).
        self._listing, self._in_list = event.listing, False
        removed: list[Removal] = []
        for owner, gone in self.known.sweep(event.listing):
            self.rejected_owners.pop(owner, None)
            if self._status is not None:
                self._status.forget(owner)
            self._track(owner, None)
            if gone.definition is not None:
                removed.append(removal_of(gone.definition))
        self._pending.add(Change(removed=tuple(removed)))
        if event.relist:
            self.relists += 1
        self._emit(self._pending.change(), True)
        self.listed.set()

    def _track(self, owner: Owner, definition: Definition | None) -> None:
        """An AuthConfig's definition in effect changed: so may what it selects."""
        if self.kind != "AuthConfig" or self._selection is None:
            return
        selects = EMPTY
        if isinstance(definition, PlacedAuthConfig):
            selects = Selects.of(definition.config)
        if self._selection.update(KUBERNETES_PREFIX, owner, selects):
            self._on_selection()

    # -- the selection changed -------------------------------------------------------------

    def reselect(self, chunk: int = 2000) -> list[Owner]:
        """Drop to a stub every Secret no AuthConfig selects any more, and return the
        stubs some AuthConfig now selects (to be read again: `fetched`).

        Walks every record, a `chunk` at a time under the lock, so events go on between.
        A record whose latest version was rejected (`Kept`) is left as it is: its labels
        are not known, and its next version decides.
        """
        selection = self._selection
        wanted: list[Owner] = []
        if selection is None:
            return wanted
        for namespace, names in self.known.names():
            for start in range(0, len(names), chunk):
                with self._lock:
                    for name in names[start : start + chunk]:
                        owner = (namespace, name)
                        record = self.known.get(owner)
                        if isinstance(record, Stub):
                            if selection.selects(owner, record.labels):
                                wanted.append(owner)
                        elif type(record) is Record and isinstance(record.definition, ApiKey):
                            key = record.definition
                            if not selection.selects(owner, key.labels):
                                stub = Stub(record.version, record.stamp, record.ident, key.labels)
                                self.known.put((key.namespace, key.name), stub)
                                self._publish(Change(removed=(removal_of(key),)))
        return wanted

    def fetched(self, item: RawObject) -> None:
        """A Secret read again because some AuthConfig selects it now. Applied only if it
        is the very version its stub records: if not, the watch has a newer one on its
        way (and, the selection having changed before the read, takes it whole)."""
        with self._lock:
            owner = owner_of(item)
            record = self.known.get(owner)
            metadata = item.get("metadata") or {}
            if (
                not isinstance(record, Stub)
                or metadata.get("deletionTimestamp")
                or record.version != version_of(str(metadata.get("resourceVersion", "")))
                or record.ident != self._identity(item, kubernetes_rank(item))
            ):
                return
            self._publish(self._accept(item, stamp=record.stamp))

    # -- one object ------------------------------------------------------------------------

    def _identity(self, item: RawObject, rank: int) -> Identity:
        uid = str((item.get("metadata") or {}).get("uid", ""))
        if self.kind == "Secret" and uuid_number(uid) is not None:
            return rank  # the same int object the key's origin holds: no extra bytes
        return uid

    def _accept(self, item: RawObject, stamp: int | None = None) -> Change:
        """What changes for the policy with this version of the object.

        The object is recorded as known only together with the change it makes, and the
        status is queued after both: a failure anywhere cannot leave a version marked
        "seen" whose change was never published.
        """
        owner = owner_of(item)
        metadata = item.get("metadata") or {}
        version = version_of(str(metadata.get("resourceVersion", "")))
        generation = metadata.get("generation")
        stamp = self._listing if stamp is None else stamp
        rank = kubernetes_rank(item) if self.kind == "Secret" else 0
        ident = self._identity(item, rank)
        record = self.known.get(owner)
        same_object = record is not None and record.ident == ident
        labels: Mapping[str, str] | None = None
        selected = True
        if self.kind == "Secret" and self._selection is not None:
            # Unusable labels: read whole, and so refused with a reason, like any Secret
            # over the limit (a refused Secret keeps no more than a stub).
            labels = stub_labels(metadata.get("labels"), self._max_secret_bytes)
            selected = labels is None or self._selection.selects(owner, labels)
        if record is not None and same_object:
            if record.version == version and isinstance(record, Stub) != selected:
                record.stamp = stamp
                return Change()  # a relist of an object we hold as it is
            if (
                isinstance(record, ConfigRecord)
                and generation is not None
                and record.generation == generation
            ):
                # The same object (uid) at the same generation: status or metadata
                # only, the spec is unchanged. Write the status only if no one has
                # written it for this generation yet (a write refused as a conflict).
                record.version, record.stamp = version, stamp
                self._submit(item, owner, generation, record.problem, only_if_behind=True)
                return Change()
        if labels is not None and not selected:
            # No AuthConfig selects it: its identity, version and labels, nothing else.
            self.known.put(owner, Stub(version, stamp, ident, labels))
            if not self._in_list:  # a list's are many, and say nothing new
                log.warning(
                    "kubernetes: Secret %s is selected by no AuthConfig: its key is denied "
                    "everywhere (add it to apiKeySecretRefs or give it a selected label)",
                    "/".join(owner),
                )
            if record is not None and record.definition is not None:
                return Change(removed=(removal_of(record.definition),))
            return Change()
        definition: Definition | None = None
        problem = bounds.problem(self.kind, dict_of(item), self._max_secret_bytes)
        reason = "limit"
        if problem is None:
            reason = "invalid"
            try:
                if self.kind == "Secret":
                    definition = loader.secret_key(
                        Secret.model_validate(item), _origin(self.kind, owner, rank)
                    )
                else:
                    # Ranked by age too: of two claiming one host, the older keeps it.
                    definition = PlacedAuthConfig(
                        AuthConfig.model_validate(item),
                        _origin(self.kind, owner, kubernetes_rank(item)),
                    )
            except ValidationError as exc:
                problem = "; ".join(manifests.error_messages(exc))
            except (ValueError, TypeError) as exc:  # a Secret entry that is not UTF-8, ...
                problem = str(exc)
            except RecursionError:
                problem = "it is nested too deep to read"
        # A broken version keeps the last good one of the same object, never that of an
        # object deleted meanwhile under the same name.
        previous = record.definition if record is not None and same_object else None
        kept = definition or previous
        if self.kind == "Secret":
            made = Kept if definition is None and previous is not None else Record
            self.known.put(owner, made(version, stamp, ident, kept))
        else:
            number = generation if isinstance(generation, int) else None
            self.known.put(owner, ConfigRecord(version, stamp, ident, kept, number, problem))
            if record is None or kept is not record.definition:
                self._track(owner, kept)
        if problem is None:
            self.rejected_owners.pop(owner, None)
        else:
            self.rejected_owners[owner] = problem
            self._rejected(reason)
            keeping = "keeping its last good version" if previous else "not loaded"
            log.error(
                "kubernetes: %s %s rejected (%s): %s", self.kind, "/".join(owner), keeping, problem
            )
        if self.kind == "AuthConfig":
            self._submit(item, owner, generation, problem)
        if definition is not None:
            return Change((definition,))
        if record is not None and not same_object and record.definition is not None:
            return Change(removed=(removal_of(record.definition),))
        return Change()

    def _submit(
        self,
        item: RawObject,
        owner: Owner,
        generation: Any,
        problem: str | None,
        *,
        only_if_behind: bool = False,
    ) -> None:
        if self._status is None:
            return
        current = item.get("status")
        try:
            self._status.submit(
                owner,
                str((item.get("metadata") or {}).get("resourceVersion", "")),
                generation,
                problem,
                dict(current) if isinstance(current, dict) else {},
                only_if_behind=only_if_behind,
            )
        except Exception as exc:  # an odd status someone wrote: never the change's concern
            log.warning(
                "kubernetes: status of AuthConfig %s not queued (%s)",
                "/".join(owner),
                type(exc).__name__,
            )


def stub_labels(labels: object, limit: int) -> Mapping[str, str] | None:
    """A Secret's labels as its stub would keep them (shared with every equal set), or
    None when they are not a mapping of strings or weigh more than `limit`: such a Secret
    is refused anyway, so a stub never holds more than the limit allows."""
    if not isinstance(labels, dict):
        return shared({}) if labels is None else None
    size = 0
    for name, value in labels.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return None
        size += len(name) + len(value)
        if size > limit:
            return None
    return shared(labels)


def dict_of(item: RawObject) -> dict[str, Any]:
    return cast(dict[str, Any], item)


_UNKNOWN_TIME = 1 << 40  # after any real creationTimestamp


def kubernetes_rank(item: RawObject) -> int:
    """Which of two Secrets holding the same key wins, on every replica and after every
    restart: the older (creationTimestamp, which the API server sets and no client can
    change), then the lower uid. Never the namespace or the name, which a tenant picks.

    One integer, (seconds << 128) | uid, kept in the origin's `document` (always 0 for a
    Kubernetes object otherwise), so ranking costs no field per key.
    """
    metadata = item.get("metadata") or {}
    try:
        created = datetime.fromisoformat(str(metadata.get("creationTimestamp")))
        seconds = int(created.timestamp()) if created.tzinfo else _UNKNOWN_TIME
    except ValueError:
        seconds = _UNKNOWN_TIME
    uid = str(metadata.get("uid", ""))
    try:
        number = int(uid.replace("-", ""), 16) if len(uid) == 36 else -1
    except ValueError:
        number = -1
    if number < 0:  # not a UUID (no real API server sends that): ordered all the same
        number = int.from_bytes(uid.encode()[:16], "big")
    return (max(seconds, 0) << 128) | number


def check_crd(api: ApiServer) -> list[str] | None:
    """The model fields the installed AuthConfig CRD would prune; None if it cannot be read.

    An outdated CRD drops new settings (`requireHashedKeys`, `booleanExpr`) silently when a
    client skips validation: extauth would then enforce less than the AuthConfig says.
    """
    try:
        found = api.get_json(
            path_of("apiextensions.k8s.io", "v1", "customresourcedefinitions", None, crds.NAME)
        )
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
        tuning: Tuning = DEFAULTS,
        page_size: int = DEFAULT_PAGE_SIZE,
        status_timeout: float = statuses.DEFAULT_TIMEOUT,
        every_secret: bool = False,
        kube_context: str | None = None,
    ) -> None:
        """`every_secret`: keep every Secret whole, selected or not (when AuthConfigs
        from another source, a --config-dir, may select them: this source cannot see
        those)."""
        listed = list(namespaces or ())
        self.namespaces: list[str | None] = list(listed) if listed else [None]
        self._write_status = write_status
        self._pacing = Pacing(tuning.watch_timeout, page_size, tuning.request_timeout)
        self._max_secret_bytes = tuning.max_secret_bytes
        self._status_rate = tuning.status_rate
        self._status_timeout = status_timeout
        self._every_secret = every_secret
        self.selection: Selection | None = None
        self.reselector: Reselector | None = None
        self.watchers: list[Watcher] = []
        self.translators: list[Translator] = []
        self.status: StatusWriter | None = None
        self.heartbeat = liveness.Heartbeat(
            self._probe, interval=tuning.heartbeat, on_lost=self._lost, on_back=self._back
        )
        # Read now: a kubeconfig that cannot be used is a startup error, said plainly.
        self._api: ApiServer = apiserver.connect(kubeconfig, kube_context)
        # Model fields the installed CRD prunes; None until read (or if it cannot be).
        self.pruned: list[str] | None = None
        self._rejected: Counter | None = None
        self._status_writes: Counter | None = None
        self.health = SourceHealth(
            "kubernetes",
            errors=("connection", "timeout", "unanswered"),
            restarts=("ended", "expired", "connection", "timeout"),
            kinds=("Secret", "AuthConfig"),
        )
        self.health.rejected_now = lambda: sum(len(t.rejected_owners) for t in self.translators)
        self.health.state = self._state
        self.health.rejected_list = self._rejected_list
        self._synced_at: float | None = None

    def _rejected_list(self) -> list[tuple[str, str, str]]:
        found: list[tuple[str, str, str]] = []
        for translator in list(self.translators):
            for owner, reason in sorted(translator.rejected_owners.items()):
                found.append((translator.kind, "/".join(owner), reason or "rejected"))
        return found

    def _state(self) -> State:
        """Current when the API server answers and every watch has listed and is open;
        then as of the heartbeat's last answer. Read at scrape time."""
        if not self.heartbeat.up:
            return False, self.heartbeat.describe(), self._synced_at
        failing = [w for w in self.watchers if w.failure is not None]
        if not self.watchers or failing:
            what = f"{failing[0].where}: {failing[0].failure}" if failing else "not started"
            return False, f"kubernetes: {what}", self._synced_at
        answered = time.time() - (time.monotonic() - self.heartbeat.last_answer)
        self._synced_at = max(self._synced_at or 0.0, answered)
        return True, None, self._synced_at

    def register_metrics(self, registry: CollectorRegistry) -> None:
        gauge = Gauge(
            "extauth_crd_pruned_fields",
            "AuthConfig fields the installed CRD would prune (-1: not checked).",
            registry=registry,
        )
        gauge.set_function(lambda: -1 if self.pruned is None else len(self.pruned))
        up = Gauge(
            "extauth_kube_api_up",
            "1 while the Kubernetes API server answers the heartbeat, 0 once it has not.",
            registry=registry,
        )
        up.set_function(lambda: 1 if self.heartbeat.up else 0)
        silent = Gauge(
            "extauth_kube_api_silent_seconds",
            "Seconds since the API server last answered, while it does not (else 0).",
            registry=registry,
        )
        silent.set_function(self.heartbeat.silent_for)
        backlog = Gauge(
            "extauth_kube_status_backlog",
            "AuthConfig status writes waiting (new, or to be retried).",
            registry=registry,
        )
        backlog.set_function(lambda: self.status.backlog if self.status else 0)
        self._rejected = Counter(
            "extauth_kube_objects_rejected",
            "Kubernetes objects rejected, by kind and reason (limit: too deep or too "
            "large, refused unread; invalid: refused by the models).",
            ["kind", "reason"],
            registry=registry,
        )
        self._status_writes = Counter(
            "extauth_kube_status_writes",
            "AuthConfig status writes, by result (written, conflict, gone, failed).",
            ["result"],
            registry=registry,
        )

    def policy_published(self, policy: Policy) -> None:
        """Hosts the policy refuses an AuthConfig of this cluster (another claimed them
        first) go into its status; a refusal lifted clears it."""
        if self.status is None:
            return
        prefix = f"{KUBERNETES_PREFIX}AuthConfig/"
        notes: dict[Owner, str] = {}
        for path, message in policy.host_refusals.items():
            if path.startswith(prefix):
                namespace, _, name = path[len(prefix) :].partition("/")
                notes[(namespace, name)] = message
        self.status.set_notes(notes)

    def problems(self) -> list[str]:
        """What /readyz reports beside its verdict: the API server not answering, or a
        watch failing (a 403, say) while it answers."""
        found = self.health.view().problem
        return [found] if found else []

    @property
    def relists(self) -> int:
        """Relists after the initial one (410 Gone): for tests and metrics."""
        return sum(t.relists for t in self.translators)

    def _probe(self, deadline: float) -> None:
        """A list of one AuthConfig, read from etcd: the API server and its storage answer."""
        path = path_of(GROUP, VERSION, PLURAL, self.namespaces[0])
        self._api.request("GET", path, query={"limit": 1}, timeout=(deadline, deadline))

    def _lost(self) -> None:
        self.health.error("unanswered")
        for watcher in self.watchers:
            watcher.kick()

    def _back(self) -> None:
        for watcher in self.watchers:
            watcher.wake()
        if self.status is not None:
            self.status.retry_now()

    def _count_rejected(self, kind: Kind) -> Callable[[str], None]:
        def count(reason: str) -> None:
            self.health.rejected(kind)
            if self._rejected is not None:
                self._rejected.labels(kind, reason).inc()

        return count

    def _selection_changed(self) -> None:
        if self.reselector is not None:
            self.reselector.soon()

    def _count_status(self, result: str) -> None:
        if self._status_writes is not None:
            self._status_writes.labels(result).inc()

    async def changes(self) -> AsyncGenerator[Change, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Change, bool]] = asyncio.Queue()
        stop = threading.Event()
        api = self._api
        if self._write_status:
            self.status = StatusWriter(
                api,
                rate=self._status_rate,
                timeout=self._status_timeout,
                count=self._count_status,
            )

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
                self._pacing,
                on_error=self.heartbeat.check_soon,
                health=self.health,
            )
            for kind, namespace in pairs
        ]
        selection = self.selection = None if self._every_secret else Selection()
        self.translators = [
            Translator(
                kind,
                emitter(index),
                self.status,
                max_secret_bytes=self._max_secret_bytes,
                rejected=self._count_rejected(kind),
                selection=selection,
                on_selection=self._selection_changed,
            )
            for index, (kind, _) in enumerate(pairs)
        ]
        secrets = [
            (w, t)
            for w, t in zip(self.watchers, self.translators, strict=True)
            if t.kind == "Secret"
        ]
        configs = [t for t in self.translators if t.kind == "AuthConfig"]
        if selection is not None:
            self.reselector = Reselector(
                api, secrets, stop, request_timeout=self._pacing.request_timeout
            )
        # Before the first list, so the first status written already says it.
        self.pruned = await asyncio.to_thread(check_crd, api)
        if self.status is not None:
            self.status.pruned = self.pruned or []

        def pump(watcher: Watcher, translator: Translator) -> Callable[[], None]:
            def run() -> None:
                if selection is not None and translator.kind == "Secret":
                    # Secrets are listed once every AuthConfig is known: what no
                    # AuthConfig selects is then kept as a stub from the start, never
                    # read whole and dropped (nor the other way round, after ready).
                    for config in configs:
                        while not config.listed.wait(0.5):
                            if stop.is_set():
                                return
                for event in watcher.events():
                    try:
                        translator.take(event)
                        if isinstance(event, Listed) and event.relist:
                            # The relist's pages are freed now; a relist publishes only
                            # differences (no `memory.settle`), so give them back here.
                            memory.trim()
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
        threads.append(run_in_thread("kube-heartbeat", lambda: self.heartbeat.run(stop)))
        if self.reselector is not None:
            threads.append(run_in_thread("kube-reselect", self.reselector.run))
        if self.status is not None:
            writer = self.status
            threads.append(run_in_thread("kube-status", lambda: writer.run(stop)))
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
            self.heartbeat.check_soon()
            if self.status is not None:
                self.status.wake()
            for watcher in self.watchers:
                watcher.close()
            deadline = time.monotonic() + 2
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            # Its connections closed now, not whenever the collector finds them.
            api.close()


_KINDS: tuple[Kind, ...] = ("Secret", "AuthConfig")
