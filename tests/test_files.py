"""The file source: what a directory scan yields, and what the watcher publishes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extauth.policy import Policy, PolicyBuilder
from extauth.snapshot import Change, digest
from extauth.sources.files import ConfigDirError, FileSource
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
