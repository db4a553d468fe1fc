"""Expiry times published per policy: counts as a plain list would give, a base shared."""

from __future__ import annotations

import random
from collections import Counter

from extauth.expiries import MIN_PENDING, Expiries, ExpiryLog


def _windows(times: Counter[float]) -> list[tuple[float, float, int]]:
    edges = [-float("inf"), 0.0, 10.0, 50.0, 99.0, float("inf")]
    return [
        (low, high, sum(n for t, n in times.items() if low < t <= high))
        for low in edges
        for high in edges
        if low <= high
    ]


def test_counts_follow_every_add_and_remove_across_folds() -> None:
    rng = random.Random(13)  # noqa: S311 (times, not secrets)
    log = ExpiryLog()
    present: Counter[float] = Counter()
    for step in range(3000):
        if present and rng.random() < 0.45:
            time = rng.choice(list(present.elements()))
            present[time] -= 1
            present += Counter()  # drop zero counts
            log.remove(time)
        else:
            time = float(rng.randrange(100))  # repeated times: a multiset
            present[time] += 1
            log.add(time)
        if step % 7 == 0:
            published = log.publish()
            assert len(published) == sum(present.values())
            for low, high, expected in _windows(present):
                assert published.count(low, high) == expected


def test_a_small_change_shares_the_base() -> None:
    log = ExpiryLog()
    for i in range(10_000):
        log.add(float(i))
    first = log.publish()
    assert len(first.base) == 10_000  # folded: too much pending
    assert not first.added
    log.remove(5.0)
    log.add(20_000.0)
    second = log.publish()
    assert second.base is first.base  # not copied: the publish cost the change
    assert second.added == (20_000.0,)
    assert second.removed == (5.0,)
    assert second.count(0.0, 10.0) == 9
    assert len(second) == 10_000
    assert first.count(0.0, 10.0) == 10  # the earlier policy still sees its own times
    for i in range(MIN_PENDING + 100):
        log.add(30_000.0 + i)
    assert not log.publish().added  # folded again once it outgrew its bound


def test_of_counts_a_plain_collection() -> None:
    expiries = Expiries.of([3.0, 1.0, 2.0, 2.0])
    assert len(expiries) == 4
    assert expiries.count(1.0, 2.0) == 2
    assert len(Expiries()) == 0
