"""Which request headers Envoy must send extauth, and whether an Envoy config does.

Envoy's ext_authz filter sends every request header in the Check unless its
`allowed_headers` names the few it should: 659 bytes become about 300 for a typical
request (BENCHMARKS.md). What a Check reads is known from the AuthConfigs: each key
source's header (`cookie` for a cookie source; a query source reads the path, which Envoy
always sends, as it does the host and method), plus what the decision log and tracing
read. `envoyconf` writes the list from this module into the generated configs, and
`extauth validate --envoy-config` compares a config against the AuthConfigs, so that a key
source added later is reported instead of being silently filtered out (at run time such
a request is denied as `key_source_not_sent`, see `deciding.unsent`).

A filtered header map cannot be counted against Envoy's limit of 100 request headers (what
`deciding.fits` does for the unfiltered one), so a filtered config counts in Envoy, before
ext_authz: a Lua filter answers 431 when a request has more headers than the limit less
the most any AuthConfig injects (`reserve`). Lowering the connection manager's own
`max_headers_count` instead does not work: Envoy applies the same lowered limit to the
headers ext_authz injects, and answers 500 (tried with Envoy 1.40, BENCHMARKS.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from extauth.deciding import MAX_REQUEST_HEADERS
from extauth.policy import CompiledConfig, Policy

# Read by every Check, whatever the AuthConfigs: the decision log's request id
# (metrics.DecisionLog) and the trace context of the HTTP request (tracing._from_headers).
ALWAYS_SENT = ("x-request-id", "traceparent", "tracestate", "b3")
SENT_PREFIXES = ("x-b3-",)
EXT_AUTHZ_TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
LUA_TYPE = "envoy.extensions.filters.http.lua.v3.Lua"
# The name of the Lua filter envoyconf writes, and the line that holds its limit.
GUARD_NAME = "extauth.header_count_guard"
_GUARD_LIMIT = re.compile(r"^local limit = (\d+)$", re.MULTILINE)


def injected_at_most(config: CompiledConfig) -> int:
    """The most headers an allow under `config` sets: each rule's injected headers
    (`KeyRule.injected`), and the rewritten `cookie` when a cookie key is stripped."""
    return sum(len(rule.injected) + bool(rule.strip_cookies) for rule in config.rules)


@dataclass(frozen=True)
class SentHeaders:
    """What a filtered ext_authz filter sends, and how many headers to keep free."""

    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    reserve: int

    @property
    def limit(self) -> int:
        """Most request headers (pseudo-headers and Envoy's own included) a request may
        carry into ext_authz so that what extauth injects still fits."""
        return MAX_REQUEST_HEADERS - self.reserve

    def listed(self) -> str:
        """The list as the context extension `allowed_headers` carries it."""
        return ",".join([*self.names, *(f"{p}*" for p in self.prefixes)])


def sent_headers(configs: Iterable[CompiledConfig]) -> SentHeaders:
    configs = list(configs)
    read = {name for config in configs for name in config.read_headers}
    reserve = max((injected_at_most(c) for c in configs), default=0)
    return SentHeaders(tuple(sorted(read | set(ALWAYS_SENT))), SENT_PREFIXES, reserve)


# -- comparing an Envoy config with the AuthConfigs ----------------------------------------


def _typed(root: Any, type_name: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every (filter name, typed_config) of `type_name` anywhere in a config. Walked
    without recursion and each node once: a file's nesting depth, or YAML aliases that
    share one node a billion times over, cost no more than its size."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            typed = node.get("typed_config")
            if isinstance(typed, Mapping) and str(typed.get("@type", "")).endswith(type_name):
                yield str(node.get("name", "?")), typed
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _matches(matcher: Mapping[str, Any], name: str) -> bool:
    """Envoy's StringMatcher on a (lower-case) header name."""
    fold = bool(matcher.get("ignore_case"))
    subject = name.lower() if fold else name

    def wanted(key: str) -> str | None:
        value = matcher.get(key)
        if not isinstance(value, str):
            return None
        return value.lower() if fold else value

    if (exact := wanted("exact")) is not None:
        return subject == exact
    if (prefix := wanted("prefix")) is not None:
        return subject.startswith(prefix)
    if (suffix := wanted("suffix")) is not None:
        return subject.endswith(suffix)
    if (contains := wanted("contains")) is not None:
        return contains in subject
    regex = matcher.get("safe_regex")
    if isinstance(regex, Mapping) and isinstance(regex.get("regex"), str):
        try:
            return re.fullmatch(regex["regex"], name) is not None
        except re.error:
            return False
    return False


def envoy_problems(envoy: Any, policy: Policy) -> list[str]:
    """What in an Envoy config (parsed YAML) does not fit the policy's AuthConfigs: a key
    header an ext_authz filter's allowed_headers leaves out, or an AuthConfig injecting
    more headers than the header-count guard keeps free. Names AuthConfigs and headers,
    never a key."""
    problems: list[str] = []
    configs = sorted(policy.configs.values(), key=lambda c: c.config_id)
    for name, typed in _typed(envoy, EXT_AUTHZ_TYPE):
        allowed = typed.get("allowed_headers")
        if not isinstance(allowed, Mapping):
            continue  # every header is sent
        patterns = [p for p in allowed.get("patterns") or () if isinstance(p, Mapping)]
        for config in configs:
            for header in config.read_headers:
                if not any(_matches(p, header) for p in patterns):
                    problems.append(
                        f"ext_authz filter {name!r} does not send the header {header!r}, "
                        f"from which AuthConfig {config.config_id} reads its API key: add it "
                        "to allowed_headers (make envoy-configs), or every such request is "
                        "denied as key_source_not_sent"
                    )
    for _, typed in _typed(envoy, LUA_TYPE):
        code = (typed.get("default_source_code") or {}).get("inline_string", "")
        found = _GUARD_LIMIT.search(code) if isinstance(code, str) else None
        if found is None:
            continue
        reserve = MAX_REQUEST_HEADERS - int(found.group(1))
        for config in configs:
            if (injected := injected_at_most(config)) > reserve:
                problems.append(
                    f"AuthConfig {config.config_id} injects up to {injected} headers, but the "
                    f"header-count guard keeps {reserve} free (limit {found.group(1)}): a "
                    "request near Envoy's limit of 100 fails with 500 instead of 431 "
                    "(make envoy-configs)"
                )
    return problems
