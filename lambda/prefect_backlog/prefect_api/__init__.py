"""The Prefect side of a tick: the HTTP transport, the queries (queues, workers, writes) and the run reader."""

from prefect_backlog.prefect_api.client import PrefectClient
from prefect_backlog.prefect_api.ledger import RunLedger
from prefect_backlog.prefect_api.queries import PoolWorkers, QueueNotFound, ResolvedQueue
from prefect_backlog.prefect_api.runs import DepthMemory
from prefect_backlog.prefect_api.transport import (
    PAGE_SIZE,
    PrefectAuthError,
    PrefectError,
    PrefectHttp,
    authorization_header,
)

__all__ = ["PAGE_SIZE", "DepthMemory", "PoolWorkers", "PrefectAuthError", "PrefectClient", "PrefectError",
           "PrefectHttp", "QueueNotFound", "ResolvedQueue", "RunLedger", "authorization_header"]
