"""The Prefect side of one sample: one transport, and the reads and writes the tick asks for."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime

import requests

from prefect_backlog.backlog import QueueCounts, RunFacts
from prefect_backlog.config import QueueConfig
from prefect_backlog.fanout import Fanout
from prefect_backlog.prefect_api import queries
from prefect_backlog.prefect_api.ledger import RunLedger
from prefect_backlog.prefect_api.queries import PoolWorkers, ResolvedQueue
from prefect_backlog.prefect_api.runs import DepthMemory, QueueScope, RunReader
from prefect_backlog.prefect_api.transport import PrefectError, PrefectHttp


class PrefectClient:
    """What one publisher sample asks Prefect, over one :class:`PrefectHttp`.

    Pass the same ``depth_memory`` to the clients of successive samples (the
    handler keeps one per container) so streams that were too deep to page are
    read narrower at once, and the same ``ledger`` so the in-flight runs of
    protected queues are read by their changes (``ledger.py``; None: in full).
    The reads run on the tick's :class:`Fanout`; called without one, a read
    makes its own for the call.
    """

    def __init__(self, api_url: str, *, authorization: str | None = None, deadline: float | None = None,
                 max_concurrency: int = 8, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, depth_memory: DepthMemory | None = None,
                 ledger: RunLedger | None = None) -> None:
        self.http = PrefectHttp(api_url, authorization=authorization, deadline=deadline,
                                max_concurrency=max_concurrency, session=session, sleep=sleep)
        self.depth_memory = depth_memory or DepthMemory()
        self.ledger = ledger

    @property
    def requests_sent(self) -> int:
        return self.http.requests_sent

    @property
    def max_concurrency(self) -> int:
        return self.http.max_concurrency

    @contextmanager
    def _fanout(self, given: Fanout | None) -> Iterator[Fanout]:
        if given is not None:
            yield given
            return
        with Fanout(self.max_concurrency, name="prefect") as own:
            yield own

    def resolve_queues(self, queues: Sequence[QueueConfig]) -> dict[int, ResolvedQueue | PrefectError]:
        return queries.resolve_queues(self.http, queues)

    def read_counts(self, queues: Iterable[QueueScope], now: datetime, stuck_after_seconds: float,
                    fanout: Fanout | None = None, prewarm: Mapping[str, int] | None = None,
                    listed: Collection[str] = ()) -> dict[str, QueueCounts | PrefectError]:
        """``prewarm``: each queue id's pre-warm window in seconds, for its upcoming runs; ``listed``: the
        queue ids whose in-flight runs are needed one by one (in ``QueueCounts.in_flight_runs``)."""
        with self._fanout(fanout) as pool:
            return RunReader(self.http, pool, self.depth_memory, now, stuck_after_seconds,
                             prewarm, listed, self.ledger).read_counts(queues)

    def read_workers(self, pools: Iterable[str], fanout: Fanout | None = None) -> dict[str, PoolWorkers | PrefectError]:
        with self._fanout(fanout) as pool:
            return queries.read_workers(self.http, pool, pools)

    def pool_active_runs(self, pools: Iterable[str], fanout: Fanout | None = None) -> dict[str, int | PrefectError]:
        with self._fanout(fanout) as pool:
            return queries.pool_active_runs(self.http, pool, pools)

    def server_version(self) -> str:
        return queries.server_version(self.http)

    def reschedule_if_stuck(self, run_id: str, now: datetime, stuck_after_seconds: float) -> bool:
        return queries.reschedule_if_stuck(self.http, run_id, now, stuck_after_seconds)

    def crash_if_orphaned(self, run_id: str, still: Callable[[RunFacts], bool], cause: str) -> bool:
        return queries.crash_if_orphaned(self.http, run_id, still, cause)

    def reschedule_if_orphaned(self, run_id: str, still: Callable[[RunFacts], bool], message: str,
                               now: datetime) -> bool:
        return queries.reschedule_if_orphaned(self.http, run_id, still, message, now)
