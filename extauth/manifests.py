"""Read multi-document YAML manifests into validated resources, with `file:line` problems.

Whatever a file holds, reading it never raises and never crashes the process: every
failure is a problem of that file alone. The `Limits` are checked before the expensive
steps: the file's size before it is read (`read_text`), then nesting depth and document
count over the YAML event stream before anything is composed (libyaml's composer recurses
in C, and a document nested 100,000 levels deep overflows its stack: SIGSEGV).

YAML is composed into a node tree first (which keeps line numbers), checked for what
PyYAML would silently accept (duplicate mapping keys, non-string keys, alias bombs,
recursive aliases), then constructed and validated. A pydantic error's field path is
walked back through the node tree to the line of the offending field, so every problem
reads `path:line: document N (Kind ns/name): field.path: message`.

Values are never part of a message: they may be keys. Messages are made of our own text,
names and field paths (a Secret's entry names are shown, as `kubectl describe secret`
does; never what is under them), and a last check withholds any message that would
still quote what a Secret holds under `data` or `stringData`.
"""

from __future__ import annotations

import binascii
import functools
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from extauth.apikeys import EXPIRES_AT_ENTRY, KEY_ENTRIES
from extauth.origins import Origin, Problem, failure_site
from extauth.ranges import check, ranged
from extauth.resources import (
    APIKEY_SECRET_TYPE,
    AUTHCONFIG_API_VERSION,
    AuthConfig,
    Secret,
    decode_base64,
)

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Upper bound on nodes in one document once aliases are expanded: a real manifest has a
# few hundred; a "billion laughs" document has billions.
MAX_EXPANDED_NODES = 1_000_000
# Upper bound on nodes written in one document, counted before it is composed. Composing
# holds the GIL for the whole document (libyaml's composer is C) and costs about 500
# bytes per node: a 4 MB flat list of two million scalars took 25 s and 1 GB, and a file
# at --max-file-bytes would have taken the process down. 50,000 nodes compose in a few
# tenths of a second; an AuthConfig naming 10,000 Secrets by ref fits.
MAX_DOCUMENT_NODES = 50_000
# --max-depth may not go above this: deeper, libyaml's composer and PyYAML's merge-key
# handling recurse too far (the composer in C, where that is a crash).
MAX_DEPTH_CEILING = 1_000

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one file may hold; anything beyond is refused, with the limit named.

    The defaults leave room for a million keys in 1,000 files and for a single file of
    100,000 keys in the layout `extauth keys new` writes (about 250 bytes each, 600
    with several metadata entries), and refuse what would stall the service: a 200 MB
    file, a document nested thousands of levels deep.
    """

    # fmt: off
    max_file_bytes: int = ranged(64 * 1024 * 1024, 1, 2**40, "BYTES", "largest file read (64 MiB)")
    max_documents: int = ranged(200_000, 1, 2**31, "N", "most YAML documents in one file")
    # Collections inside collections: a Secret is 3 deep (metadata.labels), an
    # AuthConfig about 7, `kubectl get -o yaml` output with managedFields about 15.
    max_depth: int = ranged(64, 1, MAX_DEPTH_CEILING, "N",
                            "deepest nesting of mappings and lists in a document")
    # fmt: on

    def __post_init__(self) -> None:
        check(self)


DEFAULT_LIMITS = Limits()

Resource = Secret | AuthConfig


@dataclass(frozen=True, slots=True)
class Loaded:
    resource: Resource
    origin: Origin


@dataclass(frozen=True, slots=True)
class FileResult:
    """Everything read from one file. A file with any error is rejected whole."""

    resources: tuple[Loaded, ...]
    problems: tuple[Problem, ...]
    ignored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not any(not p.warning for p in self.problems)


def load_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> FileResult:
    """The general loader alone (see `loader.load_file` for what the service reads)."""
    text = read_text(path, limits)
    if isinstance(text, Problem):
        return FileResult((), (text,))
    return parse_text(text, str(path), limits)


def read_text(path: Path, limits: Limits = DEFAULT_LIMITS) -> str | Problem:
    """The file's text, or why it cannot be had. The size is taken from the open file
    (fstat) before reading, and no more than the limit is ever read, so a file that
    grows meanwhile cannot slip past it. Opened non-blocking: a FIFO named `x.yaml`
    must not hang the reader; only regular files are read."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return Problem(name, 0, f"cannot read file: {exc.strerror or type(exc).__name__}")
    try:
        with os.fdopen(fd, "rb") as file:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                return Problem(name, 0, "not a regular file")
            if status.st_size > limits.max_file_bytes:
                return _too_big(name, status.st_size, limits)
            data = file.read(limits.max_file_bytes + 1)
    except OSError as exc:
        return Problem(name, 0, f"cannot read file: {exc.strerror or type(exc).__name__}")
    if len(data) > limits.max_file_bytes:
        return _too_big(name, None, limits)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(name, data.count(b"\n", 0, exc.start) + 1, "file is not UTF-8 text")


