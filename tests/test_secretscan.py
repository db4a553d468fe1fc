"""The fast Secret loader reads exactly what the general loader reads, or declines.

Files are generated in the fast path's layout with every part varied (names, optional
blocks, quoting, YAML's non-string scalars, base64, separators, comments), and then
sometimes damaged at a random place. Whenever `secretscan.scan` accepts a file, the
general loader (`manifests.parse_text` + `snapshot.definitions`) must accept it too and
produce the same keys, field for field, origins included.
"""

from __future__ import annotations

import base64
from typing import Any

import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from extauth import keys, manifests, secretscan
from extauth.apikeys import ApiKey, digest
from extauth.loader import definitions
from tests.builders import key_fields

PATH = "keys.yaml"

# Scalars YAML reads as strings, and some it reads as something else or not at all.
_SAFE = ["team-a", "developers", "g1", "a.b/c", "x+y=", "v1.2", "-dash", "_under", "A"]
_TRICKY = [
    "yes",
    "No",
    "on",
    "true",
    "null",
    "~",
    "123",
    "0x1F",
    "1e3",
    "1_000",
    ".inf",
    "2024-01-01",
    "12:30:00",
    "a:",
    ":a",
    "@x",
    "=",
    "-",
    "<<",
    "a b",
    "#c",
    "é",
]
_LABEL_KEYS = ["team", "group", "app.kubernetes.io/name", "tier_1", "-x"]
# What Kubernetes accepts as label keys and values, among the above.
_GOOD_LABEL_KEYS = ("team", "group", "app.kubernetes.io/name", "tier_1")
_GOOD_LABEL_VALUES = ("team-a", "developers", "g1", "v1.2", "A")
_scalar = st.sampled_from(_SAFE + _TRICKY)
_written = st.one_of(
    _scalar,
    _scalar.map(lambda v: f'"{v}"'),
    _scalar.map(lambda v: f"'{v}'"),
    st.just('""'),
    st.just("'it''s'"),
    st.just('"a\\tb"'),
)
_names = st.sampled_from(["team-a", "key-1", "a.b", "Team", "-x", "a" * 254, "9"])
_namespaces = st.sampled_from(["default", "ns-1", "NS", "a.b", ""])
_key_values = st.sampled_from(
    ["k-1", "k-2", "bench-key-0001", " spaced", "k\u0085", "", "k\u00a0", "\u3000k", "k\t1", "k\t"]
)
# RFC 3339 forms and what looks like them: the fast path must read them as the model does.
_EXPIRIES = [
    "2030-01-01T00:00:00Z",
    "2030-01-01t00:00:00z",
    "2030-01-01T02:00:00+02:00",
    "2030-01-01T00:00:00.5Z",
    "2027-W05-1T00:00Z",
    "20270131T000000Z",
    "2030-01-01T00:00Z",
    "2030-01-01 00:00:00Z",
    "2030-01-01T00:00:00",
    "soon",
]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _rarely(draw: Any) -> bool:
    return bool(draw(st.integers(0, 7)) == 0)


