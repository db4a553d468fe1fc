"""The one loader: whatever a file holds, it is rejected alone, with `file:line: message`.

Hostile and careless files (deep nesting, mistyped tags, non-string keys, recursive
aliases, limits exceeded) go through `loader.load_text`, the watched directory, and
`extauth validate` / `extauth serve` as subprocesses: none may raise, crash the
process, stop another file's change, or print a key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauth import keys, loader, manifests, secretscan
from extauth.apikeys import ApiKey, digest
from extauth.building import PolicyBuilder
from extauth.manifests import Limits
from extauth.sources.files import FileSource
from tests import harness
from tests.builders import authconfig, secret

KEY = "team9-secret-key-0123456789"
HEADER = (
    "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
    "metadata: {name: bad, namespace: ns}\n"
)
CONFIG_HEAD = (
    "apiVersion: extauth.solo.io/v1\nkind: AuthConfig\nmetadata: {name: c, namespace: ns}\n"
)


ENTRY = "{name: a, apiKeyAuth: {apiKeySecretRefs: [{name: x}]}}"


def _config(entries: str, expr: str | None = None) -> str:
    spec = f"spec:\n  booleanExpr: '{expr}'\n" if expr else "spec:\n"
    return CONFIG_HEAD + spec + f"  configs:\n    - {entries}\n"


# (file text, the line of the problem, words the message must hold)
HOSTILE = {
    "nested 600 deep": ("a: " + "[" * 600 + "]" * 600 + "\n", 1, "--max-depth 64"),
    "nested 100,000 deep": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", 1, "--max-depth 64"),
    "booleanExpr of 1,000 !": (
        _config(ENTRY, "!" * 1000 + "a"),
        4,
        "booleanExpr is nested more than 64 levels",
    ),
    "non-string key in configs[]": (
        _config("{1: x, apiKeyAuth: {apiKeySecretRefs: [{name: x}]}}"),
        6,
        "a mapping key is not a string",
    ),
    "a list as a key": (HEADER + "stringData: {? [a]: b, api-key: k}\n", 5, "not a string"),
    "plain 0b_": (HEADER + "stringData: {api-key: 0b_}\n", 5, "!!int is not a valid int"),
    "recursive alias": (HEADER + "stringData: &a {api-key: *a}\n", 5, "refers to a node"),
    "aliases nested past the limit": (
        "a0: &a0 " + "[" * 40 + "]" * 40 + "\n" + "a1: &a1 " + "[" * 40 + "*a0" + "]" * 40 + "\n",
        1,
        "once YAML aliases are expanded (the limit is --max-depth 64)",
    ),
    "not UTF-8 midway": ("kind: Secret\n\udcff\n", 2, "not UTF-8"),
}
for _tag in ("int", "bool", "float", "timestamp", "binary", "null"):
    HOSTILE[f"!!{_tag} on a key"] = (
        HEADER + f"stringData: {{api-key: !!{_tag} {KEY}}}\n",
        5,
        # binary and null construct (bytes, None): then it is the wrong type
        f"!!{_tag}" if _tag not in ("binary", "null") else "stringData.api-key: Input should be",
    )


def _load(text: str, limits: Limits = manifests.DEFAULT_LIMITS) -> loader.FileLoad:
    return loader.load_text(text, "f.yaml", limits)


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_files_are_rejected_with_file_line_message(case: str, tmp_path: Path) -> None:
    text, line, words = HOSTILE[case]
    path = tmp_path / "f.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    result = loader.load_file(path)
    assert not result.ok
    assert not result.definitions
    first = str(result.problems[0])
    assert first.startswith(f"{path}:{line}: "), first
    assert words in first
    assert KEY not in " ".join(map(str, result.problems))


def test_one_hostile_file_never_stops_another_files_revocation(tmp_path: Path) -> None:
    for index, (text, _, _) in enumerate(HOSTILE.values()):
        (tmp_path / f"bad-{index:02d}.yaml").write_bytes(
            text.encode("utf-8", errors="surrogateescape")
        )
    (tmp_path / "good.yaml").write_text(secret("good", "key-good"))
    (tmp_path / "other.yaml").write_text(secret("other", "key-other"))
    source = FileSource(tmp_path)
    builder = PolicyBuilder()
    builder.apply(source.scan())
    assert set(builder.build().keys) == {digest("key-good"), digest("key-other")}
    (tmp_path / "good.yaml").unlink()
    (tmp_path / "bad-new.yaml").write_text(HOSTILE["nested 600 deep"][0])
    change = source.scan()
    builder.apply(change)
    assert [r.owner for r in change.removed] == [("ns", "good")]
    assert set(builder.build().keys) == {digest("key-other")}


def test_a_document_that_crashed_libyaml_fails_validate_cleanly(tmp_path: Path) -> None:
    # 100,000 levels: libyaml's composer recursed in C until SIGSEGV, in serve and validate.
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n")
    result = _cli("validate", str(path))
    assert result.returncode == 1, result.stderr
    assert f"{path}:1: document 1: nested more than 64 levels deep" in result.stdout


# Limits -----------------------------------------------------------------------------------

_cli = functools.partial(harness.run_cli, timeout=120)


def test_each_limit_is_refused_by_name_and_value(tmp_path: Path) -> None:
    (tmp_path / "two.yaml").write_text(secret("a", "key-a") + "---\n" + secret("b", "key-b"))
    (tmp_path / "deep.yaml").write_text("a: {b: {c: {d: 1}}}\n")
    result = _cli(
        "validate",
        str(tmp_path),
        "--max-file-bytes",
        "400",
        "--max-documents",
        "1",
        "--max-depth",
        "3",
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{tmp_path}/deep.yaml:1: document 1: nested more than 3 levels deep "
        "(the limit is --max-depth 3)",
        f"{tmp_path}/two.yaml:6: more than 1 YAML documents (the limit is --max-documents 1)",
    ]
    small = _cli("validate", str(tmp_path / "two.yaml"), "--max-file-bytes", "100")
    size = (tmp_path / "two.yaml").stat().st_size
    assert small.stdout.splitlines() == [
        f"{tmp_path}/two.yaml: file too large ({size} bytes; the limit is --max-file-bytes 100)"
    ]
    assert _cli("validate", str(tmp_path), "--max-depth", "1001").returncode == 2
    assert _cli("validate", str(tmp_path), "--max-documents", "0").returncode == 2


def test_the_fast_path_keeps_to_the_limits() -> None:
    text = keys.manifest("a", "ns", "key-a", {}, {"team": "a"}) + "---\n"
    text += keys.manifest("b", "ns", "key-b", {}, {"team": "b"})
    assert _load(text).fast
    # Over a limit, the fast path declines and the general loader refuses, with the message.
    for limits, words in (
        (Limits(max_documents=1), "--max-documents 1"),
        (Limits(max_depth=2), "--max-depth 2"),
    ):
        result = _load(text, limits)
        assert not result.fast
        assert not result.ok
        assert words in str(result.problems[0])


def test_the_default_limits_admit_a_100000_key_file() -> None:
    one = keys.manifest(
        "team-000000-apikey",
        "agentgateway-system",
        "k" * 43,
        {"x-org": "developers", "x-team": "platform-team", "x-cost-center": "cc-000000"},
        {"llm-provider": "openai", "team": "platform"},
        hashed=True,
    )
    text = "---\n".join(one.replace("000000", f"{i:06d}") for i in range(100_000))
    limits = manifests.DEFAULT_LIMITS
    assert len(text.encode()) < limits.max_file_bytes
    result = _load(text)
    assert result.fast
    assert len(result.definitions) == 100_000


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    result = loader.load_file(fifo)
    assert [str(p) for p in result.problems] == [f"{fifo}: not a regular file"]


def test_blank_lines_do_not_stall_the_fast_path(tmp_path: Path) -> None:
    # Its document pattern was quadratic in a run of blank lines ending in something else.
    path = tmp_path / "blank.yaml"
    path.write_text("\n" * 2_000_000 + "kind: Thing\n")
    result = _cli("validate", str(path))
    assert result.returncode == 1
    assert "unsupported resource" in result.stdout


# No key in any output ---------------------------------------------------------------------

# A key written where it does not belong, with every tag and type YAML offers.
MISPLACED = [
    f"stringData: {{api-key: !!{tag} {KEY}}}"
    for tag in ("bool", "int", "float", "timestamp", "binary", "null", "set", "omap")
] + [
    f"stringData: {{api-key: !{KEY} x}}",
    f"stringData: {{api-key: !<{KEY}> x}}",
    f"stringData: {{api-key: {{{KEY}: 1}}}}",
    f"stringData: {{api-key: {{{KEY}}}}}",
    f"stringData: {{api-key: [{KEY}]}}",
    f"stringData: {{api-key: {{a: {KEY}, a: {KEY}}}}}",
    f"stringData: {{api-key: {{{KEY}: 1, {KEY}: 2}}}}",
    f"stringData: {{x-org: [{{{KEY}: [{KEY}]}}]}}",
    f"stringData: [{KEY}]",
    f"stringData: {KEY}",
    f"stringData: {{api-key: !!int {KEY}, api-key: {KEY}}}",
    f"data: {{api-key: !!bool {base64.b64encode(KEY.encode()).decode()}}}",
    f"data: {{api-key: [{base64.b64encode(KEY.encode()).decode()}]}}",
    f"data: {{api-key: {KEY}}}",
    f"stringData: {{api-key: *{KEY}}}",
    f"stringData: {{api-key: &{KEY} x, b: &{KEY} y}}",
]


@pytest.mark.parametrize("entries", MISPLACED)
def test_no_key_in_any_message_whatever_its_tag_or_type(entries: str) -> None:
    result = _load(HEADER + entries + "\n")
    assert not result.ok
    for problem in result.problems:
        assert str(problem).startswith("f.yaml:")
        assert KEY not in str(problem)


def test_validate_and_serve_never_print_a_misplaced_key(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for index, entries in enumerate(MISPLACED):
        (config / f"bad-{index:02d}.yaml").write_text(HEADER + entries + "\n")
    (config / "good.yaml").write_text(
        secret("good", "key-good") + "---\n" + authconfig("c", "apiKeySecretRefs: [{name: good}]")
    )
    # This one killed serve with SIGSEGV at every start (libyaml's composer).
    (config / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    validated = _cli("validate", str(config))
    assert validated.returncode == 1
    assert validated.stdout.count("bad-") == len(MISPLACED)
    assert f"{config}/deep.yaml:1: document 1: nested more than 64" in validated.stdout
    assert KEY not in validated.stdout + validated.stderr

    server = harness.Extauth(config, tmp_path / "serve.log")
    try:
        server.wait_ready()
        (config / "late.yaml").write_text(HEADER + MISPLACED[0] + "\n")
        harness.wait_until(
            lambda: "late.yaml" in server.log() or None, 20, "the late file to be rejected"
        )
        assert server.proc.poll() is None
    finally:
        server.stop()
    log = server.log()
    assert KEY not in log
    assert "Traceback" not in log
    for index in range(len(MISPLACED)):
        assert f"rejected {config}/bad-{index:02d}.yaml (not loaded)" in log
    assert f"rejected {config}/deep.yaml (not loaded)" in log
    assert re.search(r"loaded .*good\.yaml", log)


def test_the_general_loader_and_validate_agree_with_serve(tmp_path: Path) -> None:
    # What serve reads (fast path included) is what validate reads.
    path = tmp_path / "k.yaml"
    path.write_text(keys.manifest("a", "ns", "key-a", {"x-org": "dev"}, {}))
    served = loader.load_file(path)
    assert served.fast
    general = manifests.load_file(path)
    assert general.ok
    assert isinstance(served.definitions[0], ApiKey)
    assert _cli("validate", str(path)).returncode == 0


def test_serve_takes_the_limit_flags(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text(secret("big", "key-big") + "# " + "x" * 2000 + "\n")
    (tmp_path / "small.yaml").write_text(secret("small", "key-small"))
    server = harness.Extauth(tmp_path, tmp_path.parent / "limits.log", "--max-file-bytes", "1000")
    try:
        server.wait_ready()
    finally:
        server.stop()
    log = server.log()
    assert "the limit is --max-file-bytes 1000" in log
    assert re.search(r"loaded .*small\.yaml", log)


def test_load_text_never_raises_even_when_a_step_does(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RecursionError(KEY)

    monkeypatch.setattr(manifests, "_construct", broken)
    result = _load(HEADER + f"stringData: {{api-key: '{KEY}'}}\n")
    assert [str(p) for p in result.problems] == ["f.yaml:1: document 1: nested too deeply"]
    monkeypatch.setattr(secretscan, "scan", broken)
    assert [str(p) for p in _load("a: 1\n").problems] == ["f.yaml: nested too deeply"]


def test_fast_and_general_paths_in_a_running_watch_agree(tmp_path: Path) -> None:
    # The watcher's _read is one call to the loader: a fast-path file and a general one.
    (tmp_path / "fast.yaml").write_text(keys.manifest("a", "ns", "key-a", {}, {}))
    (tmp_path / "flow.yaml").write_text(secret("b", "key-b"))

    async def first() -> set[str]:
        changes = FileSource(tmp_path).changes()
        change = await anext(changes)
        await changes.aclose()
        return {d.name for d in change.upserted if isinstance(d, ApiKey)}

    assert asyncio.run(first()) == {"a", "b"}


# Whatever lands in the directory ------------------------------------------------------------

_TAGGED = st.builds(
    lambda tag, value: HEADER + f"stringData: {{api-key: {tag}{value}}}\n",
    st.sampled_from(["", "!!int ", "!!bool ", "!!float ", "!!timestamp ", "!!binary ", "!x "]),
    st.text(string.ascii_letters + string.digits + "_-:.{}[]&*!", min_size=1, max_size=30),
)
_JUNK = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda t: t.encode("utf-8", errors="surrogateescape")),
    st.integers(1, 100_000).map(lambda n: ("a: " + "[" * n + "]" * n + "\n").encode()),
    st.integers(1, 3000).map(lambda n: _config(ENTRY, "!" * n + "a").encode()),
    _TAGGED.map(str.encode),
)


@settings(deadline=None, max_examples=40)
@given(junk=st.lists(_JUNK, min_size=1, max_size=4))
def test_nothing_dropped_in_the_directory_stops_a_revocation(junk: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        (root / "a.yaml").write_text(secret("a", "key-a"))
        (root / "b.yaml").write_text(secret("b", "key-b"))
        source = FileSource(root)
        builder = PolicyBuilder()
        builder.apply(source.scan())
        for index, content in enumerate(junk):
            (root / f"junk-{index}.yaml").write_bytes(content)
        builder.apply(source.scan())
        (root / "a.yaml").unlink()
        change = source.scan()
        builder.apply(change)
        assert ("ns", "a") in {removal.owner for removal in change.removed}
        admitted = builder.build().keys  # junk may be a valid Secret: it adds, never holds back
        assert digest("key-a") not in admitted
        assert digest("key-b") in admitted
