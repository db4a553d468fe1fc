"""Compile a snapshot into the immutable, indexed policy that Check reads.

All the work of answering "may this key use this route, and with which headers?" is done
here, once per change, so the request path is a dict lookup: each compiled rule maps a
key digest straight to a `Grant` holding the finished header lists. `PolicyHolder` swaps
the whole policy in one assignment; a Check that started on the old policy finishes on
it, and no Check ever sees half an update.

Conflicts are refused here, deterministically: two Secrets with the same name (in two
files), two AuthConfigs with the same name, and two Secrets holding the same key. For a
duplicated key the Secret that already held it keeps it; the newcomer is refused. A key
revoked by deleting its Secret simply has no grant in the next policy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

from extauth.manifests import Origin, Problem
from extauth.resources import ApiKeyAuth, AuthConfig
from extauth.snapshot import ApiKey, PlacedAuthConfig, Snapshot

log = logging.getLogger(__name__)

SourceKind = Literal["header", "query", "cookie"]


@dataclass(frozen=True, slots=True)
class KeySource:
    kind: SourceKind
    name: str


@dataclass(frozen=True, slots=True)
class Grant:
    """What one admitted key yields under one rule, precomputed."""

    identity: str
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    # Metadata entries the rule requires that this key's Secret lacks: deny if any.
    missing_required: tuple[str, ...] = ()
    # The key's --usage-label metadata value, for per-team metrics ("" when not counted).
    usage: str = ""


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One compiled `apiKeyAuth` entry of an AuthConfig."""

    sources: tuple[KeySource, ...]
    grants: Mapping[bytes, Grant]
    # Where the credential is removed before the request goes upstream (unless forwarded).
    strip_headers: tuple[str, ...]
    strip_query: tuple[str, ...]
    strip_cookies: frozenset[str]

    @property
    def hint(self) -> str:
        """Where a client should send its key, for deny messages."""
        return " or ".join(f"the {s.name} {s.kind}" for s in self.sources)


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    config_id: str
    rules: tuple[KeyRule, ...]


@dataclass(frozen=True)
class Policy:
    configs: Mapping[str, CompiledConfig] = field(default_factory=dict)
    default_config: str | None = None
    usage_label: str | None = None
    key_count: int = 0
    # Which Secret holds each admitted digest: decides who keeps a key in a later conflict.
    holders: Mapping[bytes, tuple[str, str]] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    loaded: bool = False

    def config_for(self, config_id: str | None) -> CompiledConfig | None:
        chosen = config_id or self.default_config
        return self.configs.get(chosen) if chosen else None


def compile_policy(
    snapshot: Snapshot,
    *,
    default_config: str | None = None,
    usage_label: str | None = None,
    previous: Policy | None = None,
) -> Policy:
    problems: list[Problem] = []
    keys = _unique(snapshot.keys, "Secret", problems)
    configs = _unique(snapshot.authconfigs, "AuthConfig", problems)
    admitted = _resolve_key_conflicts(keys, previous, problems)
    by_owner = {key.owner: key for key in admitted}

    compiled: dict[str, CompiledConfig] = {}
    for placed in configs:
        config = placed.config
        rules = tuple(
            _compile_rule(
                entry.api_key_auth, config, placed.origin, by_owner, admitted, usage_label, problems
            )
            for entry in config.spec.configs
        )
        compiled[config.config_id] = CompiledConfig(config.config_id, rules)

    if default_config and default_config not in compiled:
        problems.append(
            Problem("--default-config", 0, f"AuthConfig {default_config!r} does not exist")
        )
    return Policy(
        configs=MappingProxyType(compiled),
        default_config=default_config,
        usage_label=usage_label,
        key_count=len(admitted),
        holders=MappingProxyType({key.digest: key.owner for key in admitted}),
        problems=tuple(problems),
        loaded=True,
    )


_Owned = TypeVar("_Owned", ApiKey, PlacedAuthConfig)


def _unique(items: Iterable[_Owned], kind: str, problems: list[Problem]) -> list[_Owned]:
    """First definition of each namespace/name wins; later ones are refused."""
    seen: dict[tuple[str, str], _Owned] = {}
    for item in items:
        first = seen.get(item.owner)
        if first is None:
            seen[item.owner] = item
            continue
        problems.append(
            _problem(
                item.origin,
                f"{kind} {'/'.join(item.owner)} is already defined at {first.origin}; "
                "this definition is refused",
            )
        )
    return list(seen.values())


