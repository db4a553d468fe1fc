"""Which AuthConfig a request's host selects, for routes that name none (`spec.hosts`).

Istio's CUSTOM authorization sends no per-route context, so the host is all extauth has
to tell one application's AuthConfig from another's (as Authorino does). Patterns are
exact (`api.example.com`, `api.example.com:8443`, `[::1]:8080`) or one leading wildcard
label (`*.example.com`, matching any name that ends in `.example.com`, never
`example.com` itself).

The request side is where an attacker writes, so a host is matched only when it is
spelled as Envoy routes it: ASCII (Python's `lower()` folds U+212A KELVIN SIGN to `k`,
which Envoy does not: matching on it would pick another AuthConfig than the route Envoy
picked), at most one trailing dot, a valid port. Anything else selects nothing, and the
request falls back to `--default-config` or is denied.

A policy builds one `HostTable` per change of AuthConfigs; a lookup is a few dictionary
probes (the exact host, then each parent domain, a host has at most 127), whatever the
number of patterns.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# DNS's limit on a name (RFC 1035), plus a trailing dot and ":65535".
MAX_NAME = 253
MAX_REQUEST_HOST = MAX_NAME + 1 + 6
MEMO_LIMIT = 4096
_MISS = object()
# A label: letters, digits, '-' and '_' (seen in internal names), 1 to 63 characters,
# not starting or ending with '-'. Lowercase only: both sides are lowered (ASCII) first.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)


class HostPatternError(ValueError):
    """A pattern that cannot be used, with a message that says how to write it."""


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 100 else "(a value of over 100 characters)"


def _port(text: str, pattern: str) -> str:
    if not _PORT_RE.fullmatch(text) or int(text) > 65535:
        raise HostPatternError(
            f"host {_shown(pattern)}: the port must be a number from 1 to 65535, "
            "without leading zeros"
        )
    return text


def _ipv6(inner: str, pattern: str) -> str:
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise HostPatternError(f"host {_shown(pattern)}: not an IPv6 address in brackets") from None
    if address.scope_id:
        raise HostPatternError(f"host {_shown(pattern)}: a zone index (%...) never matches")
    return f"[{address.compressed}]"


def normalize(pattern: str) -> str:
    """The canonical spelling of a pattern (lowercase, no trailing dot, IPv6 compressed),
    or HostPatternError saying why it cannot be one."""
    if not isinstance(pattern, str):  # the models pass only strings; tools may not
        raise HostPatternError("a host pattern is a string")
    if not pattern:
        raise HostPatternError("a host pattern cannot be empty")
    if not pattern.isascii():
        try:
            hint = f" ({pattern.encode('idna').decode('ascii')})"
        except UnicodeError:
            hint = ""
        raise HostPatternError(
            f"host {_shown(pattern)} is not ASCII: write its IDNA (punycode) form{hint}, "
            "which is what clients send"
        )
    text = pattern.lower()
    if text == "*":
        raise HostPatternError(
            "host '*' would claim every host; use --default-config for a catch-all"
        )
    wildcard = text.startswith("*.")
    rest = text[2:] if wildcard else text
    if "*" in rest:
        raise HostPatternError(
            f"host {_shown(pattern)}: a wildcard is allowed only as the whole first "
            "label, as in *.example.com"
        )
    if rest.startswith("["):
        if wildcard:
            raise HostPatternError(f"host {_shown(pattern)}: an address cannot be a wildcard")
        inner, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise HostPatternError(f"host {_shown(pattern)}: not an IPv6 address in brackets")
        host = _ipv6(inner, pattern)
        return f"{host}:{_port(after[1:], pattern)}" if after else host
    name, colon, port = rest.partition(":")
    if ":" in port:
        raise HostPatternError(
            f"host {_shown(pattern)}: an IPv6 address goes in brackets, as in [::1]:8080"
        )
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
        raise HostPatternError(
            f"host {_shown(pattern)} is not a host name (labels of letters, digits, '-' "
            f"and '_', at most 63 characters each and {MAX_NAME} in all)"
        )
    normalized = f"*.{name}" if wildcard else name
    return f"{normalized}:{_port(port, pattern)}" if colon else normalized


def normalize_all(patterns: Iterable[str]) -> list[str]:
    """Every pattern of one AuthConfig, canonical; two that are the same host refused."""
    seen: dict[str, str] = {}
    for pattern in patterns:
        canonical = normalize(pattern)
        if canonical in seen:
            raise HostPatternError(
                f"hosts lists {_shown(canonical)} twice ({_shown(seen[canonical])} and "
                f"{_shown(pattern)}; hosts are case-insensitive and a trailing dot is ignored)"
            )
        seen[canonical] = pattern
    return list(seen)


def _request_host(host: str) -> tuple[str, str | None] | None:
    """(name, port) of a request's host as it must be spelled to be matched, else None."""
    if not host or len(host) > MAX_REQUEST_HOST or not host.isascii():
        return None
    text = host.lower()
    if text.startswith("["):
        inner, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            return None
        try:
            address = ipaddress.IPv6Address(inner)
        except ValueError:
            return None
        if address.scope_id:
            return None
        name, port = f"[{address.compressed}]", after[1:] if after else None
    else:
        name, colon, rest = text.partition(":")
        port = rest if colon else None
        if name.endswith("."):
            name = name[:-1]
        if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
            return None
    if port is not None:
        # Leading zeros are read as Envoy reads them (a number); anything else selects nothing.
        if not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
            return None
        port = str(int(port))
    return name, port


