"""One file's text into definitions, or the problems that reject it: the one loader.

`serve` (for every file it reads, here or in the bulk reader's child), and `validate`
read files through this module, so they accept the same documents with the same
messages. A file in the layout `extauth keys new` writes is read by `secretscan`'s fast
path; anything else, or anything the fast path is not sure of, by `manifests`, which
also writes every message. Neither may raise: a file's failure, whatever it is, rejects
that file alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from extauth import manifests, secretscan
from extauth.apikeys import ApiKey
from extauth.changes import Definition, PlacedAuthConfig
from extauth.manifests import DEFAULT_LIMITS, Limits, Loaded
from extauth.origins import Origin, Problem
from extauth.resources import AuthConfig, Secret


def secret_key(secret: Secret, origin: Origin) -> ApiKey:
    """A validated Secret as the key it holds: hashed here, once."""
    meta = secret.metadata
    return ApiKey.from_entries(meta.namespace, meta.name, meta.labels, secret.entries(), origin)


def definitions(loaded: Iterable[Loaded]) -> tuple[Definition, ...]:
    """Validated resources as definitions: a Secret's key is hashed here, once."""
    found: list[Definition] = []
    for item in loaded:
        if isinstance(item.resource, AuthConfig):
            found.append(PlacedAuthConfig(item.resource, item.origin))
        else:
            found.append(secret_key(item.resource, item.origin))
    return tuple(found)


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
