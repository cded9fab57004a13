"""Reads each queue's flow-run counts with as few, and as cheap, requests as the backlog allows.

Request budget: Prefect Cloud rate-limits per account, and a self-hosted
server's database is what saturates first, so a tick must not cost one or more
requests per queue. Runs are read per pool in two streams (due, in flight),
one page of 200 at a time. Where a stream is so deep that paging would cost
the server more than counting, it is read as narrower slices (Late and waiting
runs, Pending and Running runs), each paged when small or counted per queue
with ``/flow_runs/count``; a :class:`DepthMemory` kept between runs sends a
stream that was deep last time straight to its slices.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol, cast

from prefect_backlog.backlog import (
    DUE_STATE_NAMES,
    IN_FLIGHT_SCHEDULED_NAMES,
    IN_FLIGHT_STATE_TYPES,
    LATE_STATE_NAME,
    PAUSED_STATE_NAME,
    SCHEDULED_STATE_NAME,
    QueueCounts,
    RunFacts,
    summarize_runs,
)
from prefect_backlog.fanout import Fanout
from prefect_backlog.prefect_api.ledger import RunLedger, read_in_flight
from prefect_backlog.prefect_api.transport import PAGE_SIZE, PrefectError, PrefectHttp, iso, parse_time, settled

# A page of 200 full flow runs costs a Prefect server about as much as 12 counts (measured on 3.8.8
# over loopback: ~30 ms + ~0.7 ms per run returned, against 10-18 ms per count): weigh it so when
# choosing between paging and counting.
PAGE_COST_IN_COUNTS = 12
# Count mode reads the oldest Late run of all a pool's queues in one list of this many runs per queue
# (runs of different queues interleave in time, so most queues show up in it).
SHARED_LIST_RUNS_PER_QUEUE = 4
WORKER_LABEL = "prefect.worker.name"  # stamped by 3.1.9+ workers on every run they submit (3.1.6+ server)


def run_facts(run: dict[str, Any]) -> RunFacts:
    """The few fields of an API flow run that the model needs."""
    scheduled = parse_time(run.get("next_scheduled_start_time")) or parse_time(run.get("expected_start_time"))
    state = run.get("state") or {}
    labels = run.get("labels")
    worker = labels.get(WORKER_LABEL) if isinstance(labels, dict) else None
    return RunFacts(
        id=str(run["id"]),
        queue_id=str(run.get("work_queue_id")),
        state_type=str(run.get("state_type") or state.get("type")),
        state_name=str(run.get("state_name") or state.get("name")),
        scheduled_at=scheduled,
        state_since=parse_time(state.get("timestamp")),
        worker_name=worker if isinstance(worker, str) else None,
        labelled="labels" in run,
    )


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: its filters are dicts
class _Lookup:
    """A per-queue call of count mode: a count, or a short sorted list of runs summarized like a page."""

    fields: tuple[str, ...]  # the QueueCounts fields it fills (a count fills each with the same number)
    flow_runs: dict[str, Any]
    list_sort: str | None = None  # None: POST /flow_runs/count; else POST /flow_runs/filter sorted so
    list_limit: int = PAGE_SIZE   # that the first ``list_limit`` runs are the ones that matter
    only_if: str | None = None  # a list is fetched only for queues where this counted field is above 0


@dataclass(frozen=True)
class _Stream:
    """One server-side slice of a pool's runs, paged when that is cheap.

    Too deep to page, a stream is read as the narrower slices in ``split``
    (which partition it, so their counts add up), and a leaf with the
    ``per_queue`` calls of count mode.
    """

    name: str
    flow_runs: dict[str, Any]
    counted: tuple[str, ...]  # the QueueCounts fields that add up to the runs of this stream
    split: tuple[_Stream, ...] = ()
    per_queue: tuple[_Lookup, ...] = ()
    in_flight: bool = False  # its runs are in flight: counted per queue, they are not listed one by one
    variant: str = ""  # told apart in the DepthMemory: the due stream of each pre-warm window
    kept: bool = False  # read by changes between warm samples when the reader has a RunLedger (ledger.py)

    @property
    def depth_key(self) -> str:
        return self.name + self.variant

    def runs_in(self, counts: QueueCounts) -> int:
        return sum(getattr(counts, name) for name in self.counted)

    @property
    def calls_per_queue(self) -> int:
        """What count mode costs per queue, at most (lists are skipped where the count is 0)."""
        return len(self.per_queue) + sum(part.calls_per_queue for part in self.split)


def _scheduled(*names: str, after: datetime | None = None, before: datetime) -> dict[str, Any]:
    # By state name alone: these names belong to SCHEDULED states only (the model checks the type of
    # every run it is given), and a filter on the type too makes each count ~25% dearer (3.8.8).
    start_time: dict[str, Any] = {"before_": iso(before), **({"after_": iso(after)} if after else {})}
    return {"state": {"name": {"any_": list(names)}}, "next_scheduled_start_time": start_time}


def _in_state(*types: str) -> dict[str, Any]:
    return {"state": {"type": {"any_": list(types)}}}


def _in_flight_states() -> dict[str, Any]:
    """The model's in-flight states: its state types, or its SCHEDULED-type names (AwaitingRetry), in one filter
    (``operator: or_`` on the state filter, accepted by 2.18 and 3.x). The model tells a worker's AwaitingRetry
    run from another's."""
    return {"state": {"operator": "or_", "type": {"any_": list(IN_FLIGHT_STATE_TYPES)},
                      "name": {"any_": list(IN_FLIGHT_SCHEDULED_NAMES)}}}


