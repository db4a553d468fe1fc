"""The initial read on two processes gives exactly what one process reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauth.apikeys import ApiKey
from extauth.changes import Change, Definition
from extauth.manifests import Limits
from extauth.sources import bulk
from extauth.sources.files import FileSource
from tests.builders import authconfig, key_fields, secret


def _secret(i: int, key: str) -> str:
    return (
        "---\napiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        f"metadata:\n  name: k{i}\n  namespace: ns\n  labels:\n    team: t{i % 3}\n"
        f"stringData:\n  api-key: {key}\n  x-org: org-{i % 2}\n"
    )


def _fields(definition: Definition) -> tuple[object, ...]:
    if isinstance(definition, ApiKey):
        return key_fields(definition)
    return (definition.owner, definition.origin)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    for f in range(8):
        # Keys repeat across files (a conflict for the builder to resolve in file order)
        # and so does a name (a duplicate definition).
        text = "".join(_secret(f * 10 + i, f"key-{(f * 10 + i) % 75}") for i in range(10))
        (tmp_path / f"keys-{f}.yaml").write_text(text + _secret(0, f"dup-{f}"))
    # In the child's half: a file the fast path declines, and a broken one.
    config = authconfig(
        "c", "headerName: x-key\nk8sSecretApikeyStorage: {labelSelector: {team: t1}}"
    )
    (tmp_path / "keys-6.yaml").write_text(secret("flow", "key-flow") + "---\n" + config)
    (tmp_path / "keys-7.yaml").write_text(_secret(99, "key-99").replace("kind: Secret", "kind: ["))
    return tmp_path


def _scan(directory: Path) -> tuple[Change, FileSource]:
    source = FileSource(directory)
    return source.scan(), source


def test_two_processes_read_what_one_reads(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "MIN_FILES", 10**9)
    alone, alone_source = _scan(directory)
    monkeypatch.setattr(bulk, "MIN_FILES", 2)
    started: list[int] = []
    real_start = bulk.start

    def start(paths: list[str], limits: Limits) -> bulk.Reader | None:
        started.append(len(paths))
        return real_start(paths, limits)

    monkeypatch.setattr(bulk, "start", start)
    both, both_source = _scan(directory)

    assert started == [4], "the second half went to a child process"
    assert [_fields(d) for d in both.upserted] == [_fields(d) for d in alone.upserted]
    assert len(both.upserted) == 6 * 11 + 2  # keys-6 holds two resources, keys-7 is rejected
    assert set(both_source._rejected) == set(alone_source._rejected) == {directory / "keys-7.yaml"}
    names = {d.name for d in both.upserted if isinstance(d, ApiKey)}
    assert "flow" in names
    assert "k99" not in names
