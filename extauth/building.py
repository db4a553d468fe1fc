"""Changes in, policies out: the policy Check reads, kept up to date incrementally.

Shape: one index `digest -> ApiKey` of every admitted key, plus the compiled AuthConfigs.
A compiled rule does not list its members: whether a key belongs to it is decided at
request time from the key's owner and labels (a set lookup and a few label compares), and
the headers it grants come from the key's metadata. That is what makes changes cheap: a
new, edited or deleted Secret touches one index entry and no AuthConfig; an edited
AuthConfig recompiles that config alone. 100k or 1M keys cost the same per change.

Immutability: `PolicyBuilder` owns mutable working state; `build()` publishes a `Policy`
whose key index (`policy.KeyIndex`) shares its large base with the previous policy and
carries the changes since as a small layer of its own: a publish copies that layer, not
the index, and a copy of the whole index (compaction) comes once per 1/32 of it changed.
`PolicyHolder` swaps the reference in one assignment; a Check that started on the old
policy finishes on it.

Conflicts are refused here, and the winner depends only on what is defined, never on
the order it arrived in (`rank`: files first, by path and document; then Kubernetes
objects, the oldest first):
- the same Secret or AuthConfig (namespace/name) defined twice: the definition of lowest
  rank is in effect, the other is refused and reported with both places; if it goes, the
  next in rank takes over;
- the same key in two Secrets in effect: the Secret of lowest rank holds it, the other is
  refused; if the holder goes or changes its key, the next in rank takes over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from extauth import boolexpr, hosts
from extauth.apikeys import KUBERNETES_PREFIX, ApiKey, Owner
from extauth.changes import Change, Definition, PlacedAuthConfig, Removal
from extauth.deciding import rule_grant
from extauth.definitions import ByOwner, Ranked
from extauth.expiries import ExpiryLog
from extauth.origins import Origin, Problem
from extauth.policy import (
    CompiledConfig,
    HeaderRule,
    KeyIndex,
    KeyRule,
    KeySource,
    Policy,
    WorkingIndex,
)

if TYPE_CHECKING:
    # Read, never imported at run time: the request path's server holds the builder.
    from extauth.resources import AuthConfig

log = logging.getLogger(__name__)

# A published index's recent layer grows to at most this fraction of its base before a
# publish compacts it into a new base: at a million keys a revocation copies at most
# ~30,000 entries (usually a few), and one copy of the million is spread over as many
# changes. A superseded key stays referenced by the base until then, never longer.
COMPACT_RATIO = 32


def compile_rule(config: AuthConfig, index: int) -> KeyRule:
    entry = config.spec.configs[index]
    auth = entry.api_key_auth
    sources = tuple(_source(s.header, s.query, s.cookie) for s in auth.sources())
    strip = not auth.forward_credential
    return KeyRule(
        name=entry.name,
        optional=auth.mode == "Optional",
        require_hashed=auth.require_hashed_keys,
        sources=sources,
        refs=frozenset(auth.secret_refs(config.metadata.namespace)),
        selectors=tuple(tuple(sorted(sel.items())) for sel in auth.selectors()),
        selector_namespace=None if auth.all_namespaces else config.metadata.namespace,
        header_rules=tuple(
            HeaderRule(header, entry.name, entry.required)
            for header, entry in sorted(auth.metadata_headers().items())
        ),
        client_id_header=auth.client_id_header,
        strip_headers=tuple(s.name for s in sources if strip and s.kind == "header"),
        strip_query=tuple(s.name for s in sources if strip and s.kind == "query"),
        strip_cookies=frozenset(s.name for s in sources if strip and s.kind == "cookie"),
    )


def _source(header: str | None, query: str | None, cookie: str | None) -> KeySource:
    if header is not None:
        return KeySource("header", header)
    if query is not None:
        return KeySource("query", query)
    assert cookie is not None  # resources.KeySource guarantees exactly one
    return KeySource("cookie", cookie)


def _compile(placed: PlacedAuthConfig) -> CompiledConfig:
    config = placed.config
    expr = config.spec.boolean_expr
    return CompiledConfig(
        config.config_id,
        tuple(compile_rule(config, i) for i in range(len(config.spec.configs))),
        boolexpr.parse(expr) if expr else None,
    )


def _problem(origin: Origin, message: str, *, warning: bool = False) -> Problem:
    return Problem(origin.path, origin.line, message, warning=warning)


_ProblemKey = tuple[str, Owner, str]  # (what, owner, source)
_D = TypeVar("_D", ApiKey, PlacedAuthConfig)


def rank(definition: Definition) -> tuple[int, str, int, str, str]:
    """Which of two conflicting definitions wins: the lower rank, always.

    Only what is present decides, never the order things arrived in: a restart, a second
    replica and `extauth validate` all pick the same winner. Files come first (an
    administrator writes them), by lexically first path, then the first document in it.
    Kubernetes objects (`kubernetes:Secret/ns/name`) come after, the oldest first
    (creationTimestamp, then uid, which the source puts in the origin's `document`): a
    tenant who copies another team's key (or its `api-key-hash`, meant to be safe to
    leak) into a Secret of its own gets a refusal, never the key, whatever the namespace
    and name it picks and whichever replica or restart reads it.
    """
    if isinstance(definition, ApiKey):
        path, document = definition.path, definition.document
        namespace, name = definition.namespace, definition.name
    else:
        path, _, document = definition.origin
        namespace, name = definition.owner
    if path.startswith(KUBERNETES_PREFIX):
        return (1, "", document, namespace, name)
    return (0, path, document, namespace, name)


class PolicyBuilder:
    """Mutable working state, changed incrementally; `build()` publishes a `Policy`.

    Three tables of one rule (`definitions.Ranked`: the first by rank is in effect, the
    next takes over): AuthConfigs and Secrets by owner, and of the Secrets in effect,
    the one holding each key digest. What those tables decide is carried out by the
    effects: a config compiled, a Secret's digests claimed and released.
    """

    def __init__(self, default_config: str | None = None, usage_label: str | None = None) -> None:
        self.default_config = default_config
        self.usage_label = usage_label
        self._configs: ByOwner[PlacedAuthConfig] = ByOwner(rank)
        self._secrets: ByOwner[ApiKey] = ByOwner(rank)
        # Of the Secrets in effect, the one holding each digest: `first` is the working
        # index (`_admitted`), whose base a publish shares with the `KeyIndex` it makes.
        self._admitted = WorkingIndex()
        self._holders: Ranked[bytes, ApiKey] = Ranked(rank, self._admitted)
        # What was published of it, and whether a digest changed hands since.
        self._index = KeyIndex()
        self._index_changed = False
        # Secrets in effect, and those of them that hold none of their digests.
        self._defined = 0
        self._idle: set[Owner] = set()
        self._expiries = ExpiryLog()
        self._compiled: dict[str, CompiledConfig] = {}
        self._hosts = hosts.HostTable()
        self._host_problems: tuple[Problem, ...] = ()
        self._host_refusals: Mapping[str, str] = {}
        self._problems: dict[_ProblemKey, Problem] = {}
        self._configs_changed = True
        self._published: Policy | None = None
        # The change being applied, to tell a second definition of an owner in the same
        # source (two documents of one file) from a new version of the source; the ids of
        # its definitions are only collected when that question first comes up.
        self._applying: tuple[Definition, ...] = ()
        self._applying_ids: set[int] | None = None

    # -- applying changes ------------------------------------------------------------------

    def apply(self, change: Change) -> None:
        for _ in self.steps(change):
            pass

    def steps(self, change: Change, every: int = 4096) -> Iterator[None]:
        """Apply `change`, pausing after every `every` definitions: a caller on an event
        loop lets Checks through in between (they read the published policy, which
        nothing here touches until `build()`)."""
        self._applying, self._applying_ids = change.upserted, None
        try:
            removed, upserted = change.removed, change.upserted
            for start in range(0, len(removed), every):
                for removal in removed[start : start + every]:
                    self._remove(removal)
                yield
            for start in range(0, len(upserted), every):
                for definition in upserted[start : start + every]:
                    self._upsert(definition)
                yield
        finally:
            self._applying, self._applying_ids = (), None

    def _upsert(self, definition: Definition) -> None:
        if isinstance(definition, ApiKey):
            namespace, name = definition.group.namespace, definition.name  # no property call
            self._define(self._secrets, namespace, name, definition, self._secret_effect)
        else:
            namespace, name = definition.owner
            self._define(self._configs, namespace, name, definition, self._config_effect)

    def _remove(self, removal: Removal) -> None:
        self._problems.pop(("twice", removal.owner, removal.source), None)
        if removal.kind == "Secret":
            self._undefine(self._secrets, removal, self._secret_effect)
        else:
            self._undefine(self._configs, removal, self._config_effect)

    def _same_source_twice(self, existing: _D, definition: _D) -> _D | None:
        """`definition` and `existing` share a source. A new version of it replaces the
        old one (None); two in the same change are two documents of one source: the
        first wins, the loser is reported and returned."""
        if self._applying_ids is None:
            self._applying_ids = {id(d) for d in self._applying}
        owner, path = definition.owner, definition.path
        if id(existing) not in self._applying_ids:
            self._problems.pop(("twice", owner, path), None)
            return None
        winner, loser = sorted((existing, definition), key=rank)
        kind = "Secret" if isinstance(definition, ApiKey) else "AuthConfig"
        self._problems[("twice", owner, path)] = _problem(
            loser.origin,
            f"document {loser.origin.document}: {kind} {'/'.join(owner)} is already "
            f"defined at {winner.origin} (document {winner.origin.document}); "
            "this definition is refused",
        )
        return loser

    def _define(
        self,
        owners: ByOwner[_D],
        namespace: str,
        name: str,
        definition: _D,
        effect: Callable[[_D | None, _D | None], None],
    ) -> None:
        table = owners.namespaces.get(namespace) or owners.table(namespace)
        if name not in table.first:  # the only definition of its owner: in effect
            table.first[name] = definition
            effect(None, definition)
            return
        path = definition.path
        same = next((d for d in table.candidates(name) if d.path == path), None)
        if same is not None and self._same_source_twice(same, definition) is definition:
            return  # refused: the first document of the source stays
        before = table.put(name, definition, replacing=same)
        self._report_duplicates(definition.owner, table.candidates(name))
        if table.first[name] is not before:
            effect(before, table.first[name])

    def _undefine(
        self,
        owners: ByOwner[_D],
        removal: Removal,
        effect: Callable[[_D | None, _D | None], None],
    ) -> None:
        namespace, name = removal.owner
        table = owners.namespaces.get(namespace)
        if table is None:
            return
        before, removed = table.discard(name, lambda d: d.path == removal.source)
        for gone in removed:
            self._problems.pop(("duplicate", removal.owner, gone.path), None)
        if before is None or not removed:
            return
        after = table.first.get(name)
        owners.tidy(namespace)
        self._report_duplicates(removal.owner, table.candidates(name))
        if after is not before:
            effect(before, after)

    def _report_duplicates(self, owner: Owner, definitions: Sequence[Definition]) -> None:
        """`definitions` by rank: the first is in effect, every other one is refused."""
        if not definitions:
            return
        first = definitions[0]
        kind = "Secret" if isinstance(first, ApiKey) else "AuthConfig"
        self._problems.pop(("duplicate", owner, first.path), None)
        for later in definitions[1:]:
            self._problems[("duplicate", owner, later.path)] = _problem(
                later.origin,
                f"{kind} {'/'.join(owner)} is already defined at {first.origin}, which "
                "comes first; this definition is refused",
            )

    def _secret_effect(self, before: ApiKey | None, after: ApiKey | None) -> None:
        """A Secret's definition in effect changed: its digests change hands."""
        if before is not None:
            if before.expires_at is not None:
                self._expiries.remove(before.expires_at)
            self._release(before)
            if after is None:
                self._defined -= 1
                self._idle.discard(before.owner)
        if after is not None:
            if after.expires_at is not None:
                self._expiries.add(after.expires_at)
            if before is None:
                self._defined += 1
                working, key_digest = self._admitted, after.digest
                if (
                    after.next_digest is None
                    and key_digest not in working.recent
                    and key_digest not in working.base
                ):
                    # A new Secret with an unclaimed key (a million times at startup):
                    # the working index's own dicts, without its methods' calls.
                    working.recent[key_digest] = after
                    working.count += 1
                    self._index_changed = True
                    return
            if self._claim(after) or before is not None:
                self._recount(after)

    def _claim(self, key: ApiKey) -> bool:
        """Claim the key's digests; whether another Secret claims one of them too."""
        holders = self._holders
        contended = False
        for key_digest in key.digests:
            before = holders.put(key_digest, key)
            if before is None:
                self._touch(key_digest)
                continue
            contended = True
            if holders.first[key_digest] is not before:  # it ranks first: it takes over
                self._touch(key_digest)
                self._recount(before)
            self._refresh(key_digest, ())
        return contended

    def _release(self, key: ApiKey) -> None:
        holders = self._holders
        for key_digest in key.digests:
            before, removed = holders.discard(key_digest, lambda held: held is key)
            if not removed:
                continue
            after = holders.first.get(key_digest)
            if after is not before:
                self._touch(key_digest)
                if after is not None:
                    self._recount(after)  # the next in rank took over
            self._refresh(key_digest, removed)

    def _touch(self, key_digest: bytes) -> None:
        """Note a digest whose holder changed, for the next publish."""
        self._index_changed = True

    def _recount(self, key: ApiKey) -> None:
        """Keep the set of Secrets in effect that hold none of their digests."""
        if self._secrets.get(key.namespace, key.name) is not key:
            return
        if any(self._admitted.get(d) is key for d in key.digests):
            self._idle.discard(key.owner)
        else:
            self._idle.add(key.owner)

    def _refresh(self, key_digest: bytes, gone: Iterable[ApiKey]) -> None:
        """The conflict problems of one digest: every Secret waiting for it is refused."""
        hexed = key_digest.hex()
        for key in gone:
            self._problems.pop(("conflict", key.owner, hexed), None)
        holder = self._admitted.get(key_digest)
        if holder is None:
            return
        self._problems.pop(("conflict", holder.owner, hexed), None)
        for key in self._holders.others.get(key_digest, ()):
            self._problems[("conflict", key.owner, hexed)] = _problem(
                key.origin,
                f"Secret {key.namespace}/{key.name} holds the same API key as "
                f"Secret {holder.namespace}/{holder.name} ({holder.origin}), which comes "
                "first; refused",
            )

    def _config_effect(
        self, before: PlacedAuthConfig | None, after: PlacedAuthConfig | None
    ) -> None:
        self._configs_changed = True
        if before is not None:
            self._compiled.pop(before.config.config_id, None)
        if after is not None:
            self._compiled[after.config.config_id] = _compile(after)

    # -- publishing ------------------------------------------------------------------------

    def build(self) -> Policy:
        previous = self._published
        configs: Mapping[str, CompiledConfig]
        if previous is None or self._configs_changed:
            configs = MappingProxyType(dict(self._compiled))
            self._hosts, self._host_problems = self._host_table()
            self._host_refusals = _refusals(self._host_problems)
        else:
            configs = previous.configs
        self._configs_changed = False
        policy = Policy(
            keys=self._publish_index(),
            configs=configs,
            default_config=self.default_config,
            usage_label=self.usage_label,
            problems=(
                tuple(self._problems.values())
                + self._host_problems
                + tuple(self._config_warnings())
            ),
            loaded=True,
            expiries=self._expiries.publish(),
            holders=self._defined - len(self._idle),
            hosts=self._hosts,
            host_refusals=self._host_refusals,
        )
        self._published = policy
        return policy

    def _publish_index(self) -> KeyIndex:
        """The index as of now, at the cost of the changes since the base was made: the
        working index's base as it is, and a copy of its `recent` layer; past
        1/COMPACT_RATIO of the base, a new base first (one copy of the whole index)."""
        if not self._index_changed:
            return self._index
        working = self._admitted
        base = self._index.base
        if len(working.recent) > len(working.base) // COMPACT_RATIO:
            working.compact()
            base = MappingProxyType(working.base)
        index = KeyIndex(base, dict(working.recent), working.count)
        self._index = index
        self._index_changed = False
        return index

    def _host_table(self) -> tuple[hosts.HostTable, tuple[Problem, ...]]:
        """The host table of the AuthConfigs in effect, and a problem for each pattern
        one of them claims after another that ranks first (as `rank` orders duplicate
        definitions: files first, then the oldest object). Rebuilt whole on a change of
        AuthConfigs: a few microseconds per pattern."""
        placed = {p.config.config_id: p for p in self._configs.values()}
        table, conflicts = hosts.build(
            (rank(p), config_id, hosts.normalize_all(p.config.spec.hosts))
            for config_id, p in placed.items()
            if p.config.spec.hosts
        )
        problems = []
        for conflict in conflicts:
            refused, holder = placed[conflict.refused], placed[conflict.holder]
            named = "/".join(holder.owner) + f" ({holder.origin})"
            problems.append(
                _problem(refused.origin, conflict.explain("/".join(refused.owner), named))
            )
        return table, tuple(problems)

    def _config_warnings(self) -> Iterable[Problem]:
        """References to Secrets that are not there, and referenced keys that lack metadata
        a config requires. Cost: the total number of references, not of keys."""
        if self.default_config and self.default_config not in self._compiled:
            yield Problem(
                "--default-config", 0, f"AuthConfig {self.default_config!r} does not exist"
            )
        for placed in self._configs.values():
            compiled = self._compiled[placed.config.config_id]
            name = "/".join(placed.owner)  # as every other message names a resource
            for rule in compiled.rules:
                for owner in sorted(rule.refs):
                    key = self._secrets.get(*owner)
                    if key is None or not any(self._admitted.get(d) is key for d in key.digests):
                        yield _problem(
                            placed.origin,
                            f"AuthConfig {name} references Secret "
                            f"{'/'.join(owner)}, which is not loaded",
                            warning=True,
                        )
                        continue
                    missing = rule_grant(rule, key, None).missing_required
                    if missing:
                        yield _problem(
                            key.origin,
                            f"Secret {key.namespace}/{key.name} lacks metadata "
                            f"{', '.join(map(repr, missing))} required by AuthConfig "
                            f"{name}: its key is denied there",
                            warning=True,
                        )


