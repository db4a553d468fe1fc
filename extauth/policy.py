"""The policy Check reads: compiled AuthConfigs and the index of admitted keys, immutable.

Shape: one index `digest -> ApiKey` of every admitted key, plus the compiled AuthConfigs.
A compiled rule does not list its members: whether a key belongs to it is decided at
request time from the key's owner and labels (`deciding.admits`: a set lookup and a few
label compares), and the headers it grants come from the key's metadata. That is what
makes changes cheap: a new, edited or deleted Secret touches one index entry and no
AuthConfig; an edited AuthConfig recompiles that config alone (`building.py` keeps it
up to date). Vocabulary: data only, no I/O, no YAML or pydantic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Literal

from extauth import hosts
from extauth.apikeys import ApiKey, Owner
from extauth.boolexpr import BoolExpr
from extauth.expiries import Expiries
from extauth.origins import Problem

SourceKind = Literal["header", "query", "cookie"]


@dataclass(frozen=True, slots=True)
class KeySource:
    kind: SourceKind
    name: str

    def __str__(self) -> str:
        """As the status page and `inspect` list a rule's sources: `header x-api-key`."""
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """Set `header` from the key's metadata entry `entry` (or remove it when absent)."""

    header: str
    entry: str
    required: bool


@dataclass(frozen=True, slots=True)
class Grant:
    """What one admitted key yields under one rule."""

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

    name: str | None
    optional: bool
    require_hashed: bool
    sources: tuple[KeySource, ...]
    refs: frozenset[Owner]
    selectors: tuple[tuple[tuple[str, str], ...], ...]
    # The one namespace whose Secrets the selectors may match; None: every namespace.
    selector_namespace: str | None
    header_rules: tuple[HeaderRule, ...]
    client_id_header: str | None
    # Where the credential is removed before the request goes upstream (unless forwarded).
    strip_headers: tuple[str, ...]
    strip_query: tuple[str, ...]
    strip_cookies: frozenset[str]

    @property
    def hint(self) -> str:
        """Where a client should send its key, for deny messages."""
        return " or ".join(f"the {s.name} {s.kind}" for s in self.sources)

    @property
    def injected(self) -> tuple[str, ...]:
        """Every header this rule may set: removed whenever it does not set them."""
        headers = tuple(r.header for r in self.header_rules)
        return (*headers, self.client_id_header) if self.client_id_header else headers


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    config_id: str
    rules: tuple[KeyRule, ...]
    # Over rule names; None: every rule must pass.
    expr: BoolExpr | None = None
    # One rule, no booleanExpr, no cookie to rewrite: the answer depends only on the key,
    # so its finished response can be cached per key (`responses.AllowCache`).
    simple: bool = field(init=False, compare=False)
    # For a simple config whose one key source is a header: that header, which is all a
    # request needs to find its cached response. None otherwise.
    key_header: str | None = field(init=False, compare=False)
    # The request headers its key sources read (`cookie` for a cookie source; a query
    # source reads the path, always sent): what Envoy must send it (envoy allowed_headers).
    read_headers: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        simple = len(self.rules) == 1 and self.expr is None and not self.rules[0].strip_cookies
        sources = self.rules[0].sources if simple else ()
        header = sources[0].name if len(sources) == 1 and sources[0].kind == "header" else None
        object.__setattr__(self, "simple", simple)
        object.__setattr__(self, "key_header", header)
        read = (
            s.name if s.kind == "header" else "cookie"
            for rule in self.rules
            for s in rule.sources
            if s.kind != "query"
        )
        object.__setattr__(self, "read_headers", tuple(dict.fromkeys(read)))


