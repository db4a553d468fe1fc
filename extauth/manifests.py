"""Read multi-document YAML manifests into validated resources, with `file:line` problems.

YAML is composed into a node tree first (which keeps line numbers), checked for what
PyYAML would silently accept (duplicate mapping keys, alias bombs), then constructed and
validated. A pydantic error's field path is walked back through the node tree to the line
of the offending field, so every problem reads `path:line: document N (Kind ns/name):
field.path: message`. Values are never part of a message: they may be keys.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from extauth.resources import APIKEY_SECRET_TYPE, AUTHCONFIG_API_VERSION, AuthConfig, Secret

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Upper bound on nodes in one document once aliases are expanded: a real manifest has a
# few hundred; a "billion laughs" document has billions.
MAX_EXPANDED_NODES = 1_000_000

Resource = Secret | AuthConfig


class Origin(NamedTuple):
    """Where a resource was read: file, 1-based line of its document, 1-based index.

    A named tuple, not a frozen dataclass: one is made per Secret, and at a million
    Secrets a frozen dataclass's __init__ alone costs a second.
    """

    path: str
    line: int
    document: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        prefix = "warning: " if self.warning else ""
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {prefix}{self.message}"


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


def load_file(path: Path) -> FileResult:
    text = read_text(path)
    if isinstance(text, Problem):
        return FileResult((), (text,))
    return parse_text(text, str(path))


def read_text(path: Path) -> str | Problem:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return Problem(str(path), 1, "file is not UTF-8 text")
    except OSError as exc:
        return Problem(str(path), 1, f"cannot read file: {exc.strerror}")


def parse_text(text: str, path: str) -> FileResult:
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or "invalid YAML"
        return FileResult((), (Problem(path, line, f"YAML syntax error: {reason}"),))

    loaded: list[Loaded] = []
    problems: list[Problem] = []
    ignored: list[str] = []
    for index, node in enumerate(nodes, start=1):
        if node is None or _is_null(node):
            continue
        origin = Origin(path, node.start_mark.line + 1, index)
        result = _load_document(node, origin)
        if isinstance(result, Loaded):
            loaded.append(result)
        elif isinstance(result, str):
            ignored.append(result)
        else:
            problems.extend(result)
    return FileResult(tuple(loaded), tuple(problems), tuple(ignored))


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _load_document(node: yaml.Node, origin: Origin) -> Loaded | str | list[Problem]:
    """A resource, the reason it is ignored, or its problems."""
    here = f"document {origin.document}"
    structural = _structural_problems(node)
    if structural:
        return [Problem(origin.path, line, f"{here}: {msg}") for line, msg in structural]
    try:
        data = _Loader("").construct_document(node)
    except yaml.YAMLError as exc:  # e.g. a tag the safe loader does not construct
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else origin.line
        reason = getattr(exc, "problem", None) or "cannot be read"
        return [Problem(origin.path, line, f"{here}: YAML error: {reason}")]
    if not isinstance(data, dict):
        return [Problem(origin.path, origin.line, f"{here}: expected a mapping (a resource)")]

    kind, api_version = data.get("kind"), data.get("apiVersion")
    model: type[Resource]
    if kind == "Secret" and api_version == "v1":
        if data.get("type") != APIKEY_SECRET_TYPE:
            return f"{here}: Secret of type {data.get('type', 'Opaque')!r} ignored"
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
                f"{here}: unsupported resource (apiVersion {api_version!r}, kind {kind!r}): "
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


def _name_of(data: dict[Any, Any]) -> str:
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        return "<unnamed>"
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '<unnamed>')}"


def _structural_problems(root: yaml.Node) -> list[tuple[int, str]]:
    """Duplicate keys and alias bombs: both pass PyYAML silently."""
    problems: list[tuple[int, str]] = []
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        # Memoised per node object: an alias reuses the anchored node, so a bomb's size
        # is computed in linear time while its expanded size grows exponentially.
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # cycles (recursive anchors) count once
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        problems.append((key.start_mark.line + 1, f"duplicate key {key.value!r}"))
                    seen.add(key.value)
                total += size(key) + size(value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        sizes[id(node)] = total
        return total

    if size(root) > MAX_EXPANDED_NODES:
        problems.append(
            (root.start_mark.line + 1, "document too large once YAML aliases are expanded")
        )
    return problems


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
