"""Bounds on what one Kubernetes object may cost, so that no object can stall a stream.

The API server accepts things extauth must not choke on: the AuthConfig CRD preserves
unknown fields under `labelSelector`, so an object nested 1,000 levels deep (about 10 KB)
is stored and served. Decoded as a whole, it raises RecursionError in the JSON decoder,
and a watcher that retries from the same resourceVersion meets it again, forever: every
later change, revocations included, stops applying, and a fresh replica never turns ready.

So decoding never fails on depth: JSON text (a list page or a watch event) that is too
deep for the decoder has every value nested deeper than `FLATTEN_DEPTH` replaced by a
marker string first (a scan of strings and brackets, run only after the plain decoder has
refused). The objects are then checked one at a time (`problem`): too deep, a marker
inside, or a Secret whose entries and labels exceed the size limit, and such an object is
rejected alone with a message saying which limit it broke, while the stream moves on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# Objects extauth reads are shallow: an AuthConfig's deepest field is about ten levels
# down (spec.configs[].apiKeyAuth.k8sSecretApikeyStorage.labelSelector.matchLabels).
MAX_DEPTH = 32
# Where an over-deep page or event is cut (absolute depth: a list page puts its items two
# levels down); well inside what the C decoder can take from a worker thread.
FLATTEN_DEPTH = 64
# What a cut value becomes. A tenant may write this string too: it only rejects the
# tenant's own object.
TOO_DEEP = "\x00extauth: nested too deep"

_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_MARKER_JSON = json.dumps(TOO_DEEP)


def loads(data: bytes | str) -> Any:
    """JSON text as Python objects, whatever its depth (see the module's docstring).

    Raises ValueError only for text that is not JSON at all.
    """
    try:
        return json.loads(data)
    except RecursionError:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(flatten(text, FLATTEN_DEPTH))


def flatten(text: str, limit: int) -> str:
    """`text` with every value nested deeper than `limit` replaced by the marker."""
    pieces: list[str] = []
    depth = 0
    kept = 0  # text[kept:] is not yet in pieces
    cut_at = -1  # where the value being cut starts, or -1
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth == limit + 1 and cut_at < 0:
                cut_at = match.start()
        elif token in ("]", "}"):
            if depth == limit + 1 and cut_at >= 0:
                pieces.append(text[kept:cut_at])
                pieces.append(_MARKER_JSON)
                kept = match.end()
                cut_at = -1
            depth -= 1
    pieces.append(text[kept:])
    return "".join(pieces)


def too_deep(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests deeper than `limit` or holds a cut (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            if current == TOO_DEEP:
                return True
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def secret_bytes(item: Mapping[str, Any]) -> int:
    """What a Secret costs extauth to keep: its entries and labels, names included."""
    total = 0
    metadata = item.get("metadata") or {}
    for part in (item.get("data"), item.get("stringData"), metadata.get("labels")):
        if isinstance(part, dict):
            for name, value in part.items():
                total += len(name) + (len(value) if isinstance(value, str) else 0)
    return total


def problem(kind: str, item: dict[str, Any], max_secret_bytes: int) -> str | None:
    """Why this object is refused before it is validated, or None.

    Drops `metadata.managedFields` first: extauth never reads it, and it mirrors the
    object's structure (a deep spec has deep managedFields).
    """
    metadata = item.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    if kind == "Secret":
        size = secret_bytes(item)
        if size > max_secret_bytes:
            return (
                f"its entries and labels take {size} bytes, over the limit of "
                f"{max_secret_bytes} bytes per Secret (--kube-max-secret-bytes)"
            )
        return None
    if too_deep(item):
        return f"it is nested more than {MAX_DEPTH} levels deep (labelSelector?); refused unread"
    return None