@st.composite
def _document(draw: Any) -> tuple[str, bool]:
    """A Secret in the fast layout, and whether every part was chosen to be valid."""
    valid = True
    lines = ["apiVersion: v1", "kind: Secret", "type: extauth.solo.io/apikey", "metadata:"]
    name = draw(_names) if _rarely(draw) else draw(st.sampled_from(["team-a", "key-1", "a.b"]))
    valid &= name in ("team-a", "key-1", "a.b")
    lines.append(f"  name: {name}")
    if draw(st.booleans()):
        namespace = draw(_namespaces) if _rarely(draw) else "ns-1"
        valid &= namespace in ("default", "ns-1")
        lines.append(f"  namespace: {namespace}")
    if draw(st.booleans()):
        lines.append("  labels:")
        seen: set[str] = set()
        for _ in range(draw(st.integers(1, 3))):
            label = draw(_written) if _rarely(draw) else draw(st.sampled_from(_LABEL_KEYS))
            value = draw(_written) if _rarely(draw) else draw(st.sampled_from(_SAFE))
            valid &= label in _GOOD_LABEL_KEYS and value in _GOOD_LABEL_VALUES
            valid &= label not in seen
            seen.add(label)
            lines.append(f"    {label.strip(chr(34) + chr(39))}: {value}")
    encoded = draw(st.booleans())
    lines.append("data:" if encoded else "stringData:")
    entries: list[tuple[str, str]] = []
    which = (
        draw(st.sampled_from(["none", "both"]))
        if _rarely(draw)
        else draw(st.sampled_from(["api-key", "api-key-hash"]))
    )
    key = draw(_key_values) if _rarely(draw) else "k-1"
    valid &= key == "k-1" and which in ("api-key", "api-key-hash")
    if which in ("api-key", "both"):
        entries.append(("api-key", key))
    if which in ("api-key-hash", "both"):
        entries.append(("api-key-hash", keys.key_hash(key)))
    if draw(st.booleans()):
        following = draw(st.sampled_from(["k-2", "k-1", ""]))
        valid &= bool(following)
        entries.append(("api-key-next", following))
    if _rarely(draw):
        entries.append(("expires-at", draw(st.sampled_from(_EXPIRIES))))
        valid = False  # written unquoted, YAML may read a timestamp: a type error
    for _ in range(draw(st.integers(0, 2))):
        entry, value = "x-org", draw(st.sampled_from(_SAFE))
        if _rarely(draw):
            entry, value = draw(st.sampled_from(["x-org", "bad/name", "api-key"])), draw(_scalar)
            valid = False
        valid &= entry not in (e for e, _ in entries)
        entries.append((entry, value))
    for entry, value in entries:
        if encoded:
            shown = _b64(value)
            if draw(st.integers(0, 9)) == 0:
                shown = draw(st.sampled_from(["%%", "/w==", shown + "="]))  # not base64, not UTF-8
                valid = False
        else:
            shown = draw(st.sampled_from([value, f'"{value}"', f"'{value}'"])) if value else '""'
        lines.append(f"  {entry}: {shown}")
    return "\n".join(lines) + "\n", valid


@st.composite
def _file(draw: Any) -> tuple[str, bool]:
    documents = draw(st.lists(_document(), min_size=1, max_size=4))
    parts: list[str] = []
    intact = True
    for index, (text, _) in enumerate(documents):
        if draw(st.booleans()):
            comment = draw(st.sampled_from(["# a comment\n", "\n", "#\n\n", "# équipe\n"]))
            if _rarely(draw):
                # YAML ends a line at NEL, LS and PS too: what follows is not a comment.
                comment = draw(st.sampled_from(["# c\x85x: 1\n", "# c\u2028kind: Pod\n"]))
                intact = False
            parts.append(comment)
        if index or draw(st.booleans()):
            parts.append("---\n")
        parts.append(text)
    if draw(st.integers(0, 5)) == 0:
        tail = draw(st.sampled_from(["---\n", "...\n", "# end\n", "extra: 1\n"]))
        parts.append(tail)
        intact = tail == "# end\n" and intact  # the others are for the general loader
    text = "".join(parts)
    if _rarely(draw):
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.sampled_from([" ", "\t", "#", ":", "-", "\n", "x", "'"]))
            + text[at:]
        )
        intact = False
    return text, intact and all(valid for _, valid in documents)


_fields = key_fields


def _general(text: str) -> list[tuple[object, ...]] | None:
    result = manifests.parse_text(text, PATH)
    if not result.ok or result.ignored:
        return None
    return [_fields(d) for d in definitions(result.resources) if isinstance(d, ApiKey)]