# Read by the in-flight stream, so kept out of the due stream: a run read by both would be counted twice.
_DUE_NAMES = tuple(n for n in DUE_STATE_NAMES if n not in IN_FLIGHT_SCHEDULED_NAMES)


def due_stream(now: datetime, prewarm_seconds: int) -> _Stream:
    """Runs due now, and Scheduled runs starting within the pre-warm window: one stream, one page, per pool.

    Too deep to page, it splits into Late runs and the rest: waiting (Scheduled, due) and upcoming runs,
    read apart only when one count of them together is not 0 (most ticks of a deep backlog are Late runs
    and nothing else: one count instead of two). AwaitingRetry runs are read with the in-flight ones.
    """
    window_end = now + timedelta(seconds=prewarm_seconds)
    # Late by state name alone: a Late run is due whatever its recorded time (the model says so too), and
    # without a start-time bound each per-queue count cost the server 10-20% less (bench/run.py's
    # candidates, on 3.8.8 and 3.9.1).
    late = {"state": {"name": {"any_": [LATE_STATE_NAME]}}}
    not_late = [n for n in _DUE_NAMES if n != LATE_STATE_NAME]
    waiting = _scheduled(*not_late, before=now)
    late_part = _Stream("late", late, ("late",), per_queue=(
        _Lookup(("late", "due"), late),
        _Lookup(("oldest_late_at",), late, list_sort="NEXT_SCHEDULED_START_TIME_ASC", list_limit=1, only_if="late")))
    waiting_part = _Stream("waiting", waiting, ("due",), per_queue=(_Lookup(("due",), waiting),))
    counted: tuple[str, ...] = ("due",)
    parts = (late_part, waiting_part)
    if prewarm_seconds:
        upcoming = _scheduled(SCHEDULED_STATE_NAME, after=now, before=window_end)
        upcoming_part = _Stream("upcoming", upcoming, ("upcoming",), per_queue=(_Lookup(("upcoming",), upcoming),))
        counted = ("due", "upcoming")
        # Scheduled runs before the window's end: exactly the waiting and the upcoming ones (AwaitingRetry runs
        # are read with the runs in flight).
        rest = _Stream("waiting+upcoming", _scheduled(*not_late, before=window_end), counted,
                       split=(waiting_part, upcoming_part))
        parts = (late_part, rest)
    # Queues of one pool with different windows are different streams, with depths of their own.
    return _Stream("due", _scheduled(*_DUE_NAMES, before=window_end), counted, split=parts,
                   variant=f"+{prewarm_seconds}s")


