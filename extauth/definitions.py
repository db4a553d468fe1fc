"""One rule for every kind: of the definitions that claim a slot, the first by rank is in
effect; the others wait, and when it goes the next in rank takes over.

The policy builder uses it three times: AuthConfigs and Secrets by owner (the same
namespace/name defined in two places), and keys by digest (the same key in two Secrets).
The winner depends only on what is defined, never on the order it arrived in.

Like kopf's indexes, nothing is searched to remove a definition: a slot is found from
what is removed (a `Removal` names its owner; a key knows its digests), and a slot's
candidates are the one in effect plus the rare others. The one in effect is kept in a
plain dict (`first`), one entry per slot and no list, so a million Secrets or digests
cost one dict entry each; `first` is also what a lookup reads.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Ranked(Generic[K, V]):
    """Per slot, its candidates by rank: `first` in effect, `others` waiting."""

    __slots__ = ("_rank", "first", "others")

    def __init__(self, rank: Callable[[V], Any], first: MutableMapping[K, V] | None = None) -> None:
        """`first`: the mapping to keep the ones in effect in (a plain dict if None)."""
        self._rank = rank
        self.first: MutableMapping[K, V] = {} if first is None else first
        # Only slots with more than one candidate: the rest, by rank.
        self.others: dict[K, list[V]] = {}

    def candidates(self, slot: K) -> list[V]:
        """The slot's candidates, the one in effect first."""
        first = self.first.get(slot)
        if first is None:
            return []
        others = self.others.get(slot)
        return [first, *others] if others else [first]

    def put(self, slot: K, value: V, replacing: V | None = None) -> V | None:
        """Make `value` a candidate for `slot`, in place of `replacing` (one of its
        candidates, compared by identity) when given. Returns the candidate in effect
        before; `first[slot]` is the one in effect now."""
        before = self.first.get(slot)
        if before is None:
            self.first[slot] = value
            return None
        candidates = [c for c in self.candidates(slot) if c is not replacing]
        candidates.append(value)
        candidates.sort(key=self._rank)
        self._store(slot, candidates)
        return before

    def discard(self, slot: K, gone: Callable[[V], bool]) -> tuple[V | None, list[V]]:
        """Remove the candidates of `slot` that `gone` picks. Returns the candidate in
        effect before, and those removed."""
        before = self.first.get(slot)
        if before is None:
            return None, []
        candidates = self.candidates(slot)
        removed = [c for c in candidates if gone(c)]
        if removed:
            self._store(slot, [c for c in candidates if not gone(c)])
        return before, removed

    def _store(self, slot: K, candidates: list[V]) -> None:
        if not candidates:
            del self.first[slot]
            self.others.pop(slot, None)
            return
        self.first[slot] = candidates[0]
        if len(candidates) > 1:
            self.others[slot] = candidates[1:]
        else:
            self.others.pop(slot, None)


class ByOwner(Generic[V]):
    """`Ranked` tables per namespace, by name: an owner's slot without an owner tuple
    per definition (64 bytes each, at a million Secrets)."""

    __slots__ = ("_rank", "namespaces")

    def __init__(self, rank: Callable[[V], Any]) -> None:
        self._rank = rank
        self.namespaces: dict[str, Ranked[str, V]] = {}

    def table(self, namespace: str) -> Ranked[str, V]:
        found = self.namespaces.get(namespace)
        if found is None:
            found = self.namespaces[namespace] = Ranked(self._rank)
        return found

    def get(self, namespace: str, name: str) -> V | None:
        """The definition in effect for namespace/name."""
        found = self.namespaces.get(namespace)
        return found.first.get(name) if found is not None else None

    def tidy(self, namespace: str) -> None:
        """Forget the namespace's table once nothing in it is defined."""
        found = self.namespaces.get(namespace)
        if found is not None and not found.first:
            del self.namespaces[namespace]

    def values(self) -> Iterator[V]:
        """Every definition in effect."""
        for table in self.namespaces.values():
            yield from table.first.values()
