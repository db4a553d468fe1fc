"""API keys as the service holds them: SHA-256 digests and what their Secret says.

A key's plaintext is hashed the moment its Secret is read and then dropped: from here
on the service only holds SHA-256 digests, so neither a change, a policy, a log line nor
a crash dump can reveal a key.

Each definition carries its `Origin`; `origin.path` names the definition's source (a file,
or `kubernetes:Secret/ns/name`), so the same Secret defined in two places is two
definitions, and removing one leaves the other.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NewType

from extauth.origins import Origin

API_KEY_ENTRY = "api-key"
API_KEY_HASH_ENTRY = "api-key-hash"
# Rotation: a second key, valid alongside the first, for the same identity.
NEXT_KEY_ENTRY = "api-key-next"
NEXT_KEY_HASH_ENTRY = "api-key-next-hash"
EXPIRES_AT_ENTRY = "expires-at"
# Entries that hold key material; every other entry is metadata.
KEY_ENTRIES = (API_KEY_ENTRY, API_KEY_HASH_ENTRY, NEXT_KEY_ENTRY, NEXT_KEY_HASH_ENTRY)
# HTTP's optional whitespace (RFC 9110 OWS), trimmed from header values in transit: the
# one notion of whitespace for stored keys, metadata and the request path (credentials).
OWS = " \t"
Owner = tuple[str, str]  # (namespace, name)


def digest(key: str) -> bytes:
    """The form in which keys are held and compared."""
    return hashlib.sha256(key.encode("utf-8")).digest()


_KEY_ENTRIES = frozenset(KEY_ENTRIES)
# A read-only mapping from `shared`: the type says a key's labels and metadata went through
# the table, so every path that makes keys shares them (mypy checks it).
Shared = NewType("Shared", Mapping[str, str])
# Where a definition's origin path says it came from a Kubernetes API server.
KUBERNETES_PREFIX = "kubernetes:"


class FrozenMap(dict[str, str]):
    """A dict no one changes after it is made: what `shared` hands out.

    A dict subclass rather than a MappingProxyType, because the table of shared mappings
    holds them weakly: a mapping lives exactly as long as a key uses it.
    """

    __slots__ = ("__weakref__",)

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a shared mapping is read-only")

    __setitem__ = __delitem__ = update = setdefault = clear = _refuse  # type: ignore[assignment]
    pop = popitem = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[tuple[tuple[str, str], ...]]]:
        return (FrozenMap, (tuple(self.items()),))


_shared: weakref.WeakValueDictionary[tuple[tuple[str, str], ...], FrozenMap] = (
    weakref.WeakValueDictionary()
)


def shared(mapping: Mapping[str, str]) -> Shared:
    """A read-only copy of `mapping`, the same object for every equal mapping.

    A million keys typically carry a handful of distinct label sets and metadata (team,
    org): sharing them saves ~500 bytes per key. The table holds its mappings weakly: one
    is released with the last key that uses it, so edits, deletions and a tenant's stream
    of distinct metadata leave nothing behind.
    """
    return shared_items(tuple(mapping.items()))


def shared_items(items: tuple[tuple[str, str], ...]) -> Shared:
    """`shared` for a mapping given as its items."""
    found = _shared.get(items)
    if found is None:
        found = FrozenMap(items)
        _shared[items] = found
    return Shared(found)


# eq=False: a group is one object that keys share, compared by identity (`key_group`
# finds the equal one); a weak reference slot, as the table of groups holds them weakly.
@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True, repr=False)
class KeyGroup:
    """What the keys of one group have in common: namespace, labels, metadata, whether
    they were stored hashed, and whether their origin path ends with their name.

    A million keys typically carry a handful of distinct label sets and metadata (team,
    org) in a few namespaces: holding those fields once per group rather than once per
    key is 40 bytes a key. Made by `key_group` only, which shares equal groups, and
    never changed once made.

    `named`: each key's `source` is its origin path less its name (a Kubernetes Secret's
    `kubernetes:Secret/ns/name` is `kubernetes:Secret/ns/` + name), so the keys of a
    namespace share one source string instead of a path string each.
    """

    namespace: str
    labels: Shared
    metadata: Shared
    hashed: bool
    named: bool

    def __repr__(self) -> str:
        return f"KeyGroup({self.namespace}, hashed={self.hashed}, named={self.named})"


# Groups by (namespace, labels, metadata, hashed, named), the mappings by identity (they
# are shared, and a group holds its own, so an id in a live entry is theirs), held
# weakly like the mappings: a group lives exactly as long as a key uses it. A plain dict
# of weak references rather than a WeakValueDictionary, whose get() is a Python call:
# this runs once per key made.
_GroupKey = tuple[str, int, int, bool, bool]
_groups: dict[_GroupKey, weakref.ref[KeyGroup]] = {}
# And bounded: groups come from what tenants write (a million distinct label sets make a
# million groups), so past this many live groups a new one is made without an entry
# (~200 bytes each). Sharing then degrades to a group per key (80 bytes, what a key's
# fields cost before groups), never to a table that grows with the keys; groups made
# apart are equal in every field, which is all that anything compares.
GROUP_LIMIT = 4096


def key_group(
    namespace: str, labels: Shared, metadata: Shared, hashed: bool, named: bool
) -> KeyGroup:
    """The group of keys with these fields, shared while there is room (`GROUP_LIMIT`)."""
    cache_key = (namespace, id(labels), id(metadata), hashed, named)
    ref = _groups.get(cache_key)
    found = ref() if ref is not None else None
    if found is None:
        found = KeyGroup(sys.intern(namespace), labels, metadata, hashed, named)
        if len(_groups) < GROUP_LIMIT:
            _groups[cache_key] = weakref.ref(found, functools.partial(_forget, cache_key))
    return found


def _forget(cache_key: _GroupKey, ref: weakref.ref[KeyGroup]) -> None:
    """A group's last key is gone: its entry goes (unless a new group took it over)."""
    if _groups.get(cache_key) is ref:
        _groups.pop(cache_key, None)  # never raises, whatever another thread did meanwhile


