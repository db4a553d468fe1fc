"""The file source: what a directory scan yields, and what the watcher publishes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from extauth import keys, manifests, secretscan
from extauth.apikeys import digest
from extauth.building import PolicyBuilder
from extauth.changes import Change
from extauth.manifests import DEFAULT_LIMITS, Limits
from extauth.policy import Policy
from extauth.sources import bulk, files, inotify
from extauth.sources.files import ConfigDirError, FileSource
from extauth.sources.listing import walk
from tests.builders import authconfig, secret

CONFIG = authconfig("cfg", "k8sSecretApikeyStorage: {labelSelector: {t: x}}")


class Applied:
    """A policy builder fed by a file source: what the server does, without the server."""

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.builder = PolicyBuilder()
        self.last = Change()

    def scan(self) -> Policy:
        self.last = self.source.scan()
        self.builder.apply(self.last)
        return self.builder.build()


def names(policy: Policy) -> set[str]:
    return {key.name for key in policy.keys.values()}


def test_scan_loads_every_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "b.yml").write_text(secret("b", "key-b") + "---\n" + CONFIG)
    policy = Applied(FileSource(tmp_path)).scan()
    assert names(policy) == {"a", "b"}
    assert list(policy.configs) == ["ns.cfg"]
    assert set(policy.keys) == {digest("key-a"), digest("key-b")}


def test_rescan_without_changes_reports_none(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    source = FileSource(tmp_path)
    assert not source.scan().empty
    assert source.scan().empty


def test_deleting_a_file_revokes_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(secret("a", "key-a"))
    (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
    applied = Applied(FileSource(tmp_path))
    applied.scan()
    path.unlink()
    assert names(applied.scan()) == {"b"}
    # Only the deleted file's definition travels: the change is one removal.
    assert not applied.last.upserted
    assert [r.owner for r in applied.last.removed] == [("ns", "a")]


def test_editing_one_file_publishes_only_that_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a") + "---\n" + secret("a2", "key-a2"))
    (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
    applied = Applied(FileSource(tmp_path))
    applied.scan()
    (tmp_path / "a.yaml").write_text(secret("a", "key-a", org="new"))
    policy = applied.scan()
    assert [d.owner for d in applied.last.upserted] == [("ns", "a")]
    assert [r.owner for r in applied.last.removed] == [("ns", "a2")]
    assert names(policy) == {"a", "b"}
    assert policy.keys[digest("key-a")].metadata["org"] == "new"


def test_broken_edit_keeps_the_files_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(secret("a", "key-a", org="before"))
    applied = Applied(FileSource(tmp_path))
    applied.scan()
    path.write_text(secret("a", "key-a", org="after") + "bogus: [\n")
    with caplog.at_level(logging.ERROR):
        policy = applied.scan()
    assert applied.last.empty
    assert policy.keys[digest("key-a")].metadata["org"] == "before"
    assert "rejected" in caplog.text
    assert "keeping its last good version" in caplog.text
    # Reported once per broken version, not on every rescan.
    caplog.clear()
    applied.scan()
    assert "rejected" not in caplog.text


def test_new_broken_file_is_not_loaded_and_others_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "good.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "bad.yaml").write_text(secret("b", "key-b").replace("Secret", "Secert"))
    with caplog.at_level(logging.ERROR):
        policy = Applied(FileSource(tmp_path)).scan()
    assert names(policy) == {"a"}
    assert "bad.yaml (not loaded)" in caplog.text
    assert "key-b" not in caplog.text


def test_missing_directory_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigDirError):
        FileSource(tmp_path / "nope").scan()


def test_directory_gone_later_keeps_last_state(tmp_path: Path) -> None:
    root = tmp_path / "config"
    root.mkdir()
    (root / "a.yaml").write_text(secret("a", "key-a"))
    applied = Applied(FileSource(root))
    applied.scan()
    (root / "a.yaml").unlink()
    root.rmdir()
    with pytest.raises(ConfigDirError):
        applied.scan()
    # Nothing was revoked by the failed scan: the policy still holds the key.
    assert names(applied.builder.build()) == {"a"}
    root.mkdir()
    (root / "a.yaml").write_text(secret("a", "key-a"))
    assert names(applied.scan()) == {"a"}


def test_configmap_style_symlinks_are_followed_once(tmp_path: Path) -> None:
    real = tmp_path / "..2024_01_01_00_00_00.1"
    real.mkdir()
    (real / "keys.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "keys.yaml").symlink_to("..data/keys.yaml")
    assert names(Applied(FileSource(tmp_path)).scan()) == {"a"}
    # Swap to a new version, as the kubelet does: a new dir and an atomic symlink rename.
    new = tmp_path / "..2024_01_01_00_01_00.2"
    new.mkdir()
    (new / "keys.yaml").write_text(secret("b", "key-b"))
    (tmp_path / "..data_tmp").symlink_to(new.name)
    (tmp_path / "..data_tmp").replace(tmp_path / "..data")
    assert names(Applied(FileSource(tmp_path)).scan()) == {"b"}


async def _next(iterator: AsyncIterator[Change], timeout: float = 5) -> Change:
    return await asyncio.wait_for(anext(iterator), timeout)


def test_watch_publishes_changes(tmp_path: Path) -> None:
    async def run() -> None:
        (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
        changes = FileSource(tmp_path).changes()
        first = await _next(changes)
        assert [d.owner for d in first.upserted] == [("ns", "a")]
        await asyncio.sleep(0.2)  # let the watcher attach before the next write
        (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
        added = await _next(changes)
        assert [d.owner for d in added.upserted] == [("ns", "b")]
        (tmp_path / "a.yaml").unlink()
        gone = await _next(changes)
        assert [r.owner for r in gone.removed] == [("ns", "a")]
        await changes.aclose()

    asyncio.run(run())


# One bad file never holds up the others --------------------------------------------------


def test_a_file_that_fails_to_parse_is_rejected_alone_and_a_deletion_still_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
    applied = Applied(FileSource(tmp_path))
    applied.scan()
    # Nested 600 deep: the YAML loader used to raise RecursionError on it; the depth limit
    # refuses it now, before parsing.
    (tmp_path / "deep.yaml").write_text("x: " + "[" * 600 + "]" * 600 + "\n")
    (tmp_path / "b.yaml").unlink()
    (tmp_path / "c.yaml").write_text(secret("c", "key-c"))
    with caplog.at_level(logging.ERROR):
        policy = applied.scan()
    assert names(policy) == {"a", "c"}
    assert [r.owner for r in applied.last.removed] == [("ns", "b")]
    assert (
        f"{tmp_path / 'deep.yaml'}:1: document 1: nested more than 64 levels deep "
        "(the limit is --max-depth 64)"
    ) in caplog.text
    # Once rejected, that version is not read again; the next change still applies.
    (tmp_path / "a.yaml").unlink()
    assert names(applied.scan()) == {"c"}


def test_whatever_a_read_raises_only_that_file_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
    (tmp_path / "bad.yaml").write_text(authconfig("cfg", "apiKeySecretRefs: [{name: a}]"))
    applied = Applied(FileSource(tmp_path))
    applied.scan()
    real = manifests.parse_text

    def failing(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> manifests.FileResult:
        if path.endswith("bad.yaml"):
            raise KeyError("the-secret-key-value")  # as a mistyped tag once did
        return real(text, path, limits)

    monkeypatch.setattr(manifests, "parse_text", failing)
    (tmp_path / "bad.yaml").write_text(authconfig("cfg", "apiKeySecretRefs: [{name: b}]"))
    (tmp_path / "a.yaml").unlink()
    (tmp_path / "b.yaml").write_text(secret("b", "key-b", org="new"))
    with caplog.at_level(logging.ERROR):
        policy = applied.scan()
    assert names(policy) == {"b"}
    assert policy.keys[digest("key-b")].metadata["org"] == "new"
    # bad.yaml keeps its last good version, and its log line says which file, not what.
    assert policy.configs["ns.cfg"].rules[0].refs == frozenset({("ns", "a")})
    assert f"{tmp_path / 'bad.yaml'}: cannot be read (KeyError at " in caplog.text
    assert "the-secret-key-value" not in caplog.text


def test_the_second_process_declines_a_file_it_fails_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the layout `extauth keys new` writes, which the second process reads.
    (tmp_path / "a.yaml").write_text(keys.manifest("a", "ns", "key-a", {}, {}))
    (tmp_path / "b.yaml").write_text(keys.manifest("b", "ns", "key-b", {}, {}))
    real = secretscan.scan

    def failing(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> object:
        if path.endswith("a.yaml"):
            raise RecursionError
        return real(text, path, limits)

    monkeypatch.setattr(secretscan, "scan", failing)
    try:
        rows = bulk.read_files([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")], DEFAULT_LIMITS)
    finally:
        gc.enable()  # the child's entry point turns the collector off for good
    assert rows[0] is None  # the parent reads it itself, and reports it
    assert rows[1] is not None
    assert [row[1] for row in rows[1]] == ["b"]


# Directories and their errors --------------------------------------------------------------


def test_an_unlistable_subdirectory_keeps_its_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "b.yaml").write_text(secret("b", "key-b"))
    source = FileSource(tmp_path)
    applied = Applied(source)
    applied.scan()
    assert not walk(tmp_path).unreadable
    # Root reads any directory; what even root cannot examine is a loop of links (ELOOP).
    # A directory without permissions is tested with `nobody` in test_watch.py.
    (tmp_path / "team" / "b.yaml").unlink()
    (tmp_path / "team").rmdir()
    (tmp_path / "team").symlink_to(tmp_path / ".team-target")
    (tmp_path / ".team-target").symlink_to(tmp_path / "team")
    policy = applied.scan()
    assert names(policy) == {"a", "b"}
    assert source.unreadable == 1
    assert applied.last.empty
    (tmp_path / "team").unlink()  # gone for good now: its files are removed
    assert names(applied.scan()) == {"a"}
    assert source.unreadable == 0


def test_files_that_cannot_be_opened_keep_their_last_good_version(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    source = FileSource(tmp_path)
    applied = Applied(source)
    applied.scan()
    # Root reads every file; a FIFO named like a manifest is not a regular file and is
    # not listed, so the case of a file that cannot be opened is tested as `nobody` in
    # test_watch.py. Here: a file replaced by a dangling symlink is gone, not unreadable.
    (tmp_path / "a.yaml").unlink()
    (tmp_path / "a.yaml").symlink_to(tmp_path / "nowhere.yaml")
    assert names(applied.scan()) == set()
    assert source.unreadable == 0


def test_unreadable_root_is_an_error_that_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    source = FileSource(tmp_path / "a.yaml" / "sub")
    with pytest.raises(ConfigDirError, match="Not a directory"):
        source.scan()


# Only complete files apply -----------------------------------------------------------------


class _Pump:
    """Changes into a queue, so that a test can wait for one with a timeout without
    cancelling (and so closing) the generator."""

    def __init__(self, source: FileSource) -> None:
        self.changes: asyncio.Queue[Change] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run(source))

    async def _run(self, source: FileSource) -> None:
        async for change in source.changes():
            await self.changes.put(change)

    async def next(self, timeout: float = 5) -> Change:
        return await asyncio.wait_for(self.changes.get(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def test_a_file_written_in_place_applies_only_once_closed(tmp_path: Path) -> None:
    async def run() -> None:
        (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
        changes = _Pump(FileSource(tmp_path, resync_seconds=0.5))
        await changes.next()
        with (tmp_path / "b.yaml").open("w") as handle:
            # Half written (a valid file by itself: the half would apply), for several
            # resync periods: nothing is published.
            handle.write(secret("b", "key-b") + "---\n")
            handle.flush()
            with pytest.raises(TimeoutError):
                await changes.next(timeout=1.5)
            handle.write(secret("c", "key-c"))
        done = await changes.next(timeout=1)
        assert sorted(d.owner[1] for d in done.upserted) == ["b", "c"]
        # Renamed into place: applies at once.
        (tmp_path / ".d.tmp").write_text(secret("d", "key-d"))
        (tmp_path / ".d.tmp").rename(tmp_path / "d.yaml")
        renamed = await changes.next(timeout=1)
        assert [d.owner[1] for d in renamed.upserted] == ["d"]
        await changes.close()

    asyncio.run(run())


def test_without_inotify_a_file_applies_once_stable_for_a_period(tmp_path: Path) -> None:
    async def run() -> None:
        changes = _Pump(FileSource(tmp_path, resync_seconds=0.5, use_inotify=False))
        await changes.next()
        with (tmp_path / "b.yaml").open("w") as handle:
            text = secret("b", "key-b")
            for i in range(0, len(text), 20):  # keeps changing: never applied meanwhile
                handle.write(text[i : i + 20])
                handle.flush()
                await asyncio.sleep(0.3)
                os.utime(handle.fileno())
        done = await changes.next(timeout=3)
        assert [d.owner[1] for d in done.upserted] == ["b"]
        (tmp_path / "b.yaml").unlink()
        gone = await changes.next(timeout=2)
        assert [r.owner for r in gone.removed] == [("ns", "b")]
        await changes.close()

    asyncio.run(run())


def test_large_files_are_read_apart_and_a_crash_there_rejects_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bulk, "LARGE_FILE", 0)  # every file is "large": read by a child

    async def run() -> None:
        changes = _Pump(FileSource(tmp_path, resync_seconds=0.5))
        await changes.next()
        write = _renamer(tmp_path)
        write("keys.yaml", keys.manifest("a", "ns", "key-a", {}, {"t": "x"}))  # fast path
        write("mixed.yaml", secret("b", "key-b") + "---\n" + CONFIG)  # general loader
        found: list[str] = []
        while len(found) < 3:
            found.extend(d.owner[1] for d in (await changes.next(timeout=20)).upserted)
        assert sorted(found) == ["a", "b", "cfg"]
        # Nested 100,000 deep: the C YAML parser dies of it (SIGSEGV) unless a limit
        # stops it first. Either way: this file is rejected, and nothing else is hurt.
        with caplog.at_level(logging.ERROR):
            write("deep.yaml", "x: " + "[" * 100_000 + "]" * 100_000 + "\n")
            (tmp_path / "keys.yaml").unlink()
            gone = await changes.next(timeout=10)
            assert [r.owner for r in gone.removed] == [("ns", "a")]
            deadline = time.monotonic() + 20
            while f"rejected {tmp_path / 'deep.yaml'}" not in caplog.text:
                assert time.monotonic() < deadline, "deep.yaml was never rejected"
                await asyncio.sleep(0.05)
        await changes.close()

    asyncio.run(run())


def _renamer(directory: Path) -> Callable[[str, str], None]:
    def write(name: str, text: str) -> None:
        (directory / f".{name}.tmp").write_text(text)
        (directory / f".{name}.tmp").rename(directory / name)

    return write


def test_after_an_inotify_overflow_changed_files_wait_until_stable(tmp_path: Path) -> None:
    async def run() -> None:
        watch = files._Watch(0.3, asyncio.Event(), enabled=True)
        watch.follow([tmp_path], trusted=True)
        path = tmp_path / "a.yaml"
        with path.open("w") as handle:
            handle.write("half")
            handle.flush()
            await asyncio.sleep(0.05)
            watch.drain()
            found = walk(tmp_path).files[path]
            assert not watch.ready(path, found)  # IN_MODIFY and no close yet
            # The kernel dropped events: what was known about writers is gone, and
            # until a full period has passed, time decides (an unchanged signature).
            watch._handle(inotify.Event(-1, inotify.IN_Q_OVERFLOW, ""))
            assert not watch.ready(path, found)
            await asyncio.sleep(0.35)
            assert watch.ready(path, found)
        watch.close()

    asyncio.run(run())


def test_a_slow_read_holds_up_no_removal_and_no_other_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = manifests.parse_text

    def slow(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> manifests.FileResult:
        if path.endswith("slow.yaml"):
            time.sleep(3)  # a file that takes long to read (a big one, a slow disk)
        return real(text, path, limits)

    monkeypatch.setattr(manifests, "parse_text", slow)

    async def run() -> None:
        (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
        changes = _Pump(FileSource(tmp_path))
        await changes.next()
        write = _renamer(tmp_path)
        write("slow.yaml", secret("s", "key-s"))
        await asyncio.sleep(0.2)  # its read has started
        (tmp_path / "a.yaml").unlink()
        gone = await changes.next(timeout=1)
        assert [r.owner for r in gone.removed] == [("ns", "a")]
        write("b.yaml", secret("b", "key-b"))
        added = await changes.next(timeout=1)
        assert [d.owner for d in added.upserted] == [("ns", "b")]
        late = await changes.next(timeout=5)
        assert [d.owner for d in late.upserted] == [("ns", "s")]
        await changes.close()

    asyncio.run(run())


def test_a_fifo_renamed_over_a_file_after_the_listing_does_not_block_its_read(
    tmp_path: Path,
) -> None:
    """The listing saw a regular file; by the time it is read, a FIFO has been renamed
    over it. The check for an unopenable file opened it blocking: the worker thread
    waited for a writer forever, that path was never read again (its read never
    finished), and SIGTERM hung on the stuck thread."""
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    outcome: list[object] = []
    reader = threading.Thread(
        target=lambda: outcome.append(FileSource(tmp_path)._read(fifo, True)), daemon=True
    )
    reader.start()
    reader.join(10)
    try:
        assert not reader.is_alive(), "the read is blocked opening the FIFO"
        (read,) = outcome
        assert isinstance(read, files._Outcome)
        assert read.definitions is None  # rejected, not unreadable: with its reason
        assert read.unreadable is None
        assert read.problem is not None
        assert "not a regular file" in read.problem
    finally:
        if reader.is_alive():  # release it: a writer opening the FIFO lets its open return
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(10)


def test_a_symlinked_file_being_written_through_its_target_waits_until_stable(
    tmp_path: Path,
) -> None:
    """inotify reports writes under the name written to: a file linked from the config
    directory (`team.yaml -> /srv/keys/team.yaml`) written in place at its target gives
    the watched directory no IN_MODIFY, and the half-written file counted as complete.
    A symlinked file is vouched for by time (an unchanged signature), not by events."""

    async def run() -> None:
        config, outside = tmp_path / "config", tmp_path / "outside"
        config.mkdir()
        outside.mkdir()
        link = config / "team.yaml"
        link.symlink_to(outside / "team.yaml")
        watch = files._Watch(0.3, asyncio.Event(), enabled=True)
        watch.follow([config], trusted=True)
        with (outside / "team.yaml").open("w") as handle:
            handle.write("half")
            handle.flush()
            await asyncio.sleep(0.05)
            watch.drain()
            found = walk(config).files[link]
            assert not watch.ready(link, found)
            await asyncio.sleep(0.35)
            assert watch.ready(link, found)  # unchanged for a full period
        watch.close()

    asyncio.run(run())
