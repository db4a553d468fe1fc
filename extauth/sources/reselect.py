"""Reading Secrets again when what the AuthConfigs select changes.

A Secret no AuthConfig selects is kept as a stub (`records.Stub`: identity, version,
labels; no key material). When an AuthConfig is created or widened to select it, its
content is read again: a targeted GET for a few, a relist of the watcher for many (one
paged list rather than thousands of requests). When an AuthConfig is narrowed or deleted,
the Secrets it alone selected are dropped to stubs.

Neither direction opens a window for a revoked key: the AuthConfig's own change decides
what its rules admit the moment it applies; dropping a Secret only removes keys, and a
Secret read again is applied only if it is the version the watch last saw (the watch
brings any newer one, whole, since the selection changed before the read). A key that
becomes selected is admitted once its Secret is read: within a request, or a relist.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, cast

from extauth.apikeys import Owner
from extauth.resources import APIKEY_SECRET_TYPE
from extauth.sources import bounds
from extauth.sources.apiserver import ApiError, ApiServer, path_of
from extauth.sources.watching import API_VERSIONS, RawObject, Watcher, describe

if TYPE_CHECKING:
    from extauth.sources.kubernetes import Translator

log = logging.getLogger(__name__)

# More Secrets than this to read again in one watcher: relist it instead of GETs.
MAX_GETS = 50
# After a failed read, the next try (the Secret stays a stub, its key denied, meanwhile).
RETRY = 1.0


class _ReadFailed(Exception):
    """A read that failed (logged): tried again on the next walk."""


class Reselector:
    """One thread: on every change of the selection, walks each Secret translator's
    records (`Translator.reselect`) and reads what became selected."""

    def __init__(
        self,
        api: ApiServer,
        secrets: list[tuple[Watcher, Translator]],
        stop: threading.Event,
        *,
        request_timeout: float,
    ) -> None:
        self._api = api
        self._secrets = secrets
        self._stop = stop
        self._request_timeout = request_timeout
        self._wanted = threading.Event()
        self.passes = 0  # walks done: for tests
        self.reads = 0  # Secrets read again by GET
        self.relists = 0  # watchers asked to relist

    def soon(self) -> None:
        """The selection changed: walk again (changes in a burst share one walk)."""
        self._wanted.set()

    def run(self) -> None:
        while not self._stop.is_set():
            if not self._wanted.wait(0.5):
                continue
            self._wanted.clear()
            try:
                failed = self._pass()
            except Exception as exc:  # never expected; the type only (could quote data)
                log.error("kubernetes: rereading selected Secrets failed (%s)", type(exc).__name__)
                failed = True
            self.passes += 1
            if failed and not self._stop.wait(RETRY):
                self._wanted.set()

    def _pass(self) -> bool:
        failed = False
        for watcher, translator in self._secrets:
            wanted = translator.reselect()
            if len(wanted) > MAX_GETS:
                log.info(
                    "kubernetes: %s: %d Secret(s) newly selected; listing again",
                    watcher.where,
                    len(wanted),
                )
                self.relists += 1
                watcher.relist()
                continue
            for owner in wanted:
                if self._stop.is_set():
                    return False
                try:
                    item = self._read(owner)
                except _ReadFailed:
                    failed = True
                    continue
                if item is not None:
                    self.reads += 1
                    translator.fetched(item)
        return failed

    def _read(self, owner: Owner) -> RawObject | None:
        """The Secret now; None if it is gone or not an API-key Secret."""
        try:
            response = self._api.request(
                "GET",
                path_of("", "v1", "secrets", owner[0], owner[1]),
                timeout=(self._request_timeout, 30),
            )
            item = cast(RawObject, bounds.loads(response.data))
        except ApiError as exc:
            if exc.status == 404:
                return None  # deleted: the watch says so too
            log.warning("kubernetes: reading Secret %s: %s", "/".join(owner), describe(exc))
            raise _ReadFailed from None
        except Exception as exc:
            log.warning("kubernetes: reading Secret %s: %s", "/".join(owner), describe(exc))
            raise _ReadFailed from None
        if not isinstance(item, dict) or item.get("type") != APIKEY_SECRET_TYPE:
            return None
        item["apiVersion"], item["kind"] = API_VERSIONS["Secret"], "Secret"
        return item
