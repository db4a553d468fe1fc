"""A directory of YAML manifests, watched with inotify (watchfiles).

Each file is accepted or rejected whole. A rejected file keeps contributing its last good
version (or nothing, if it never had one), so a typo in one Secret never takes down the
others, and never silently revokes the edited one either. Deleting a file removes what it
held: that is how a key is revoked. If the directory itself disappears (an unmounted
volume, a bad deploy), that is an error of the source, not a revocation of everything:
the last good state keeps serving until the directory is back.

Files are re-read only when their (inode, size, mtime) changes, so a rescan after an
event costs a directory walk and a few stat calls, and what is published is the
difference: the definitions of the changed files only (see policy.py for why that matters
at a million keys). Files of Secrets in the layout `extauth keys new` writes are read by
`secretscan`'s fast path; anything else by the general loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from extauth import loader, manifests, memory
from extauth.manifests import DEFAULT_LIMITS, Limits
from extauth.snapshot import Change, Definition, Removal, removal_of
from extauth.sources import bulk

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Accepted:
    signature: _Signature
    definitions: tuple[Definition, ...]


class ConfigDirError(Exception):
    """The configured path is not a readable directory or YAML file."""


class FileSource:
    def __init__(
        self,
        root: Path,
        *,
        step_ms: int = 50,
        debounce_ms: int = 400,
        resync_seconds: float = 2.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.root = root
        self._limits = limits
        self._step_ms = step_ms
        self._debounce_ms = debounce_ms
        self._resync_seconds = resync_seconds
        self._missing = False
        self._accepted: dict[Path, _Accepted] = {}
        # Signature of files last seen broken, so each broken version is reported once.
        self._rejected: dict[Path, _Signature] = {}

    def scan(self) -> Change:
        """What changed on disk since the last scan (everything, the first time)."""
        with memory.collector_paused():
            return self._scan()

    def _scan(self) -> Change:
        if not self.root.exists():
            raise ConfigDirError(f"{self.root} does not exist")
        upserted: list[Definition] = []
        removed: list[Removal] = []
        present = manifests.yaml_files(self.root)
        for gone in sorted(set(self._accepted) - set(present)):
            log.info("config: %s removed", gone)
            removed.extend(removal_of(d) for d in self._accepted.pop(gone).definitions)
        for gone in set(self._rejected) - set(present):
            del self._rejected[gone]
        changed: list[tuple[Path, _Signature]] = []
        for path in present:
            try:
                stat = path.stat()
            except OSError:
                continue  # removed between listing and stat: the next event rescans
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            accepted = self._accepted.get(path)
            if accepted and accepted.signature == signature:
                continue
            if self._rejected.get(path) == signature:
                continue
            changed.append((path, signature))
        read = self._read_all(changed)
        # Applied in directory order whoever read them: which of two Secrets claiming the
        # same key came first must not depend on it.
        for path, signature in changed:
            definitions = read[path]
            if definitions is None:
                continue
            accepted = self._accepted.get(path)
            self._accepted[path] = _Accepted(signature, definitions)
            upserted.extend(definitions)
            if accepted is not None:
                kept = {(type(d), d.owner) for d in definitions}
                removed.extend(
                    removal_of(d) for d in accepted.definitions if (type(d), d.owner) not in kept
                )
        return Change(tuple(upserted), tuple(removed))

    def _read_all(
        self, changed: list[tuple[Path, _Signature]]
    ) -> dict[Path, tuple[Definition, ...] | None]:
        """Each changed file's definitions (None: rejected); many files on two cores."""
        read: dict[Path, tuple[Definition, ...] | None] = {}
        reader = None
        theirs: dict[str, tuple[Path, _Signature]] = {}
        if bulk.worth_it(len(changed)):
            half = changed[len(changed) // 2 :]
            theirs = {str(path): (path, signature) for path, signature in half}
            reader = bulk.start(list(theirs), self._limits)
        mine = changed[: len(changed) // 2] if reader else changed
        try:
            for path, signature in mine:
                read[path] = self._read(path, signature, path in self._accepted)
                if reader is not None:
                    self._take(reader.results(wait=False), theirs, read)
            if reader is not None:
                self._take(reader.results(wait=True), theirs, read)
        finally:
            if reader is not None:
                reader.close()
        return read

    def _take(
        self,
        results: Iterator[tuple[str, list[bulk.Row] | None]],
        theirs: dict[str, tuple[Path, _Signature]],
        read: dict[Path, tuple[Definition, ...] | None],
    ) -> None:
        """The child's files as keys; those it declined, read here."""
        for name, rows in results:
            path, signature = theirs[name]
            if rows is None:
                read[path] = self._read(path, signature, path in self._accepted)
                continue
            read[path] = self._fast(path, bulk.keys_from_rows(rows, name))

    def _fast(self, path: Path, keys: tuple[Definition, ...]) -> tuple[Definition, ...]:
        """A file the fast path read (here or in the child): accepted whole."""
        self._rejected.pop(path, None)
        log.info("config: loaded %s (%d Secret(s))", path, len(keys))
        return keys

    def _read(
        self, path: Path, signature: _Signature, had_good: bool
    ) -> tuple[Definition, ...] | None:
        """The file's definitions, or None when it is rejected."""
        result = loader.load_file(path, self._limits)
        if result.fast:
            return self._fast(path, result.definitions)
        for note in result.ignored:
            log.info("config: %s: %s", path, note)
        for problem in result.problems:
            if problem.warning:
                log.warning("config: %s", problem)
        if not result.ok:
            self._rejected[path] = signature
            keeping = "keeping its last good version" if had_good else "not loaded"
            for problem in result.problems:
                if not problem.warning:
                    log.error("config: rejected %s (%s): %s", path, keeping, problem)
            return None
        self._rejected.pop(path, None)
        log.info("config: loaded %s (%d resource(s))", path, len(result.definitions))
        return result.definitions

    async def changes(self) -> AsyncGenerator[Change, None]:
        """The initial state, then what changed, after every change on disk.

        A watcher task wakes the loop on inotify events; a periodic resync (stat calls
        only) also wakes it, which covers changes made before the watcher attached and
        events the kernel dropped. Raises ConfigDirError before the first change if the
        directory is missing; later failures keep the last good state and are retried.
        """
        wake = asyncio.Event()
        watcher = asyncio.create_task(self._watch(wake))
        try:
            # Parsing runs in a worker thread: a large file must not stall the event loop,
            # which keeps answering Checks from the current policy meanwhile.
            yield await asyncio.to_thread(self.scan)
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._resync_seconds)
                wake.clear()
                try:
                    change = await asyncio.to_thread(self.scan)
                except ConfigDirError as exc:
                    if not self._missing:
                        log.error("config: %s; keeping the last good state", exc)
                    self._missing = True
                    continue
                except Exception as exc:
                    # Never let one bad scan end the watch: later changes must still apply.
                    log.error(
                        "config: scanning %s failed (%s); keeping the last good state",
                        self.root,
                        type(exc).__name__,
                    )
                    continue
                if self._missing:
                    log.info("config: %s is back", self.root)
                    self._missing = False
                if not change.empty:
                    yield change
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, wake: asyncio.Event) -> None:
        backoff = 0.1
        while True:
            try:
                async for _ in watchfiles.awatch(
                    self.root,
                    step=self._step_ms,
                    debounce=self._debounce_ms,
                    ignore_permission_denied=True,
                ):
                    wake.set()
                    backoff = 0.1
            except (OSError, RuntimeError) as exc:
                if not self._missing:
                    log.warning("config: watching %s failed (%s); retrying", self.root, exc)
            wake.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
