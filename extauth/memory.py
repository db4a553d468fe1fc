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

- `trim()` after a large state is read (settle, and a Kubernetes list or relist): glibc
  keeps the heap pages the decoded list pages were freed from, as its own, until asked
  to give them back (`malloc_trim`); Python's allocator has no say there.

The price of freezing: a cycle that forms later among objects frozen now is never
collected. Keys, policies and mappings form none; what else is alive at that moment (the
server's own long-lived objects) is bounded and made once.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import threading
from collections.abc import Callable, Iterator

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
    trim()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where there is none (musl, macOS)."""
    try:
        found = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    found.argtypes, found.restype = [ctypes.c_size_t], ctypes.c_int
    trim: Callable[[int], int] = found
    return trim


_trim = _malloc_trim()


def trim() -> bool:
    """Give the C heap's free pages back to the system; False where it cannot be done
    (then a no-op). At 100,000 Kubernetes Secrets it lowers the steady RSS after the
    initial list by 9 MB (BENCHMARKS.md); the GIL is released meanwhile."""
    if _trim is None:
        return False
    _trim(0)
    return True
