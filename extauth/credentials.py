"""Find the API key in a request: the first configured source that is present wins.

Convention (from Starlette): `None` means "no credential here". A header value may carry
a `Bearer ` prefix. Query and cookie parsing is deliberately minimal and exact: the key is
compared as the client sent it (after percent-decoding for query strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_plus

from extauth.policy import KeySource
from extauth.resources import OWS

_BEARER = "bearer"
_BEARER_LEN = len(_BEARER)
# Only HTTP's optional whitespace is trimmed from a key: it is what a stored key may not
# begin or end with (`resources.header_value_problem`). Trimming more (str.strip() takes
# NBSP, U+3000 ...) made `key` + U+00A0 match `key`, and a stored key ending in U+00A0
# match nothing.
_OWS = OWS


def extract(sources: tuple[KeySource, ...], headers: Mapping[str, str], path: str) -> str | None:
    for source in sources:
        if source.kind == "header":
            value = from_header(headers.get(source.name))
        elif source.kind == "query":
            value = query_param(path, source.name)
        else:
            value = cookie(headers.get("cookie"), source.name)
        if value:
            return value
    return None


def from_header(raw: str | None) -> str | None:
    if raw is None:
        return None
    value = raw.strip(_OWS)
    # "Bearer <key>"; a bare "Bearer" (the key stripped away in transit) is no key.
    if value[:_BEARER_LEN].lower() == _BEARER and value[_BEARER_LEN : _BEARER_LEN + 1] in (
        "",
        " ",
        "\t",
    ):
        value = value[_BEARER_LEN:].strip(_OWS)
    return value or None


def query_param(path: str, name: str) -> str | None:
    """First value of `name` in the query string of `path` (Envoy puts the query there)."""
    _, sep, query = path.partition("?")
    if not sep:
        return None
    query = query.partition("#")[0]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if unquote_plus(key) == name:
            return unquote_plus(value) or None
    return None


def cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip(_OWS).partition("=")
        if sep and key == name:
            return value.strip(_OWS).strip('"') or None
    return None


def without_cookies(header: str, names: frozenset[str]) -> str:
    """The cookie header with `names` removed, so a key in a cookie does not go upstream."""
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and part.strip().partition("=")[0] not in names
    ]
    return "; ".join(kept)