def _too_big(path: str, size: int | None, limits: Limits) -> Problem:
    found = f"{size} bytes" if size is not None else "grew while read"
    return Problem(
        path, 0, f"file too large ({found}; the limit is --max-file-bytes {limits.max_file_bytes})"
    )


def failure(exc: BaseException) -> str:
    """Why reading failed, in our own words: the exception's type and where it was raised,
    never its message, which may quote the file (a key)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"cannot be read ({failure_site(exc)})"


def parse_text(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> FileResult:
    """Every document of `text`; never raises (a failure is a problem of this file)."""
    try:
        return _parse_text(text, path, limits)
    except Exception as exc:  # a last net: whatever it was, it is this file's problem
        return FileResult((), (Problem(path, 0, failure(exc)),))


def _parse_text(text: str, path: str, limits: Limits) -> FileResult:
    try:
        too_deep = _prescan(text, path, limits)
        if too_deep is not None:
            return FileResult((), (too_deep,))
        loaded: list[Loaded] = []
        problems: list[Problem] = []
        ignored: list[str] = []
        # One document composed at a time: a file's node trees are never all held at once.
        for index, document in enumerate(yaml.compose_all(text, Loader=_Loader), start=1):
            if document is None or _is_null(document):
                continue
            for node, here in _resources(document, index):
                _load_one(node, index, here, path, limits, (loaded, problems, ignored))
    except yaml.reader.ReaderError as exc:
        # No mark: the position is in the UTF-8 bytes libyaml was given.
        line = text.encode("utf-8", "surrogatepass")[: exc.position].count(b"\n") + 1
        return FileResult((), (Problem(path, line, f"YAML syntax error: {exc.reason}"),))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or "invalid YAML"
        return FileResult((), (Problem(path, line, f"YAML syntax error: {reason}"),))
    return FileResult(tuple(loaded), tuple(problems), tuple(ignored))


def _load_one(
    node: yaml.Node,
    index: int,
    here: str,
    path: str,
    limits: Limits,
    into: tuple[list[Loaded], list[Problem], list[str]],
) -> None:
    """One resource of document `index` (named `here` in messages), into what it adds to:
    the loaded, the problems, the ignored."""
    loaded, problems, ignored = into
    origin = Origin(path, node.start_mark.line + 1, index)
    try:
        result = _load_document(node, origin, limits, here)
    except Exception as exc:  # one document's failure, whatever it is, is its own
        result = [Problem(path, origin.line, f"{here}: {failure(exc)}")]
    if isinstance(result, Loaded):
        loaded.append(result)
    elif isinstance(result, str):
        ignored.append(result)
    else:
        problems.extend(_withheld(result, node, here))


def _resources(document: yaml.Node, index: int) -> Iterator[tuple[yaml.Node, str]]:
    """The resources a document holds, each with how messages name it: the document
    itself, or each item of a `kind: List` (what `kubectl get ... -o yaml` prints)."""
    items = _list_items(document)
    if items is None:
        yield document, f"document {index}"
        return
    for number, item in enumerate(items, start=1):
        if not _is_null(item):
            yield item, f"document {index} item {number}"


def _list_items(node: yaml.Node) -> list[yaml.Node] | None:
    """The items of a `v1` `List`, or None when `node` is not one."""
    if not isinstance(node, yaml.MappingNode):
        return None
    fields = {k.value: v for k, v in node.value if isinstance(k, yaml.ScalarNode)}
    kind, version, items = fields.get("kind"), fields.get("apiVersion"), fields.get("items")
    if not (
        isinstance(kind, yaml.ScalarNode)
        and kind.value == "List"
        and isinstance(version, yaml.ScalarNode)
        and version.value == "v1"
        and isinstance(items, yaml.SequenceNode)
    ):
        return None
    return list(items.value)


# How each event moves the nesting depth; document starts are counted.
_STEPS: dict[type, int] = {
    yaml.MappingStartEvent: 1,
    yaml.SequenceStartEvent: 1,
    yaml.MappingEndEvent: -1,
    yaml.SequenceEndEvent: -1,
}
# The events that make a node: counted against MAX_DOCUMENT_NODES.
_NODES = frozenset(
    {yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.ScalarEvent, yaml.AliasEvent}
)


def _prescan(text: str, path: str, limits: Limits) -> Problem | None:
    """Refuse too many documents, too deep a nesting or too many nodes in one document,
    from the event stream (libyaml's parser keeps its own stack: it does not recurse),
    before anything is composed."""
    parser = _Loader(text)
    get_event, steps, node_events = parser.get_event, _STEPS, _NODES
    depth = documents = nodes = 0
    try:
        while True:
            event = get_event()  # type: ignore[no-untyped-call]
            kind = type(event)
            refusal = None
            if kind in node_events:
                nodes += 1
                if nodes > MAX_DOCUMENT_NODES:
                    refusal = (
                        f"document {documents}: more than {MAX_DOCUMENT_NODES} YAML nodes "
                        "(values, lists and mappings); split it"
                    )
            step = steps.get(kind)
            if step is not None:
                depth += step
                if depth > limits.max_depth and refusal is None:  # the node count speaks first
                    refusal = (
                        f"document {documents}: nested more than {limits.max_depth} levels "
                        f"deep (the limit is --max-depth {limits.max_depth})"
                    )
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                nodes = 0
                if documents > limits.max_documents:
                    refusal = (
                        f"more than {limits.max_documents} YAML documents "
                        f"(the limit is --max-documents {limits.max_documents})"
                    )
            elif kind is yaml.StreamEndEvent:
                return None
            if refusal is not None:
                return Problem(path, _line(event.start_mark), refusal)
    finally:
        parser.dispose()


def _line(mark: Any) -> int:
    return mark.line + 1 if mark is not None else 0


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _load_document(
    node: yaml.Node, origin: Origin, limits: Limits, here: str
) -> Loaded | str | list[Problem]:
    """A resource, the reason it is ignored, or its problems (each message starts with
    `here`, which names the document)."""
    structural = _structural_problems(node, limits)
    if structural:
        return [Problem(origin.path, line, f"{here}: {msg}") for line, msg in structural]
    data = _construct(node)
    if isinstance(data, _Unreadable):
        return [Problem(origin.path, data.line or origin.line, f"{here}: YAML error: {data}")]
    if not isinstance(data, dict):
        return [Problem(origin.path, origin.line, f"{here}: expected a mapping (a resource)")]

    kind, api_version = data.get("kind"), data.get("apiVersion")
    model: type[Resource]
    if kind == "Secret" and api_version == "v1":
        if data.get("type") != APIKEY_SECRET_TYPE:
            return f"{here}: Secret of type {_shown(data.get('type', 'Opaque'))} ignored"
        model = Secret
    elif kind == "AuthConfig":
        if api_version != AUTHCONFIG_API_VERSION:
            return [
                Problem(
                    origin.path,
                    _line_of(node, ("apiVersion",)),
                    f"{here}: AuthConfig apiVersion must be {AUTHCONFIG_API_VERSION!r}",
                )
            ]
        model = AuthConfig
    else:
        return [
            Problem(
                origin.path,
                origin.line,
                f"{here}: unsupported resource (apiVersion {_shown(api_version)}, "
                f"kind {_shown(kind)}): "
                f"extauth reads Secrets of type {APIKEY_SECRET_TYPE} and AuthConfigs",
            )
        ]

    try:
        resource = model.model_validate(data)
    except ValidationError as exc:
        label = f"{here} ({kind} {_name_of(data)})"
        return [
            Problem(origin.path, line, f"{label}: {message}")
            for line, message in _describe(exc, node)
        ]
    return Loaded(resource, origin)


def _shown(value: object) -> str:
    """A value from the document in a message: short strings only, quoted."""
    if isinstance(value, str) and len(value) <= 100:
        return repr(value)
    return "(not a short string)"


def _name_of(data: dict[Any, Any]) -> str:
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        return "<unnamed>"
    namespace, name = meta.get("namespace", "default"), meta.get("name", "<unnamed>")
    if not isinstance(namespace, str) or not isinstance(name, str):
        return "<unnamed>"
    return f"{namespace[:100]}/{name[:300]}"


def _structural_problems(root: yaml.Node, limits: Limits) -> list[tuple[int, str]]:
    """What PyYAML would pass silently or trip over later: duplicate keys, keys that are
    not strings (Kubernetes objects are JSON: every key is a string), alias bombs, aliases
    that nest past the depth limit or into themselves.

    Iterative, not recursive: with aliases, the expanded depth is not bounded by what
    `_prescan` saw. Sizes and heights are memoised per node object (an alias reuses the
    anchored node), so a bomb is measured in linear time while its expansion grows
    exponentially.
    """
    problems: list[tuple[int, str]] = []
    if type(root) is _Scalar:
        return problems
    # Collections only: a scalar counts 1 and has no height, without a dict entry.
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path from the root
    # (node, None): to visit; (node, its children): to finish, once they are.
    stack: list[tuple[yaml.Node, list[yaml.Node] | None]] = [(root, None)]
    while stack:
        node, children = stack.pop()
        ident = id(node)
        if children is not None:
            open_nodes.discard(ident)
            size, height = 1, 0
            for child in children:
                if type(child) is _Scalar:
                    size += 1
                else:
                    size += sizes[id(child)]
                    height = max(height, heights[id(child)])
            sizes[ident] = min(size, MAX_EXPANDED_NODES + 1)
            heights[ident] = height + 1
            continue
        if ident in sizes:
            continue
        if ident in open_nodes:
            return [(node.start_mark.line + 1, "a YAML alias refers to a node that contains it")]
        open_nodes.add(ident)
        if type(node) is _Mapping:
            children = [part for pair in node.value for part in pair]
            _check_keys(node, problems)
        else:
            children = list(node.value)
        stack.append((node, children))
        for child in children:
            if type(child) is not _Scalar and id(child) not in sizes:
                stack.append((child, None))
    line = root.start_mark.line + 1
    if sizes[id(root)] > MAX_EXPANDED_NODES:
        problems.append((line, "document too large once YAML aliases are expanded"))
    if heights[id(root)] > limits.max_depth:
        problems.append(
            (
                line,
                f"nested more than {limits.max_depth} levels deep once YAML aliases are "
                f"expanded (the limit is --max-depth {limits.max_depth})",
            )
        )
    return problems


_Scalar, _Mapping = yaml.ScalarNode, yaml.MappingNode


_KEY_TAGS = frozenset((_STR_TAG, _MERGE_TAG))


def _check_keys(node: yaml.MappingNode, problems: list[tuple[int, str]]) -> None:
    seen: set[str] = set()
    for key, _ in node.value:
        if type(key) is not _Scalar or key.tag not in _KEY_TAGS:
            problems.append((key.start_mark.line + 1, "a mapping key is not a string (quote it)"))
        elif key.value in seen:
            problems.append((key.start_mark.line + 1, f"duplicate key {_shown(key.value)}"))
        else:
            seen.add(key.value)


# YAML's standard tags, by the short name a user writes.
_TAG_NAMES = {
    f"tag:yaml.org,2002:{name}": name
    for name in (
        "bool", "int", "float", "timestamp", "binary", "null", "str", "seq", "map",
        "set", "omap", "pairs", "merge", "value",
    )
}  # fmt: skip


class _Unreadable:
    """Why a node could not be constructed, in our own words (never the value: PyYAML's
    own errors quote it, e.g. the KeyError of a `!!bool` that is not a bool)."""

    def __init__(self, node: yaml.Node | None, line: int = 0) -> None:
        self.line = node.start_mark.line + 1 if node is not None else line
        if node is None:
            self.reason = "cannot be read as YAML data"
        elif node.tag in _TAG_NAMES:
            name = _TAG_NAMES[node.tag]
            self.reason = f"a value tagged or read as !!{name} is not a valid {name} (quote it)"
        else:
            self.reason = "a value has a YAML tag extauth does not read"

    def __str__(self) -> str:
        return self.reason


class _NodeFailed(Exception):
    """Carries the innermost node whose construction failed, and nothing of the cause."""

    def __init__(self, node: yaml.Node) -> None:
        super().__init__()
        self.node = node


class _Constructor(yaml.constructor.SafeConstructor):
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _NodeFailed:
            raise
        except Exception:  # noqa: S110 (raised below, outside this block, without its cause)
            pass
        raise _NodeFailed(node)


def _construct(node: yaml.Node) -> Any:
    """The document as Python data, or why it cannot be: whatever a constructor raises."""
    failed: _Unreadable | None = None
    try:
        return _Constructor().construct_document(node)
    except _NodeFailed as exc:
        failed = _Unreadable(exc.node)
    except Exception as exc:  # a mapping's own checks (merge keys ...): their line only
        mark = getattr(exc, "problem_mark", None)
        failed = _Unreadable(None, mark.line + 1 if mark is not None else 0)
    return failed


def _withheld(problems: list[Problem], root: yaml.Node, here: str) -> list[Problem]:
    """The safety net: a message quoting anything a Secret holds under its entries is
    replaced. Entry names are shown (as `kubectl describe secret` does); what is under
    them, decoded or not, never."""
    held = _held_values(root)
    if not held:
        return problems
    safe: list[Problem] = []
    for problem in problems:
        if any(value in problem.message for value in held):
            problem = Problem(
                problem.path,
                problem.line,
                f"{here}: refused (the reason is withheld: it would quote "
                "a value of the Secret's data or stringData)",
                problem.warning,
            )
        safe.append(problem)
    return safe


_HELD_MIN = 4
# What separates a name from a value when the space after a colon is forgotten: never
# part of a valid Secret entry name.
_SWALLOWED = re.compile(r"[:=\s]+")
_SPECIAL_ENTRIES = frozenset((*KEY_ENTRIES, EXPIRES_AT_ENTRY))


def _held_values(root: yaml.Node) -> set[str]:
    """What a message about this document must not quote: the value of every key entry
    (`api-key`, `api-key-next` and their hashes; base64-decoded too), and, under any
    entry, whatever is more than a plain string (keys, values and tags of a mapping or a
    list written where a string belongs, a tagged value), and all of `data` or
    `stringData` when either is not a mapping. Metadata values are not held: they are
    sent upstream as headers anyway, and holding short ones would withhold messages that
    only happen to contain them."""
    held: set[str] = set()
    if not isinstance(root, yaml.MappingNode):
        return held
    below: list[yaml.Node] = []
    for key, value in root.value:
        if not (isinstance(key, yaml.ScalarNode) and key.value in ("data", "stringData")):
            continue
        if not isinstance(value, yaml.MappingNode):
            below.append(value)
            continue
        for entry, held_node in value.value:
            if not isinstance(entry, yaml.ScalarNode):
                below.append(entry)
            elif _SWALLOWED.search(entry.value) or (
                _is_null(held_node) and entry.value not in _SPECIAL_ENTRIES
            ):
                # `{api-key:KEY}` (no space after the colon) is one entry named
                # `api-key:KEY`: a name no Secret can have, holding what was meant as
                # its value; in `{api-key, KEY}`, KEY is an entry without a value. The
                # name and each part of it are held.
                parts = [entry.value, *_SWALLOWED.split(entry.value)]
                held.update(parts)
                if key.value == "data":
                    held.update(decoded for part in parts for decoded in _decoded(part))
            if not isinstance(held_node, yaml.ScalarNode) or held_node.tag != _STR_TAG:
                below.append(held_node)
            elif entry.value in KEY_ENTRIES:
                held.add(held_node.value)
                if key.value == "data":
                    held.update(_decoded(held_node.value))
    seen: set[int] = set()
    while below:
        node = below.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag:
            held.add(node.tag)
        if isinstance(node, yaml.ScalarNode):
            held.add(node.value)
        elif isinstance(node, yaml.MappingNode):
            below.extend(part for pair in node.value for part in pair)
        elif isinstance(node, yaml.SequenceNode):
            below.extend(node.value)
    held.difference_update(_TAG_NAMES)
    # Shorter ones are no keys, and would match our own words ("document 1").
    return {value for value in held if len(value) >= _HELD_MIN}


def _decoded(value: str) -> list[str]:
    try:
        raw = decode_base64(value)
    except (binascii.Error, ValueError):
        return []
    return [raw.decode("utf-8", errors="replace"), raw.decode("latin-1")]


def _describe(exc: ValidationError, node: yaml.Node | None) -> Iterator[tuple[int, str]]:
    """(line, `field.path: message`) per error. Without a node (objects read from an API
    server) the path comes from the error alone and the line is 0. Never quotes input."""
    for error in exc.errors(include_input=False, include_url=False):
        if node is not None:
            line, field = _locate(node, error["loc"])
        else:
            line, field = 0, functools.reduce(_join, _fields(error["loc"]), "")
        message = str(error["msg"]).removeprefix("Value error, ")
        yield line, f"{field}: {message}" if field else message


def error_messages(exc: ValidationError) -> list[str]:
    """`field.path: message` for each error, for objects that have no YAML lines."""
    return [message for _, message in _describe(exc, None)]


def _is_marker(item: int | str) -> bool:
    """pydantic's own loc items (union branches, validators: `function-after[...]`)."""
    return isinstance(item, str) and "[" in item


def _fields(loc: Sequence[int | str]) -> Iterator[int | str]:
    return (item for item in loc if not _is_marker(item))


def _locate(node: yaml.Node, loc: Sequence[int | str]) -> tuple[int, str]:
    """The line and dotted path of `loc` in the node tree.

    Loc items that are not in the YAML are pydantic's own markers (union branches,
    validator names) and are skipped, except a last item, which names a missing field.
    """
    path = ""
    current = node
    line = node.start_mark.line + 1
    for position, item in enumerate(loc):
        child = _child(current, item)
        if child is None:
            if position == len(loc) - 1 and isinstance(item, str) and not _is_marker(item):
                path = _join(path, item)
            continue
        line, current = child
        path = _join(path, item)
    return line, path


def _join(path: str, item: int | str) -> str:
    if isinstance(item, int):
        return f"{path}[{item}]"
    return f"{path}.{item}" if path else item


def _line_of(node: yaml.Node, loc: Sequence[int | str]) -> int:
    return _locate(node, loc)[0]


def _child(node: yaml.Node, item: int | str) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(item, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == item:
                return key.start_mark.line + 1, value
    if (
        isinstance(node, yaml.SequenceNode)
        and isinstance(item, int)
        and 0 <= item < len(node.value)
    ):
        child: yaml.Node = node.value[item]
        return child.start_mark.line + 1, child
    return None
