"""Listing and watching one kind of object in a Kubernetes API server, as typed events.

The API calls (`apiserver.ApiServer`) are synchronous, so a `Watcher` runs in a thread
and yields events:
`Upserted` for every object of a list and every ADDED/MODIFIED, `Deleted` for every
DELETED, and `Listed` after every complete list (the first and every relist after a 410
Gone). `Listed` means "the objects this list upserted are all there is": whoever consumes
the stream removes what it knew and the list did not name, as client-go's `Replace` does.
Readiness is "every watcher has said `Listed`", which no count of queued items can stand
in for.

Objects are identified by uid and resourceVersion (`ObjectKey`), never by name alone: an
object deleted and recreated under the same name while the watch was down is a different
object.

List items are typed from the list they came in (as client-go does): kube-apiserver omits
`apiVersion` and `kind` on list items (kubernetes/kubernetes#3030), and kube-lite sets them
on the first page only.

Pages are processed one at a time (`page_size` items each): at 100,000 Secrets the whole
list as parsed JSON would be several hundred megabytes, one page is well under one. A paged
list that outlives etcd's snapshot (its continue token expires: 410) is retried at once,
and after a second expiry done in one request, as client-go's pager does.
Errors (API server restarts, network) back off exponentially up to 30 s and resume from the
last resourceVersion seen (events and bookmarks); `wake()` (the API server answers again,
`liveness.Heartbeat` says) cuts a backoff short, so a healthy server is never waited for.
Pages and events are decoded with `bounds.loads`: no depth of nesting makes decoding fail
(and so a watch retry the same object forever).

No request waits long for an answer that is not coming: the answer's head must come within
`request_timeout`; a watch then waits for events as long as it lasts. A hung API server
sends nothing on a quiet watch, which is legitimate silence too: the heartbeat tells the
two apart and `kick()`s the watch, which resumes on a new connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, cast

from urllib3 import exceptions as urllib3_errors

from extauth.resources import APIKEY_SECRET_TYPE
from extauth.sourcehealth import SourceHealth
from extauth.sources import bounds
from extauth.sources.apiserver import ApiError, ApiServer, lines, path_of
from extauth.sources.tuning import DEFAULTS

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "extauth.solo.io", "v1", "authconfigs"
Kind = Literal["Secret", "AuthConfig"]
# What each kind is when a list or an event does not say (the models check the rest).
API_VERSIONS: dict[Kind, str] = {"Secret": "v1", "AuthConfig": f"{GROUP}/{VERSION}"}
DEFAULT_PAGE_SIZE = 500
# A list page streams for as long as the API server needs; each read may wait this long.
_LIST_READ_TIMEOUT = 30.0
# Pages are asked for by item count, but a Secret may weigh up to ~1.5 MB: the first page
# is small, and later ones grow (up to `page_size`) while they weigh little, shrinking
# when they weigh more than this. A page is held about three times over while decoded.
PAGE_BYTES = 8 * 1024 * 1024
FIRST_PAGE = 50
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0


class RawMeta(TypedDict, total=False):
    """The part of `metadata` extauth reads; the models validate the whole of it."""

    name: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    labels: dict[str, str]
    creationTimestamp: str
    deletionTimestamp: str


class RawObject(TypedDict, total=False):
    """A Secret or an AuthConfig as the API server sends it (JSON, not yet validated)."""

    apiVersion: str
    kind: str
    metadata: RawMeta
    # Secret
    type: str
    data: dict[str, str]
    stringData: dict[str, str]
    immutable: bool
    # AuthConfig
    spec: dict[str, object]
    status: dict[str, object]


RawListMeta = TypedDict(
    "RawListMeta", {"resourceVersion": str, "continue": str, "remainingItemCount": int}, total=False
)


class RawList(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: RawListMeta
    items: list[RawObject]


class RawStatus(TypedDict, total=False):
    """The object of a watch ERROR event (a metav1.Status)."""

    code: int
    message: str
    reason: str


class RawWatchEvent(TypedDict):
    type: str
    object: RawObject
    # Not part of the wire format: ERROR events carry a Status where object is.
    status: NotRequired[RawStatus]


ObjectKey = tuple[str, str]  # (uid, resourceVersion)


def key_of(item: RawObject) -> ObjectKey:
    metadata = item.get("metadata") or {}
    return (str(metadata.get("uid", "")), str(metadata.get("resourceVersion", "")))


def owner_of(item: RawObject) -> tuple[str, str]:
    """(namespace, name)."""
    metadata = item.get("metadata") or {}
    return (str(metadata.get("namespace", "default")), str(metadata.get("name", "")))


@dataclass(frozen=True, slots=True)
class Upserted:
    """An object as it is now: from a list, or an ADDED/MODIFIED event (`listing` 0).

    `listing` numbers the list attempt (1, 2, ...): a list that fails halfway is retried
    from its start, and what the failed attempt upserted says nothing about the next.
    """

    object: RawObject
    listing: int


@dataclass(frozen=True, slots=True)
class Deleted:
    object: RawObject


@dataclass(frozen=True, slots=True)
class Listed:
    """A complete list ended: what it did not upsert (under its `listing` number) is gone."""

    resource_version: str
    count: int
    relist: bool
    listing: int


Event = Upserted | Deleted | Listed


class Gone(Exception):
    """The resourceVersion to watch from was compacted away (HTTP 410)."""


class ListExpired(Exception):
    """A paged list took longer than etcd keeps its snapshot: the continue token expired."""


def typed_items(page: RawList, kind: Kind) -> list[RawObject]:
    """The page's items, each with the apiVersion and kind of the list it came in."""
    api_version = page.get("apiVersion") or API_VERSIONS[kind]
    item_kind = (page.get("kind") or f"{kind}List").removesuffix("List") or kind
    items = page.get("items") or []
    for item in items:
        item["apiVersion"] = api_version
        item["kind"] = item_kind
    return items


