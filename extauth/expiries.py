"""The expiry times of the keys that have one, as each published policy holds them.

Publishing must cost the change, not the keys: a tuple of every expiry rebuilt per batch
scaled with the keys that expire. A policy holds instead a sorted base, shared by the
policies published since it was made, and the few times added and removed since (a
multiset difference). The builder folds those into a new base once they outgrow the
square root of the base, so a publish copies at most that many times and the fold's
cost, linear in C, is spread over as many changes. Counting the times in a window
(the expiring-keys metrics, at scrape time) is a few binary searches.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

# Changes kept beside a base before they are folded into it, at the least.
MIN_PENDING = 64


def _count(times: Sequence[float], low: float, high: float) -> int:
    return bisect_right(times, high) - bisect_right(times, low)


def _without(times: list[float], removed: list[float]) -> list[float]:
    """`times` less one occurrence of each of `removed` (both sorted; each of `removed`
    is in `times`): slices copied in C, a binary search per removal."""
    parts: list[list[float]] = []
    start = 0
    for time in removed:
        found = bisect_left(times, time, start)
        parts.append(times[start:found])
        start = found + 1
    parts.append(times[start:])
    return list(chain.from_iterable(parts))


@dataclass(frozen=True, slots=True)
class Expiries:
    """POSIX expiry times: `base` plus `added` less `removed`, each sorted."""

    base: tuple[float, ...] = ()
    added: tuple[float, ...] = ()
    removed: tuple[float, ...] = ()

    @classmethod
    def of(cls, times: Iterable[float]) -> Expiries:
        return cls(tuple(sorted(times)))

    def count(self, low: float, high: float) -> int:
        """How many times fall in (low, high]."""
        return (
            _count(self.base, low, high)
            + _count(self.added, low, high)
            - _count(self.removed, low, high)
        )

    def __len__(self) -> int:
        return len(self.base) + len(self.added) - len(self.removed)


class ExpiryLog:
    """The builder's side: times added and removed as Secrets change, published as
    `Expiries` that share the base."""

    def __init__(self) -> None:
        self._base: tuple[float, ...] = ()
        self._added: list[float] = []
        self._removed: list[float] = []

    def add(self, time: float) -> None:
        self._added.append(time)

    def remove(self, time: float) -> None:
        """Forget one occurrence of `time` (one that was added)."""
        self._removed.append(time)

    def publish(self) -> Expiries:
        added, removed = sorted(self._added), sorted(self._removed)
        if len(added) + len(removed) <= max(MIN_PENDING, math.isqrt(len(self._base))):
            return Expiries(self._base, tuple(added), tuple(removed))
        # Both runs already sorted: the sort merges them in linear time.
        merged = sorted(chain(self._base, added))
        self._base = tuple(_without(merged, removed) if removed else merged)
        self._added.clear()
        self._removed.clear()
        return Expiries(self._base)