@settings(max_examples=600, deadline=None)
@given(_file())
def test_fast_path_agrees_with_the_general_loader(case: tuple[str, bool]) -> None:
    text, valid = case
    fast = secretscan.scan(text, PATH)
    general = _general(text)
    event("fast path" if fast is not None else "declined")
    if fast is not None:
        assert general is not None, "the fast path accepted what the general loader refuses"
        assert [_fields(k) for k in fast] == general
    if valid:
        # A well-formed file in the layout must take the fast path, or it is no path.
        assert fast is not None


def test_what_keys_new_writes_takes_the_fast_path() -> None:
    texts = [
        keys.manifest("team-a", "default", "k-1", {"x-org": "developers"}, {"team": "a"}),
        keys.manifest("team-b", "ns-1", "k-2", {}, {}, hashed=True),
    ]
    text = "---\n".join(texts)
    fast = secretscan.scan(text, PATH)
    assert fast is not None
    assert [_fields(k) for k in fast] == _general(text)
    assert fast[0].digests == (digest("k-1"),)
    assert dict(fast[0].metadata) == {"x-org": "developers"}
    assert fast[1].origin.line == text.count("\n", 0, text.index("name: team-b")) - 3


def test_shared_mappings_are_one_object_per_distinct_content() -> None:
    doc = (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\nmetadata:\n"
        "  name: k{i}\n  labels:\n    team: a\nstringData:\n  api-key: key-{i}\n  x-org: dev\n"
    )
    text = "".join("---\n" + doc.format(i=i) for i in range(3))
    fast = secretscan.scan(text, PATH)
    assert fast is not None
    assert len(fast) == 3
    assert fast[0].labels is fast[2].labels
    assert fast[0].metadata is fast[2].metadata
    assert len({k.digests for k in fast}) == 3


def test_other_layouts_are_left_to_the_general_loader() -> None:
    flow = (
        "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
        "metadata: {name: a}\nstringData: {api-key: k}\n"
    )
    assert secretscan.scan(flow, PATH) is None
    assert _general(flow) is not None
    config = yaml.safe_dump({"apiVersion": "extauth.solo.io/v1", "kind": "AuthConfig"})
    assert secretscan.scan(config, PATH) is None


def test_a_comment_holding_a_character_yaml_refuses_is_left_to_the_general_loader() -> None:
    """YAML refuses control characters (and U+FFFE, U+FFFF) anywhere in a file, comments
    included; the fast path took any character in a comment, so a NUL in a comment line
    made a file that the general loader (and kubectl) refuse load all the same."""
    good = "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\n"
    good += "metadata:\n  name: a\nstringData:\n  api-key: key-a\n"
    assert secretscan.scan("# fine\t\u00e9\u2027\ufffd\U0001f600\n" + good, PATH) is not None
    for refused in ("\x00", "\x01", "\x08", "\x0b", "\x1b", "\x7f", "\x9f", "\ufffe", "\uffff"):
        text = f"# a{refused}b\n---\n" + good
        assert not manifests.parse_text(text, PATH).ok, repr(refused)
        assert secretscan.scan(text, PATH) is None, repr(refused)


def test_a_secret_over_the_node_limit_is_left_to_the_general_loader() -> None:
    """The general loader refuses a document of more than MAX_DOCUMENT_NODES YAML nodes
    before composing it; the fast path must not accept such a Secret (thousands of
    labels) that the general loader refuses."""
    head = "apiVersion: v1\nkind: Secret\ntype: extauth.solo.io/apikey\nmetadata:\n  name: a\n"
    # 13 nodes, 2 per label (and 2 for `labels:`), 2 per entry.
    over = (manifests.MAX_DOCUMENT_NODES - 17) // 2 + 1
    for count, fits in ((over - 1, True), (over, False)):
        labels = "".join(f"    l{i}: v\n" for i in range(count))
        text = f"{head}  labels:\n{labels}stringData:\n  api-key: key-a\n"
        general = _general(text)
        assert (general is not None) is fits
        fast = secretscan.scan(text, PATH)
        assert (fast is not None) is fits
        if fast is not None:
            assert [_fields(k) for k in fast] == general