def in_flight_stream(*, listed: bool = False) -> _Stream:
    """Pending, Running, Cancelling, Paused and AwaitingRetry runs: one stream, one page, per pool.

    ``listed``: its runs must be known one by one (task protection needs each run's worker), so it is paged
    to the end, never counted instead: counting and then paging the same runs would cost both.
    """
    counted = ("pending", "running", "cancelling", "paused_runs", "retrying")
    if listed:
        return _Stream("in-flight", _in_flight_states(), counted, variant="+listed", kept=True)
    pending, running, cancelling = _in_state("PENDING"), _in_state("RUNNING"), _in_state("CANCELLING")
    # Paused in their process; a Suspended run (also PAUSED) has left it. Counted by name (2.x has no
    # not_any_), listed by type and told apart by the model.
    paused = {"state": {"type": {"any_": ["PAUSED"]}, "name": {"any_": [PAUSED_STATE_NAME]}}}
    # Counted, an AwaitingRetry run cannot be told a worker's or not: all count as waiting to retry.
    retrying = {"state": {"name": {"any_": list(IN_FLIGHT_SCHEDULED_NAMES)}}}
    return _Stream("in-flight", _in_flight_states(), counted, split=(
        # Stuck runs are found among the longest-waiting Pending runs; more than a page of them
        # in one queue is reported as a page.
        _Stream("pending", pending, ("pending",), in_flight=True, per_queue=(
            _Lookup(("pending",), pending),
            _Lookup(("stuck_pending_ids",), pending, list_sort="EXPECTED_START_TIME_ASC", only_if="pending"))),
        _Stream("running", running, ("running",), in_flight=True, per_queue=(_Lookup(("running",), running),)),
        _Stream("stopping", _in_state("CANCELLING", "PAUSED"), ("cancelling", "paused_runs"), in_flight=True,
                per_queue=(_Lookup(("cancelling",), cancelling), _Lookup(("paused_runs",), paused))),
        _Stream("retrying", retrying, ("retrying",), in_flight=True, per_queue=(_Lookup(("retrying",), retrying),))))


class DepthMemory:
    """Which (pool, stream) was too deep to page at the last read; a warm Lambda keeps it between runs.

    Such a stream is read narrower at once next time, instead of fetching a
    page of 200 full runs and a total only to learn again that it is deep.
    Without it (a cold start) a read costs those requests more, never a wrong
    figure; a stream that has drained is paged again from the read after.
    """

    def __init__(self) -> None:
        self._deep: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def is_deep(self, pool: str, stream: str) -> bool:
        with self._lock:
            return (pool, stream) in self._deep

    def remember(self, pool: str, stream: str, *, deep: bool) -> None:
        with self._lock:
            if deep:
                self._deep.add((pool, stream))
            else:
                self._deep.discard((pool, stream))


class QueueScope(Protocol):
    """A resolved queue as the run reader needs it: its id and its pool."""

    @property
    def id(self) -> str: ...

    @property
    def pool(self) -> str: ...