def _resolve_key_conflicts(
    keys: list[ApiKey], previous: Policy | None, problems: list[Problem]
) -> list[ApiKey]:
    by_digest: dict[bytes, list[ApiKey]] = {}
    for key in keys:
        by_digest.setdefault(key.digest, []).append(key)
    refused: set[tuple[str, str]] = set()
    for digest, holders in by_digest.items():
        if len(holders) == 1:
            continue
        incumbent = previous.holders.get(digest) if previous else None
        keeper = next((k for k in holders if k.owner == incumbent), holders[0])
        for other in holders:
            if other is keeper:
                continue
            refused.add(other.owner)
            problems.append(
                _problem(
                    other.origin,
                    f"Secret {other.namespace}/{other.name} holds the same API key as "
                    f"Secret {keeper.namespace}/{keeper.name} ({keeper.origin}); refused",
                )
            )
    return [key for key in keys if key.owner not in refused]


def _compile_rule(
    auth: ApiKeyAuth,
    config: AuthConfig,
    origin: Origin,
    by_owner: Mapping[tuple[str, str], ApiKey],
    keys: list[ApiKey],
    usage_label: str | None,
    problems: list[Problem],
) -> KeyRule:
    members: dict[tuple[str, str], ApiKey] = {}
    for owner in auth.secret_refs(config.metadata.namespace):
        key = by_owner.get(owner)
        if key is None:
            problems.append(
                _problem(
                    origin,
                    f"AuthConfig {config.config_id} references Secret {'/'.join(owner)}, "
                    "which is not loaded",
                    warning=True,
                )
            )
        else:
            members[owner] = key
    for selector in auth.selectors():
        for key in keys:
            if all(key.labels.get(k) == v for k, v in selector.items()):
                members[key.owner] = key

    grants: dict[bytes, Grant] = {}
    for key in members.values():
        grant = _grant(auth, key, usage_label)
        if grant.missing_required:
            problems.append(
                _problem(
                    key.origin,
                    f"Secret {key.namespace}/{key.name} lacks metadata "
                    f"{', '.join(map(repr, grant.missing_required))} required by AuthConfig "
                    f"{config.config_id}: its key is denied there",
                    warning=True,
                )
            )
        grants[key.digest] = grant

    sources = tuple(_source(s.header, s.query, s.cookie) for s in auth.sources())
    strip = not auth.forward_credential
    return KeyRule(
        sources=sources,
        grants=MappingProxyType(grants),
        strip_headers=tuple(s.name for s in sources if strip and s.kind == "header"),
        strip_query=tuple(s.name for s in sources if strip and s.kind == "query"),
        strip_cookies=frozenset(s.name for s in sources if strip and s.kind == "cookie"),
    )


def _grant(auth: ApiKeyAuth, key: ApiKey, usage_label: str | None) -> Grant:
    set_headers: list[tuple[str, str]] = []
    remove: list[str] = []
    missing: list[str] = []
    for header, entry in sorted(auth.metadata_headers().items()):
        value = key.metadata.get(entry.name)
        if value is not None:
            set_headers.append((header, value))
        else:
            # Removed, not left alone: a client must never supply its own x-org.
            remove.append(header)
            if entry.required:
                missing.append(entry.name)
    if auth.client_id_header:
        set_headers.append((auth.client_id_header, key.name))
    usage = (key.metadata.get(usage_label) or "-") if usage_label else ""
    return Grant(key.name, tuple(set_headers), tuple(remove), tuple(missing), usage)


def _source(header: str | None, query: str | None, cookie: str | None) -> KeySource:
    if header is not None:
        return KeySource("header", header)
    if query is not None:
        return KeySource("query", query)
    assert cookie is not None  # resources.KeySource guarantees exactly one
    return KeySource("cookie", cookie)


def _problem(origin: Origin, message: str, *, warning: bool = False) -> Problem:
    return Problem(origin.path, origin.line, message, warning=warning)


class PolicyHolder:
    """The one reference Check reads. Replacing it is a single atomic assignment."""

    def __init__(self, default_config: str | None = None, usage_label: str | None = None) -> None:
        self.current = Policy(default_config=default_config, usage_label=usage_label)
        self._reported: set[str] = set()

    def update(self, snapshot: Snapshot) -> Policy:
        policy = compile_policy(
            snapshot,
            default_config=self.current.default_config,
            usage_label=self.current.usage_label,
            previous=self.current,
        )
        self.current = policy
        self._report(policy)
        return policy

    def _report(self, policy: Policy) -> None:
        """Log each problem once, when it first appears, not on every rebuild."""
        now = {str(p) for p in policy.problems}
        for problem in policy.problems:
            text = str(problem)
            if text not in self._reported:
                (log.warning if problem.warning else log.error)("policy: %s", text)
        self._reported = now
        log.info(
            "policy: %d AuthConfig(s), %d API key(s) loaded",
            len(policy.configs),
            policy.key_count,
        )
