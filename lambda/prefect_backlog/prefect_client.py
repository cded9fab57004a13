"""Reads queue facts and backlogs from the Prefect REST API (2.x, 3.x and Prefect Cloud).

Request budget: Prefect Cloud rate-limits per account, so a tick must not cost
one or more requests per queue. Queues are resolved in one paginated
``/work_queues/filter`` call and their pools in one ``/work_pools/filter``
call. Runs are then read per pool in two streams (due, in flight), one page of
200 at a time. Where a stream is so deep that paging would cost the server
more than counting, it is read as narrower slices (Late and waiting runs,
Pending and Running runs), each paged when small or counted per queue with
``/flow_runs/count``; a ``DepthMemory`` kept between runs sends a stream that
was deep last time straight to its slices. Either way each request is retried
with backoff on connection errors, timeouts, 5xx and 429 (honouring
Retry-After), and never past the deadline the caller gives.

Nothing here calls ``get_runs`` or ``get_scheduled_flow_runs``: both record a
poll and would make an idle queue look healthy.
"""

from __future__ import annotations

import base64
import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar, cast
from urllib.parse import quote

import requests

from prefect_backlog.backlog import (
    DUE_STATE_NAMES,
    LATE_STATE_NAME,
    QueueCounts,
    RunFacts,
    is_stuck_pending,
    summarize_runs,
)
from prefect_backlog.config import AuthScheme, QueueConfig

PAGE_SIZE = 200  # the API's maximum
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 4.0
# A page of 200 full flow runs costs a Prefect server about as much as 12 counts (measured on 3.8.8
# over loopback: ~30 ms + ~0.7 ms per run returned, against 10-18 ms per count): weigh it so when
# choosing between paging and counting.
PAGE_COST_IN_COUNTS = 12
# Count mode reads the oldest Late run of all a pool's queues in one list of this many runs per queue
# (runs of different queues interleave in time, so most queues show up in it).
SHARED_LIST_RUNS_PER_QUEUE = 4
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")
R = TypeVar("R")


class PrefectError(Exception):
    """A request to the Prefect API failed; the message says which and why, never with credentials."""


class PrefectAuthError(PrefectError):
    """The API rejected our credentials: every queue is unreadable, so the whole run fails."""


class QueueNotFound(PrefectError):
    """A configured queue does not exist (typo, or deleted after deploy)."""


def authorization_header(scheme: AuthScheme, secret: str) -> str:
    """Prefect Cloud API keys go as Bearer; a 3.x server's ``user:pass`` auth string as Basic."""
    if scheme == "basic":
        return "Basic " + base64.b64encode(secret.encode()).decode()
    return "Bearer " + secret


@dataclass(frozen=True)
class ResolvedQueue:
    config_index: int
    id: str
    name: str
    pool: str
    queue_paused: bool
    pool_paused: bool
    concurrency_limit: int | None
    pool_concurrency_limit: int | None
    pool_active_slots: int | None  # 3.x only: runs holding the pool's slots
    last_polled: datetime | None
    created: datetime | None

    @property
    def paused(self) -> bool:
        return self.queue_paused or self.pool_paused


