"""CPU per stage of a cycle (``engine/stages.py``): each stage gets the CPU of the thread
that ran it, and a cycle's share is the difference of two readings."""

from __future__ import annotations

import threading
import time

from cloudvac.engine.stages import StageTimes, Stopwatch


def burn(seconds: float) -> int:
    """Spend about ``seconds`` of this thread's CPU."""
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


def test_each_stage_gets_the_cpu_of_its_own_thread() -> None:
    watch = Stopwatch()
    with watch.stage("plan"):
        burn(0.02)
    worker = threading.Thread(target=watch.call, args=("store_read", burn, 0.03))
    worker.start()
    time.sleep(0.01)  # this thread waits: its waiting is nobody's CPU
    worker.join()
    times = watch.times()
    assert times.plan >= 0.02 and times.store_read >= 0.03
    assert times.listing == times.reconcile == times.store_write == 0.0


def test_a_cycle_is_the_difference_of_two_readings() -> None:
    watch = Stopwatch()
    watch.call("store_write", burn, 0.01)
    begun = watch.times()
    assert watch.call("store_write", burn, 0.02) > 0
    share = watch.times().since(begun)
    assert 0.02 <= share.store_write < watch.times().store_write
    assert share == StageTimes(store_write=share.store_write)


def test_writes_from_several_threads_add_up() -> None:
    watch = Stopwatch()
    threads = [threading.Thread(target=watch.call, args=("store_write", burn, 0.005))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert watch.times().store_write >= 8 * 0.005
