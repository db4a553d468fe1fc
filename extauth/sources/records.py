"""What a watcher's translator remembers of each object it has seen, kept small.

A translator must know every object by identity (uid) and version (resourceVersion) to
apply a relist as a difference and to tell an object recreated under its name from an
edit. At 100,000 Secrets every byte of that record is 100 KB, and the obvious record (an
owner tuple, the uid and resourceVersion strings, a dataclass) cost ~370 bytes a Secret,
more than the key itself. So:

- records live in one dict per namespace, keyed by the name string the key's `ApiKey`
  already holds (no owner tuple, no second copy of the name), namespaces interned;
- a resourceVersion is kept as an int when it is one written canonically (etcd's are),
  and as the string otherwise: it is only ever compared for equality, never ordered;
- a Secret's identity is the rank integer its `ApiKey` already carries (creationTimestamp
  and uid, see `kubernetes.kubernetes_rank`), shared rather than stored again, when its uid
  is a canonical UUID (every API server's); any other uid is kept as it is;
- which list last saw an object is a stamp (the list attempt's number, one int object
  shared by every record), so a relist needs no second set of what it saw: the objects
  whose stamp the list did not renew are the ones it no longer holds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from extauth.apikeys import Owner
from extauth.changes import Definition

Version = int | str
Identity = int | str

_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")


def version_of(resource_version: str) -> Version:
    """A resourceVersion as compactly as it compares equal: equal strings, equal results."""
    if (
        resource_version
        and len(resource_version) <= 18
        and _DIGITS.issuperset(resource_version)
        and (resource_version[0] != "0" or resource_version == "0")
    ):
        return int(resource_version)
    return resource_version


def uuid_number(uid: str) -> int | None:
    """The uid as a 128-bit number if it is a canonical (lower-case, dashed) UUID: then the
    number names the uid exactly. None for anything else (no real API server sends that)."""
    if len(uid) != 36 or uid[8] != "-" or uid[13] != "-" or uid[18] != "-" or uid[23] != "-":
        return None
    digits = uid.replace("-", "")
    if len(digits) != 32 or not _HEX.issuperset(digits):
        return None
    return int(digits, 16)


class Record:
    """One object as last seen: its version, the list that last saw it, its identity, and
    its definition in effect (None: never had a good version)."""

    __slots__ = ("definition", "ident", "stamp", "version")

    def __init__(
        self, version: Version, stamp: int, ident: Identity, definition: Definition | None
    ) -> None:
        self.version = version
        self.stamp = stamp
        self.ident = ident
        self.definition = definition


class Kept(Record):
    """A Secret whose latest version was rejected: `definition` is an earlier one (the
    type is the mark, so a Secret pays nothing for it)."""

    __slots__ = ()


class Stub(Record):
    """A Secret no AuthConfig selects: what it takes to notice that one starts to (its
    labels, shared with every equal set), and no key material. `definition` is None."""

    __slots__ = ("labels",)

    def __init__(
        self, version: Version, stamp: int, ident: Identity, labels: Mapping[str, str]
    ) -> None:
        super().__init__(version, stamp, ident, None)
        self.labels = labels


class ConfigRecord(Record):
    """An AuthConfig also remembers its generation and why its latest version was
    rejected: both decide its status. (AuthConfigs are few; Secrets do without.)"""

    __slots__ = ("generation", "problem")

    def __init__(
        self,
        version: Version,
        stamp: int,
        ident: Identity,
        definition: Definition | None,
        generation: int | None,
        problem: str | None,
    ) -> None:
        super().__init__(version, stamp, ident, definition)
        self.generation = generation
        self.problem = problem


R = TypeVar("R", bound=Record)


class Records(Generic[R]):
    """Records by namespace, then name."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, R]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, owner: object) -> bool:
        return isinstance(owner, tuple) and self.get(owner) is not None

    def get(self, owner: Owner) -> R | None:
        names = self._by_namespace.get(owner[0])
        return names.get(owner[1]) if names is not None else None

    def put(self, owner: Owner, record: R) -> None:
        names = self._by_namespace.get(owner[0])
        if names is None:
            names = self._by_namespace[sys.intern(owner[0])] = {}
        # Replaced rather than overwritten: the key becomes this version's name string,
        # the one its definition holds, and the previous one is released with it.
        if names.pop(owner[1], None) is None:
            self._count += 1
        names[owner[1]] = record

    def pop(self, owner: Owner) -> R | None:
        names = self._by_namespace.get(owner[0])
        if names is None:
            return None
        record = names.pop(owner[1], None)
        if record is not None:
            self._count -= 1
            if not names:
                del self._by_namespace[owner[0]]
        return record

    def items(self) -> Iterator[tuple[Owner, R]]:
        for namespace, names in self._by_namespace.items():
            for name, record in names.items():
                yield (namespace, name), record

    def names(self) -> list[tuple[str, list[str]]]:
        """Every owner now, as namespaces and their names: a copy to walk while the
        records change (names, not owner tuples: at 100,000 Secrets a tuple each is
        megabytes)."""
        return [(namespace, list(names)) for namespace, names in self._by_namespace.items()]

    def values(self) -> Iterator[R]:
        for names in self._by_namespace.values():
            yield from names.values()

    def sweep(self, stamp: int) -> list[tuple[Owner, R]]:
        """Remove and return, in owner order, every record whose stamp is not `stamp`:
        what the list that stamped them no longer holds."""
        gone = sorted(
            ((owner, record) for owner, record in self.items() if record.stamp != stamp),
            key=lambda found: found[0],
        )
        for owner, _ in gone:
            self.pop(owner)
        return gone
