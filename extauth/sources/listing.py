"""Which files of a config path are manifests: one rule for `serve` and `validate`.

The rule: regular files named `*.yaml` or `*.yml` (any case), below the path, whose name
and every directory on the way do not start with "." (a Kubernetes ConfigMap volume
holds each file twice, `x.yaml` and `..2024_01_01/x.yaml`; editors leave `.x.yaml.swp`).
A path that is itself a file is read when its name follows the same rule, and refused
otherwise, so `validate notes.txt` does not say OK about a file `serve` would ignore.

Errors are reported, never swallowed: a subdirectory that cannot be listed, or an entry
that cannot be examined, is in `unreadable`, and its files are neither listed nor gone
(the caller keeps what it had from there). Symlinked subdirectories are followed, each
directory read once: real directories first, then symlinked ones in path order, so a
link to a directory already read (or a loop) is skipped with a note, and the same file
is never listed under two directories.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".yaml", ".yml")
RULE = "*.yaml or *.yml files whose names do not start with '.'"

Signature = tuple[int, int, int]  # inode, size, mtime (ns): a file's version


class ListingError(Exception):
    """The path itself cannot be read (or is not selected): nothing below it is known."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_manifest_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(SUFFIXES)


def signature(found: os.stat_result) -> Signature:
    return (found.st_ino, found.st_size, found.st_mtime_ns)


@dataclass
class Listing:
    # Every manifest, by path (sorted), with its signature.
    files: dict[Path, Signature] = field(default_factory=dict)
    # Every directory read, for watches.
    directories: list[Path] = field(default_factory=list)
    # Directories that could not be listed and entries that could not be examined: why.
    unreadable: dict[Path, str] = field(default_factory=dict)
    # Worth a warning, not errors: links skipped, an empty directory.
    notes: list[tuple[Path, str]] = field(default_factory=list)

    def shadowed(self, path: Path) -> bool:
        """Whether `path` lies in (or is) something that could not be read: its absence
        from `files` then says nothing about whether it is gone."""
        return any(path == bad or path.is_relative_to(bad) for bad in self.unreadable)


def walk(root: Path) -> Listing:
    """The manifests below `root` (or `root` itself, a file). Raises ListingError when
    `root` is missing, unreadable or a file the rule does not select."""
    try:
        found = root.stat()
    except OSError as exc:
        reason = "does not exist" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise ListingError(root, reason or "cannot be examined") from None
    listing = Listing()
    if not stat.S_ISDIR(found.st_mode):
        if not stat.S_ISREG(found.st_mode):
            raise ListingError(root, "not a directory or a regular file")
        if not is_manifest_name(root.name):
            raise ListingError(root, f"not read: extauth reads only {RULE}")
        listing.files[root] = signature(found)
        return listing
    try:
        with os.scandir(root):
            pass
    except OSError as exc:
        raise ListingError(root, f"cannot be listed: {exc.strerror}") from None
    seen = {(found.st_dev, found.st_ino)}
    linked: list[tuple[Path, os.stat_result]] = []
    _walk_tree(root, listing, seen, linked)
    # Symlinked directories after every real one, so that a link into the tree is the
    # one skipped; each may lead to more links, taken in path order as well.
    while linked:
        linked.sort(key=lambda item: str(item[0]))
        path, target = linked.pop(0)
        if (target.st_dev, target.st_ino) in seen:
            listing.notes.append(
                (
                    path,
                    "a symlink to a directory already read (a loop, or a second link to it); "
                    "skipped",
                )
            )
            continue
        seen.add((target.st_dev, target.st_ino))
        _walk_tree(path, listing, seen, linked)
    listing.files = dict(sorted(listing.files.items(), key=lambda item: str(item[0])))
    if not listing.files and not listing.unreadable:
        listing.notes.append((root, f"no {RULE} here"))
    return listing


def _walk_tree(
    top: Path,
    listing: Listing,
    seen: set[tuple[int, int]],
    linked: list[tuple[Path, os.stat_result]],
) -> None:
    """`top` and the real directories below it; symlinked ones go to `linked`."""
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            listing.unreadable[directory] = f"cannot be listed: {exc.strerror}"
            continue
        listing.directories.append(directory)
        below: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = directory / entry.name
            try:
                found = entry.stat()  # follows symlinks
                is_link = entry.is_symlink()
            except FileNotFoundError:
                continue  # gone since the listing, or a dangling link: not a file here
            except OSError as exc:
                listing.unreadable[path] = f"cannot be examined: {exc.strerror}"
                continue
            if stat.S_ISDIR(found.st_mode):
                if is_link:
                    linked.append((path, found))
                elif (found.st_dev, found.st_ino) not in seen:
                    seen.add((found.st_dev, found.st_ino))
                    below.append(path)
            elif stat.S_ISREG(found.st_mode) and is_manifest_name(entry.name):
                listing.files[path] = signature(found)
        pending.extend(reversed(below))