class KeyIndex(Mapping[bytes, ApiKey]):
    """Every admitted key by digest, as one published policy sees it, in two layers: a
    large `base`, shared by successive policies and never changed once published, and
    the `recent` changes since it was made (a digest mapped to None is gone).

    Publishing a change copies `recent`, not `base`: a revocation among a million keys
    costs what the changes since the last compaction cost, and the builder compacts
    (one copy of the whole index) only after changes amounting to a fixed fraction of
    it, so the copy's cost is spread over that many changes. `deciding` reads the two
    dicts directly; this class is the Mapping everything else reads.
    """

    __slots__ = ("_count", "base", "recent")

    def __init__(
        self,
        base: Mapping[bytes, ApiKey] | None = None,
        recent: Mapping[bytes, ApiKey | None] | None = None,
        count: int | None = None,
    ) -> None:
        self.base: Mapping[bytes, ApiKey] = {} if base is None else base
        self.recent: Mapping[bytes, ApiKey | None] = {} if recent is None else recent
        self._count = len(self.base) if count is None else count

    def __getitem__(self, key_digest: bytes) -> ApiKey:
        recent = self.recent
        if key_digest in recent:
            found = recent[key_digest]
            if found is None:
                raise KeyError(key_digest)
            return found
        return self.base[key_digest]

    def __iter__(self) -> Iterator[bytes]:
        recent = self.recent
        for key_digest in self.base:
            if key_digest not in recent:
                yield key_digest
        for key_digest, found in recent.items():
            if found is not None:
                yield key_digest

    def __len__(self) -> int:
        return self._count


class WorkingIndex(MutableMapping[bytes, ApiKey]):
    """The builder's index of admitted keys, in the same two layers as `KeyIndex`: the
    `base` it last published (shared with the policies, never changed again) and its own
    `recent` changes on top (a digest mapped to None is gone from the base).

    So a million keys are held in one dict, not two: publishing hands the policy the
    base as it is plus a copy of `recent`, and compacting merges `recent` into a new
    base (one copy, which replaces the old base once the old policies are dropped). The
    first publish of a fresh builder hands over `recent` itself, copying nothing.
    """

    __slots__ = ("base", "count", "recent")

    def __init__(self) -> None:
        self.base: dict[bytes, ApiKey] = {}
        self.recent: dict[bytes, ApiKey | None] = {}
        self.count = 0

    def get(self, key_digest: bytes, default: ApiKey | None = None) -> ApiKey | None:  # type: ignore[override]
        recent = self.recent
        if key_digest in recent:
            found = recent[key_digest]
            return default if found is None else found
        return self.base.get(key_digest, default)

    def __getitem__(self, key_digest: bytes) -> ApiKey:
        found = self.get(key_digest)
        if found is None:
            raise KeyError(key_digest)
        return found

    def __contains__(self, key_digest: object) -> bool:
        return isinstance(key_digest, bytes) and self.get(key_digest) is not None

    def __setitem__(self, key_digest: bytes, key: ApiKey) -> None:
        if self.get(key_digest) is None:
            self.count += 1
        self.recent[key_digest] = key

    def __delitem__(self, key_digest: bytes) -> None:
        if self.get(key_digest) is None:
            raise KeyError(key_digest)
        self.count -= 1
        if key_digest in self.base:
            self.recent[key_digest] = None
        else:
            del self.recent[key_digest]

    def __iter__(self) -> Iterator[bytes]:
        return iter(KeyIndex(self.base, self.recent, self.count))

    def __len__(self) -> int:
        return self.count

    def compact(self) -> None:
        """Merge `recent` into a new base. Without a base yet, `recent` (which then holds
        no None) becomes the base as it is."""
        recent = self.recent
        if not self.base:
            self.base = recent  # type: ignore[assignment]  # no None without a base
        else:
            base = self.base.copy()
            for key_digest, found in recent.items():
                if found is None:
                    del base[key_digest]
                else:
                    base[key_digest] = found
            self.base = base
        self.recent = {}


@dataclass(frozen=True)
class Policy:
    # Every admitted key by digest: the one index Check consults.
    keys: KeyIndex = field(default_factory=KeyIndex)
    configs: Mapping[str, CompiledConfig] = field(default_factory=dict)
    default_config: str | None = None
    usage_label: str | None = None
    problems: tuple[Problem, ...] = ()
    loaded: bool = False
    # Expiry times (POSIX) of the keys that have one, for the expiring-keys metrics.
    expiries: Expiries = field(default_factory=Expiries)
    holders: int = 0
    # spec.hosts of the configs in effect: which config a route without config_id gets.
    hosts: hosts.HostTable = field(default_factory=hosts.HostTable)
    # Hosts refused to an AuthConfig (another claimed them first), by the origin path of
    # the refused definition: what its Kubernetes status says.
    host_refusals: Mapping[str, str] = field(default_factory=dict)

    @property
    def key_count(self) -> int:
        """Key holders (Secrets) admitted; a holder in rotation has two digests."""
        return self.holders