@dataclass(frozen=True, slots=True)
class Conflict:
    """A pattern two AuthConfigs claim: `holder` (first in rank) keeps it."""

    pattern: str
    refused: str
    holder: str


@dataclass(frozen=True, slots=True)
class HostTable:
    """Canonical pattern -> config id: exact patterns as they are, wildcards by the
    suffix after `*.` (with their port, if any)."""

    exact: Mapping[str, str] = field(default_factory=dict)
    wildcard: Mapping[str, str] = field(default_factory=dict)
    # Answers by the host as sent: a gateway's hosts are few, and a memo hit is one probe
    # instead of parsing the host (microseconds). Bounded: hosts come from clients, so it
    # is cleared past MEMO_LIMIT entries, and a host longer than a name is never kept. A
    # memo, not state: it dies with this table, rebuilt with every change of AuthConfigs.
    _memo: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.exact or self.wildcard)

    def claims(self) -> dict[str, list[str]]:
        """The patterns each config holds, sorted (inspect)."""
        found: dict[str, list[str]] = {}
        for pattern, config_id in self.exact.items():
            found.setdefault(config_id, []).append(pattern)
        for suffix, config_id in self.wildcard.items():
            found.setdefault(config_id, []).append(f"*.{suffix}")
        return {config_id: sorted(patterns) for config_id, patterns in found.items()}

    def lookup(self, host: str) -> str | None:
        """The config id `host` selects: `host:port`, then `host`; then the longest
        wildcard suffix, with the port, then without."""
        memo = self._memo
        found = memo.get(host, _MISS)
        if found is not _MISS:
            return found  # type: ignore[return-value]
        found = self._lookup(host)
        if len(host) <= MAX_REQUEST_HOST:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[host] = found
        return found

    def _lookup(self, host: str) -> str | None:
        parsed = _request_host(host)
        if parsed is None:
            return None
        name, port = parsed
        exact = self.exact
        if port is not None and (found := exact.get(f"{name}:{port}")) is not None:
            return found
        if (found := exact.get(name)) is not None:
            return found
        wildcard = self.wildcard
        if not wildcard or name.startswith("["):
            return None
        # `*` stands for one label or more: the suffixes after the first dot, the
        # longest first. A valid name has no empty label, so each prefix is non-empty.
        start = name.find(".")
        while start >= 0:
            suffix = name[start + 1 :]
            if port is not None and (found := wildcard.get(f"{suffix}:{port}")) is not None:
                return found
            if (found := wildcard.get(suffix)) is not None:
                return found
            start = name.find(".", start + 1)
        return None


def build(claims: Iterable[tuple[Any, str, Iterable[str]]]) -> tuple[HostTable, list[Conflict]]:
    """The table of `claims` (rank, config id, canonical patterns): of two configs that
    claim one pattern, the one of lower rank keeps it, whatever order they came in."""
    exact: dict[str, str] = {}
    wildcard: dict[str, str] = {}
    conflicts: list[Conflict] = []
    for _, config_id, patterns in sorted(claims, key=lambda claim: claim[0]):
        for pattern in patterns:
            table, key = (wildcard, pattern[2:]) if pattern.startswith("*.") else (exact, pattern)
            holder = table.setdefault(key, config_id)
            if holder != config_id:
                conflicts.append(Conflict(pattern, config_id, holder))
    return HostTable(exact, wildcard), conflicts
