"""Which AuthConfig a request's host selects, for routes that name none (`spec.hosts`).

Istio's CUSTOM authorization sends no per-route context, so the host is all extauth has
to tell one application's AuthConfig from another's (as Authorino does). Patterns are
exact (`api.example.com`, `api.example.com:8443`, `[::1]:8080`) or one leading wildcard
label (`*.example.com`, matching any name that ends in `.example.com`, never
`example.com` itself).

The request side is where an attacker writes, and what Envoy routed by: a host is
matched as Envoy matches a virtual host's domains, literally but for ASCII case, so that
extauth judges a request by the AuthConfig of the virtual host Envoy picked, never by
another's. A trailing dot, a percent-encoding, userinfo or an IPv6 address spelled
another way is another host, as it is to Envoy. A pattern without a port also takes the
host with any port (`host:*`, the domain Istio adds beside `host`); a wildcard takes a
port only if it names it (`*.example.com:443`, the domain Istio adds for a wildcard on
its gateway's port), as Envoy cannot put two `*` in one domain. Whatever a client
sends, a lookup costs a few dictionary probes: the exact host, the suffixes after each
dot no longer than the longest wildcard, then the host without its port (Envoy's order:
exact domains, suffix wildcards, prefix wildcards such as Istio's `host:*`).

A policy builds one `HostTable` per change of AuthConfigs.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# DNS's limit on a name (RFC 1035), plus a trailing dot and ":65535".
MAX_NAME = 253
MAX_REQUEST_HOST = MAX_NAME + 1 + 6
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
    if wildcard and "." not in name:
        # In a cluster where any namespace may create AuthConfigs, `*.com` would take every
        # .com host no other AuthConfig claims: a new team's before its AuthConfig exists,
        # or one's whose AuthConfig is being recreated.
        raise HostPatternError(
            f"host {_shown(pattern)} would claim a whole top-level domain; name at least "
            "two labels after '*.', as in *.example.com"
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


def _ascii_lower(host: str) -> str:
    """Envoy lowers only ASCII letters (Python's `lower()` folds U+212A KELVIN SIGN to
    `k`: matching on that would pick another AuthConfig than the route Envoy picked)."""
    return host.lower() if host.isascii() else host.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _without_port(host: str) -> str | None:
    """`host` without its `:port` (anything after the name), as Istio's `host:*` domain
    takes it; None if it has none."""
    if host.startswith("["):
        end = host.find("]") + 1
        if end == 0 or host[end : end + 1] != ":":
            return None
    else:
        end = host.find(":")
        if end < 0:
            return None
    return host[:end] if len(host) > end + 1 and end > 0 else None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A pattern two AuthConfigs claim: `holder` (first in rank) keeps it."""

    pattern: str
    refused: str
    holder: str

    def explain(self, refused: str, holder: str) -> str:
        """The refusal as the refused AuthConfig's status and the logs word it, given how
        the two are named there (this module knows config ids, not owners or origins)."""
        return (
            f"AuthConfig {refused}: host {self.pattern!r} is already claimed by AuthConfig "
            f"{holder}, which comes first; refused for this AuthConfig"
        )


@dataclass(frozen=True, slots=True)
class HostTable:
    """Canonical pattern -> config id: exact patterns as they are, wildcards by the
    suffix after `*.` (with their port, if any)."""

    exact: Mapping[str, str] = field(default_factory=dict)
    wildcard: Mapping[str, str] = field(default_factory=dict)
    _longest: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        longest = max(map(len, self.wildcard), default=0)
        object.__setattr__(self, "_longest", longest)

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
        """The config id `host` selects, as Envoy picks a virtual host: the exact host,
        then the longest wildcard, then the host without its port. Pure: the server
        remembers answers per policy (`responses.AllowCache.config_of_host`)."""
        text = _ascii_lower(host)
        exact = self.exact
        if (found := exact.get(text)) is not None:
            return found
        if self.wildcard and (found := self._suffix(text)) is not None:
            return found
        # Last, as Envoy tries prefix wildcards (Istio's `host:*`) after suffix ones: with
        # `*.example.com:443` claimed, `api.example.com:443` is the wildcard's.
        if (name := _without_port(text)) is not None:
            return exact.get(name)
        return None

    def _suffix(self, text: str) -> str | None:
        # Envoy's `*.example.com` takes any host that ends in `.example.com` after at
        # least one character, whatever those are: the suffixes after each dot but the
        # first character, the longest first, no longer than the longest pattern (so a
        # host of thousands of dots costs no more than a short one).
        wildcard = self.wildcard
        start = text.find(".", max(1, len(text) - self._longest - 1))
        while start >= 0:
            if (found := wildcard.get(text[start + 1 :])) is not None:
                return found
            start = text.find(".", start + 1)
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
