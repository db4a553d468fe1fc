"""A directory of YAML manifests, watched with inotify (watchfiles).

Each file is accepted or rejected whole. A rejected file keeps contributing its last good
version (or nothing, if it never had one), so a typo in one Secret never takes down the
others, and never silently revokes the edited one either. Deleting a file removes what it
held: that is how a key is revoked. If the directory itself disappears (an unmounted
volume, a bad deploy), that is an error of the source, not a revocation of everything:
the last good state keeps serving until the directory is back.

Files are re-read only when their (inode, size, mtime) changes, so a rescan after an
event costs a directory walk and a few stat calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from extauth import manifests
from extauth.resources import AuthConfig
from extauth.snapshot import ApiKey, PlacedAuthConfig, Snapshot

log = logging.getLogger(__name__)

_Signature = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Accepted:
    signature: _Signature
    keys: tuple[ApiKey, ...]
    authconfigs: tuple[PlacedAuthConfig, ...]


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
    ) -> None:
        self.root = root
        self._step_ms = step_ms
        self._debounce_ms = debounce_ms
        self._resync_seconds = resync_seconds
        self._missing = False
        self._accepted: dict[Path, _Accepted] = {}
        # Signature of files last seen broken, so each broken version is reported once.
        self._rejected: dict[Path, _Signature] = {}

    def scan(self) -> tuple[Snapshot, bool]:
        """The current state of the directory, and whether it differs from the last scan."""
        if not self.root.exists():
            raise ConfigDirError(f"{self.root} does not exist")
        changed = False
        present = manifests.yaml_files(self.root)
        for gone in set(self._accepted) - set(present):
            log.info("config: %s removed", gone)
            del self._accepted[gone]
            changed = True
        for gone in set(self._rejected) - set(present):
            del self._rejected[gone]
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
            changed |= self._read(path, signature, accepted is not None)
        return self._snapshot(), changed

    def _read(self, path: Path, signature: _Signature, had_good: bool) -> bool:
        result = manifests.load_file(path)
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
            return False
        self._rejected.pop(path, None)
        keys: list[ApiKey] = []
        configs: list[PlacedAuthConfig] = []
        for loaded in result.resources:
            if isinstance(loaded.resource, AuthConfig):
                configs.append(PlacedAuthConfig(loaded.resource, loaded.origin))
            else:
                keys.append(ApiKey.from_secret(loaded.resource, loaded.origin))
        self._accepted[path] = _Accepted(signature, tuple(keys), tuple(configs))
        log.info(
            "config: loaded %s (%d Secret(s), %d AuthConfig(s))", path, len(keys), len(configs)
        )
        return True

    def _snapshot(self) -> Snapshot:
        ordered = [self._accepted[p] for p in sorted(self._accepted)]
        return Snapshot(
            keys=tuple(k for a in ordered for k in a.keys),
            authconfigs=tuple(c for a in ordered for c in a.authconfigs),
        )

    async def snapshots(self) -> AsyncGenerator[Snapshot, None]:
        """The initial state, then a new state after every change on disk.

        A watcher task wakes the loop on inotify events; a periodic resync (stat calls
        only) also wakes it, which covers changes made before the watcher attached and
        events the kernel dropped. Raises ConfigDirError before the first snapshot if the
        directory is missing; later failures keep the last good state and are retried.
        """
        wake = asyncio.Event()
        watcher = asyncio.create_task(self._watch(wake))
        try:
            snapshot, _ = self.scan()
            yield snapshot
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._resync_seconds)
                wake.clear()
                try:
                    snapshot, changed = self.scan()
                except ConfigDirError as exc:
                    if not self._missing:
                        log.error("config: %s; keeping the last good state", exc)
                    self._missing = True
                    continue
                if self._missing:
                    log.info("config: %s is back", self.root)
                    self._missing = False
                if changed:
                    yield snapshot
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
