"""`extauth inspect`: what a policy admits, for an administrator, without a single key.

An operator asked "who can call this route?" or "why is team X denied?" should not have to
read YAML and apply the selector rules in their head. This reads the same sources `serve`
reads, compiles the same policy, and reports per AuthConfig how it selects keys and which
identities (Secret names, never keys) it admits with the headers they get and their
expiry, then the Secrets that no AuthConfig admits (a key that works nowhere is usually a
forgotten ref or label) and every problem the policy has.

Cost: every key is tested against every rule, O(keys x rules): fine for a command run by
hand, which is why it is here and not in the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from extauth.apikeys import ApiKey
from extauth.deciding import admits, admitted_anywhere, rule_grant
from extauth.policy import CompiledConfig, KeyRule, Policy


@dataclass(frozen=True, slots=True)
class Identity:
    namespace: str
    name: str
    # The headers it gets under this config (metadata values, never the key).
    headers: dict[str, str]
    expires_at: str | None
    # Metadata entries a rule requires that the Secret lacks: its key is denied there.
    missing_required: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Selection:
    """How one `apiKeyAuth` entry picks keys."""

    name: str | None
    key_sources: tuple[str, ...]
    secret_refs: tuple[str, ...]
    label_selectors: tuple[dict[str, str], ...]
    mode: str
    require_hashed_keys: bool


@dataclass(frozen=True, slots=True)
class ConfigView:
    config_id: str
    state: str
    boolean_expr: str | None
    selections: tuple[Selection, ...]
    identities: tuple[Identity, ...]
    # spec.hosts patterns this config holds (a pattern another config holds is a problem).
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    authconfigs: tuple[ConfigView, ...]
    unadmitted: tuple[str, ...]
    problems: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)


def report(policy: Policy) -> Report:
    holders = _distinct(policy.keys.values())
    admitted: set[int] = set()
    views: list[ConfigView] = []
    claimed = policy.hosts.claims()
    for config_id in sorted(policy.configs):
        config = policy.configs[config_id]
        identities: list[Identity] = []
        for key in holders:
            if not _admits(config, key):
                continue
            admitted.add(id(key))
            identities.append(_identity(config, key))
        views.append(
            ConfigView(
                config_id,
                "Accepted",
                config.expr.source if config.expr is not None else None,
                tuple(_selection(rule) for rule in config.rules),
                tuple(identities),
                tuple(claimed.get(config_id, ())),
            )
        )
    unadmitted = tuple(_owner(k) for k in holders if id(k) not in admitted)
    return Report(tuple(views), unadmitted, tuple(str(p) for p in policy.problems))


def unadmitted(policy: Policy) -> list[ApiKey]:
    """The key holders no AuthConfig admits, by namespace and name: keys that work
    nowhere (validate warns about them, as `report` lists them)."""
    return [key for key in _distinct(policy.keys.values()) if not admitted_anywhere(policy, key)]


def _distinct(keys: Iterable[ApiKey]) -> list[ApiKey]:
    """Each holder once (a key in rotation has two digests), by namespace and name."""
    seen: dict[int, ApiKey] = {id(k): k for k in keys}
    return sorted(seen.values(), key=lambda k: (k.namespace, k.name))


def _admits(config: CompiledConfig, key: ApiKey) -> bool:
    # With a booleanExpr, a key counts if any entry admits it: which combination a
    # request satisfies depends on the request, not on the key alone.
    return any(admits(rule, key) for rule in config.rules)


def _identity(config: CompiledConfig, key: ApiKey) -> Identity:
    headers: dict[str, str] = {}
    missing: list[str] = []
    for rule in config.rules:
        if not admits(rule, key):
            continue
        grant = rule_grant(rule, key, None)
        headers.update(grant.set_headers)
        missing.extend(m for m in grant.missing_required if m not in missing)
    expiry = None
    if key.expires_at is not None:
        expiry = datetime.fromtimestamp(key.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Identity(key.namespace, key.name, headers, expiry, tuple(missing))


def _selection(rule: KeyRule) -> Selection:
    return Selection(
        rule.name,
        tuple(str(source) for source in rule.sources),
        tuple(sorted("/".join(owner) for owner in rule.refs)),
        tuple(dict(selector) for selector in rule.selectors),
        "Optional" if rule.optional else "Strict",
        rule.require_hashed,
    )


def _owner(key: ApiKey) -> str:
    return f"{key.namespace}/{key.name}"


def render(result: Report, limit: int) -> str:
    """The report as text; at most `limit` identities per AuthConfig (0: all)."""
    lines: list[str] = []
    for view in result.authconfigs:
        lines.append(f"AuthConfig {view.config_id}: {view.state}")
        if view.boolean_expr:
            lines.append(f"  booleanExpr: {view.boolean_expr}")
        if view.hosts:
            lines.append(f"  hosts (routes without config_id): {', '.join(view.hosts)}")
        for selection in view.selections:
            label = f"  entry {selection.name}" if selection.name else "  apiKeyAuth"
            lines.append(
                f"{label} ({selection.mode}): key from the {' or '.join(selection.key_sources)}"
            )
            for ref in selection.secret_refs:
                lines.append(f"    admits Secret {ref}")
            for selector in selection.label_selectors:
                labels = ", ".join(f"{k}={v}" for k, v in selector.items())
                lines.append(f"    admits every apikey Secret labelled {labels}")
            if selection.require_hashed_keys:
                lines.append("    only Secrets that store api-key-hash")
        shown = view.identities if limit == 0 else view.identities[:limit]
        lines.append(f"  identities: {len(view.identities)}")
        for identity in shown:
            parts = [f"    {identity.namespace}/{identity.name}"]
            parts += [f"{h}={v}" for h, v in identity.headers.items()]
            if identity.expires_at:
                parts.append(f"expires {identity.expires_at}")
            if identity.missing_required:
                parts.append(f"DENIED: lacks {', '.join(identity.missing_required)}")
            lines.append("  ".join(parts))
        if len(shown) < len(view.identities):
            lines.append(f"    ... and {len(view.identities) - len(shown)} more (--limit 0: all)")
    lines.append(f"Secrets no AuthConfig admits: {len(result.unadmitted)}")
    unadmitted = result.unadmitted if limit == 0 else result.unadmitted[:limit]
    lines.extend(f"  {owner}" for owner in unadmitted)
    if len(unadmitted) < len(result.unadmitted):
        lines.append(f"  ... and {len(result.unadmitted) - len(unadmitted)} more (--limit 0: all)")
    lines.append(f"problems: {len(result.problems)}")
    lines.extend(f"  {problem}" for problem in result.problems)
    return "\n".join(lines) + "\n"
