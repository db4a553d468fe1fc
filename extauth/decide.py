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
from extauth.snapshot import digest

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
) -> Decision:
    config_id = context_extensions.get(CONFIG_ID) or policy.default_config
    if not policy.loaded:
        return Deny(Reason.NOT_READY, config_id)
    if not config_id:
        return Deny(Reason.NO_CONFIG, None)
    config = policy.configs.get(config_id)
    if config is None:
        return Deny(Reason.UNKNOWN_CONFIG, config_id)
    return _check_keys(policy, config, headers, path, now)


# A rule's outcome: a Grant (passed with a key), None (passed anonymously: Optional mode,
# no key sent) or a Deny.
_Outcome = Grant | None | Deny

# When several rules fail, the most specific reason is reported.
_SPECIFIC = (Reason.INVALID, Reason.EXPIRED, Reason.MISSING_METADATA)


def _evaluate(
    policy: Policy, rule: KeyRule, headers: Mapping[str, str], path: str, now: float | None
) -> _Outcome:
    key = credentials.extract(rule.sources, headers, path)
    if key is None:
        return None if rule.optional else Deny(Reason.MISSING, "", rule.hint)
    found = policy.keys.get(digest(key))
    if found is None or not rule.admits(found):
        return Deny(Reason.INVALID, "", rule.hint)
    if found.expires_at is not None and found.expires_at <= (now or time.time()):
        return Deny(Reason.EXPIRED, "", rule.hint)
    grant = rule.grant(found, policy.usage_label)
    if grant.missing_required:
        return Deny(Reason.MISSING_METADATA, "", rule.hint)
    return grant


# The memo is cleared past this many entries (a crude bound; it refills from use).
MEMO_LIMIT = 100_000


def _check_simple(
    policy: Policy,
    config: CompiledConfig,
    headers: Mapping[str, str],
    path: str,
    now: float | None,
) -> Decision | None:
    """The common case, fast: the Allow for a key is built once and then reused.
    None: not a plain allow (the general path decides, and says why)."""
    rule = config.rules[0]
    key = credentials.extract(rule.sources, headers, path)
    if key is None:
        return None
    found = policy.keys.get(digest(key))
    if found is None or not rule.admits(found):
        return Deny(Reason.INVALID, config.config_id, rule.hint)
    if found.expires_at is not None and found.expires_at <= (now or time.time()):
        return None
    allow = config.memo.get(found)
    if isinstance(allow, Allow):
        return allow
    grant = rule.grant(found, policy.usage_label)
    if grant.missing_required:
        return None
    allow = Allow(
        config_id=config.config_id,
        identity=grant.identity,
        set_headers=grant.set_headers,
        remove_headers=tuple(
            dict.fromkeys(
                h
                for h in (*grant.remove_headers, *rule.strip_headers)
                if h not in dict(grant.set_headers)
            )
        ),
        remove_query=rule.strip_query,
        usage=grant.usage,
    )
    if len(config.memo) >= MEMO_LIMIT:
        config.memo.clear()
    config.memo[found] = allow
    return allow


def _check_keys(
    policy: Policy,
    config: CompiledConfig,
    headers: Mapping[str, str],
    path: str,
    now: float | None,
) -> Decision:
    if config.simple:
        fast = _check_simple(policy, config, headers, path, now)
        if fast is not None:
            return fast
    outcomes = [_evaluate(policy, rule, headers, path, now) for rule in config.rules]
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