@dataclass(frozen=True)
class Pacing:
    """How a watch paces its requests, the same for every watch of a source: the
    server-side watch timeout (seconds, a whole number as the API takes it), the most
    items asked for in one list page, and how long a request waits for its answer to
    start."""

    watch_timeout: int
    page_size: int = DEFAULT_PAGE_SIZE
    request_timeout: float = DEFAULTS.request_timeout


class Watcher:
    """List and watch one kind in one namespace (or all), as a stream of `Event`s."""

    def __init__(
        self,
        api: ApiServer,
        kind: Kind,
        namespace: str | None,
        stop: threading.Event,
        pacing: Pacing,
        *,
        on_error: Callable[[], None] = lambda: None,
        health: SourceHealth | None = None,
    ) -> None:
        self.kind = kind
        self._health = health or SourceHealth("kubernetes")
        # Why this watch is not current now (None: listed, and watching or about to).
        self.failure: str | None = "not listed yet"
        self.namespace = namespace
        self._api = api
        self._stop = stop
        self._pacing = pacing
        self._on_error = on_error  # the heartbeat's check_soon
        self._wake = threading.Event()
        self._relist = threading.Event()  # a relist asked for (`relist()`)
        self._response: Any = None
        self.lists = 0  # complete lists
        self._attempts = 0  # lists begun
        self._expired = 0  # paged lists in a row whose continue token expired

    @property
    def where(self) -> str:
        return f"{self.kind}s in {self.namespace or 'all namespaces'}"

    def events(self) -> Generator[Event, None, None]:
        """Until stopped: a list, then watch events; a relist after 410 Gone; retries."""
        resource_version: str | None = None
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                if self._relist.is_set():
                    self._relist.clear()
                    resource_version = None
                if resource_version is None:
                    resource_version = yield from self._list()
                if self._relist.is_set():
                    continue
                resource_version = yield from self._watch(resource_version)
                backoff = BACKOFF_FIRST
                self._health.restarted("ended")
            except Gone:
                self._health.restarted("expired")
                log.info(
                    "kubernetes: %s: resourceVersion expired (410 Gone); relisting", self.where
                )
                resource_version = None
            except ListExpired:
                # As client-go's pager: the paged list is retried at once, and if it
                # expires again, the next list is one unpaged request (costlier in memory
                # for its duration, but it cannot expire halfway).
                self._expired += 1
                self._health.restarted("list_expired")
                log.warning(
                    "kubernetes: %s: the list outlived its snapshot (410 Gone on a continue "
                    "token); listing again%s",
                    self.where,
                    " in one request" if self._expired >= 2 else "",
                )
                resource_version = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                if self._relist.is_set():
                    continue  # the watch was ended on purpose, to list again
                self.failure = describe(exc)
                reason = reason_of(exc)
                self._health.error(reason)
                self._health.restarted(reason)
                log.warning(
                    "kubernetes: %s: %s; retrying in %.1fs", self.where, describe(exc), backoff
                )
                self._on_error()
                if self._wake.wait(backoff):
                    # The API server answers again: no reason to wait any longer.
                    self._wake.clear()
                    backoff = BACKOFF_FIRST
                else:
                    backoff = min(backoff * 2, BACKOFF_MAX)

    def kick(self) -> None:
        """End the watch in progress (the heartbeat lost the API server): the loop
        resumes from the last resourceVersion on a new connection."""
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    def relist(self) -> None:
        """List again, now: the watch in progress ends and a complete list follows (with
        its `Listed`), as after a 410 Gone."""
        self._relist.set()
        self.kick()

    def wake(self) -> None:
        """The API server answers again: cut a backoff short."""
        self._wake.set()

    def close(self) -> None:
        """Unblock a watch that is waiting for events (called on shutdown)."""
        self._wake.set()
        self.kick()

    def _call(
        self,
        *,
        timeout: float | tuple[float, float],
        watch: bool = False,
        limit: int | None = None,
        token: str | None = None,
        resource_version: str | None = None,
    ) -> Any:
        """A list page (read whole, `.data`) or a watch (streamed: the caller reads and
        releases it)."""
        query: dict[str, str | int | bool | None] = {"limit": limit, "continue": token}
        if self.kind == "Secret":
            path = path_of("", "v1", "secrets", self.namespace)
            query["fieldSelector"] = f"type={APIKEY_SECRET_TYPE}"
        else:
            path = path_of(GROUP, VERSION, PLURAL, self.namespace)
        if watch:
            query.update(
                watch=True,
                resourceVersion=resource_version,
                allowWatchBookmarks=True,
                timeoutSeconds=self._pacing.watch_timeout,
            )
        return self._api.request("GET", path, query=query, timeout=timeout, stream=watch)

    def _list(self) -> Generator[Event, None, str]:
        """Page by page; returns the list's resourceVersion (to watch from)."""
        token: str | None = None
        resource_version = ""
        count = 0
        self._attempts += 1
        listing = self._attempts
        paged = self._expired < 2
        limit = min(self._pacing.page_size, FIRST_PAGE)
        while True:
            # Unpaged (after two expired continue tokens), the whole list is one answer.
            read_timeout = _LIST_READ_TIMEOUT if paged else 10 * _LIST_READ_TIMEOUT
            kwargs: dict[str, Any] = {"timeout": (self._pacing.request_timeout, read_timeout)}
            if paged:
                kwargs["limit"] = limit
            if token:
                kwargs["token"] = token
            try:
                data = self._call(**kwargs).data
            except ApiError as exc:
                if exc.status == 410 and token:
                    raise ListExpired from None
                raise
            if paged:
                limit = next_page_size(limit, len(data), self._pacing.page_size)
            page = cast(RawList, bounds.loads(data))
            del data
            items = typed_items(page, self.kind)
            metadata = page.get("metadata") or {}
            resource_version = str(metadata.get("resourceVersion", resource_version))
            token = metadata.get("continue")
            del page
            count += len(items)
            for item in items:
                yield Upserted(item, listing)
            del items
            if not token:
                break
        relist = self.lists > 0
        self.lists += 1
        self._expired = 0
        self.failure = None
        log.info("kubernetes: %s: listed %d object(s)", self.where, count)
        yield Listed(resource_version, count, relist, listing)
        return resource_version

    def _watch(self, resource_version: str) -> Generator[Event, None, str]:
        """Events from `resource_version` until the server ends the watch; returns the
        last resourceVersion seen, to resume from."""
        response = self._call(
            watch=True,
            resource_version=resource_version,
            # The head of the answer comes at once from a live server; then events, or
            # silence, for up to the watch's own timeout.
            timeout=(self._pacing.request_timeout, self._pacing.request_timeout),
        )
        self._response = response
        self.failure = None
        if self._relist.is_set():  # asked for between the check and here: not missed
            response.release_conn()
            self._response = None
            return resource_version
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(self._pacing.watch_timeout + 15)
        api_version, kind = API_VERSIONS[self.kind], self.kind
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    break
                event = cast(RawWatchEvent, bounds.loads(line))
                kind_of_event, item = event.get("type"), event.get("object") or {}
                if kind_of_event == "ERROR":
                    status = cast(RawStatus, item)
                    if status.get("code") == 410:
                        raise Gone
                    raise RuntimeError(f"watch error: {status.get('message', 'no message')}")
                metadata = item.get("metadata") or {}
                resource_version = str(metadata.get("resourceVersion", resource_version))
                if kind_of_event in ("ADDED", "MODIFIED", "DELETED"):
                    item["apiVersion"], item["kind"] = api_version, kind
                    if kind_of_event == "DELETED":
                        yield Deleted(item)
                    else:
                        yield Upserted(item, 0)
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return resource_version


def next_page_size(limit: int, weight: int, most: int) -> int:
    """How many items to ask for next, after a page of `limit` items took `weight` bytes."""
    if weight > PAGE_BYTES:
        return max(1, limit * PAGE_BYTES // weight)
    if weight < PAGE_BYTES // 4:
        return min(most, limit * 4)
    return min(most, limit)


def _lines(response: Any) -> Iterator[str]:
    for line in lines(response):
        yield line.decode("utf-8")


def describe(exc: Exception) -> str:
    """An exception for a log line: an API error's status, never its body (which can
    quote the object, and so a Secret's data)."""
    if isinstance(exc, ApiError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def reason_of(exc: BaseException) -> str:
    """A failure as a metric label: a few fixed words (and the HTTP status), never text
    from the exception, so the label set stays small."""
    if isinstance(exc, ApiError):
        status = exc.status
        return f"http_{status}" if isinstance(status, int) and 100 <= status < 600 else "http"
    if isinstance(exc, urllib3_errors.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3_errors.TimeoutError | socket.timeout | TimeoutError):
        return "timeout"
    if isinstance(exc, urllib3_errors.HTTPError | OSError):
        return "connection"
    return "error"


def run_in_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