def _refusals(problems: Iterable[Problem]) -> Mapping[str, str]:
    """Each refused definition's host problems, by its origin path: one status note."""
    found: dict[str, list[str]] = {}
    for problem in problems:
        found.setdefault(problem.path, []).append(problem.message)
    return MappingProxyType({path: "; ".join(messages) for path, messages in found.items()})


def compile_policy(
    change: Change, *, default_config: str | None = None, usage_label: str | None = None
) -> Policy:
    """A policy from one complete state (validate, tests)."""
    builder = PolicyBuilder(default_config, usage_label)
    builder.apply(change)
    return builder.build()


class PolicyHolder:
    """The one reference Check reads. Replacing it is a single atomic assignment."""

    def __init__(self, default_config: str | None = None, usage_label: str | None = None) -> None:
        self.builder = PolicyBuilder(default_config, usage_label)
        self.current = Policy(default_config=default_config, usage_label=usage_label)
        self._reported: set[str] = set()

    def update(self, changes: Iterable[Change]) -> Policy:
        """Apply a batch of changes and publish one new policy for all of them."""
        for change in changes:
            self.builder.apply(change)
        return self.publish()

    def publish(self) -> Policy:
        """Publish what the builder holds now (after `builder.steps`)."""
        policy = self.builder.build()
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
