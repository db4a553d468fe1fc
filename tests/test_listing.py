"""Which files of a config path are manifests: the one rule `serve` and `validate` share."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauth.sources.listing import ListingError, walk


def test_yaml_files_below_the_root_skipping_hidden_entries(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("")
    (tmp_path / "sub" / "C.YAML").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / ".a.yaml.swp").write_text("")
    (tmp_path / "..2024_01_01").mkdir()  # a ConfigMap volume's real directory
    (tmp_path / "..2024_01_01" / "a.yaml").write_text("")
    listing = walk(tmp_path)
    assert list(listing.files) == [
        tmp_path / "a.yaml",
        tmp_path / "sub" / "C.YAML",
        tmp_path / "sub" / "b.yml",
    ]
    assert listing.directories == [tmp_path, tmp_path / "sub"]
    assert not listing.unreadable
    assert not listing.notes


def test_symlinked_directories_are_read_once_the_real_one_first(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "a.yaml").write_text("")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "b.yaml").write_text("")
    (tmp_path / "a-link").symlink_to(tmp_path / "team")  # sorts first, but a second path
    (tmp_path / "linked").symlink_to(outside)
    (tmp_path / "team" / "loop").symlink_to(tmp_path)
    listing = walk(tmp_path)
    assert list(listing.files) == [tmp_path / "linked" / "b.yaml", tmp_path / "team" / "a.yaml"]
    assert sorted(str(path) for path, _ in listing.notes) == [
        str(tmp_path / "a-link"),
        str(tmp_path / "team" / "loop"),
    ]


def test_what_cannot_be_examined_is_reported_and_shadows_its_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("")
    (tmp_path / "team").symlink_to(tmp_path / ".back")
    (tmp_path / ".back").symlink_to(tmp_path / "team")
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "nowhere")  # dangling: simply not there
    listing = walk(tmp_path)
    assert list(listing.files) == [tmp_path / "a.yaml"]
    assert listing.unreadable == {
        tmp_path / "team": "cannot be examined: Too many levels of symbolic links"
    }
    assert listing.shadowed(tmp_path / "team" / "b.yaml")
    assert not listing.shadowed(tmp_path / "gone.yaml")


def test_a_root_that_is_a_file_follows_the_same_rule(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    assert list(walk(tmp_path / "a.yml").files) == [tmp_path / "a.yml"]
    with pytest.raises(ListingError, match="not read: extauth reads only"):
        walk(tmp_path / "notes.txt")
    with pytest.raises(ListingError, match="does not exist"):
        walk(tmp_path / "missing")


def test_an_empty_directory_is_noted(tmp_path: Path) -> None:
    listing = walk(tmp_path)
    assert not listing.files
    assert [path for path, _ in listing.notes] == [tmp_path]
