"""The collector pause nests across threads and restores what it found; settle freezes."""

from __future__ import annotations

import gc
import threading

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
