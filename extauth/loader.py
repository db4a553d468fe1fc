"""One file's text into definitions, or the problems that reject it: the one loader.

`serve` (for every file it reads, here or in the bulk reader's child), and `validate`
read files through this module, so they accept the same documents with the same
messages. A file in the layout `extauth keys new` writes is read by `secretscan`'s fast
path; anything else, or anything the fast path is not sure of, by `manifests`, which
also writes every message. Neither may raise: a file's failure, whatever it is, rejects
that file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from extauth import manifests, secretscan
from extauth.manifests import DEFAULT_LIMITS, Limits, Problem
from extauth.snapshot import Definition, definitions


@dataclass(frozen=True, slots=True)
class FileLoad:
    """What one file defines. Any problem that is not a warning rejects the file whole:
    then `definitions` is empty and the caller keeps the file's last good version."""

    definitions: tuple[Definition, ...]
    problems: tuple[Problem, ...] = ()
    # Documents skipped on purpose (Secrets of other types), for the log.
    ignored: tuple[str, ...] = ()
    # Read by the fast path: no problems, no notes.
    fast: bool = False

    @property
    def ok(self) -> bool:
        return not any(not p.warning for p in self.problems)


def load_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> FileLoad:
    """The file at `path`: read (size checked first, see `manifests.read_text`), then
    loaded as `load_text` does. Never raises."""
    text = manifests.read_text(path, limits)
    if isinstance(text, Problem):
        return FileLoad((), (text,))
    return load_text(text, str(path), limits)


def load_text(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> FileLoad:
    """A file's text as definitions, fast path first. Never raises."""
    try:
        keys = secretscan.scan(text, path, limits)
        if keys is not None:
            return FileLoad(keys, fast=True)
        result = manifests.parse_text(text, path, limits)
        found = definitions(result.resources) if result.ok else ()
        return FileLoad(found, result.problems, result.ignored)
    except Exception as exc:  # a last net: the messages above are the ones meant
        return FileLoad((), (Problem(path, 0, manifests.failure(exc)),))
