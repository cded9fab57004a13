"""The Prefect client against `responses`: resolution, paging vs counting, retries and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from prefect_backlog.backlog import QueueCounts
from prefect_backlog.config import QueueConfig
from prefect_backlog.prefect_client import (
    PAGE_SIZE,
    DepthMemory,
    PrefectAuthError,
    PrefectClient,
    PrefectError,
    QueueNotFound,
    ResolvedQueue,
    authorization_header,
)
from tests.fake_prefect import API, NOW, FakePrefect, failing


def queue(index: int, name: str, pool: str | None) -> QueueConfig:
    return QueueConfig(index=index, work_queue=name, work_pool=pool, cluster="c", service="s",
                       runs_in_worker_task=False)


@pytest.fixture
def prefect() -> Iterator[FakePrefect]:
    fake = FakePrefect()
    fake.pool("pool-a")
    fake.pool("pool-b")
    fake.queue("pool-a", "gpu")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        yield fake


def client(**kwargs: Any) -> PrefectClient:
    sleeps: list[float] = []
    made = PrefectClient(API, deadline=time.monotonic() + 30, sleep=sleeps.append, **kwargs)
    made.sleeps = sleeps  # type: ignore[attr-defined]
    return made


def resolved(c: PrefectClient, *queues: QueueConfig) -> list[ResolvedQueue]:
    found = c.resolve_queues(queues)
    assert all(isinstance(r, ResolvedQueue) for r in found.values()), found
    return [r for r in found.values() if isinstance(r, ResolvedQueue)]


def test_resolves_queues_sharing_a_name_across_pools_in_two_requests(prefect: FakePrefect) -> None:
    c = client()
    found = c.resolve_queues([queue(0, "default", "pool-a"), queue(1, "default", "pool-b"), queue(2, "gpu", None)])
    assert {i: (r.pool, r.name) for i, r in found.items() if isinstance(r, ResolvedQueue)} == {
        0: ("pool-a", "default"), 1: ("pool-b", "default"), 2: ("pool-a", "gpu")}
    assert c.requests_sent == 2


def test_unknown_and_ambiguous_queues_are_errors_for_that_entry_only(prefect: FakePrefect) -> None:
    found = client().resolve_queues([queue(0, "nope", "pool-a"), queue(1, "default", None), queue(2, "gpu", "pool-a")])
    assert isinstance(found[0], QueueNotFound) and "no work queue 'nope' in pool 'pool-a'" in str(found[0])
    assert isinstance(found[1], PrefectError) and "several pools (pool-a, pool-b)" in str(found[1])
    assert isinstance(found[2], ResolvedQueue)


def test_paused_pool_or_queue_is_reported(prefect: FakePrefect) -> None:
    prefect.pools["pool-b"]["is_paused"] = True
    prefect.queues[0]["is_paused"] = True  # pool-a/default
    a, b, gpu = resolved(client(), queue(0, "default", "pool-a"), queue(1, "default", "pool-b"),
                         queue(2, "gpu", "pool-a"))
    assert (a.queue_paused, a.pool_paused, a.paused) == (True, False, True)
    assert (b.queue_paused, b.pool_paused, b.paused) == (False, True, True)
    assert gpu.paused is False


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


def test_a_stream_too_deep_to_page_at_the_last_read_is_read_narrower_at_once(prefect: FakePrefect) -> None:
    prefect.queue("pool-a", "d0")
    prefect.queue("pool-a", "d1")
    for minute in range(PAGE_SIZE * 6):
        prefect.add_runs("pool-a", f"d{minute % 2}", 1, "SCHEDULED", "Late", minutes_ago=minute + 1)
    memory = DepthMemory()
    queues = resolved(client(), queue(0, "d0", "pool-a"), queue(1, "d1", "pool-a"))

    def read() -> tuple[dict[str, QueueCounts | PrefectError], int, int]:
        prefect.calls.clear()
        counts = client(depth_memory=memory).read_counts(queues, NOW, 900)
        return counts, prefect.requests_to("/flow_runs/filter"), prefect.requests_to("/flow_runs/count")

    cold, cold_lists, cold_counts = read()
    # due page (full), due total, then the Late slice (total, 2 queue counts) and the waiting one (total: 0);
    # the shared oldest-Late list, the in-flight page
    assert (cold_lists, cold_counts) == (1 + 1 + 1, 1 + 3 + 1)
    warm, warm_lists, warm_counts = read()
    assert warm == cold and all(getattr(c, "late", None) == 600 for c in warm.values())
    assert (warm_lists, warm_counts) == (1 + 1, 2 + 1)  # no due page, no due or Late totals

    prefect.runs.clear()  # drained: this read learns it, the next one pages again
    drained, _, _ = read()
    assert set(drained.values()) == {QueueCounts()}
    assert not memory.is_deep("pool-a", "due")
    assert read()[1:] == (2, 0)  # a due page and an in-flight page


def test_count_mode_reads_the_oldest_late_run_of_many_queues_in_one_list(prefect: FakePrefect) -> None:
    configs = [queue(i, f"d{i}", "pool-a") for i in range(4)]
    for i in range(4):
        prefect.queue("pool-a", f"d{i}")
    # d0-d2 get their Late runs interleaved in time, d3 has none; the overdue Scheduled runs are due too
    for minute in range(1, 301):
        prefect.add_runs("pool-a", f"d{minute % 3}", 1, "SCHEDULED", "Late", minutes_ago=minute)
    prefect.add_runs("pool-a", "d3", 2, "SCHEDULED", "Scheduled", minutes_ago=3)
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
    assert (d0.late, d0.due, d1.late, d1.due, d3.late, d3.due) == (600, 601, 100, 100, 0, 2)
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


def test_retries_5xx_then_succeeds(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(503, times=2)
    c = client()
    resolved(c, queue(0, "default", "pool-a"))
    assert prefect.requests_to("/work_queues/filter") == 3
    assert len(c.sleeps) == 2  # type: ignore[attr-defined]


def test_honours_retry_after_on_429(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(429, {"Retry-After": "3"}, times=1)
    c = client()
    resolved(c, queue(0, "default", "pool-a"))
    assert c.sleeps == [3.0]  # type: ignore[attr-defined]


def test_gives_up_when_retry_after_exceeds_the_deadline(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(429, {"Retry-After": "120"})
    with pytest.raises(PrefectError, match=r"HTTP 429, and no time is left to retry after 120\.0s"):
        client().resolve_queues([queue(0, "default", "pool-a")])


def test_persistent_500_gives_up_after_bounded_attempts(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(500)
    c = client()
    with pytest.raises(PrefectError, match="HTTP 500, gave up after 4 attempts"):
        c.resolve_queues([queue(0, "default", "pool-a")])
    assert c.requests_sent == 4


def test_rejected_credentials_are_not_retried(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(401)
    c = client()
    with pytest.raises(PrefectAuthError, match="rejected the credentials"):
        c.resolve_queues([queue(0, "default", "pool-a")])
    assert c.requests_sent == 1


def test_html_instead_of_json_is_a_clear_error(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = lambda _: (200, {"Content-Type": "text/html"}, "<html>login</html>")
    with pytest.raises(PrefectError, match="body that is not JSON \\(text/html\\)"):
        client().resolve_queues([queue(0, "default", "pool-a")])


def test_timeouts_are_retried_and_bounded() -> None:
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/work_queues/filter", body=requests.ReadTimeout("slow"))
        c = client()
        with pytest.raises(PrefectError, match="timed out, gave up after 4 attempts"):
            c.resolve_queues([queue(0, "default", "pool-a")])
        assert c.requests_sent == 4


def test_connection_errors_are_retried() -> None:
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/work_queues/filter", body=requests.ConnectionError("refused"))
        with pytest.raises(PrefectError, match="connection failed"):
            client().resolve_queues([queue(0, "default", "pool-a")])


def test_an_expired_deadline_sends_nothing() -> None:
    c = PrefectClient(API, deadline=time.monotonic() - 1)
    with pytest.raises(PrefectError, match="out of time"):
        c.resolve_queues([queue(0, "default", "pool-a")])
    assert c.requests_sent == 0


def test_one_failing_pool_does_not_stop_the_others(prefect: FakePrefect) -> None:
    c = client()
    a, b = resolved(c, queue(0, "default", "pool-a"), queue(1, "default", "pool-b"))
    prefect.faults["/flow_runs/filter"] = lambda body: (
        (500, {}, "{}") if a.id in body["work_pool_queues"]["id"]["any_"] else None)
    counts = c.read_counts([a, b], NOW, 900)
    assert isinstance(counts[a.id], PrefectError) and "pool 'pool-a'" in str(counts[a.id])
    assert counts[b.id] == QueueCounts()


def test_authorization_headers_and_no_secret_in_errors(prefect: FakePrefect) -> None:
    assert authorization_header("bearer", "pnu_key") == "Bearer pnu_key"
    assert authorization_header("basic", "admin:pass") == "Basic YWRtaW46cGFzcw=="
    prefect.faults["/work_queues/filter"] = failing(401)
    with pytest.raises(PrefectAuthError) as caught:
        PrefectClient(API, authorization="Bearer pnu_key", sleep=lambda _: None).resolve_queues(
            [queue(0, "default", "pool-a")])
    assert "pnu_key" not in str(caught.value)


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
