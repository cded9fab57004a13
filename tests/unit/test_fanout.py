"""One bounded executor per tick: nested fan-outs finish with every thread busy, and never exceed their bound."""

from __future__ import annotations

import threading
import time

import pytest

from prefect_backlog.fanout import Fanout


def test_nested_maps_finish_when_every_thread_waits_on_work_queued_behind_it() -> None:
    # 2 threads, 3 levels of 3: with a plain shared executor each waiting level holds a thread and the
    # queued leaves never start. The waiting callers run what no thread has started.
    fanout = Fanout(max_workers=2)

    def level(depth: int) -> int:
        if depth == 0:
            time.sleep(0.001)
            return 1
        return sum(fanout.map(level, [depth - 1] * 3))

    done = threading.Event()
    result: list[int] = []
    threading.Thread(target=lambda: (result.append(level(3)), done.set()), daemon=True).start()
    finished = done.wait(timeout=20)
    if finished:
        fanout.close()
    assert finished, "nested fan-out deadlocked"  # (its threads are left behind: daemons, stuck)
    assert result == [27]


def test_threads_stay_within_the_bound_however_work_nests() -> None:
    names: set[str] = set()
    lock = threading.Lock()
    with Fanout(max_workers=3, name="bounded") as fanout:
        def leaf(_: int) -> None:
            with lock:
                names.add(threading.current_thread().name)
            time.sleep(0.002)

        fanout.map(lambda _: fanout.map(leaf, range(10)), range(6))
    workers = {n for n in names if n.startswith("bounded")}
    assert 1 <= len(workers) <= 3
    assert names - workers <= {threading.current_thread().name}  # the rest ran in the caller


def test_an_error_is_raised_in_order_and_unstarted_work_is_dropped() -> None:
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        if item == 1:
            raise ValueError("item 1 failed")
        time.sleep(0.01)
        return item

    with Fanout(max_workers=1) as fanout, pytest.raises(ValueError, match="item 1 failed"):
        fanout.map(work, range(50))
    assert len(started) < 50


def test_submitted_work_runs_in_the_caller_when_no_thread_is_free() -> None:
    with Fanout(max_workers=1) as fanout:
        release = threading.Event()
        blocker = fanout.submit(release.wait)  # the only thread waits
        task = fanout.submit(threading.current_thread)
        assert task.result() is threading.current_thread()  # not started: run here
        release.set()
        assert blocker.result() is True
