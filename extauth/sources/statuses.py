"""AuthConfig status, written back off the path of decisions.

A change takes effect before anyone is told about it: the watcher publishes the change,
then hands the status here (`StatusWriter.submit`, a dictionary insert that cannot fail).
One thread writes, at most `rate` writes a second, the latest status per AuthConfig only
(a burst of edits to one object is one write), and retries what failed (connection reset,
read timeout, 403, 5xx, 429) with a doubling delay. Nothing a write does, fails at or
waits for reaches the watch: a slow PATCH, a refused one or an API server gone away cost
status freshness, never a change.

Replicas converge without a leader: the write is skipped when the status is already
right, a transition time is kept while the condition holds, and every write is
conditional on the resourceVersion it was computed from (a 409 is dropped: the event for
the newer version submits again), so a replica that has not yet seen a newer spec cannot
overwrite the status written for it.

Failures are logged at most once a minute, with how many there were, not once per
AuthConfig: 5,000 AuthConfigs and no RBAC grant for status are one warning, not 5,000.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from extauth.sources.apiserver import ApiError, ApiServer, path_of
from extauth.sources.tuning import DEFAULTS
from extauth.sources.watching import GROUP, PLURAL, VERSION, describe

log = logging.getLogger(__name__)

Owner = tuple[str, str]

# A condition message is bounded by the API (32 KiB); a reason this long is unreadable.
_MESSAGE_LIMIT = 4096
DEFAULT_TIMEOUT = 10.0
_RETRY_FIRST, _RETRY_MAX = 1.0, 60.0
_WARN_EVERY = 60.0


def status_for(
    generation: Any,
    problem: str | None,
    current: dict[str, Any],
    pruned: Sequence[str] = (),
    note: str | None = None,
) -> dict[str, Any] | None:
    """The status to write, or None when `current` already says it.

    A condition's lastTransitionTime is kept while its status holds, so two replicas
    computing the same status write the same bytes, and a second write is skipped.
    `pruned`: model fields the installed CRD would drop, said in the reason (visible with
    any CRD, `kubectl get -o wide`) and in a `SchemaCurrent` condition. `note`: what an
    accepted AuthConfig was refused of the policy (hosts another AuthConfig claimed first),
    said in the reason and the Accepted condition's message.
    """
    accepted = problem is None
    outdated = (
        f"the installed AuthConfig CRD prunes {', '.join(pruned)}: settings there are lost "
        "before extauth sees them; apply deploy/kubernetes/base/crd.yaml"
        if pruned
        else ""
    )
    reason = (problem or "; ".join(filter(None, (note, outdated))))[:_MESSAGE_LIMIT]
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


@dataclass(slots=True)
class _Work:
    resource_version: str
    status: dict[str, Any]
    due: float
    retry: float = _RETRY_FIRST


class StatusWriter:
    """The latest status per AuthConfig, written by one thread, rate-limited and retried."""

    def __init__(
        self,
        api: ApiServer,
        *,
        rate: float = DEFAULTS.status_rate,
        timeout: float = DEFAULT_TIMEOUT,
        count: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._api = api
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._timeout = timeout
        self._count = count  # a write's result: written, conflict, gone, failed
        self._pending: dict[Owner, _Work] = {}
        self._wake = threading.Condition()
        self._failures = 0
        self._warned = 0.0
        self.pruned: list[str] = []
        # Per AuthConfig: what the policy refused it (set_notes), and the latest version
        # submitted, to write the status again when only the note changes.
        self._notes: dict[Owner, str] = {}
        self._latest: dict[Owner, tuple[str, Any, str | None, dict[str, Any]]] = {}

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def submit(
        self,
        owner: Owner,
        resource_version: str,
        generation: Any,
        problem: str | None,
        current: dict[str, Any],
        *,
        only_if_behind: bool = False,
    ) -> None:
        """Queue the status for this version of the object (replacing any older one)."""
        with self._wake:
            self._latest[owner] = (resource_version, generation, problem, current)
            note = self._notes.get(owner)
        # Written for this generation already; unless the policy refuses it something,
        # which the status may not say yet (status_for answers None when it does).
        if only_if_behind and current.get("observedGeneration") == generation and note is None:
            return
        status = status_for(generation, problem, current, self.pruned, note)
        self._queue(owner, resource_version, status)

    def set_notes(self, notes: dict[Owner, str]) -> None:
        """What the policy now refuses each AuthConfig (none: absent); the statuses whose
        note changed are written again, from the latest version submitted."""
        with self._wake:
            changed = [
                owner
                for owner in set(self._notes) | set(notes)
                if self._notes.get(owner) != notes.get(owner) and owner in self._latest
            ]
            self._notes = dict(notes)
            latest = {owner: self._latest[owner] for owner in changed}
        for owner, (resource_version, generation, problem, current) in latest.items():
            status = status_for(generation, problem, current, self.pruned, notes.get(owner))
            self._queue(owner, resource_version, status)

    def _queue(self, owner: Owner, resource_version: str, status: dict[str, Any] | None) -> None:
        with self._wake:
            if status is None:
                self._pending.pop(owner, None)  # already right: replicas converge
                return
            self._pending[owner] = _Work(resource_version, status, time.monotonic())
            self._wake.notify()

    def forget(self, owner: Owner) -> None:
        """The object is gone: nothing to write."""
        with self._wake:
            self._pending.pop(owner, None)
            self._latest.pop(owner, None)

    def run(self, stop: threading.Event) -> None:
        """Write until `stop` is set (and `wake()` is called)."""
        while not stop.is_set():
            job = self._next(stop)
            if job is None:
                continue
            owner, work = job
            self._write(owner, work)
            if self._interval:
                stop.wait(self._interval)

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def retry_now(self) -> None:
        """The API server answers again: what waits for a retry is written now."""
        now = time.monotonic()
        with self._wake:
            for work in self._pending.values():
                work.due = min(work.due, now)
                work.retry = _RETRY_FIRST
            self._wake.notify_all()

    def _next(self, stop: threading.Event) -> tuple[Owner, _Work] | None:
        with self._wake:
            while not stop.is_set():
                now = time.monotonic()
                due = [(w.due, o) for o, w in self._pending.items()]
                if due:
                    when, owner = min(due)
                    if when <= now:
                        return owner, self._pending.pop(owner)
                    self._wake.wait(when - now)
                else:
                    self._wake.wait()
        return None

    def _write(self, owner: Owner, work: _Work) -> None:
        try:
            self._api.request(
                "PATCH",
                path_of(GROUP, VERSION, PLURAL, owner[0], owner[1]) + "/status",
                # The resourceVersion makes the write conditional: if the object changed
                # since (a newer spec, another replica's status), 409, and the event for
                # that change decides again.
                body={
                    "metadata": {"resourceVersion": work.resource_version},
                    "status": work.status,
                },
                content_type="application/merge-patch+json",
                timeout=self._timeout,
            )
        except ApiError as exc:
            if exc.status == 409:
                self._count("conflict")
                log.debug("kubernetes: status of AuthConfig %s: changed meanwhile", owner)
                return
            if exc.status == 404:
                self._count("gone")
                return
            self._failed(owner, work, describe(exc))
        except Exception as exc:  # a reset, a timeout: retried like any refusal
            self._failed(owner, work, describe(exc))
        else:
            self._count("written")

    def _failed(self, owner: Owner, work: _Work, why: str) -> None:
        self._count("failed")
        self._failures += 1
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            log.warning(
                "kubernetes: %d AuthConfig status write(s) failed (latest: %s, %s); "
                "retrying, decisions are not affected",
                self._failures,
                "/".join(owner),
                why,
            )
            self._warned, self._failures = now, 0
        with self._wake:
            if owner in self._pending:
                return  # a newer status replaced this one meanwhile
            work.due = now + work.retry
            work.retry = min(work.retry * 2, _RETRY_MAX)
            self._pending[owner] = work
            self._wake.notify()
