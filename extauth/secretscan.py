"""A fast path for files of API-key Secrets in the layout `extauth keys new` writes.

The general loader (`manifests.py`) composes a YAML node tree, checks it, constructs it
and validates it with pydantic: about 250 us per Secret, so a million keys would take
minutes. Key files are machine-written and all look alike, so this module recognises
that one layout with a few regular expressions and builds the `ApiKey`s directly (about
10 us per Secret):

    ---
    apiVersion: v1
    kind: Secret
    type: extauth.solo.io/apikey
    metadata:
      name: team-a
      namespace: default          # optional
      labels:                     # optional
        team: a
    data:                         # or stringData
      api-key: dGVhbS1hLWtleQ==
      x-org: ZGV2ZWxvcGVycw==

It only ever accepts: for a file it is not sure about (another layout, a flow mapping,
a trailing comment, a value YAML would not read as a plain string, anything invalid)
it answers None and the caller uses the general loader, which also produces the error
messages. What it accepts, it must read exactly as the general loader would:
`tests/test_secretscan.py` checks that on generated files, valid and broken.
"""

from __future__ import annotations

import binascii
import functools
import re
from base64 import b64decode

from yaml.resolver import Resolver

from extauth.apikeys import (
    API_KEY_ENTRY,
    EXPIRES_AT_ENTRY,
    KEY_ENTRIES,
    ApiKey,
    Shared,
    api_key,
    digest,
    shared,
)
from extauth.manifests import DEFAULT_LIMITS, MAX_DOCUMENT_NODES, Limits
from extauth.origins import Origin
from extauth.resources import (
    check_entries,
    check_entry_names,
    check_labels,
    check_name,
    check_namespace,
    header_value_problem,
)

# A plain scalar this fast path reads itself: no spaces, no YAML indicator first, no ':'
# last; whether YAML would resolve it to a non-string (`yes`, `12`, `1e3`, a date) is
# checked against PyYAML's own resolvers below.
_PLAIN = r"[A-Za-z0-9._/+=][A-Za-z0-9._/+=@:-]*(?<!:)|-[A-Za-z0-9._/+=@:-]*[A-Za-z0-9._/+=@-]"
_DOUBLE = r'"([ !#-\[\]-~]*)"'  # printable ASCII without '"' and '\': no escapes to decode
_SINGLE = r"'([ -&(-~]*)'"  # printable ASCII without "'": no '' to decode
_VALUE = rf"(?:({_PLAIN})|{_DOUBLE}|{_SINGLE})"
_KEY = r"([A-Za-z0-9_./-]+)"

# Blank lines and whole-line comments. YAML also ends a line at NEL, LS and PS (and CR):
# a comment must not hide one. YAML refuses control characters (and U+FFFE, U+FFFF)
# everywhere, comments included: a comment holds only what it allows.
_COMMENT = r"#[\t\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*"
_GAP = re.compile(rf"(?:(?:{_COMMENT})?\n)*+")
# One Secret with what precedes it: a gap, its `---` (which only the first may lack), a gap.
# The gaps are possessive (`*+`): a gap is never followed by a line it could have taken,
# and without that, a long run of blank lines that ends in something else is split
# every way between the two gaps before the match gives up (quadratic: 16,000 blank
# lines took 6 s, a file of them would hold the watcher for hours).
_DOCUMENT = re.compile(
    rf"((?:(?:{_COMMENT})?\n)*+(---\n)?(?:(?:{_COMMENT})?\n)*+)"
    r"apiVersion: v1\n"
    r"kind: Secret\n"
    r"type: extauth\.solo\.io/apikey\n"
    r"metadata:\n"
    r"  name: ([a-z0-9.-]+)\n"
    r"(?:  namespace: ([a-z0-9-]+)\n)?"
    r"(?:  labels:\n((?:    [^\n]*\n)+))?"
    r"(data|stringData):\n"
    r"((?:  [^\n]*\n)+)"
)
_FIRST_ENTRY = re.compile(rf"  (api-key|api-key-hash): {_VALUE}\n")
_HASH = re.compile(r"sha256:[0-9a-fA-F]{64}\Z")
_SPECIAL_ENTRIES = frozenset((*KEY_ENTRIES, EXPIRES_AT_ENTRY))
_LABELS = re.compile(rf"(?:    {_KEY}: {_VALUE}\n)+")
_LABEL = re.compile(rf"    {_KEY}: {_VALUE}\n")
_ENTRIES = re.compile(rf"(?:  {_KEY}: {_VALUE}\n)+")
_ENTRY = re.compile(rf"  {_KEY}: {_VALUE}\n")

