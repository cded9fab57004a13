"""The run reader against the fake API: paging vs counting, deep backlogs, the depth memory, failures per pool."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from prefect_backlog.backlog import QueueCounts
from prefect_backlog.prefect_api import PAGE_SIZE, DepthMemory, PrefectError, ResolvedQueue
from tests.support.clients import client, queue, resolved
from tests.support.fake_prefect import NOW, FakePrefect


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-a", "gpu")


def test_counts_from_one_page_per_pool_and_stream(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", 3, "SCHEDULED", "Late", minutes_ago=7)
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Scheduled", minutes_ago=1)
    prefect.add_runs("pool-a", "default", 4, "SCHEDULED", "Scheduled", minutes_ago=-30)  # future
    prefect.add_runs("pool-a", "gpu", 1, "PENDING")
    prefect.add_runs("pool-b", "default", 2, "RUNNING")
    c = client()
    queues = resolved(c, queue(0, "default", "pool-a"), queue(1, "gpu", "pool-a"), queue(2, "default", "pool-b"))
    counts = c.read_counts(queues, NOW, 900)
    a, gpu, b = (counts[q.id] for q in queues)
    assert a == QueueCounts(late=3, due=5, pending=0, running=0, oldest_late_at=a.oldest_late_at)  # type: ignore[union-attr]
    assert (NOW - a.oldest_late_at).total_seconds() == 7 * 60  # type: ignore[union-attr,operator]
    assert gpu == QueueCounts(pending=1)
    assert b == QueueCounts(running=2)
    assert prefect.requests_to("/flow_runs/filter") == 4  # 2 pools x (due, in flight)
    assert prefect.requests_to("/flow_runs/count") == 0


def test_many_queues_cost_requests_per_pool_not_per_queue(prefect: FakePrefect) -> None:
    configs = []
    for i in range(60):
        prefect.queue("pool-a", f"q{i}")
        prefect.add_runs("pool-a", f"q{i}", 2, "SCHEDULED", "Late")
        configs.append(queue(i, f"q{i}", "pool-a"))
    c = client()
    queues = resolved(c, *configs)
    counts = c.read_counts(queues, NOW, 900)
    assert all(isinstance(v, QueueCounts) and v.late == 2 for v in counts.values())
    assert c.requests_sent <= 2 + 4  # resolution + (count + one more page) for due, one page in flight


def test_a_deep_backlog_on_few_queues_is_counted_not_paged(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", PAGE_SIZE * 6, "SCHEDULED", "Late", minutes_ago=4)
    c = client()
    (q,) = resolved(c, queue(0, "default", "pool-a"))
    counts = c.read_counts([q], NOW, 900)[q.id]
    assert isinstance(counts, QueueCounts) and (counts.late, counts.due) == (1200, 1200)
    assert prefect.requests_to("/flow_runs/filter") == 1 + 1 + 1  # due page, oldest Late, in-flight page
    # due total; then its Late and waiting slices, whose totals are the one queue's counts
    assert prefect.requests_to("/flow_runs/count") == 1 + 2


def two_deep_late_queues(prefect: FakePrefect) -> list[ResolvedQueue]:
    """Queues d0 and d1 of pool-a, 600 Late runs each (interleaved in time): too deep to page."""
    prefect.queue("pool-a", "d0")
    prefect.queue("pool-a", "d1")
    for minute in range(PAGE_SIZE * 6):
        prefect.add_runs("pool-a", f"d{minute % 2}", 1, "SCHEDULED", "Late", minutes_ago=minute + 1)
    return resolved(client(), queue(0, "d0", "pool-a"), queue(1, "d1", "pool-a"))


def test_a_stream_too_deep_to_page_at_the_last_read_is_read_narrower_at_once(prefect: FakePrefect) -> None:
    queues = two_deep_late_queues(prefect)
    memory = DepthMemory()

    def read() -> tuple[dict[str, QueueCounts | PrefectError], int, int]:
        prefect.calls.clear()
        counts = client(depth_memory=memory).read_counts(queues, NOW, 900)
        return counts, prefect.requests_to("/flow_runs/filter"), prefect.requests_to("/flow_runs/count")

    cold, cold_lists, cold_counts = read()
    assert memory.is_deep("pool-a", "due+0s")  # the due stream without a pre-warm window
    # due page (full), due total, then the Late slice (total, 2 queue counts) and the waiting one (total: 0);
    # the shared oldest-Late list, the in-flight page
    assert (cold_lists, cold_counts) == (1 + 1 + 1, 1 + 3 + 1)
    warm, warm_lists, warm_counts = read()
    assert warm == cold and all(getattr(c, "late", None) == 600 for c in warm.values())
    assert (warm_lists, warm_counts) == (1 + 1, 2 + 1)  # no due page, no due or Late totals

    prefect.runs.clear()  # drained: this read learns it, the next one pages again
    drained, _, _ = read()
    assert set(drained.values()) == {QueueCounts()}
    assert not memory.is_deep("pool-a", "due+0s")
    assert read()[1:] == (2, 0)  # a due page and an in-flight page


def test_count_mode_reads_the_oldest_late_run_of_many_queues_in_one_list(prefect: FakePrefect) -> None:
    configs = [queue(i, f"d{i}", "pool-a") for i in range(4)]
    for i in range(4):
        prefect.queue("pool-a", f"d{i}")
    # d0-d2 get their Late runs interleaved in time, d3 has none; the overdue Scheduled runs are due too
    for minute in range(1, 301):
        prefect.add_runs("pool-a", f"d{minute % 3}", 1, "SCHEDULED", "Late", minutes_ago=minute)
    prefect.add_runs("pool-a", "d3", 2, "SCHEDULED", "Scheduled", minutes_ago=3)
    # waiting to retry (no labels: as on 2.x, an agent's): read in flight, never due
    prefect.add_runs("pool-a", "d0", 1, "SCHEDULED", "AwaitingRetry", minutes_ago=1)
    prefect.add_runs("pool-a", "d0", 500, "SCHEDULED", "Late", minutes_ago=0.5)
    c = client()
    queues = resolved(c, *configs)

    def read() -> tuple[list[QueueCounts], list[tuple[int, int]]]:
        prefect.calls.clear()
        counts = c.read_counts(queues, NOW, 900)
        lists = [(len(body["work_pool_queues"]["id"]["any_"]), body["limit"]) for path, body in prefect.calls
                 if path == "/flow_runs/filter" and body.get("limit", 0) < PAGE_SIZE]
        assert all(isinstance(counts[q.id], QueueCounts) for q in queues)
        return [counts[q.id] for q in queues], lists  # type: ignore[misc]

    (d0, d1, d2, d3), lists = read()
    assert (d0.late, d0.due, d1.late, d1.due, d3.late, d3.due) == (600, 600, 100, 100, 0, 2)
    assert (d0.retrying, d1.retrying) == (1, 0)
    assert [minutes_late(d) for d in (d0, d1, d2)] == [300, 298, 299]
    assert d3.oldest_late_at is None
    assert lists == [(4, 16)]  # one shared list of the oldest Late runs answers for every queue

    prefect.add_runs("pool-a", "d0", 20, "SCHEDULED", "Late", minutes_ago=900)  # d0 now fills the shared list
    (d0, d1, d2, d3), lists = read()
    assert [minutes_late(d) for d in (d0, d1, d2)] == [900, 298, 299]
    assert lists == [(4, 16), (1, 1), (1, 1)]  # d1 and d2 asked one by one; d3 has no Late run to look for


def minutes_late(counts: QueueCounts) -> float:
    assert counts.oldest_late_at is not None
    return (NOW - counts.oldest_late_at).total_seconds() / 60


def test_one_failing_pool_does_not_stop_the_others(prefect: FakePrefect) -> None:
    c = client()
    a, b = resolved(c, queue(0, "default", "pool-a"), queue(1, "default", "pool-b"))
    prefect.faults["/flow_runs/filter"] = lambda body: (
        (500, {}, "{}") if a.id in body["work_pool_queues"]["id"]["any_"] else None)
    counts = c.read_counts([a, b], NOW, 900)
    assert isinstance(counts[a.id], PrefectError) and "pool 'pool-a'" in str(counts[a.id])
    assert counts[b.id] == QueueCounts()


def test_requests_in_flight_are_bounded_however_reads_nest(prefect: FakePrefect) -> None:
    configs = []
    for pool in range(6):
        prefect.pool(f"p{pool}")
        for i in range(3):
            prefect.queue(f"p{pool}", f"q{i}")
            prefect.add_runs(f"p{pool}", f"q{i}", 150, "SCHEDULED", "Late")  # 450 per pool: paged
            configs.append(queue(len(configs), f"q{i}", f"p{pool}"))
    in_flight, peak = 0, 0
    lock = threading.Lock()

    def slow_server(_: dict[str, Any]) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)
        with lock:
            in_flight -= 1

    prefect.faults["/flow_runs/filter"] = slow_server
    c = client(max_concurrency=3)
    counts = c.read_counts(resolved(c, *configs), NOW, 900)
    assert sum(v.late for v in counts.values() if isinstance(v, QueueCounts)) == 18 * 150
    assert 1 < peak <= 3


def test_stuck_pending_runs_are_found_when_paging_and_when_counting(prefect: FakePrefect) -> None:
    stuck = prefect.add_runs("pool-a", "default", 2, "PENDING", in_state_for_minutes=30)
    prefect.add_runs("pool-a", "default", 3, "PENDING", in_state_for_minutes=1)
    prefect.add_runs("pool-a", "gpu", 1, "PENDING", in_state_for_minutes=30)
    c = client()
    queues = resolved(c, queue(0, "default", "pool-a"), queue(1, "gpu", "pool-a"))
    paged = c.read_counts(queues, NOW, 900)
    assert set(paged[queues[0].id].stuck_pending_ids) == set(stuck)  # type: ignore[union-attr]
    assert paged[queues[0].id].pending == 5  # type: ignore[union-attr]

    prefect.add_runs("pool-a", "default", PAGE_SIZE * 6, "RUNNING")  # deep in-flight: count mode
    counted = client().read_counts(queues, NOW, 900)
    default = counted[queues[0].id]
    assert isinstance(default, QueueCounts)
    assert (default.pending, default.running) == (5, 1200)
    assert set(default.stuck_pending_ids) == set(stuck)
    assert len(counted[queues[1].id].stuck_pending_ids) == 1  # type: ignore[union-attr]


def test_scheduled_runs_in_the_prewarm_window_are_counted_upcoming_from_the_due_page(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late", minutes_ago=5)
    prefect.add_runs("pool-a", "default", 3, "SCHEDULED", "Scheduled", minutes_ago=-2)  # starts in 2 minutes
    prefect.add_runs("pool-a", "default", 4, "SCHEDULED", "Scheduled", minutes_ago=-10)  # beyond the window
    prefect.add_runs("pool-a", "default", 1, "SCHEDULED", "AwaitingRetry", minutes_ago=-2)  # not announced
    prefect.add_runs("pool-a", "gpu", 1, "SCHEDULED", "Scheduled", minutes_ago=-2)  # gpu has no window
    c = client()
    default, gpu = resolved(c, queue(0, "default", "pool-a"), queue(1, "gpu", "pool-a"))
    counts = c.read_counts([default, gpu], NOW, 900, prewarm={default.id: 240})
    assert (counts[default.id].due, counts[default.id].upcoming) == (2, 3)  # type: ignore[union-attr]
    assert counts[gpu.id].upcoming == 0  # type: ignore[union-attr]
    # one due page for each window in the pool (240 s for default, none for gpu), and its in-flight page
    assert prefect.requests_to("/flow_runs/filter") == 3 and prefect.requests_to("/flow_runs/count") == 0


def test_a_deep_due_stream_counts_its_upcoming_runs_as_a_slice(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", PAGE_SIZE * 6, "SCHEDULED", "Late", minutes_ago=4)
    prefect.add_runs("pool-a", "default", 7, "SCHEDULED", "Scheduled", minutes_ago=-3)
    c = client()
    (q,) = resolved(c, queue(0, "default", "pool-a"))
    counts = c.read_counts([q], NOW, 900, prewarm={q.id: 240})[q.id]
    assert isinstance(counts, QueueCounts) and (counts.late, counts.due, counts.upcoming) == (1200, 1200, 7)


def test_a_deep_late_backlog_reads_its_waiting_and_upcoming_runs_as_one_count_when_there_are_none(
        prefect: FakePrefect) -> None:
    queues = two_deep_late_queues(prefect)
    memory = DepthMemory()
    windows = {q.id: 240 for q in queues}

    def read() -> tuple[list[QueueCounts], list[str]]:
        """The counts, and which counts of runs that are not Late were sent (named by their filter)."""
        prefect.calls.clear()
        counts = client(depth_memory=memory).read_counts(queues, NOW, 900, prewarm=windows)
        sent = []
        for path, body in prefect.calls:
            runs = body.get("flow_runs", {})
            names, start = runs.get("state", {}).get("name", {}).get("any_", []), runs.get("next_scheduled_start_time")
            if path == "/flow_runs/count" and names and "Late" not in names:
                window = start is not None and datetime.fromisoformat(start["before_"]) > NOW
                sent.append("upcoming" if "after_" in (start or {}) else "both" if window else "waiting")
        return [counts[q.id] for q in queues], sent  # type: ignore[misc]

    read()  # cold: learns that the due stream is too deep to page
    counts, sent = read()
    assert [(c.late, c.due, c.upcoming) for c in counts] == [(600, 600, 0), (600, 600, 0)]
    assert sent == ["both"]  # one count for the waiting and upcoming runs together

    prefect.add_runs("pool-a", "d0", 2, "SCHEDULED", "Scheduled", minutes_ago=3)  # waiting: due, not Late
    prefect.add_runs("pool-a", "d1", 3, "SCHEDULED", "Scheduled", minutes_ago=-2)  # in the window
    counts, sent = read()
    assert [(c.late, c.due, c.upcoming) for c in counts] == [(600, 602, 0), (600, 600, 3)]
    assert sent[0] == "both" and {"waiting", "upcoming"} <= set(sent)  # not 0: then the slices apart
    counts, sent = read()
    assert [(c.late, c.due, c.upcoming) for c in counts] == [(600, 602, 0), (600, 600, 3)]
    assert "both" not in sent and {"waiting", "upcoming"} <= set(sent)  # remembered: straight to the slices


def test_in_flight_runs_needed_one_by_one_are_paged_however_deep(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", PAGE_SIZE * 3, "RUNNING")
    c = client()
    (q,) = resolved(c, queue(0, "default", "pool-a"))

    counted = c.read_counts([q], NOW, 900)[q.id]
    assert isinstance(counted, QueueCounts) and counted.running == 600 and counted.in_flight_runs is None
    assert prefect.requests_to("/flow_runs/count") > 1  # too deep to page: counted per queue

    prefect.calls.clear()
    listed = c.read_counts([q], NOW, 900, listed={q.id})[q.id]  # task protection needs each run's worker
    assert isinstance(listed, QueueCounts) and listed.running == 600
    assert listed.in_flight_runs is not None and len(listed.in_flight_runs) == 600
    in_flight_pages = [body for path, body in prefect.calls if path == "/flow_runs/filter"
                       and "PENDING" in str(body["flow_runs"].get("state", {}).get("type", {}))]
    # its three pages, each once, and the look past the last full one (the backlog may have grown)
    assert sorted(body["offset"] for body in in_flight_pages) == [0, 200, 400, 600]
