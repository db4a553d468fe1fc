"""A directory of YAML manifests, watched with inotify.

Each file is accepted or rejected whole, and alone: whatever goes wrong while one file is
read (a parse error, a RecursionError, a bug) rejects that file with a `file: message`
log line and nothing else; every other file's change and every removal is published all
the same. A rejected file keeps contributing its last good version (or nothing, if it
never had one), so a typo in one Secret never takes down the others, and never silently
revokes the edited one either. Deleting a file removes what it held: that is how a key
is revoked. What cannot be read is not gone: if the directory itself disappears or
cannot be listed, or a subdirectory or file cannot be read, the last good state of what
is there keeps serving, the problem is logged and counted (`unreadable`, exported as a
metric), and an unreadable directory at startup is an error (`ConfigDirError`).

Only complete files apply. A file renamed into place is read at once; a file written in
place is read once its writer closes it (inotify's IN_CLOSE_WRITE), never half-written.
Where inotify cannot vouch for a file (no inotify, no watch left, a queue overflow, a
directory watched only just now), a changed file is read once its (inode, size, mtime)
has stayed the same for one resync period.

Files are re-read only when their (inode, size, mtime) changes, so a rescan costs a
directory walk and a few stat calls, and what is published is the difference: the
definitions of the changed files only (see policy.py for why that matters at a million
keys). While the service runs, each changed file is read in a worker thread of its own
(a large one in a child process of its own: `bulk.read_apart`), and removals and other
files' changes are published while a large file is still being read. Files of Secrets
in the layout `extauth keys new` writes are read by `secretscan`'s fast path; anything
else by the general loader.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from extauth import loader, manifests, memory
from extauth.changes import Change, Definition, Removal, removal_of
from extauth.manifests import DEFAULT_LIMITS, Limits
from extauth.origins import Problem
from extauth.policy import Policy
from extauth.sourcehealth import SourceHealth
from extauth.sources import bulk, inotify
from extauth.sources.listing import Listing, ListingError, Signature, walk

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Accepted:
    signature: Signature
    definitions: tuple[Definition, ...]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One read of one file: its definitions, or None when it is rejected; `unreadable`
    says why the file could not even be opened (it then keeps its last good version)."""

    definitions: tuple[Definition, ...] | None
    unreadable: str | None = None
    problem: str | None = None  # why it is rejected (the first error), for the status page


class ConfigDirError(Exception):
    """The configured path is not a readable directory or YAML file."""


def _always(path: Path, signature: Signature) -> bool:
    return True