class ApiKey:
    """One key holder (a Secret): its key digest, its name, and its group (what it
    shares with other keys: namespace, labels, metadata, `hashed`), and where it was read.

    `digests` holds the key and, during a rotation (`api-key-next`), the next key; both
    identify the same holder. `hashed` is true when the Secret stored only hashes
    (`api-key-hash`), so a leaked Secret does not leak a usable key.

    Compared by identity: a redefinition is a new object, and policies and caches can
    tell "the same definition" from "an equal one" in O(1). Never changed once made
    (mypy: Final). Lean because there are a million of them: six slots, 80 bytes (a
    named tuple of every field was 136); a key in rotation or with an expiry is a
    `_KeyWithExtras`, two slots more, and every other key reads those two as None from
    the class. The Check path reads `group` once and its fields from it (`deciding`);
    the properties below are for everything else.
    """

    __slots__ = ("digest", "document", "group", "line", "name", "source")

    # During a rotation (`api-key-next`), and from `expires-at`: None here, set on
    # `_KeyWithExtras` (slots of the subclass, which take precedence over these).
    next_digest: bytes | None = None
    expires_at: float | None = None

    def __init__(
        self,
        group: KeyGroup,
        name: str,
        key_digest: bytes,
        source: str,
        line: int,
        document: int,
    ) -> None:
        self.group: Final = group
        self.name: Final = name
        self.digest: Final = key_digest
        # The origin path, less the name when the group is `named` (see `path`).
        self.source: Final = source
        # Line and document of the file (`line` 0 for a Kubernetes object, whose
        # `document` is its rank: see `building.rank`).
        self.line: Final = line
        self.document: Final = document

    @property
    def namespace(self) -> str:
        return self.group.namespace

    @property
    def labels(self) -> Mapping[str, str]:
        return self.group.labels

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.group.metadata

    @property
    def hashed(self) -> bool:
        return self.group.hashed

    @property
    def path(self) -> str:
        return self.source + self.name if self.group.named else self.source

    @property
    def owner(self) -> Owner:
        return (self.group.namespace, self.name)

    @property
    def digests(self) -> tuple[bytes, ...]:
        if self.next_digest is None:
            return (self.digest,)
        return (self.digest, self.next_digest)

    @property
    def origin(self) -> Origin:
        return Origin(self.path, self.line, self.document)

    @property
    def fields(self) -> tuple[object, ...]:
        """Every field, in the order `api_key` takes them (tests compare keys by it)."""
        return (
            self.namespace,
            self.name,
            self.labels,
            self.digest,
            self.next_digest,
            self.metadata,
            self.path,
            self.line,
            self.document,
            self.hashed,
            self.expires_at,
        )

    @classmethod
    def from_entries(
        cls,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        entries: Mapping[str, str],
        origin: Origin,
    ) -> ApiKey:
        """From a Secret's validated, decoded entries (see `resources.check_entries`).

        Called once per Secret read, a million times for a million keys: kept lean.
        """
        get = entries.get
        hashed = True
        digests: list[bytes] = []
        for plain, stored_hash in (
            (API_KEY_ENTRY, API_KEY_HASH_ENTRY),
            (NEXT_KEY_ENTRY, NEXT_KEY_HASH_ENTRY),
        ):
            value = get(plain)
            if value is not None:
                found = digest(value)
                hashed = False
            else:
                value = get(stored_hash)
                if value is None:
                    continue
                found = bytes.fromhex(value.removeprefix("sha256:"))
            if found not in digests:
                digests.append(found)
        expiry = get(EXPIRES_AT_ENTRY)
        path, line, document = origin
        return api_key(
            namespace,
            name,
            shared(labels),
            digests[0],
            digests[1] if len(digests) > 1 else None,
            shared({k: v for k, v in entries.items() if k not in _KEY_ENTRIES}),
            path,
            line,
            document,
            hashed,
            parse_expiry(expiry) if expiry else None,
        )

    def __repr__(self) -> str:
        # The digest is not secret, but nothing about a key needs to be in a log.
        return f"ApiKey({self.namespace}/{self.name} from {self.origin})"


