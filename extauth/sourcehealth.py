"""How each source is doing, in plain counters an operator can alert on.

A source that cannot reach its API server or read its directory keeps serving its last
good state (fail closed would be fail everything, see README): so that failure must be
visible elsewhere. Each source owns one `SourceHealth` and says what happens to it
(synced, failing, a watch restarted, a resource rejected); `metrics.py` exports it as
`extauth_source_*` at scrape time and the status page shows it. Nothing here is on the
Check path.

Sources say it from threads (Kubernetes watchers) as well as the event loop, so updates
take a lock; reads at scrape time copy under it. Reasons and kinds are a small fixed
vocabulary chosen by the source (never a message, which could name anything), so the
label sets stay bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthView:
    """One consistent reading, for a scrape or the status page."""

    source: str
    up: bool
    last_sync: float | None  # POSIX time of the last complete sync, None before the first
    problem: str | None  # what is failing now, for people (never a key)
    errors: dict[str, int]
    restarts: dict[str, int]
    rejected: dict[str, int]
    rejected_now: int  # resources rejected in the current state (their last good serves)
    # Some of them (kind, name, reason), for the status page; at most ITEMS_LIMIT.
    rejected_items: tuple[tuple[str, str, str], ...] = ()


ITEMS_LIMIT = 100


State = tuple[bool, str | None, float | None]  # (up, problem, last sync)


class SourceHealth:
    def __init__(
        self,
        source: str,
        *,
        errors: tuple[str, ...] = (),
        restarts: tuple[str, ...] = (),
        kinds: tuple[str, ...] = (),
    ) -> None:
        """`errors`, `restarts` and `kinds`: the usual reasons and kinds, exported at 0
        from the start, so that the first failure is an increase Prometheus can see
        (`increase()` does not count a series that appears already at 1)."""
        self.source = source
        self._lock = threading.Lock()
        self._up = True
        self._last_sync: float | None = None
        self._problem: str | None = None
        self._errors = dict.fromkeys(errors, 0)
        self._restarts = dict.fromkeys(restarts, 0)
        self._rejected = dict.fromkeys(kinds, 0)
        # How many resources are rejected now (a rejected file, a Rejected AuthConfig):
        # the source's own count, read at scrape time.
        self.rejected_now: Callable[[], int] = lambda: 0
        # Which ones, as (kind, name, reason); read for the status page only.
        self.rejected_list: Callable[[], list[tuple[str, str, str]]] = list
        # A source that knows its state better at read time than by events (Kubernetes:
        # its watches and heartbeat) sets this; it then replaces up, problem, last sync.
        self.state: Callable[[], State] | None = None

    def synced(self) -> None:
        """A complete sync succeeded: the source is current as of now."""
        with self._lock:
            self._up, self._problem, self._last_sync = True, None, time.time()

    def down(self, problem: str) -> None:
        """The source cannot sync now (its last good state serves); counts nothing."""
        with self._lock:
            self._up, self._problem = False, problem

    def error(self, reason: str) -> None:
        """A failure began (count it once, where it is logged)."""
        with self._lock:
            self._errors[reason] = self._errors.get(reason, 0) + 1

    def restarted(self, reason: str) -> None:
        with self._lock:
            self._restarts[reason] = self._restarts.get(reason, 0) + 1

    def rejected(self, kind: str) -> None:
        with self._lock:
            self._rejected[kind] = self._rejected.get(kind, 0) + 1

    def view(self, items: bool = False) -> HealthView:
        """`items`: with `rejected_items` (the status page), not for a scrape."""
        with self._lock:
            up, problem, last_sync = self._up, self._problem, self._last_sync
            errors, restarts = dict(self._errors), dict(self._restarts)
            rejected = dict(self._rejected)
        listed: tuple[tuple[str, str, str], ...] = ()
        try:
            if self.state is not None:
                up, problem, last_sync = self.state()
            now = self.rejected_now()
            if items:
                listed = tuple(self.rejected_list()[:ITEMS_LIMIT])
        except Exception:  # a state read mid-change: never fail a scrape for it
            now = 0
        return HealthView(
            self.source, up, last_sync, problem, errors, restarts, rejected, now, listed
        )
