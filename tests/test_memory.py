"""The collector pause nests across threads and restores what it found; settle freezes;
trim gives freed C heap back."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import pytest

from extauth import memory


def test_pauses_nest_and_restore_the_collector() -> None:
    assert gc.isenabled()
    with memory.collector_paused():
        assert not gc.isenabled()
        inner_done = threading.Event()

        def other() -> None:
            with memory.collector_paused():
                assert not gc.isenabled()
            inner_done.set()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert inner_done.is_set()
        assert not gc.isenabled(), "the other thread's pause ended, this one has not"
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    try:
        with memory.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_settle_moves_survivors_out_of_the_collectors_sight() -> None:
    survivors = [[i] for i in range(1000)]
    try:
        memory.settle()
        assert gc.get_freeze_count() >= len(survivors)
    finally:
        gc.unfreeze()


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def test_trim_gives_freed_heap_back() -> None:
    """64 MB freed in the middle of the C heap (its top still in use, so free() alone
    keeps it) is resident until trimmed; where there is no malloc_trim, trim is a no-op."""
    if not memory.trim():
        pytest.skip("no malloc_trim here (not glibc)")
    # Written, so resident; each under glibc's mmap threshold, so on the heap.
    chunks = [b"\x01" * 100_000 for _ in range(640)]
    top = b"\x01" * 100_000
    del chunks
    held = _rss_bytes()
    assert memory.trim()
    assert held - _rss_bytes() >= 32 * 1024 * 1024
    del top


def test_trim_is_a_no_op_where_there_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_trim", None)
    assert memory.trim() is False