@dataclass(frozen=True)
class PoolWorkers:
    online: int
    newest_heartbeat: datetime | None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _run_facts(run: dict[str, Any]) -> RunFacts:
    scheduled = _parse_time(run.get("next_scheduled_start_time")) or _parse_time(run.get("expected_start_time"))
    state = run.get("state") or {}
    return RunFacts(
        id=str(run["id"]),
        queue_id=str(run.get("work_queue_id")),
        state_type=str(run.get("state_type") or state.get("type")),
        state_name=str(run.get("state_name") or state.get("name")),
        scheduled_at=scheduled,
        state_since=_parse_time(state.get("timestamp")),
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

    def runs_in(self, counts: QueueCounts) -> int:
        return sum(getattr(counts, name) for name in self.counted)

    @property
    def calls_per_queue(self) -> int:
        """What count mode costs per queue, at most (lists are skipped where the count is 0)."""
        return len(self.per_queue) + sum(part.calls_per_queue for part in self.split)


def _streams(now: datetime) -> tuple[_Stream, _Stream]:
    def scheduled(*names: str) -> dict[str, Any]:
        # By state name alone: these names belong to SCHEDULED states only (the model checks the type of
        # every run it is given), and a filter on the type too makes each count ~25% dearer (3.8.8).
        return {"state": {"name": {"any_": list(names)}}, "next_scheduled_start_time": {"before_": _iso(now)}}

    def in_state(*types: str) -> dict[str, Any]:
        return {"state": {"type": {"any_": list(types)}}}

    late, waiting = scheduled(LATE_STATE_NAME), scheduled(*(n for n in DUE_STATE_NAMES if n != LATE_STATE_NAME))
    pending, running = in_state("PENDING"), in_state("RUNNING")
    due = _Stream("due", scheduled(*DUE_STATE_NAMES), ("due",), split=(
        _Stream("late", late, ("late",), per_queue=(
            _Lookup(("late", "due"), late),
            _Lookup(("oldest_late_at",), late, list_sort="NEXT_SCHEDULED_START_TIME_ASC", list_limit=1,
                    only_if="late"))),
        _Stream("waiting", waiting, ("due",), per_queue=(_Lookup(("due",), waiting),))))
    in_flight = _Stream("in-flight", in_state("PENDING", "RUNNING"), ("pending", "running"), split=(
        # Stuck runs are found among the longest-waiting Pending runs; more than a page of them
        # in one queue is reported as a page.
        _Stream("pending", pending, ("pending",), per_queue=(
            _Lookup(("pending",), pending),
            _Lookup(("stuck_pending_ids",), pending, list_sort="EXPECTED_START_TIME_ASC", only_if="pending"))),
        _Stream("running", running, ("running",), per_queue=(_Lookup(("running",), running),))))
    return due, in_flight


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


class PrefectClient:
    def __init__(self, api_url: str, *, authorization: str | None = None, deadline: float | None = None,
                 max_concurrency: int = 8, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, depth_memory: DepthMemory | None = None) -> None:
        """``deadline`` is a ``time.monotonic()`` value no request or retry may run past.

        Pass the same ``depth_memory`` to the clients of successive runs (the handler keeps one per
        container) so streams that were too deep to page are read narrower at once.
        """
        self.api_url = api_url.rstrip("/")
        self.depth_memory = depth_memory or DepthMemory()
        self.deadline = deadline if deadline is not None else time.monotonic() + 60
        self.max_concurrency = max_concurrency
        # Pages of one pool are fetched concurrently inside the concurrent per-pool reads; this
        # bounds the requests actually in flight at once, however the work is nested.
        self._in_flight = threading.BoundedSemaphore(max_concurrency)
        self._counter_lock = threading.Lock()
        self.requests_sent = 0
        self._sleep = sleep
        self._session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max_concurrency, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Accept"] = "application/json"
        if authorization:
            self._session.headers["Authorization"] = authorization

    # --- HTTP ----------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call with bounded retries; returns the decoded JSON body."""
        where = f"{method} {path}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            retry_after: float | None = None
            try:
                with self._in_flight:
                    remaining = self.deadline - time.monotonic()  # after any wait for a free slot
                    if remaining <= 0:
                        raise PrefectError(f"{where}: out of time before the request could be sent")
                    with self._counter_lock:
                        self.requests_sent += 1
                    response = self._session.request(
                        method, self.api_url + path, json=body,
                        timeout=(min(CONNECT_TIMEOUT_SECONDS, remaining), min(READ_TIMEOUT_SECONDS, remaining)))
            except requests.Timeout:
                problem = "timed out"
            except requests.ConnectionError as exc:
                problem = f"connection failed ({type(exc).__name__})"
            else:
                if response.status_code in (401, 403):
                    raise PrefectAuthError(
                        f"{where}: HTTP {response.status_code}, the API rejected the credentials "
                        "(check the prefectAuth secret and its scheme)")
                if response.status_code not in RETRYABLE_STATUS:
                    return self._decode(where, response)
                problem = f"HTTP {response.status_code}"
                if response.status_code == 429:
                    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            if attempt == MAX_ATTEMPTS:
                raise PrefectError(f"{where}: {problem}, gave up after {attempt} attempts")
            wait = retry_after if retry_after is not None else min(
                BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if time.monotonic() + wait >= self.deadline:
                raise PrefectError(f"{where}: {problem}, and no time is left to retry after {wait:.1f}s")
            self._sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    def _decode(where: str, response: requests.Response) -> Any:
        if response.status_code == 404:
            raise PrefectError(f"{where}: HTTP 404 not found (is prefectApiUrl the API root, ending in /api?)")
        if response.status_code >= 400:
            raise PrefectError(f"{where}: HTTP {response.status_code}: {response.text[:200]!r}")
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown content type")
            raise PrefectError(f"{where}: HTTP {response.status_code} with a body that is not JSON ({kind})") from None

    def _paged(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._list(path, {**body, "limit": PAGE_SIZE, "offset": len(items)})
            items.extend(page)
            if len(page) < PAGE_SIZE:
                return items

    def _list(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        page = self.request("POST", path, body)
        if not isinstance(page, list):
            raise PrefectError(f"POST {path}: expected a JSON list, got {type(page).__name__}")
        return page

    def _count(self, body: dict[str, Any]) -> int:
        value = self.request("POST", "/flow_runs/count", body)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PrefectError(f"POST /flow_runs/count: expected an integer, got {type(value).__name__}")
        return value

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R | PrefectError]:
        """Run ``fn`` over ``items`` concurrently (bounded); a PrefectError is returned in its slot.

        Credential errors are raised: they mean every other call fails too.
        """
        def guarded(item: T) -> R | PrefectError:
            try:
                return fn(item)
            except PrefectAuthError:
                raise
            except PrefectError as exc:
                return exc
            except (ValueError, KeyError, TypeError) as exc:  # a body of the wrong shape
                return PrefectError(f"unexpected response: {type(exc).__name__}: {exc}")

        if len(items) <= 1:
            return [guarded(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            return list(pool.map(guarded, items))

    # --- queues ----------------------------------------------------------------------

    def resolve_queues(self, queues: Sequence[QueueConfig]) -> dict[int, ResolvedQueue | PrefectError]:
        """Find every configured queue, its id and its pool's pause state.

        Raises PrefectError when the lookup itself fails (server down, bad
        credentials): nothing can be read then. A missing or ambiguous queue is
        an error for that entry only.
        """
        names = sorted({q.work_queue for q in queues})
        found = self._paged("/work_queues/filter", {"work_queues": {"name": {"any_": names}}})
        pool_ids = sorted({str(q["work_pool_id"]) for q in found if q.get("work_pool_id")})
        pools = {str(p["id"]): p for p in self._paged("/work_pools/filter", {"work_pools": {"id": {"any_": pool_ids}}})}

        results: dict[int, ResolvedQueue | PrefectError] = {}
        claimed: dict[str, int] = {}
        for queue in queues:
            matches = [q for q in found if q.get("name") == queue.work_queue
                       and (queue.work_pool is None or _pool_name(q, pools) == queue.work_pool)]
            if not matches:
                where = f"in pool {queue.work_pool!r}" if queue.work_pool else "in any pool"
                results[queue.index] = QueueNotFound(f"{queue.label}: no work queue {queue.work_queue!r} {where}")
                continue
            if len(matches) > 1:
                in_pools = ", ".join(sorted(_pool_name(q, pools) for q in matches))
                results[queue.index] = PrefectError(
                    f"{queue.label}: queue {queue.work_queue!r} exists in several pools ({in_pools}); set workPool")
                continue
            raw = matches[0]
            queue_id = str(raw["id"])
            if queue_id in claimed:
                results[queue.index] = PrefectError(
                    f"{queue.label}: is the same Prefect queue as queues[{claimed[queue_id]}]")
                continue
            claimed[queue_id] = queue.index
            pool = pools.get(str(raw.get("work_pool_id")), {})
            results[queue.index] = ResolvedQueue(
                config_index=queue.index, id=queue_id, name=str(raw["name"]), pool=_pool_name(raw, pools),
                queue_paused=bool(raw.get("is_paused")), pool_paused=bool(pool.get("is_paused")),
                concurrency_limit=raw.get("concurrency_limit"), pool_concurrency_limit=pool.get("concurrency_limit"),
                pool_active_slots=pool.get("active_slots"), last_polled=_parse_time(raw.get("last_polled")),
                created=_parse_time(raw.get("created")),
            )
        return results

    # --- workers -----------------------------------------------------------------------

    def read_workers(self, pools: Iterable[str]) -> dict[str, PoolWorkers | PrefectError]:
        """Per pool: how many workers are ONLINE and when the newest one last heartbeat (one call per pool)."""
        names = sorted(set(pools))

        def read(pool: str) -> PoolWorkers:
            workers = self._paged(f"/work_pools/{quote(pool, safe='')}/workers/filter", {})
            beats = [t for w in workers if (t := _parse_time(w.get("last_heartbeat_time"))) is not None]
            return PoolWorkers(online=sum(1 for w in workers if w.get("status") == "ONLINE"),
                               newest_heartbeat=max(beats, default=None))

        return dict(zip(names, self._map(read, names), strict=True))

    # --- remediation -------------------------------------------------------------------

    def reschedule_if_stuck(self, run_id: str, now: datetime, stuck_after_seconds: float) -> bool:
        """Set a stuck Pending run back to Scheduled so a healthy worker claims it; True when Prefect accepted.

        The run is read again first: Prefect's set_state has no compare-and-set,
        and a run its worker moved to Running since our read must not be touched.
        """
        path = f"/flow_runs/{quote(run_id, safe='')}"
        if not is_stuck_pending(_run_facts(self.request("GET", path)), now, stuck_after_seconds):
            return False
        result = self.request("POST", f"{path}/set_state",
                              {"state": {"type": "SCHEDULED", "name": "Scheduled"}, "force": False})
        return isinstance(result, dict) and result.get("status") == "ACCEPT"

    # --- runs --------------------------------------------------------------------------

    def read_counts(self, queues: Iterable[ResolvedQueue], now: datetime,
                    stuck_after_seconds: float) -> dict[str, QueueCounts | PrefectError]:
        """Per queue id: its run counts, or the error that kept them from being read."""
        by_pool: dict[str, list[str]] = {}
        for queue in queues:
            by_pool.setdefault(queue.pool, []).append(queue.id)
        jobs = [(pool, ids, stream) for pool, ids in by_pool.items() for stream in _streams(now)]
        outcomes = self._map(lambda job: self._read_stream(*job, now, stuck_after_seconds), jobs)

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

    def _read_stream(self, pool: str, queue_ids: list[str], stream: _Stream, now: datetime,
                     stuck_after_seconds: float, *, count_first: bool = False) -> dict[str, QueueCounts]:
        """Page through the stream, or read it narrower (slices, or per queue) when paging costs more.

        Most streams fit in one page, so the first request is that page. A
        slice of a deep stream (``count_first``) is counted first instead, and
        nothing more is read when the count is 0. A stream read narrower last
        time (``depth_memory``) is read narrower at once, with no page or total.
        """
        if self.depth_memory.is_deep(pool, stream.name):
            counts = self._read_narrower(pool, queue_ids, stream, now, stuck_after_seconds, total=None)
            total = sum(stream.runs_in(read) for read in counts.values())
            self.depth_memory.remember(pool, stream.name, deep=self._too_deep_to_page(total, 0, queue_ids, stream))
            return counts

        scope = {"work_pool_queues": {"id": {"any_": queue_ids}}}
        body = {"flow_runs": stream.flow_runs, **scope, "sort": "ID_DESC"}

        def page_at(offset: int) -> list[dict[str, Any]]:
            return self._list("/flow_runs/filter", {**body, "limit": PAGE_SIZE, "offset": offset})

        runs: list[dict[str, Any]] = []
        if not count_first:
            runs = page_at(0)
            if len(runs) < PAGE_SIZE:
                return summarize_runs(map(_run_facts, runs), queue_ids, now, stuck_after_seconds)
        total = self._count({"flow_runs": stream.flow_runs, **scope})
        if total == 0 and not runs:
            return {queue_id: QueueCounts() for queue_id in queue_ids}
        if self._too_deep_to_page(total, len(runs), queue_ids, stream):
            self.depth_memory.remember(pool, stream.name, deep=True)
            return self._read_narrower(pool, queue_ids, stream, now, stuck_after_seconds, total=total)

        pages_left = math.ceil(max(total - len(runs), 0) / PAGE_SIZE)
        last_page: list[dict[str, Any]] = runs
        for page in self._map(page_at, [len(runs) + PAGE_SIZE * i for i in range(pages_left)]):
            if isinstance(page, PrefectError):
                raise page
            runs.extend(page)
            last_page = page
        # The backlog may have grown since the count: read on until a page comes back short.
        while len(last_page) == PAGE_SIZE:
            last_page = page_at(len(runs))
            runs.extend(last_page)
        return summarize_runs(map(_run_facts, runs), queue_ids, now, stuck_after_seconds)

    @staticmethod
    def _too_deep_to_page(total: int, already_read: int, queue_ids: list[str], stream: _Stream) -> bool:
        if not (stream.split or stream.per_queue):
            return False
        pages_left = math.ceil(max(total - already_read, 0) / PAGE_SIZE)
        return pages_left * PAGE_COST_IN_COUNTS > len(queue_ids) * stream.calls_per_queue

    def _read_narrower(self, pool: str, queue_ids: list[str], stream: _Stream, now: datetime,
                       stuck_after_seconds: float, *, total: int | None) -> dict[str, QueueCounts]:
        """A deep stream as its slices (each counted first: often only one is deep), or a leaf per queue."""
        if not stream.split:
            return self._count_per_queue(queue_ids, stream, now, stuck_after_seconds, stream_total=total)
        parts = self._map(lambda part: self._read_stream(pool, queue_ids, part, now, stuck_after_seconds,
                                                         count_first=True), stream.split)
        totals = {queue_id: QueueCounts() for queue_id in queue_ids}
        for part in parts:
            if isinstance(part, PrefectError):
                raise part
            totals = {queue_id: totals[queue_id] + part[queue_id] for queue_id in queue_ids}
        return totals

    def _count_per_queue(self, queue_ids: list[str], stream: _Stream, now: datetime, stuck_after_seconds: float,
                         *, stream_total: int | None) -> dict[str, QueueCounts]:
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
            return self._count({"flow_runs": lookup.flow_runs, "work_pool_queues": {"id": {"any_": [queue_id]}}})

        def shared_list(lookup: _Lookup) -> list[RunFacts]:
            return self._list_runs(queue_ids, lookup, min(PAGE_SIZE, SHARED_LIST_RUNS_PER_QUEUE * len(queue_ids)))

        jobs: list[Callable[[], int | list[RunFacts]]] = [
            *(partial(count, item) for item in counts), *(partial(shared_list, lookup) for lookup in shared)]
        first_round = self._map(lambda job: job(), jobs)
        for outcome in first_round:
            if isinstance(outcome, PrefectError):
                raise outcome
        for (queue_id, lookup), value in zip(counts, first_round[:len(counts)], strict=True):
            fields[queue_id].update(dict.fromkeys(lookup.fields, value))
        answered: set[tuple[str, _Lookup]] = set()
        for lookup, runs in zip(shared, cast(list[list[RunFacts]], first_round[len(counts):]), strict=True):
            summary = summarize_runs(runs, queue_ids, now, stuck_after_seconds)
            for queue_id in {run.queue_id for run in runs} & set(queue_ids):
                fields[queue_id].update({f: getattr(summary[queue_id], f) for f in lookup.fields})
                answered.add((queue_id, lookup))

        own_lists = [(queue_id, lookup) for queue_id in queue_ids for lookup in lists
                     if (queue_id, lookup) not in answered
                     and (lookup.only_if is None or fields[queue_id].get(lookup.only_if, 0) > 0)]

        def own_list(item: tuple[str, _Lookup]) -> QueueCounts:
            queue_id, lookup = item
            runs = self._list_runs([queue_id], lookup, lookup.list_limit)
            return summarize_runs(runs, [queue_id], now, stuck_after_seconds)[queue_id]

        for (queue_id, lookup), read in zip(own_lists, self._map(own_list, own_lists), strict=True):
            if isinstance(read, PrefectError):
                raise read
            fields[queue_id].update({f: getattr(read, f) for f in lookup.fields})
        return {queue_id: QueueCounts(**values) for queue_id, values in fields.items()}

    def _list_runs(self, queue_ids: list[str], lookup: _Lookup, limit: int) -> list[RunFacts]:
        body = {"flow_runs": lookup.flow_runs, "work_pool_queues": {"id": {"any_": queue_ids}},
                "sort": lookup.list_sort, "limit": limit}
        return [_run_facts(run) for run in self._list("/flow_runs/filter", body)]


def _pool_name(queue: dict[str, Any], pools: dict[str, dict[str, Any]]) -> str:
    name = queue.get("work_pool_name") or pools.get(str(queue.get("work_pool_id")), {}).get("name")
    return str(name) if name else "unknown-pool"


def _retry_after_seconds(header: str | None) -> float | None:
    if not header:
        return None
    """Seconds to wait, from a number or an HTTP date; None when the header says nothing usable."""
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:  # "-0000" means UTC without saying so
        parsed = parsed.replace(tzinfo=UTC)
    return max(0.0, (parsed - datetime.now(UTC)).total_seconds())
