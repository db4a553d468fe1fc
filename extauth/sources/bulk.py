"""Reading many key files on two cores: the initial load of a large config directory.

A million keys are a thousand files or so, and reading them is Python work on one core
(`secretscan`: about 10 us per Secret). At startup nothing else needs the other core
yet, so the directory's second half is read by a child process (`spawn`: a fresh
interpreter, no forked threads) while this process reads the first half. The child
sends back plain rows, not ApiKeys (their mappings do not pickle, and shared mappings
must be shared in this process), a chunk of files at a time; turning a row into an
ApiKey costs a fraction of reading it. Measured on 2 cores, 1,000,000 keys in 1,000
files: 6.0-7.9 s against 8.5-9.0 s alone, alternating runs.

Only files in the fast path's layout are read by the child; for any other file it
answers None and the caller reads it as usual, so messages and rejections are exactly
those of a serial read. If the child cannot be started or fails, the caller reads
everything itself.

While serving, a single large file is read apart the same way (`read_apart`).
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import multiprocessing
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from extauth import loader, manifests, secretscan
from extauth.apikeys import ApiKey, Shared, api_key, shared_items
from extauth.changes import PlacedAuthConfig
from extauth.manifests import Limits
from extauth.origins import Problem

log = logging.getLogger(__name__)

# Below this many files to read, one process reads them (starting a child costs ~0.5 s).
MIN_FILES = 64

_Items = tuple[tuple[str, str], ...]
# namespace, name, labels, digest, next digest, metadata, line, document, hashed, expiry
Row = tuple[str, str, _Items, bytes, bytes | None, _Items, int, int, bool, float | None]


def worth_it(files: int) -> bool:
    return files >= MIN_FILES and len(os.sched_getaffinity(0)) > 1


# Files per task: results come back, and are turned into keys, a chunk at a time, so the
# rows in flight stay a few megabytes rather than half the directory.
CHUNK = 16


class Reader:
    """A child process reading files in chunks; results are taken in submission order."""

    def __init__(self, paths: Sequence[str], limits: Limits) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )
        self._pending = [
            (chunk, self._pool.submit(read_files, chunk, limits))
            for chunk in (list(paths[i : i + CHUNK]) for i in range(0, len(paths), CHUNK))
        ]

    def results(self, wait: bool) -> Iterator[tuple[str, list[Row] | None]]:
        """(path, rows) for each file of the finished chunks (all of them with `wait`);
        rows None: the caller reads that file itself."""
        while self._pending and (wait or self._pending[0][1].done()):
            chunk, future = self._pending.pop(0)
            try:
                found = future.result()
            except Exception as exc:  # a broken pool, a pickling problem: read here instead
                log.warning(
                    "config: the second process failed (%s); reading its files here",
                    type(exc).__name__,
                )
                found = [None] * len(chunk)
            yield from zip(chunk, found, strict=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def start(paths: Sequence[str], limits: Limits) -> Reader | None:
    """A child reading `paths`, or None when one cannot be started."""
    try:
        return Reader(paths, limits)
    except (OSError, RuntimeError) as exc:
        log.warning("config: no second process for the initial read (%s); reading alone", exc)
        return None


def read_files(paths: list[str], limits: Limits) -> list[list[Row] | None]:
    """In the child: each file's keys as rows, or None when the fast path declines it
    (or it cannot be read, is over a limit, or anything fails: the parent then reads it
    through the one loader, which gives the message)."""
    gc.disable()  # a short-lived process that frees nothing: the collector would only walk
    out: list[list[Row] | None] = []
    for path in paths:
        keys = None
        try:
            text = manifests.read_text(Path(path), limits)
            keys = secretscan.scan(text, path, limits) if isinstance(text, str) else None
        except Exception:  # noqa: S110 (that file alone: the parent reads it and reports why)
            pass
        out.append(None if keys is None else _rows(keys))
    return out


def _rows(keys: Sequence[ApiKey]) -> list[Row]:
    # One items tuple per distinct mapping object, so that pickling sends each once.
    items: dict[int, _Items] = {}

    def flat(mapping: Mapping[str, str]) -> _Items:
        found = items.get(id(mapping))
        if found is None:
            found = items[id(mapping)] = tuple(mapping.items())
        return found

    return [
        (
            key.namespace,
            key.name,
            flat(key.labels),
            key.digest,
            key.next_digest,
            flat(key.metadata),
            key.line,
            key.document,
            key.hashed,
            key.expires_at,
        )
        for key in keys
    ]


def keys_from_rows(rows: Sequence[Row], path: str) -> tuple[ApiKey, ...]:
    """In this process: the rows as ApiKeys, mappings shared, one path string per file."""
    mappings: dict[int, Shared] = {}

    def mapping(found: _Items) -> Shared:
        known = mappings.get(id(found))
        if known is None:
            known = mappings[id(found)] = shared_items(found)
        return known

    return tuple(
        api_key(
            namespace,
            name,
            mapping(labels),
            key_digest,
            next_digest,
            mapping(metadata),
            path,
            line,
            document,
            hashed,
            expires_at,
        )
        for (
            namespace,
            name,
            labels,
            key_digest,
            next_digest,
            metadata,
            line,
            document,
            hashed,
            expires_at,
        ) in rows
    )


# -- one large file, apart ------------------------------------------------------------------

# While serving, a changed file at least this large is read by a child process of its own:
# reading it in a thread competes for the GIL with Checks (the YAML parser keeps it for
# a whole document: a 200 MB document stalled every Check for 2.6 s), and a file that
# crashes its reader (the C parser on absurd nesting) crashes only the child.
LARGE_FILE = 4 << 20


# Rows per pickled chunk of a file read apart: unpickling is one call that keeps the GIL,
# and 100,000 rows at once kept it from Checks for ~110 ms; a chunk takes a few.
APART_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Apart:
    """What the child read, in forms that pickle: keys as rows (in chunks, each pickled
    apart), AuthConfigs as they are. `row_chunks` and `configs` are None when the file
    is rejected (see `problems`)."""

    row_chunks: list[bytes] | None
    configs: list[PlacedAuthConfig] | None
    problems: tuple[Problem, ...]
    ignored: tuple[str, ...] = ()

    def rows(self) -> Iterator[Row]:
        """In the parent: the rows, a chunk at a time."""
        for chunk in self.row_chunks or ():
            # Our own child's output, as ProcessPoolExecutor itself would unpickle it.
            rows: list[Row] = pickle.loads(chunk)  # noqa: S301
            yield from rows


def _chunked(rows: list[Row]) -> list[bytes]:
    return [pickle.dumps(rows[i : i + APART_CHUNK]) for i in range(0, len(rows), APART_CHUNK)]


def read_apart(path: Path, limits: Limits) -> Apart:
    """Read `path` in a fresh child process; blocks (call it from a worker thread)."""
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    )
    try:
        return pool.submit(read_one, str(path), limits).result()
    except concurrent.futures.process.BrokenProcessPool:
        problem = Problem(str(path), 0, "its reader process died reading it")
        return Apart(None, None, (problem,))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def read_one(path: str, limits: Limits) -> Apart:
    """In the child: one file through the one loader, keys hashed here."""
    load = loader.load_file(Path(path), limits)
    if not load.ok:
        return Apart(None, None, load.problems, load.ignored)
    return Apart(
        _chunked(_rows([d for d in load.definitions if isinstance(d, ApiKey)])),
        [d for d in load.definitions if isinstance(d, PlacedAuthConfig)],
        load.problems,
        load.ignored,
    )
