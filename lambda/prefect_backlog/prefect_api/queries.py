"""What the publisher asks Prefect besides flow runs: which queues it means, their pools' workers, and its writes.

Queues are resolved in one paginated ``/work_queues/filter`` and their pools in
one ``/work_pools/filter``, so a tick costs the same few requests for 1 or 500
queues. Nothing here calls ``get_runs`` or ``get_scheduled_flow_runs``: both
record a poll and would make an idle queue look healthy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from prefect_backlog.backlog import RunFacts, is_stuck_pending
from prefect_backlog.config import QueueConfig, queue_path
from prefect_backlog.fanout import Fanout
from prefect_backlog.prefect_api.runs import run_facts
from prefect_backlog.prefect_api.transport import PrefectError, PrefectHttp, iso, parse_time, settled


class QueueNotFound(PrefectError):
    """A configured queue does not exist (typo, or deleted after deploy)."""


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

    @property
    def path(self) -> str:
        return queue_path(self.pool, self.name)


@dataclass(frozen=True)
class PoolWorkers:
    online: int
    newest_heartbeat: datetime | None
    online_names: frozenset[str] = frozenset()  # the names of the ONLINE ones (a live worker is not an orphan)


def resolve_queues(http: PrefectHttp, queues: Sequence[QueueConfig]) -> dict[int, ResolvedQueue | PrefectError]:
    """Find every configured queue, its id and its pool's pause state, by config index.

    Raises PrefectError when the lookup itself fails (server down, bad
    credentials): nothing can be read then. A missing or ambiguous queue is
    an error for that entry only.
    """
    names = sorted({q.work_queue for q in queues})
    found = http.paged("/work_queues/filter", {"work_queues": {"name": {"any_": names}}})
    pool_ids = sorted({str(q["work_pool_id"]) for q in found if q.get("work_pool_id")})
    pools = {str(p["id"]): p for p in http.paged("/work_pools/filter", {"work_pools": {"id": {"any_": pool_ids}}})}

    results: dict[int, ResolvedQueue | PrefectError] = {}
    claimed: dict[str, int] = {}
    for queue in queues:
        matches = [q for q in found if q.get("name") == queue.work_queue
                   and (queue.work_pool is None or _pool_name(q, pools) == queue.work_pool)]
        if not matches:
            where = f"in pool {queue.work_pool!r}" if queue.work_pool is not None else "in any pool"
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
            pool_active_slots=pool.get("active_slots"), last_polled=parse_time(raw.get("last_polled")),
            created=parse_time(raw.get("created")),
        )
    return results


def _pool_name(queue: dict[str, Any], pools: dict[str, dict[str, Any]]) -> str:
    name = queue.get("work_pool_name") or pools.get(str(queue.get("work_pool_id")), {}).get("name")
    return str(name) if name else "unknown-pool"


def read_workers(http: PrefectHttp, fanout: Fanout, pools: Iterable[str]) -> dict[str, PoolWorkers | PrefectError]:
    """Per pool: which workers are ONLINE and when the newest one last heartbeat (one call per pool)."""
    names = sorted(set(pools))

    def read(pool: str) -> PoolWorkers:
        workers = http.paged(f"/work_pools/{quote(pool, safe='')}/workers/filter", {})
        beats = [t for w in workers if (t := parse_time(w.get("last_heartbeat_time"))) is not None]
        online = frozenset(str(w.get("name")) for w in workers if w.get("status") == "ONLINE")
        return PoolWorkers(online=len(online), newest_heartbeat=max(beats, default=None), online_names=online)

    return dict(zip(names, fanout.map(settled(read), names), strict=True))


def server_version(http: PrefectHttp) -> str:
    """The server's Prefect version (``GET /admin/version``), e.g. "2.18.3"."""
    return str(http.request("GET", "/admin/version"))


def reschedule_if_stuck(http: PrefectHttp, run_id: str, now: datetime, stuck_after_seconds: float) -> bool:
    """Set a stuck Pending run back to Scheduled so a healthy worker claims it; True when Prefect accepted.

    The run is read again first: Prefect's set_state has no compare-and-set,
    and a run its worker moved to Running since our read must not be touched.
    """
    return _set_state_if(http, run_id, lambda run: is_stuck_pending(run, now, stuck_after_seconds),
                         {"type": "SCHEDULED", "name": "Scheduled"})


def crash_if_orphaned(http: PrefectHttp, run_id: str, still: Callable[[RunFacts], bool], cause: str) -> bool:
    """Set an orphaned run to Crashed so retries, automations and concurrency slots move on; True when accepted.

    The run is read again first and left alone unless ``still(run)`` (the caller's rule: still held by its
    dead task). A run that finished, started in its own task, or that another worker picked up since (a
    resumed run gets a new submission) is not ours.
    """
    return _set_state_if(http, run_id, still, {"type": "CRASHED", "name": "Crashed", "message": cause})


def reschedule_if_orphaned(http: PrefectHttp, run_id: str, still: Callable[[RunFacts], bool], message: str,
                           now: datetime) -> bool:
    """Set an orphaned run back to Scheduled, due ``now``, so a live worker runs it again; True when accepted.

    Read again first and left alone unless ``still(run)``. Forced: Prefect's orchestration has no rule that
    takes a Running (or Pending, Cancelling, Paused) flow run back to Scheduled, and this run's process is gone.
    Checked on 3.8 and 2.18: the run keeps its labels and goes Scheduled -> Pending -> Running under the worker
    that claims it.
    """
    state = {"type": "SCHEDULED", "name": "Scheduled", "message": message,
             "state_details": {"scheduled_time": iso(now)}}
    return _set_state_if(http, run_id, still, state, force=True)


def _set_state_if(http: PrefectHttp, run_id: str, still: Callable[[RunFacts], bool], state: dict[str, Any], *,
                  force: bool = False) -> bool:
    """Read the run again and, if ``still(run)``, propose ``state``; True when Prefect accepted."""
    path = f"/flow_runs/{quote(run_id, safe='')}"
    if not still(run_facts(http.request("GET", path))):
        return False
    result = http.request("POST", f"{path}/set_state", {"state": state, "force": force})
    return isinstance(result, dict) and result.get("status") == "ACCEPT"


def pool_active_runs(http: PrefectHttp, fanout: Fanout, pools: Iterable[str]) -> dict[str, int | PrefectError]:
    """Per pool, its Pending and Running runs: what its concurrency limit counts (one count per pool).

    Prefect 3.x reports this as the pool's ``active_slots``; 2.x does not, so without this a 2.x pool
    at its limit would look free, and the runs waiting on it would count as demand.
    """
    names = sorted(set(pools))

    def count(pool: str) -> int:
        return http.count({"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
                           "work_pools": {"name": {"any_": [pool]}}})

    return dict(zip(names, fanout.map(settled(count), names), strict=True))
