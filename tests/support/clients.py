"""Builders for the Prefect client tests: queue entries, a client that records its sleeps, resolved queues."""

from __future__ import annotations

import time
from typing import Any

from prefect_backlog.config import QueueConfig
from prefect_backlog.prefect_api import PrefectClient, ResolvedQueue
from tests.support.fake_prefect import API


def queue(index: int, name: str, pool: str | None) -> QueueConfig:
    return QueueConfig(index=index, work_queue=name, work_pool=pool, cluster="c", service="s",
                       runs_in_worker_task=False)


def client(**kwargs: Any) -> PrefectClient:
    sleeps: list[float] = []
    made = PrefectClient(API, deadline=time.monotonic() + 30, sleep=sleeps.append, **kwargs)
    made.sleeps = sleeps  # type: ignore[attr-defined]
    return made


def resolved(c: PrefectClient, *queues: QueueConfig) -> list[ResolvedQueue]:
    found = c.resolve_queues(queues)
    assert all(isinstance(r, ResolvedQueue) for r in found.values()), found
    return [r for r in found.values() if isinstance(r, ResolvedQueue)]
