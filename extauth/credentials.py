"""Find the API key in a request: the first configured source that is present wins.

Convention (from Starlette): `None` means "no credential here". A header value may carry
a `Bearer ` prefix. Query and cookie parsing is deliberately minimal and exact: the key is
compared as the client sent it (after percent-decoding a query value).

A query parameter is found by its raw name, exactly as Envoy's `query_parameters_to_remove`
matches it (no decoding), so the parameter extauth reads is the one Envoy strips. Any
other spelling of the name that an upstream might decode to the same parameter
(`%61pi_key`, `API_KEY`, `api.key`, `api_key[]`, after a `;`), or the name twice, is
`smuggled`: the request is denied rather than forwarded with a key Envoy would leave in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
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
        if key == name:
            return unquote_plus(value) or None
    return None


def parameters_over(path: str, limit: int) -> bool:
    """Whether the query of `path` has more than `limit` parameters, as `smuggled` splits
    it (on "&" and ";"); counted without splitting, so a huge query costs next to nothing."""
    query = path.partition("?")[2]
    return query.count("&") + query.count(";") >= limit


def _normal(name: str) -> str:
    """A parameter name as lenient upstreams read it: percent-decoded (twice: some decode
    again), case-folded, PHP's `a.b`/`a b`/`a[b` -> `a_b` and `a[]` -> `a`."""
    for _ in range(2):
        name = unquote_plus(name)
    name = name.strip().casefold()
    head, bracket, rest = name.partition("[")
    if bracket and "]" in rest:
        name = head
    return name.replace(".", "_").replace(" ", "_").replace("[", "_")


def smuggled(path: str, names: Iterable[str]) -> bool:
    """Whether the query holds a key parameter Envoy would not strip, or one twice."""
    _, sep, query = path.partition("?")
    if not sep:
        return False
    exact = set(names)
    normal = {_normal(n) for n in exact}
    seen: set[str] = set()
    for pair in query.split("&"):
        # Envoy splits on "&" only; some upstreams also split on ";".
        first, *more = pair.split(";")
        raw = first.partition("=")[0]
        if raw in exact:
            if raw in seen:
                return True
            seen.add(raw)
        elif _normal(raw) in normal:
            return True
        if any(_normal(part.partition("=")[0]) in normal for part in more):
            return True
    return False


# Cookies are separated by ";" and, where Envoy merged several Cookie header lines into
# the one value Check sees, by ",": a comma cannot occur in a cookie value (RFC 6265).
_COOKIE_SEPARATORS = re.compile("[;,]")


@functools.lru_cache(maxsize=1024)
def _cookie_pattern(name: str) -> re.Pattern[str]:
    """The first `name=value` cookie: at the start or after a separator and optional
    whitespace, the name exactly, then "=". One search, in C: walking a header of
    60,000 separators cookie by cookie in Python took 11 ms, for a request without a key."""
    return re.compile(f"(?:^|[;,])[{_OWS}]*{re.escape(name)}=([^;,]*)")


def cookie(header: str | None, name: str) -> str | None:
    if not header or f"{name}=" not in header:
        return None
    found = _cookie_pattern(name).search(header)
    if found is None:
        return None
    return found.group(1).strip(_OWS).strip('"') or None


def without_cookies(header: str, names: frozenset[str]) -> str:
    """The cookie header with `names` removed, so a key in a cookie does not go upstream;
    several Cookie lines (merged with "," in Check) come back as one."""
    kept = [
        part.strip()
        for part in _COOKIE_SEPARATORS.split(header)
        if part.strip() and part.strip().partition("=")[0] not in names
    ]
    return "; ".join(kept)