class FileSource:
    def __init__(
        self,
        root: Path,
        *,
        resync_seconds: float = 2.0,
        use_inotify: bool = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.root = root
        self._limits = limits
        self._resync_seconds = resync_seconds
        self._use_inotify = use_inotify
        self._missing = False
        self._accepted: dict[Path, _Accepted] = {}
        # Signature of files last seen broken, so each broken version is reported once.
        self._rejected: dict[Path, Signature] = {}
        # What could not be read, and why: directories and entries from the last listing,
        # files that could not be opened.
        self._unreadable_entries: dict[Path, str] = {}
        self._unreadable_files: dict[Path, str] = {}
        self._notes: set[tuple[Path, str]] = set()
        self.listing = Listing()
        self.health = SourceHealth(
            "files",
            errors=("unlistable", "unreadable"),
            restarts=("inotify_overflow",),
            kinds=("File",),
        )
        self.health.rejected_now = lambda: len(self._rejected)
        self.health.rejected_list = self._rejected_list
        self._rejected_reasons: dict[Path, str] = {}

    @property
    def unreadable(self) -> int:
        """Paths below the root that cannot be read now (their last good state serves)."""
        return len(self._unreadable_entries) + len(self._unreadable_files)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        gauge = Gauge(
            "extauth_config_unreadable_paths",
            "Files and directories below --config-dir that cannot be read; what was loaded "
            "from them keeps serving.",
            registry=registry,
        )
        # Counted at scrape time.
        gauge.set_function(lambda: float(self.unreadable))

    def problems(self) -> list[str]:
        """For /readyz, beside a 200: the last good state of what cannot be read serves."""
        problem = self.health.view().problem
        return [problem] if problem else []

    def policy_published(self, policy: Policy) -> None:
        """Nothing to write back: a file has no status (problems go to the log)."""

    # -- one scan, read in full (the initial state, tests) ---------------------------------

    def scan(self) -> Change:
        """What changed on disk since the last scan (everything, the first time), every
        changed file read now. Raises ConfigDirError, changing nothing, when the root
        cannot be read."""
        with memory.collector_paused():
            listing = self._list()
            changed = list(self._changed(listing, _always))
            read = self._read_all(changed)
            upserted: list[Definition] = []
            removed = self._remove_gone(listing)
            for path, signature in changed:
                self._commit(path, signature, read[path], upserted, removed)
        self._synced()
        return Change(tuple(upserted), tuple(removed))

    def _rejected_list(self) -> list[tuple[str, str, str]]:
        return [
            ("File", str(path), self._rejected_reasons.get(path, "rejected"))
            for path in sorted(self._rejected)
        ]

    def _synced(self) -> None:
        """A rescan is complete: current, unless something below the root is unreadable."""
        if self.unreadable:
            self.health.down(f"{self.unreadable} path(s) below {self.root} cannot be read")
        else:
            self.health.synced()

    def _list(self) -> Listing:
        try:
            listing = walk(self.root)
        except ListingError as exc:
            raise ConfigDirError(str(exc)) from None
        for path, reason in listing.unreadable.items():
            if self._unreadable_entries.get(path) != reason:
                log.error("config: %s %s; keeping what was loaded from there", path, reason)
                self.health.error("unreadable")
        for path in self._unreadable_entries.keys() - listing.unreadable.keys():
            log.info("config: %s is readable again", path)
        self._unreadable_entries = dict(listing.unreadable)
        for path, note in set(listing.notes) - self._notes:
            log.warning("config: %s: %s", path, note)
        self._notes = set(listing.notes)
        self.listing = listing
        return listing

    def _changed(
        self, listing: Listing, ready: Callable[[Path, Signature], bool]
    ) -> Iterator[tuple[Path, Signature]]:
        for path, signature in listing.files.items():
            accepted = self._accepted.get(path)
            if accepted and accepted.signature == signature:
                continue
            if self._rejected.get(path) == signature:
                continue
            if ready(path, signature):
                yield path, signature

    def _remove_gone(self, listing: Listing) -> list[Removal]:
        """Removals for the files no longer there. A file below something that could not
        be read is not known to be gone: it stays."""
        removed: list[Removal] = []
        for gone in sorted(set(self._accepted) - set(listing.files)):
            if listing.shadowed(gone):
                continue
            log.info("config: %s removed", gone)
            removed.extend(removal_of(d) for d in self._accepted.pop(gone).definitions)
        for gone in set(self._rejected) - set(listing.files):
            del self._rejected[gone]
            self._rejected_reasons.pop(gone, None)
        for gone in set(self._unreadable_files) - set(listing.files):
            del self._unreadable_files[gone]
        return removed

    def _commit(
        self,
        path: Path,
        signature: Signature,
        outcome: _Outcome,
        upserted: list[Definition],
        removed: list[Removal],
    ) -> None:
        """Take one file's read into the state, and its difference into the change."""
        if outcome.unreadable is not None:
            # Not marked rejected: a chmod changes no signature, so it is tried again at
            # every rescan (an open call) and reported once.
            if self._unreadable_files.get(path) != outcome.unreadable:
                self.health.error("unreadable")
                log.error(
                    "config: cannot read %s (%s); %s",
                    path,
                    outcome.unreadable,
                    _keeping(path in self._accepted),
                )
            self._unreadable_files[path] = outcome.unreadable
            return
        if self._unreadable_files.pop(path, None) is not None:
            log.info("config: %s is readable again", path)
        found = outcome.definitions
        if found is None:
            self._rejected[path] = signature
            self._rejected_reasons[path] = outcome.problem or "rejected"
            self.health.rejected("File")
            return
        self._rejected.pop(path, None)
        self._rejected_reasons.pop(path, None)
        accepted = self._accepted.get(path)
        self._accepted[path] = _Accepted(signature, found)
        upserted.extend(found)
        if accepted is not None:
            kept = {(type(d), d.owner) for d in found}
            removed.extend(
                removal_of(d) for d in accepted.definitions if (type(d), d.owner) not in kept
            )

    # -- reading files ---------------------------------------------------------------------

    def _read_all(self, changed: list[tuple[Path, Signature]]) -> dict[Path, _Outcome]:
        """Each changed file's outcome; many files on two cores."""
        read: dict[Path, _Outcome] = {}
        reader = None
        theirs: dict[str, tuple[Path, Signature]] = {}
        if bulk.worth_it(len(changed)):
            half = changed[len(changed) // 2 :]
            theirs = {str(path): (path, signature) for path, signature in half}
            reader = bulk.start(list(theirs), self._limits)
        mine = changed[: len(changed) // 2] if reader else changed
        try:
            for path, _ in mine:
                read[path] = self._read(path, path in self._accepted)
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
        theirs: dict[str, tuple[Path, Signature]],
        read: dict[Path, _Outcome],
    ) -> None:
        """The child's files as keys; those it declined (or failed on), read here."""
        for name, rows in results:
            path, _ = theirs[name]
            if rows is None:
                read[path] = self._read(path, path in self._accepted)
                continue
            try:
                read[path] = self._fast(path, bulk.keys_from_rows(rows, name))
            except Exception as exc:
                read[path] = self._failed(path, exc, path in self._accepted)

    def _fast(self, path: Path, keys: tuple[Definition, ...]) -> _Outcome:
        """A file the fast path read (here or in the child): accepted whole."""
        log.info("config: loaded %s (%d Secret(s))", path, len(keys))
        return _Outcome(keys)

    def _read(self, path: Path, had_good: bool) -> _Outcome:
        """The file's outcome. Never raises: whatever fails, fails for this file alone.
        Changes no state, so that several files can be read at once."""
        try:
            return self._load(path, had_good)
        except Exception as exc:
            return self._failed(path, exc, had_good)

    def _failed(self, path: Path, exc: BaseException, had_good: bool) -> _Outcome:
        reason = manifests.failure(exc)  # its type and place only: never its message
        log.error("config: rejected %s (%s): %s: %s", path, _keeping(had_good), path, reason)
        return _Outcome(None, problem=reason)

    def _load(self, path: Path, had_good: bool) -> _Outcome:
        unopenable = _unopenable(path)
        if unopenable is not None:
            return _Outcome(None, unopenable)
        result = loader.load_file(path, self._limits)
        if result.fast:
            return self._fast(path, result.definitions)
        found = result.definitions if result.ok else None
        return self._report(path, found, result.problems, result.ignored, had_good)

    def _report(
        self,
        path: Path,
        found: tuple[Definition, ...] | None,
        problems: Iterable[Problem],
        ignored: Iterable[str],
        had_good: bool,
    ) -> _Outcome:
        """Log what a read of the general loader found; its outcome."""
        for note in ignored:
            log.info("config: %s: %s", path, note)
        first: str | None = None
        for problem in problems:
            if problem.warning:
                log.warning("config: %s", problem)
            elif found is None:
                log.error("config: rejected %s (%s): %s", path, _keeping(had_good), problem)
                first = first or str(problem)
        if found is not None:
            log.info("config: loaded %s (%d resource(s))", path, len(found))
        return _Outcome(found, problem=first)

    def _read_apart(self, path: Path, had_good: bool) -> _Outcome:
        """`_read`, in a child process (bulk.read_apart): for large files while serving."""
        try:
            unopenable = _unopenable(path)
            if unopenable is not None:
                return _Outcome(None, unopenable)
            apart = bulk.read_apart(path, self._limits)
            found: tuple[Definition, ...] | None = None
            if apart.row_chunks is not None and apart.configs is not None:
                keys = bulk.keys_from_rows(list(apart.rows()), str(path))
                found = (*keys, *apart.configs)
            return self._report(path, found, apart.problems, apart.ignored, had_good)
        except Exception as exc:
            return self._failed(path, exc, had_good)

    def _read_alone(self, path: Path, had_good: bool, size: int) -> _Outcome:
        if size >= bulk.LARGE_FILE:
            return self._read_apart(path, had_good)
        with memory.collector_paused():
            return self._read(path, had_good)

    # -- watching --------------------------------------------------------------------------

    async def changes(self) -> AsyncGenerator[Change, None]:
        """The initial state, then what changed, after every change on disk.

        inotify events wake the loop at once; a periodic resync (stat calls only) also
        wakes it, which covers events the kernel dropped. Raises ConfigDirError before
        the first change if the root cannot be read; later failures keep the last good
        state and are retried.
        """
        wake = asyncio.Event()
        watch = _Watch(self._resync_seconds, wake, self._use_inotify, self.health)
        # The listing that finds removals has a thread of its own: on the pool that reads
        # files, it would wait behind every pending read (thousands of files landing at
        # once held a revocation for seconds).
        lister = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="extauth-listing")
        reads: dict[Path, tuple[Signature, asyncio.Task[_Outcome]]] = {}
        waiter: asyncio.Future[Any] | None = None
        try:
            # Watches first, so that nothing written during the initial read goes unseen.
            with contextlib.suppress(ListingError):
                watch.follow((await asyncio.to_thread(walk, self.root)).directories, trusted=True)
            # Parsing runs in worker threads: a large file must not stall the event loop,
            # which keeps answering Checks from the current policy meanwhile.
            yield await asyncio.to_thread(self.scan)
            watch.follow(self.listing.directories)
            while True:
                waiter = asyncio.ensure_future(wake.wait())
                await asyncio.wait(
                    [waiter, *(task for _, task in reads.values())],
                    timeout=self._resync_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                await asyncio.sleep(0.02)  # let a burst of events arrive together
                wake.clear()
                watch.drain()
                change = await self._step(watch, reads, lister)
                if change is not None and not change.empty:
                    yield change
        finally:
            if waiter is not None:
                waiter.cancel()
            for _, task in reads.values():
                task.cancel()
            watch.close()
            lister.shutdown(wait=False)

    async def _step(
        self,
        watch: _Watch,
        reads: dict[Path, tuple[Signature, asyncio.Task[_Outcome]]],
        lister: concurrent.futures.Executor,
    ) -> Change | None:
        """One rescan: removals now, the reads that finished, new reads started."""
        try:
            listing = await asyncio.get_running_loop().run_in_executor(lister, self._list)
        except ConfigDirError as exc:
            if not self._missing:
                log.error("config: %s; keeping the last good state", exc)
                self.health.error("unlistable")
            self.health.down(f"{exc}; serving the last good state")
            self._missing = True
            # Reads that finished meanwhile are dropped (their files are read again once
            # the directory is back), so that they do not wake the loop again and again.
            for path in [p for p, (_, task) in reads.items() if task.done()]:
                del reads[path]
            return None
        if self._missing:
            log.info("config: %s is back", self.root)
            self._missing = False
        watch.follow(listing.directories)
        watch.forget(listing.files)
        upserted: list[Definition] = []
        removed = self._remove_gone(listing)
        for path, (signature, task) in list(reads.items()):
            if not task.done():
                continue
            del reads[path]
            outcome = task.result()
            # Changed or gone while it was read: that read is stale; read it again.
            if listing.files.get(path) == signature:
                self._commit(path, signature, outcome, upserted, removed)
        for path, signature in self._changed(listing, watch.ready):
            if path in reads:
                continue  # being read: looked at again when that read is done
            task = asyncio.ensure_future(
                asyncio.to_thread(self._read_alone, path, path in self._accepted, signature[1])
            )
            reads[path] = (signature, task)
        if not reads:
            self._synced()
        return Change(tuple(upserted), tuple(removed))


def _unopenable(path: Path) -> str | None:
    """Why the file cannot be opened, if it cannot (it then keeps its last good state).
    Non-blocking: a FIFO renamed over the file since the listing must not hold the
    thread until a writer comes (reading it then says it is not a regular file)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except FileNotFoundError:
        return None  # gone: the next listing says so
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _keeping(had_good: bool) -> str:
    return "keeping its last good version" if had_good else "not loaded"


class _Watch:
    """inotify on every directory of the tree, and what it says about which changed
    files are complete; where it cannot say, time does (see the module's docstring)."""

    def __init__(
        self,
        period: float,
        wake: asyncio.Event,
        enabled: bool,
        health: SourceHealth | None = None,
    ) -> None:
        self._period = period
        self._health = health or SourceHealth("files")
        self._wake = wake
        self._inotify: inotify.Inotify | None = None
        self._directories: dict[Path, int] = {}
        self._paths: dict[int, Path] = {}
        self._since: dict[Path, float] = {}  # when each directory's watch began
        # The directory each path led to when its watch was added (device, inode).
        self._identity: dict[Path, tuple[int, int]] = {}
        self._writing: set[Path] = set()
        self._distrust_until = 0.0
        self._complete = True  # every directory has a watch
        self._stable: dict[Path, tuple[Signature, float]] = {}
        if not enabled:
            return
        try:
            self._inotify = inotify.Inotify()
        except OSError as exc:
            log.warning("config: no inotify (%s); polling every %.1f s", exc, period)
            return
        asyncio.get_running_loop().add_reader(self._inotify.fd, self._readable)

    def _readable(self) -> None:
        self.drain()
        self._wake.set()

    def drain(self) -> None:
        if self._inotify is None:
            return
        for event in self._inotify.read():
            self._handle(event)

    def _handle(self, event: inotify.Event) -> None:
        if event.mask & inotify.IN_Q_OVERFLOW:
            log.warning("config: inotify queue overflow; rescanning")
            self._health.restarted("inotify_overflow")
            self._writing.clear()
            self._distrust_until = time.monotonic() + self._period
            return
        if event.mask & inotify.IN_IGNORED:
            gone = self._paths.pop(event.wd, None)
            if gone is not None and self._directories.get(gone) == event.wd:
                del self._directories[gone]
            return
        directory = self._paths.get(event.wd)
        if directory is None or not event.name:
            return
        path = directory / event.name
        if event.mask & inotify.IN_MODIFY:
            self._writing.add(path)
        elif event.mask & inotify.IN_ATTRIB:
            pass  # chmod, touch, chown: says nothing about whether a writer is done
        else:
            # Closed after writing, renamed in or out, created anew, deleted.
            self._writing.discard(path)

    def follow(self, directories: Iterable[Path], trusted: bool = False) -> None:
        """Watch these directories (and stop watching the others). A directory watched
        only now may have had files written in it unseen: its events are trusted after
        one period, unless the caller has read nothing from it yet (`trusted`)."""
        if self._inotify is None:
            return
        wanted = set(directories)
        identities: dict[Path, tuple[int, int] | None] = {}
        for directory in wanted:
            try:
                found = directory.stat()
                identities[directory] = (found.st_dev, found.st_ino)
            except OSError:
                identities[directory] = None
        # A watch follows the directory it was added on, not the path: a path that now
        # leads elsewhere (a symlink retargeted, a directory renamed over) is watched anew.
        moved = {
            d for d in wanted & self._directories.keys() if identities[d] != self._identity.get(d)
        }
        for gone in (self._directories.keys() - wanted) | moved:
            wd = self._directories.pop(gone)
            self._paths.pop(wd, None)
            self._since.pop(gone, None)
            self._identity.pop(gone, None)
            self._inotify.remove(wd)
        complete = True
        for directory in wanted - self._directories.keys():
            try:
                wd = self._inotify.add(str(directory))
            except OSError as exc:
                if self._complete:
                    log.warning("config: cannot watch %s (%s); polling it", directory, exc)
                complete = False
                continue
            self._directories[directory] = wd
            self._paths[wd] = directory
            identity = identities[directory]
            if identity is not None:
                self._identity[directory] = identity
            trust = trusted and directory not in moved
            self._since[directory] = -float("inf") if trust else time.monotonic()
        self._complete = complete

    def forget(self, present: Iterable[Path]) -> None:
        keep = set(present)
        for path in self._stable.keys() - keep:
            del self._stable[path]
        self._writing &= keep

    def ready(self, path: Path, signature: Signature) -> bool:
        """Whether a changed file is complete, so that it may be read now."""
        now = time.monotonic()
        since = self._since.get(path.parent)
        if (
            self._inotify is not None
            and self._complete
            and now >= self._distrust_until
            and since is not None
            and now - since >= self._period
            # A symlinked file is written under its target's name, which may be in
            # no watched directory: its events say nothing here.
            and not path.is_symlink()
        ):
            self._stable.pop(path, None)
            return path not in self._writing
        seen = self._stable.get(path)
        if seen is None or seen[0] != signature:
            self._stable[path] = (signature, now)
            return False
        if path in self._writing or now - seen[1] < self._period:
            return False
        del self._stable[path]
        return True

    def close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