class RunReader:
    """One sample's reads of flow runs; the fanout runs them concurrently, the transport bounds the requests."""

    def __init__(self, http: PrefectHttp, fanout: Fanout, depth_memory: DepthMemory, now: datetime,
                 stuck_after_seconds: float, prewarm: Mapping[str, int] | None = None,
                 listed: Collection[str] = (), ledger: RunLedger | None = None) -> None:
        """``prewarm``: each queue id's pre-warm window in seconds (absent: 0, no upcoming runs).
        ``listed``: the queue ids whose in-flight runs must be read one by one, whatever their depth.
        ``ledger``: kept between warm samples, so listed in-flight runs are read by changes (None: in full)."""
        self.http = http
        self.fanout = fanout
        self.depth_memory = depth_memory
        self.now = now
        self.stuck_after_seconds = stuck_after_seconds
        self.prewarm = dict(prewarm or {})
        self.listed = frozenset(listed)
        self.ledger = ledger

    def read_counts(self, queues: Iterable[QueueScope]) -> dict[str, QueueCounts | PrefectError]:
        """Per queue id: its run counts, or the error that kept them from being read.

        Per pool: a due stream per pre-warm window, and an in-flight stream for its listed queues and one
        for the others (usually one of each: a pool's services seldom differ in these).
        """
        by_window: dict[tuple[str, int], list[str]] = {}
        by_listing: dict[tuple[str, bool], list[str]] = {}
        for queue in queues:
            by_window.setdefault((queue.pool, self.prewarm.get(queue.id, 0)), []).append(queue.id)
            by_listing.setdefault((queue.pool, queue.id in self.listed), []).append(queue.id)
        jobs = [(pool, ids, due_stream(self.now, window)) for (pool, window), ids in by_window.items()]
        jobs += [(pool, ids, in_flight_stream(listed=listed)) for (pool, listed), ids in by_listing.items()]
        outcomes = self.fanout.map(settled(lambda job: self._read_stream(*job)), jobs)

        merged: dict[str, QueueCounts | PrefectError] = {}
        for (pool, ids, stream), outcome in zip(jobs, outcomes, strict=True):
            for queue_id in ids:
                previous = merged.get(queue_id, QueueCounts())
                if isinstance(previous, PrefectError):
                    continue
                if isinstance(outcome, PrefectError):
                    merged[queue_id] = PrefectError(f"pool {pool!r}, {stream.name} runs: {outcome}")
                else:
                    merged[queue_id] = previous + outcome[queue_id]
        return merged

    def _summarize(self, runs: Iterable[RunFacts], queue_ids: list[str]) -> dict[str, QueueCounts]:
        return summarize_runs(runs, queue_ids, self.now, self.stuck_after_seconds, self.prewarm)

    def _read_stream(self, pool: str, queue_ids: list[str], stream: _Stream, *,
                     count_first: bool = False) -> dict[str, QueueCounts]:
        """Page through the stream, or read it narrower (slices, or per queue) when paging costs more.

        Most streams fit in one page, so the first request is that page. A
        slice of a deep stream (``count_first``) is counted first instead, and
        nothing more is read when the count is 0. A stream read narrower last
        time (``depth_memory``) is read narrower at once, with no page or total.
        """
        if self.ledger is not None and stream.kept and not (stream.split or stream.per_queue):
            return self._summarize(read_in_flight(self.http, self.fanout, self.ledger, pool, queue_ids,
                                                  stream.flow_runs, lambda: self._page_all(queue_ids, stream.flow_runs),
                                                  run_facts), queue_ids)
        if self.depth_memory.is_deep(pool, stream.depth_key):
            counts = self._read_narrower(pool, queue_ids, stream, total=None)
            total = sum(stream.runs_in(read) for read in counts.values())
            self.depth_memory.remember(pool, stream.depth_key, deep=_too_deep_to_page(total, 0, queue_ids, stream))
            return counts

        scope = {"work_pool_queues": {"id": {"any_": queue_ids}}}
        body = {"flow_runs": stream.flow_runs, **scope, "sort": "ID_DESC"}

        def page_at(offset: int) -> list[dict[str, Any]]:
            return self.http.items("/flow_runs/filter", {**body, "limit": PAGE_SIZE, "offset": offset})

        runs: list[dict[str, Any]] = []
        if not count_first:
            runs = page_at(0)
            if len(runs) < PAGE_SIZE:
                return self._summarize(map(run_facts, runs), queue_ids)
        total = self.http.count({"flow_runs": stream.flow_runs, **scope})
        if total == 0 and not runs:
            return {queue_id: QueueCounts() for queue_id in queue_ids}
        if _too_deep_to_page(total, len(runs), queue_ids, stream):
            self.depth_memory.remember(pool, stream.depth_key, deep=True)
            return self._read_narrower(pool, queue_ids, stream, total=total)

        return self._summarize(map(run_facts, self._rest_of_pages(page_at, runs, total)), queue_ids)

    def _rest_of_pages(self, page_at: Callable[[int], list[dict[str, Any]]], runs: list[dict[str, Any]],
                       total: int) -> list[dict[str, Any]]:
        """The pages after ``runs`` (what was read so far), at the same time, the stream holding ``total``."""
        pages_left = math.ceil(max(total - len(runs), 0) / PAGE_SIZE)
        last_page: list[dict[str, Any]] = runs
        for page in self.fanout.map(page_at, [len(runs) + PAGE_SIZE * i for i in range(pages_left)]):
            runs.extend(page)
            last_page = page
        # The backlog may have grown since the count: read on until a page comes back short.
        while len(last_page) == PAGE_SIZE:
            last_page = page_at(len(runs))
            runs.extend(last_page)
        return runs

    def _page_all(self, queue_ids: list[str], flow_runs: dict[str, Any]) -> list[RunFacts]:
        """Every run of a stream that is never read narrower: one page, and when full a total and the rest."""
        scope = {"work_pool_queues": {"id": {"any_": queue_ids}}}
        body = {"flow_runs": flow_runs, **scope, "sort": "ID_DESC"}

        def page_at(offset: int) -> list[dict[str, Any]]:
            return self.http.items("/flow_runs/filter", {**body, "limit": PAGE_SIZE, "offset": offset})

        runs = page_at(0)
        if len(runs) == PAGE_SIZE:
            runs = self._rest_of_pages(page_at, runs, self.http.count({"flow_runs": flow_runs, **scope}))
        return [run_facts(run) for run in runs]

    def _read_narrower(self, pool: str, queue_ids: list[str], stream: _Stream, *,
                       total: int | None) -> dict[str, QueueCounts]:
        """A deep stream as its slices (each counted first: often only one is deep), or a leaf per queue."""
        if not stream.split:
            return self._count_per_queue(queue_ids, stream, stream_total=total)
        parts = self.fanout.map(lambda part: self._read_stream(pool, queue_ids, part, count_first=True), stream.split)
        totals = {queue_id: QueueCounts() for queue_id in queue_ids}
        for part in parts:
            totals = {queue_id: totals[queue_id] + part[queue_id] for queue_id in queue_ids}
        return totals

    def _count_per_queue(self, queue_ids: list[str], stream: _Stream, *,
                         stream_total: int | None) -> dict[str, QueueCounts]:
        """Count mode: the stream's counts per queue, then its lists only where a count says they hold runs.

        A one-run list (the oldest Late run) is first read for all queues at
        once: in one pool-wide list sorted the same way, each queue's first run
        is its answer, so only queues missing from it need their own call.
        """
        fields: dict[str, dict[str, Any]] = {queue_id: {} for queue_id in queue_ids}
        counts = []
        for lookup in stream.per_queue:
            if lookup.list_sort is not None:
                continue
            if stream_total is not None and len(queue_ids) == 1 and lookup.flow_runs == stream.flow_runs:
                # the stream's total is this one queue's count
                fields[queue_ids[0]].update(dict.fromkeys(lookup.fields, stream_total))
            else:
                counts += [(queue_id, lookup) for queue_id in queue_ids]
        lists = [lookup for lookup in stream.per_queue if lookup.list_sort is not None]
        shared = [lookup for lookup in lists if lookup.list_limit == 1 and len(queue_ids) > 1]

        def count(item: tuple[str, _Lookup]) -> int:
            queue_id, lookup = item
            return self.http.count({"flow_runs": lookup.flow_runs, "work_pool_queues": {"id": {"any_": [queue_id]}}})

        def shared_list(lookup: _Lookup) -> list[RunFacts]:
            return self._list_runs(queue_ids, lookup, min(PAGE_SIZE, SHARED_LIST_RUNS_PER_QUEUE * len(queue_ids)))

        jobs: list[Callable[[], int | list[RunFacts]]] = [
            *(partial(count, item) for item in counts), *(partial(shared_list, lookup) for lookup in shared)]
        first_round = self.fanout.map(lambda job: job(), jobs)
        for (queue_id, lookup), value in zip(counts, first_round[:len(counts)], strict=True):
            fields[queue_id].update(dict.fromkeys(lookup.fields, value))
        answered: set[tuple[str, _Lookup]] = set()
        for lookup, runs in zip(shared, cast(list[list[RunFacts]], first_round[len(counts):]), strict=True):
            summary = self._summarize(runs, queue_ids)
            for queue_id in {run.queue_id for run in runs} & set(queue_ids):
                fields[queue_id].update({f: getattr(summary[queue_id], f) for f in lookup.fields})
                answered.add((queue_id, lookup))

        own_lists = [(queue_id, lookup) for queue_id in queue_ids for lookup in lists
                     if (queue_id, lookup) not in answered
                     and (lookup.only_if is None or fields[queue_id].get(lookup.only_if, 0) > 0)]

        def own_list(item: tuple[str, _Lookup]) -> QueueCounts:
            queue_id, lookup = item
            return self._summarize(self._list_runs([queue_id], lookup, lookup.list_limit), [queue_id])[queue_id]

        for (queue_id, lookup), read in zip(own_lists, self.fanout.map(own_list, own_lists), strict=True):
            fields[queue_id].update({f: getattr(read, f) for f in lookup.fields})
        listed: dict[str, Any] = {"in_flight_runs": None} if stream.in_flight else {}
        return {queue_id: QueueCounts(**values, **listed) for queue_id, values in fields.items()}

    def _list_runs(self, queue_ids: list[str], lookup: _Lookup, limit: int) -> list[RunFacts]:
        body = {"flow_runs": lookup.flow_runs, "work_pool_queues": {"id": {"any_": queue_ids}},
                "sort": lookup.list_sort, "limit": limit}
        return [run_facts(run) for run in self.http.items("/flow_runs/filter", body)]


def _too_deep_to_page(total: int, already_read: int, queue_ids: list[str], stream: _Stream) -> bool:
    if not (stream.split or stream.per_queue):
        return False
    pages_left = math.ceil(max(total - already_read, 0) / PAGE_SIZE)
    return pages_left * PAGE_COST_IN_COUNTS > len(queue_ids) * stream.calls_per_queue
