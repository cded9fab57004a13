"""Build a Prefect work-queue backlog through the REST API only (2.18.x and 3.x).

No prefect import: plain ``requests`` against ``<api_url>`` (ending in ``/api``).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

Json = dict[str, Any]
DEFAULT_AGENT_POOL = "default-agent-pool"  # where Prefect 2.x keeps queues made without a pool


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def parse_time(value: str) -> datetime:
    """Parse an API timestamp (3.x ends in ``Z``, 2.x in ``+00:00``)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def now_iso(delta: timedelta = timedelta(0)) -> str:
    return iso(datetime.now(UTC) + delta)


def make_session(auth_string: str | None = None) -> requests.Session:
    """A session sending ``Authorization: Basic`` when ``auth_string`` ("user:pass") is set."""
    session = requests.Session()
    session.headers["Content-Type"] = "application/json"
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        session.headers["Authorization"] = f"Basic {token}"
    return session


@dataclass(frozen=True)
class Target:
    """One queue of one pool, with a deployment that sends runs to it."""

    pool: str
    queue: str
    queue_id: str
    pool_id: str
    deployment_id: str


class BacklogClient:
    def __init__(
        self, api_url: str, auth_string: str | None = None, timeout: float = 30.0, retries_503: int = 8
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.retries_503 = retries_503
        self.retried_503 = 0
        self.session = make_session(auth_string)
        self.timeout = timeout

    # -- raw calls ---------------------------------------------------------
    def request(self, method: str, path: str, json: Any = None, ok: tuple[int, ...] = ()) -> requests.Response:
        # A SQLite-backed server answers 503 ("database is locked") when writes
        # overlap, including its own background services' writes: retry those.
        for attempt in range(self.retries_503 + 1):
            resp = self.session.request(method, self.api_url + path, json=json, timeout=self.timeout)
            if resp.status_code != 503 or attempt == self.retries_503:
                break
            self.retried_503 += 1
            time.sleep(min(0.1 * 2**attempt, 2.0))
        if resp.status_code >= 400 and resp.status_code not in ok:
            raise requests.HTTPError(f"{method} {path} -> {resp.status_code}: {resp.text[:500]}", response=resp)
        return resp

    def get(self, path: str) -> Any:
        return self.request("GET", path).json()

    def post(self, path: str, json: Any = None) -> Any:
        resp = self.request("POST", path, json=json if json is not None else {})
        return resp.json() if resp.content else None

    # -- pools and queues --------------------------------------------------
    def create_pool(self, name: str, type: str = "process", **fields: Any) -> Json:
        """Create a work pool (it gets a ``default`` queue); an existing pool is returned as is."""
        resp = self.request("POST", "/work_pools/", {"name": name, "type": type, **fields}, ok=(409,))
        return dict(resp.json()) if resp.status_code != 409 else self.get_pool(name)

    def get_pool(self, name: str) -> Json:
        return dict(self.get(f"/work_pools/{name}"))

    def create_queue(self, pool: str, name: str, **fields: Any) -> Json:
        resp = self.request("POST", f"/work_pools/{pool}/queues/", {"name": name, **fields}, ok=(409,))
        return dict(resp.json()) if resp.status_code != 409 else self.get_queue(pool, name)

    def get_queue(self, pool: str, name: str) -> Json:
        return dict(self.get(f"/work_pools/{pool}/queues/{name}"))

    def pause_queue(self, queue_id: str, paused: bool = True) -> None:
        self.request("PATCH", f"/work_queues/{queue_id}", {"is_paused": paused})

    def pause_pool(self, pool: str, paused: bool = True) -> None:
        self.request("PATCH", f"/work_pools/{pool}", {"is_paused": paused})

    def delete_queue(self, pool: str, name: str) -> None:
        self.request("DELETE", f"/work_pools/{pool}/queues/{name}")

    # -- flows and deployments --------------------------------------------
    def create_flow(self, name: str = "backlog-probe") -> str:
        return str(self.post("/flows/", {"name": name})["id"])

    def create_deployment(self, flow_id: str, name: str, pool: str, queue: str) -> str:
        body = {"name": name, "flow_id": flow_id, "work_pool_name": pool, "work_queue_name": queue}
        return str(self.post("/deployments/", body)["id"])

    def target(self, pool: str, queue: str, flow_name: str = "backlog-probe") -> Target:
        """Ensure pool, queue and a deployment ``<pool>--<queue>`` routed to them."""
        pool_obj = self.create_pool(pool)
        queue_obj = self.create_queue(pool, queue)
        dep = self.create_deployment(self.create_flow(flow_name), f"{pool}--{queue}", pool, queue)
        return Target(pool, queue, str(queue_obj["id"]), str(pool_obj["id"]), dep)

    def agent_target(self, queue: str, flow_name: str = "backlog-probe") -> Target:
        """A pool-less queue as Prefect 2.x agents use it, and a deployment that names only the queue.

        ``POST /work_queues/`` and a deployment without ``work_pool_name`` put the queue in
        ``default-agent-pool`` (2.x creates that pool on first use).
        """
        resp = self.request("POST", "/work_queues/", {"name": queue}, ok=(409,))
        queue_obj = resp.json() if resp.status_code != 409 else None
        flow_id = self.create_flow(flow_name)
        body = {"name": f"agent--{queue}", "flow_id": flow_id, "work_queue_name": queue}
        dep = str(self.post("/deployments/", body)["id"])
        if queue_obj is None:
            found = self.post("/work_queues/filter", {"work_queues": {"name": {"any_": [queue]}}})
            queue_obj = next(q for q in found if q.get("work_pool_name") == DEFAULT_AGENT_POOL)
        pool_id = str(queue_obj["work_pool_id"])
        return Target(DEFAULT_AGENT_POOL, queue, str(queue_obj["id"]), pool_id, dep)

    # -- flow runs ---------------------------------------------------------
    def create_run(self, deployment_id: str, state: Json, **fields: Any) -> Json:
        body = {"state": state, **fields}
        return dict(self.post(f"/deployments/{deployment_id}/create_flow_run", body))

    def set_state(self, run_id: str, type: str, name: str | None = None, force: bool = True) -> Json:
        state: Json = {"type": type}
        if name:
            state["name"] = name
        return dict(self.post(f"/flow_runs/{run_id}/set_state", {"state": state, "force": force}))

    def late_run(self, deployment_id: str, age: timedelta = timedelta(minutes=10)) -> Json:
        """SCHEDULED/"Late", scheduled ``age`` ago."""
        return self.create_run(deployment_id, _scheduled(-age, "Late"))

    def overdue_scheduled_run(self, deployment_id: str, age: timedelta = timedelta(minutes=10)) -> Json:
        """SCHEDULED/"Scheduled" with a past time (the Late marker flips it, if running)."""
        return self.create_run(deployment_id, _scheduled(-age))

    def future_scheduled_run(self, deployment_id: str, ahead: timedelta = timedelta(hours=1)) -> Json:
        return self.create_run(deployment_id, _scheduled(ahead))

    def pending_run(self, deployment_id: str) -> Json:
        run = self.create_run(deployment_id, _scheduled(timedelta(0)))
        self.set_state(run["id"], "PENDING")
        return self.get_run(run["id"])

    def running_run(self, deployment_id: str) -> Json:
        run = self.create_run(deployment_id, _scheduled(timedelta(0)))
        self.set_state(run["id"], "PENDING")
        self.set_state(run["id"], "RUNNING")
        return self.get_run(run["id"])

    def run_in_state(self, deployment_id: str, name: str, age: timedelta = timedelta(minutes=10)) -> Json:
        """A SCHEDULED-type run with state ``name`` (e.g. "AwaitingRetry", "AwaitingConcurrencySlot"),
        due ``age`` ago."""
        return self.create_run(deployment_id, _scheduled(-age, name))

    def get_run(self, run_id: str) -> Json:
        return dict(self.get(f"/flow_runs/{run_id}"))

    def count_runs(self, body: Json) -> int:
        return int(self.post("/flow_runs/count", body))

    def filter_runs(self, body: Json) -> list[Json]:
        return list(self.post("/flow_runs/filter", body))

    def count_in_queue(self, pool: str, queue: str, **flow_runs_filter: Any) -> int:
        """Runs of one pool's queue, e.g. ``count_in_queue("a", "default", state={...})``."""
        body: Json = {
            "work_pools": {"name": {"any_": [pool]}},
            "work_pool_queues": {"name": {"any_": [queue]}},
        }
        if flow_runs_filter:
            body["flow_runs"] = flow_runs_filter
        return self.count_runs(body)


def _scheduled(offset: timedelta, name: str | None = None) -> Json:
    state: Json = {"type": "SCHEDULED", "state_details": {"scheduled_time": now_iso(offset)}}
    if name:
        state["name"] = name
    return state


def state_type(*types: str) -> Json:
    return {"type": {"any_": list(types)}}


def state_name(*names: str) -> Json:
    return {"name": {"any_": list(names)}}
