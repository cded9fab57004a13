"""Reads queue facts and backlogs from the Prefect REST API (2.x, 3.x and Prefect Cloud).

Request budget: Prefect Cloud rate-limits per account, so a tick must not cost
one or more requests per queue. Queues are resolved in one paginated
``/work_queues/filter`` call and their pools in one ``/work_pools/filter``
call. Runs are then read per pool in two streams (due, in flight), one page of
200 at a time; only where a pool's backlog is so deep that paging would cost
more requests than counting does the client switch to a few
``/flow_runs/count`` calls per queue. Either way each request is retried with
backoff on connection errors, timeouts, 5xx and 429 (honouring Retry-After),
and never past the deadline the caller gives.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
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
# A page of 200 full flow runs costs the server far more than a COUNT: weigh it so.
PAGE_COST_IN_COUNTS = 4
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


@dataclass(frozen=True)
class _Lookup:
    """A per-queue call of count mode: a count, or a short list of runs summarized like a page."""

    field: str  # the QueueCounts field it fills
    flow_runs: dict[str, Any]
    list_sort: str | None = None  # None: POST /flow_runs/count; else POST /flow_runs/filter sorted so
    list_limit: int = PAGE_SIZE   # that the first ``list_limit`` runs are the ones that matter


@dataclass(frozen=True)
class _Stream:
    """One server-side slice of a pool's runs, and the per-queue calls that replace paging through it."""

    name: str
    flow_runs: dict[str, Any]
    owns: tuple[str, ...]  # the QueueCounts fields this stream fills
    per_queue: tuple[_Lookup, ...]


def _streams(now: datetime) -> tuple[_Stream, _Stream]:
    scheduled = {"type": {"any_": ["SCHEDULED"]}}
    due_runs = {"state": {**scheduled, "name": {"any_": list(DUE_STATE_NAMES)}},
                "next_scheduled_start_time": {"before_": _iso(now)}}
    late_runs = {"state": {**scheduled, "name": {"any_": [LATE_STATE_NAME]}}}
    pending_runs = {"state": {"type": {"any_": ["PENDING"]}}}
    due = _Stream(
        name="due", flow_runs=due_runs, owns=("due", "late", "oldest_late_at"),
        per_queue=(_Lookup("due", due_runs), _Lookup("late", late_runs),
                   _Lookup("oldest_late_at", late_runs, list_sort="NEXT_SCHEDULED_START_TIME_ASC", list_limit=1)))
    in_flight = _Stream(
        name="in-flight", flow_runs={"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
        owns=("pending", "running", "stuck_pending_ids"),
        # Stuck runs are found among the longest-waiting Pending runs; more than a page of them
        # in one queue is reported as a page.
        per_queue=(_Lookup("pending", pending_runs), _Lookup("running", {"state": {"type": {"any_": ["RUNNING"]}}}),
                   _Lookup("stuck_pending_ids", pending_runs, list_sort="EXPECTED_START_TIME_ASC")))
    return due, in_flight


class PrefectClient:
    def __init__(self, api_url: str, *, authorization: str | None = None, deadline: float | None = None,
                 max_concurrency: int = 8, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``deadline`` is a ``time.monotonic()`` value no request or retry may run past."""
        self.api_url = api_url.rstrip("/")
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
        outcomes = self._map(lambda job: self._read_stream(job[1], job[2], now, stuck_after_seconds), jobs)

        merged: dict[str, QueueCounts | PrefectError] = {}
        for (pool, ids, stream), outcome in zip(jobs, outcomes, strict=True):
            for queue_id in ids:
                previous = merged.get(queue_id, QueueCounts())
                if isinstance(previous, PrefectError):
                    continue
                if isinstance(outcome, PrefectError):
                    merged[queue_id] = PrefectError(f"pool {pool!r}, {stream.name} runs: {outcome}")
                else:
                    read = outcome[queue_id]
                    merged[queue_id] = replace(previous, **{f: getattr(read, f) for f in stream.owns})
        return merged

    def _read_stream(self, queue_ids: list[str], stream: _Stream, now: datetime,
                     stuck_after_seconds: float) -> dict[str, QueueCounts]:
        scope = {"work_pool_queues": {"id": {"any_": queue_ids}}}
        body = {"flow_runs": stream.flow_runs, **scope, "sort": "ID_DESC"}
        first = self._list("/flow_runs/filter", {**body, "limit": PAGE_SIZE, "offset": 0})
        if len(first) < PAGE_SIZE:
            return summarize_runs(map(_run_facts, first), queue_ids, now, stuck_after_seconds)

        total = self._count({"flow_runs": stream.flow_runs, **scope})
        pages_left = math.ceil(max(total - PAGE_SIZE, 0) / PAGE_SIZE)
        if pages_left * PAGE_COST_IN_COUNTS > len(queue_ids) * len(stream.per_queue):
            return self._count_per_queue(queue_ids, stream, now, stuck_after_seconds)

        def page_of(offset: int) -> list[dict[str, Any]]:
            return self._list("/flow_runs/filter", {**body, "limit": PAGE_SIZE, "offset": offset})

        runs = list(first)
        last_page = first
        for page in self._map(page_of, [PAGE_SIZE * (i + 1) for i in range(pages_left)]):
            if isinstance(page, PrefectError):
                raise page
            runs.extend(page)
            last_page = page
        # The backlog may have grown since the count: read on until a page comes back short.
        next_offset = PAGE_SIZE * (pages_left + 1)
        while len(last_page) == PAGE_SIZE:
            last_page = page_of(next_offset)
            runs.extend(last_page)
            next_offset += PAGE_SIZE
        return summarize_runs(map(_run_facts, runs), queue_ids, now, stuck_after_seconds)

    def _count_per_queue(self, queue_ids: list[str], stream: _Stream, now: datetime,
                         stuck_after_seconds: float) -> dict[str, QueueCounts]:
        calls = [(queue_id, lookup) for queue_id in queue_ids for lookup in stream.per_queue]

        def call(item: tuple[str, _Lookup]) -> Any:
            queue_id, lookup = item
            body = {"flow_runs": lookup.flow_runs, "work_pool_queues": {"id": {"any_": [queue_id]}}}
            if lookup.list_sort is None:
                return self._count(body)
            runs = self._list("/flow_runs/filter", {**body, "sort": lookup.list_sort, "limit": lookup.list_limit})
            summary = summarize_runs(map(_run_facts, runs), [queue_id], now, stuck_after_seconds)[queue_id]
            return getattr(summary, lookup.field)

        fields: dict[str, dict[str, Any]] = {queue_id: {} for queue_id in queue_ids}
        for (queue_id, lookup), value in zip(calls, self._map(call, calls), strict=True):
            if isinstance(value, PrefectError):
                raise value
            fields[queue_id][lookup.field] = value
        return {queue_id: QueueCounts(**values) for queue_id, values in fields.items()}


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
