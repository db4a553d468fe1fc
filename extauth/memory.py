"""Keeping a million keys cheap for Python's cyclic garbage collector.

Keys, policies and their mappings hold no reference cycles, so reference counting frees
them the moment a key is revoked. The cyclic collector still walks every tracked object
on each full pass: at a million keys a pass takes most of a second, during which the
event loop answers no Check, and loading a million Secrets triggers dozens of passes
(a third of the load time, measured at 200,000 keys). Hence two measures:

- `collector_paused()` while a source parses a large state: no cyclic collection then
  (reference counting goes on), and the collector runs once afterwards;
- `settle()` after a large state is published: collect what is garbage now, then move
  every surviving object out of the collector's sight (`gc.freeze`). Later passes walk
  only what was made since; frozen objects still die by reference counting.

The price of freezing: a cycle that forms later among objects frozen now is never
collected. Keys, policies and mappings form none; what else is alive at that moment (the
server's own long-lived objects) is bounded and made once.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

# A published change with at least this many definitions is followed by `settle()`.
SETTLE_AFTER = 10_000

_lock = threading.Lock()
_pauses = 0
_was_enabled = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Nestable, and safe from several threads: the collector resumes when the last
    pause ends, and only if it was enabled before the first."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


def settle() -> None:
    gc.collect()
    gc.freeze()