class _KeyWithExtras(ApiKey):
    """A key in rotation or with an expiry: the two fields most keys do without (set by
    `api_key` once made, as `ApiKey.__init__` leaves them)."""

    __slots__ = ("expires_at", "next_digest")


# One int object per line and document number below this, shared by every key that has
# it: a key's line and document numbers are ints of 32 bytes each once past 256 (which
# Python caches), 64 bytes per key at a million keys; the table costs ~2.5 MB once.
_SMALL_INTS = tuple(range(1 << 16))
_SMALL_LIMIT = len(_SMALL_INTS)


def api_key(
    namespace: str,
    name: str,
    labels: Shared,
    key_digest: bytes,
    next_digest: bytes | None,
    metadata: Shared,
    path: str,
    line: int,
    document: int,
    hashed: bool,
    expires_at: float | None,
) -> ApiKey:
    """The one place an ApiKey is made, whichever path read it (the general loader, the
    fast path, the bulk reader's rows, a Kubernetes object), so that a new field is a
    change here that mypy carries to every caller. What keys share goes to their group
    (`key_group`); the rest is the key's own.
    """
    # A path ending with "/" + name (a Kubernetes object's): one string per namespace.
    named = path.endswith(name) and path[-len(name) - 1 : -len(name)] == "/"
    if named:
        path = sys.intern(path[: -len(name)])
    # `key_group`, inlined: this runs once per key made.
    ref = _groups.get((namespace, id(labels), id(metadata), hashed, named))
    group = ref() if ref is not None else None
    if group is None:
        group = key_group(namespace, labels, metadata, hashed, named)
    if 0 <= line < _SMALL_LIMIT:
        line = _SMALL_INTS[line]
    if 0 <= document < _SMALL_LIMIT:
        document = _SMALL_INTS[document]
    if next_digest is None and expires_at is None:
        return ApiKey(group, name, key_digest, path, line, document)
    key = _KeyWithExtras(group, name, key_digest, path, line, document)
    key.next_digest = next_digest
    key.expires_at = expires_at
    return key


# RFC 3339 section 5.6, date-time: full-date "T" full-time, with `T` and `Z` in either
# case (section 5.6's note), seconds required, an optional fraction, and `Z` or a
# numeric offset. Nothing ISO 8601 adds (week dates, basic format, missing seconds).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)
_EXPIRY_FORM = (
    f"entry '{EXPIRES_AT_ENTRY}' is not an RFC 3339 time "
    "(e.g. 2027-01-31T00:00:00Z or 2027-01-31T02:00:00+02:00)"
)


def parse_expiry(value: str) -> float:
    """`expires-at` (RFC 3339, with `Z` or an offset) as a POSIX timestamp.

    Strict on purpose: Python's fromisoformat reads ISO 8601 forms that RFC 3339 does
    not have (`2027-W05-1T00:00Z`, `20270131T000000Z`) and Kubernetes tools would not
    write. A leap second (`:60`) is the second after `:59`.
    """
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(_EXPIRY_FORM)
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10, 11)
    if zulu is None and sign is None:
        raise ValueError(f"entry '{EXPIRES_AT_ENTRY}' needs a timezone (e.g. Z or +02:00)")
    offset = 0
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError(_EXPIRY_FORM)
        offset = (int(offset_hours) * 60 + int(offset_minutes)) * 60
        offset = -offset if sign == "-" else offset
    if second > 60:
        raise ValueError(_EXPIRY_FORM)
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        raise ValueError(_EXPIRY_FORM) from None
    extra = (1 if second == 60 else 0) + (float(fraction) if fraction else 0.0)
    return moment.timestamp() + extra - offset
