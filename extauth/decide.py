"""The decision: a pure function of the current policy and what Check read from a request.

Every branch that is not a positive match on an admitted key is a deny: no config bound
to the route, an unknown config, a policy not loaded yet, a missing or unknown key. This
module does no I/O and builds no protobuf; `responses.py` turns its result into bytes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from extauth import credentials
from extauth.policy import CompiledConfig, Grant, KeyRule, Policy
from extauth.snapshot import ApiKey, digest

CONFIG_ID = "config_id"


class Reason(StrEnum):
    """Why a request was denied; also the `error` field of the JSON body and a metric label."""

    MISSING = "missing_api_key"
    INVALID = "invalid_api_key"
    EXPIRED = "expired_api_key"
    MISSING_METADATA = "missing_required_metadata"
    NO_CONFIG = "no_auth_config"
    UNKNOWN_CONFIG = "unknown_auth_config"
    NOT_READY = "not_ready"
    INTERNAL = "internal_error"
    # The key parameter twice, or in a spelling Envoy would not strip (credentials.py).
    AMBIGUOUS = "ambiguous_api_key"
    # Allowing would push the request past Envoy's header limit (see MAX_REQUEST_HEADERS).
    TOO_MANY_HEADERS = "too_many_headers"
    # More query parameters than MAX_QUERY_PARAMETERS, on a config that reads the query.
    TOO_MANY_PARAMETERS = "too_many_query_parameters"


# Envoy's limit on request headers (its default, and what envoyconf writes). ext_authz
# answers 500 when the headers an allow injects push a request past it, after extauth
# counted the allow: so an allow that would not fit is a deny here. The Check request's
# header map counts pseudo-headers and merges repeated names, so this is exact for
# distinct names and may let a request with many repeated names through to Envoy's 500.
MAX_REQUEST_HEADERS = 100
# On a config with a query key source, every parameter of a request is examined for a
# smuggled spelling of the key's name (credentials.smuggled: microseconds each). A 60 KB
# query holds 60,000 of them, 130 ms of the only thread that answers Checks: a query with
# more than this many is denied, after counting its separators (in C) and nothing else.
MAX_QUERY_PARAMETERS = 100
# NAMESPACE.NAME: 63 + 1 + 253 characters at most.
MAX_CONFIG_ID = 317


@dataclass(frozen=True, slots=True)
class Allow:
    config_id: str
    identity: str
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    remove_query: tuple[str, ...]
    # The key's --usage-label value, for per-team metrics ("" when not counted).
    usage: str = ""


@dataclass(frozen=True, slots=True)
class Deny:
    reason: Reason
    config_id: str | None
    # Where the key belongs ("the vanity-auth header"), for the 401 message.
    hint: str = ""


Decision = Allow | Deny


def decide(
    policy: Policy,
    context_extensions: Mapping[str, str],
    headers: Mapping[str, str],
    path: str,
    now: float | None = None,
    host: str = "",
) -> Decision:
    # The route's config_id, else the AuthConfig claiming the request's host
    # (spec.hosts, for gateways that send no per-route context), else the default.
    config_id = (
        context_extensions.get(CONFIG_ID)
        or (policy.hosts.lookup(host) if host else None)
        or policy.default_config
    )
    if not policy.loaded:
        return Deny(Reason.NOT_READY, config_id)
    if not config_id:
        return Deny(Reason.NO_CONFIG, None)
    config = policy.configs.get(config_id)
    if config is None:
        # Cut: no real config id is longer (a namespace and a name), and the id travels
        # on into deny metadata and logs.
        return Deny(Reason.UNKNOWN_CONFIG, config_id[:MAX_CONFIG_ID])
    if config.memo_header is None and "?" in path:
        names = [s.name for rule in config.rules for s in rule.sources if s.kind == "query"]
        if names:
            if credentials.parameters_over(path, MAX_QUERY_PARAMETERS):
                return Deny(Reason.TOO_MANY_PARAMETERS, config.config_id)
            if credentials.smuggled(path, names):
                return Deny(Reason.AMBIGUOUS, config.config_id)
    if not config.simple:
        looked_up = [_lookup(policy, rule, headers, path) for rule in config.rules]
        return _check_keys(policy, config, looked_up, headers, now)
    if config.memo_header is not None:
        # One header: the same lookup as `_lookup`, without its general source loop.
        key = credentials.from_header(headers.get(config.memo_header))
        found = policy.keys.get(digest(key)) if key is not None else None
    else:
        key, found = _lookup(policy, config.rules[0], headers, path)
    if found is not None and not _expired(found, now):
        # A simple config's allow depends only on which key it is: once built, reused.
        cached: Allow | None = config.memo.get(found)  # type: ignore[assignment]
        if cached is not None:  # only Allows are memoized
            if len(headers) + len(cached.set_headers) > MAX_REQUEST_HEADERS:
                return Deny(Reason.TOO_MANY_HEADERS, config.config_id)
            return cached
    return _check_keys(policy, config, [(key, found)], headers, now)


# A rule's outcome: a Grant (passed with a key), None (passed anonymously: Optional mode,
# no key sent) or a Deny.
_Outcome = Grant | None | Deny

# When several rules fail, the most specific reason is reported.
_SPECIFIC = (Reason.INVALID, Reason.EXPIRED, Reason.MISSING_METADATA)


def _lookup(
    policy: Policy, rule: KeyRule, headers: Mapping[str, str], path: str
) -> tuple[str | None, ApiKey | None]:
    """The credential a rule finds in the request, and the key it names (if loaded)."""
    key = credentials.extract(rule.sources, headers, path)
    return key, (policy.keys.get(digest(key)) if key is not None else None)


def _expired(found: ApiKey, now: float | None) -> bool:
    return found.expires_at is not None and found.expires_at <= (
        time.time() if now is None else now
    )


def _outcome(
    policy: Policy, rule: KeyRule, key: str | None, found: ApiKey | None, now: float | None
) -> _Outcome:
    if key is None:
        return None if rule.optional else Deny(Reason.MISSING, "", rule.hint)
    if found is None or not rule.admits(found):
        return Deny(Reason.INVALID, "", rule.hint)
    if _expired(found, now):
        return Deny(Reason.EXPIRED, "", rule.hint)
    grant = rule.grant(found, policy.usage_label)
    if grant.missing_required:
        return Deny(Reason.MISSING_METADATA, "", rule.hint)
    return grant


# The memo is cleared past this many entries (a crude bound; it refills from use).
MEMO_LIMIT = 100_000


def _check_keys(
    policy: Policy,
    config: CompiledConfig,
    looked_up: list[tuple[str | None, ApiKey | None]],
    headers: Mapping[str, str],
    now: float | None,
) -> Decision:
    """The decision from each rule's lookup; a simple config's Allow is memoized."""
    memo_key = looked_up[0][1] if config.simple else None
    outcomes = [
        _outcome(policy, rule, key, found, now)
        for rule, (key, found) in zip(config.rules, looked_up, strict=True)
    ]
    if config.expr is None:
        passed = not any(isinstance(o, Deny) for o in outcomes)
    else:
        passed = config.expr.evaluate(
            {
                str(rule.name): not isinstance(o, Deny)
                for rule, o in zip(config.rules, outcomes, strict=True)
            }
        )
    if not passed:
        denials = [o for o in outcomes if isinstance(o, Deny)]
        specific = [d for d in denials if d.reason in _SPECIFIC]
        # booleanExpr can fail with every rule passing (`!a`): that is a missing key.
        chosen = (specific or denials or [Deny(Reason.MISSING, "", config.rules[0].hint)])[0]
        return Deny(chosen.reason, config.config_id, chosen.hint)
    allow = _assemble_allow(config, outcomes, headers)
    if memo_key is not None and isinstance(outcomes[0], Grant):
        if len(config.memo) >= MEMO_LIMIT:
            config.memo.clear()
        config.memo[memo_key] = allow
    if len(headers) + len(allow.set_headers) > MAX_REQUEST_HEADERS:
        return Deny(Reason.TOO_MANY_HEADERS, config.config_id)
    return allow


def _assemble_allow(
    config: CompiledConfig, outcomes: list[_Outcome], headers: Mapping[str, str]
) -> Allow:
    """The one place an Allow is built: what passing rules set, and everything else
    removed (identity headers nobody set, credentials, the key's cookie)."""
    identity = usage = ""
    set_headers: dict[str, str] = {}
    remove: list[str] = []
    remove_query: list[str] = []
    strip_cookies: frozenset[str] = frozenset()
    for rule, outcome in zip(config.rules, outcomes, strict=True):
        if isinstance(outcome, Grant):
            if not identity:
                identity, usage = outcome.identity, outcome.usage
            set_headers.update(outcome.set_headers)
            remove.extend(outcome.remove_headers)
        else:
            # Anonymous, or a rule that failed inside a passing booleanExpr: nothing it
            # could inject may come from the client.
            remove.extend(rule.injected)
        # Credentials are stripped for every rule, passing or not: no key goes upstream.
        remove.extend(rule.strip_headers)
        remove_query.extend(rule.strip_query)
        strip_cookies |= rule.strip_cookies

    cookie_header = headers.get("cookie")
    if strip_cookies and cookie_header:
        rest = credentials.without_cookies(cookie_header, strip_cookies)
        if rest != cookie_header:
            if rest:
                set_headers["cookie"] = rest
            else:
                remove.append("cookie")
    return Allow(
        config_id=config.config_id,
        identity=identity,
        set_headers=tuple(set_headers.items()),
        # A header that one rule sets is never also removed by another.
        remove_headers=tuple(dict.fromkeys(h for h in remove if h not in set_headers)),
        remove_query=tuple(dict.fromkeys(remove_query)),
        usage=usage,
    )