_STR_TAG = "tag:yaml.org,2002:str"
_RESOLVERS = {
    first: [pattern for tag, pattern in resolvers if tag != _STR_TAG]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    if first is not None
}


_RESOLVED_FIRST = frozenset(_RESOLVERS)


class _NotCanonical(Exception):
    """This file is for the general loader."""


# Collections inside collections in the layout: the document, metadata, labels.
_DEPTH = 3


def scan(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[ApiKey, ...] | None:
    """The file's keys, or None when the general loader must read it (also when the
    file is over a limit: the general loader refuses it, with the message)."""
    if limits.max_depth < _DEPTH:
        return None
    if not text.endswith("\n"):
        text += "\n"
    try:
        return tuple(_documents(text, path, limits.max_documents))
    except _NotCanonical:
        return None


def _documents(text: str, path: str, max_documents: int) -> list[ApiKey]:
    found: list[ApiKey] = []
    position = 0
    line = 1  # of `position`
    match = _DOCUMENT.match(text)
    while match is not None:
        prefix, marker = match.group(1, 2)
        if marker is None and found:
            raise _NotCanonical  # a second document needs its `---`
        if len(found) == max_documents:
            raise _NotCanonical
        start = line + (1 if prefix == "---\n" else prefix.count("\n"))
        # Documents are numbered as YAML does: one per `---`, or the implicit first.
        document = len(found) + 1
        found.append(_key(match, path, start, document))
        line += text.count("\n", position, match.end())
        position = match.end()
        match = _DOCUMENT.match(text, position)
    if not found or _GAP.match(text, position).end() != len(text):  # type: ignore[union-attr]
        # Something else follows (another kind, an empty document, `...`): the general
        # loader knows what it means.
        raise _NotCanonical
    return found


def _key(match: re.Match[str], path: str, line: int, document: int) -> ApiKey:
    name, namespace, labels_block, kind, entries_block = match.group(3, 4, 5, 6, 7)
    # The document's YAML nodes, which the general loader caps: 13, 2 for a namespace,
    # 2 and 2 per label for labels, 2 per entry.
    nodes = 13 + 2 * (namespace is not None) + 2 * entries_block.count("\n")
    if labels_block:
        nodes += 2 + 2 * labels_block.count("\n")
    if nodes > MAX_DOCUMENT_NODES:
        raise _NotCanonical  # the general loader refuses it, with the message
    namespace = namespace or "default"
    labels = _labels(labels_block) if labels_block else _NO_LABELS
    if _resolves(name) or not _namespace_ok(namespace):
        raise _NotCanonical  # e.g. `name: 9`, an int to YAML
    try:
        check_name(name)
    except ValueError:
        raise _NotCanonical from None
    common = _common_entries(kind, entries_block, namespace, name, labels, path, line, document)
    if common is not None:
        return common
    entries = _entries(kind, entries_block)
    try:
        check_entries(entries)
    except ValueError:
        raise _NotCanonical from None
    return ApiKey.from_entries(namespace, name, labels, entries, Origin(path, line, document))


def _common_entries(
    kind: str,
    block: str,
    namespace: str,
    name: str,
    labels: Shared,
    path: str,
    line: int,
    document: int,
) -> ApiKey | None:
    """The common case, cheaper: the key (`api-key` or `api-key-hash`) first, then
    metadata entries that repeat across Secrets (checked once per distinct block). None
    for anything else (a rotation, an expiry), which takes the general entries path.

    Accepts exactly what `check_entries` accepts for such entries: a non-empty key that
    can travel in a header, a well-formed hash, metadata that can travel in a header.
    """
    first = _FIRST_ENTRY.match(block)
    if first is None:
        return None
    metadata = _metadata(kind, block[first.end() :])
    if metadata is None:
        return None
    entry, plain, double, single = first.groups()
    if plain and plain[0] in _RESOLVED_FIRST and _resolves(plain):
        raise _NotCanonical
    value = plain or double or single
    if kind == "data":
        value = _decode(value)
    # A plain stringData value is made of _PLAIN's characters: no control character, no
    # whitespace, so it can travel in a header as it is; anything else is checked.
    if not value or ((not plain or kind == "data") and header_value_problem(value)):
        raise _NotCanonical
    if entry == API_KEY_ENTRY:
        key_digest, hashed = digest(value), False
    elif _HASH.match(value):
        key_digest, hashed = bytes.fromhex(value[7:]), True
    else:
        raise _NotCanonical
    return api_key(
        namespace, name, labels, key_digest, None, metadata, path, line, document, hashed, None
    )


@functools.lru_cache(maxsize=4096)
def _metadata(kind: str, block: str) -> Shared | None:
    """Shared, checked metadata from the entries after the key; None when they hold key
    material or an expiry (the general entries path handles those)."""
    entries = _entries(kind, block) if block else {}
    if any(entry in _SPECIAL_ENTRIES for entry in entries):
        return None
    if any(header_value_problem(value) for value in entries.values()):
        raise _NotCanonical
    return shared(entries)


def _entries(kind: str, block: str) -> dict[str, str]:
    """A `data` or `stringData` block's entries: names checked, values decoded."""
    written = _mapping(_ENTRIES, _ENTRY, block)
    if not all(map(_entry_ok, written)):
        raise _NotCanonical
    return {k: _decode(v) for k, v in written.items()} if kind == "data" else written


# Label sets, namespaces and entry names repeat across a file's Secrets: each distinct
# one is parsed and checked once.
_NO_LABELS = shared({})


@functools.lru_cache(maxsize=4096)
def _labels(block: str) -> Shared:
    labels = _mapping(_LABELS, _LABEL, block)
    try:
        check_labels(labels)
    except ValueError:
        raise _NotCanonical from None  # the general loader reports it
    return shared(labels)


@functools.lru_cache(maxsize=1024)
def _namespace_ok(namespace: str) -> bool:
    try:
        check_namespace(namespace)
    except ValueError:
        return False
    return not _resolves(namespace)


@functools.lru_cache(maxsize=1024)
def _entry_ok(entry: str) -> bool:
    """A valid entry name (that YAML reads it as a string, `_mapping` has checked)."""
    try:
        check_entry_names((entry,))
    except ValueError:
        return False
    return True


def _mapping(block: re.Pattern[str], line: re.Pattern[str], text: str) -> dict[str, str]:
    if block.fullmatch(text) is None:
        raise _NotCanonical
    mapping: dict[str, str] = {}
    for key, plain, double, single in line.findall(text):
        if key in mapping or (key[0] in _RESOLVED_FIRST and _resolves(key)):
            raise _NotCanonical  # a duplicate, or a key YAML reads as a bool or number
        if plain:
            if plain[0] in _RESOLVED_FIRST and _resolves(plain):
                raise _NotCanonical
            mapping[key] = plain
        else:
            mapping[key] = double or single
    return mapping


def _resolves(plain: str) -> bool:
    """Whether YAML reads this plain scalar as something other than a string."""
    patterns = _RESOLVERS.get(plain[0])
    return patterns is not None and any(p.match(plain) for p in patterns)


def _decode(value: str) -> str:
    # resources.decode_base64 without its line-break handling, a call per key cheaper:
    # no value this module reads holds a CR or LF (see _VALUE).
    try:
        return b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise _NotCanonical from None
