"""The file source: what a directory scan yields, and what the watcher publishes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extauth.snapshot import Snapshot, digest
from extauth.sources.files import ConfigDirError, FileSource
from tests.builders import authconfig, secret

CONFIG = authconfig("cfg", "k8sSecretApikeyStorage: {labelSelector: {t: x}}")


def names(snapshot: Snapshot) -> set[str]:
    return {key.name for key in snapshot.keys}


def test_scan_loads_every_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "b.yml").write_text(secret("b", "key-b") + "---\n" + CONFIG)
    snapshot, changed = FileSource(tmp_path).scan()
    assert changed
    assert names(snapshot) == {"a", "b"}
    assert [c.config.config_id for c in snapshot.authconfigs] == ["ns.cfg"]
    assert {k.digest for k in snapshot.keys} == {digest("key-a"), digest("key-b")}


def test_rescan_without_changes_reports_none(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
    source = FileSource(tmp_path)
    source.scan()
    _, changed = source.scan()
    assert not changed


def test_deleting_a_file_revokes_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(secret("a", "key-a"))
    (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
    source = FileSource(tmp_path)
    source.scan()
    path.unlink()
    snapshot, changed = source.scan()
    assert changed
    assert names(snapshot) == {"b"}


def test_broken_edit_keeps_the_files_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(secret("a", "key-a", org="before"))
    source = FileSource(tmp_path)
    source.scan()
    path.write_text(secret("a", "key-a", org="after") + "bogus: [\n")
    with caplog.at_level(logging.ERROR):
        snapshot, changed = source.scan()
    assert not changed
    assert snapshot.keys[0].metadata["org"] == "before"
    assert "rejected" in caplog.text
    assert "keeping its last good version" in caplog.text
    # Reported once per broken version, not on every rescan.
    caplog.clear()
    source.scan()
    assert "rejected" not in caplog.text


def test_new_broken_file_is_not_loaded_and_others_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "good.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "bad.yaml").write_text(secret("b", "key-b").replace("Secret", "Secert"))
    with caplog.at_level(logging.ERROR):
        snapshot, _ = FileSource(tmp_path).scan()
    assert names(snapshot) == {"a"}
    assert "bad.yaml (not loaded)" in caplog.text
    assert "key-b" not in caplog.text


def test_missing_directory_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigDirError):
        FileSource(tmp_path / "nope").scan()


def test_directory_gone_later_keeps_last_state(tmp_path: Path) -> None:
    root = tmp_path / "config"
    root.mkdir()
    (root / "a.yaml").write_text(secret("a", "key-a"))
    source = FileSource(root)
    source.scan()
    (root / "a.yaml").unlink()
    root.rmdir()
    with pytest.raises(ConfigDirError):
        source.scan()
    # Nothing was revoked by the failed scan: the last snapshot still holds the key.
    root.mkdir()
    (root / "a.yaml").write_text(secret("a", "key-a"))
    snapshot, _ = source.scan()
    assert names(snapshot) == {"a"}


def test_configmap_style_symlinks_are_followed_once(tmp_path: Path) -> None:
    real = tmp_path / "..2024_01_01_00_00_00.1"
    real.mkdir()
    (real / "keys.yaml").write_text(secret("a", "key-a"))
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "keys.yaml").symlink_to("..data/keys.yaml")
    snapshot, _ = FileSource(tmp_path).scan()
    assert names(snapshot) == {"a"}
    # Swap to a new version, as the kubelet does: a new dir and an atomic symlink rename.
    new = tmp_path / "..2024_01_01_00_01_00.2"
    new.mkdir()
    (new / "keys.yaml").write_text(secret("b", "key-b"))
    (tmp_path / "..data_tmp").symlink_to(new.name)
    (tmp_path / "..data_tmp").replace(tmp_path / "..data")
    source = FileSource(tmp_path)
    snapshot, _ = source.scan()
    assert names(snapshot) == {"b"}


async def _next(iterator: AsyncIterator[Snapshot], timeout: float = 5) -> Snapshot:
    return await asyncio.wait_for(anext(iterator), timeout)


def test_watch_publishes_changes(tmp_path: Path) -> None:
    async def run() -> None:
        (tmp_path / "a.yaml").write_text(secret("a", "key-a"))
        snapshots = FileSource(tmp_path).snapshots()
        assert names(await _next(snapshots)) == {"a"}
        await asyncio.sleep(0.2)  # let the watcher attach before the next write
        (tmp_path / "b.yaml").write_text(secret("b", "key-b"))
        assert names(await _next(snapshots)) == {"a", "b"}
        (tmp_path / "a.yaml").unlink()
        assert names(await _next(snapshots)) == {"b"}
        await snapshots.aclose()

    asyncio.run(run())
