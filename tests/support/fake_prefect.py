"""An in-memory stand-in for the few Prefect endpoints the client uses, served through `responses`.

It applies exactly the filters the client sends (state type/name ``any_``, state type and id ``not_any_``,
id ``any_``,
``next_scheduled_start_time.before_``, queue ids, names, limit/offset), so unit
tests can check paging, counting and error handling quickly. Whether the real
API behaves like this is what tests/integration checks against real servers.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import responses

API = "http://prefect.test/api"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@dataclass
class FakePrefect:
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # pool -> workers
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)  # the Authorization header of each call
    version: str = "3.8.8"  # what GET /admin/version answers
    # The URL of the request being served, per thread: the client sends requests from several threads.
    _serving: threading.local = field(default_factory=threading.local, repr=False)
    # path -> function(body) returning (status, headers, body) to inject faults; None falls through
    faults: dict[str, Callable[[dict[str, Any]], tuple[int, dict[str, str], str] | None]] = field(default_factory=dict)

    def pool(self, name: str, *, paused: bool = False) -> dict[str, Any]:
        pool = {"id": str(uuid.uuid4()), "name": name, "is_paused": paused, "concurrency_limit": None}
        self.pools[name] = pool
        self.queue(name, "default")
        return pool

    def queue(self, pool: str, name: str, *, paused: bool = False) -> dict[str, Any]:
        queue = {"id": str(uuid.uuid4()), "name": name, "is_paused": paused, "concurrency_limit": None,
                 "work_pool_id": self.pools[pool]["id"], "work_pool_name": pool, "last_polled": None,
                 "created": (NOW - timedelta(hours=1)).isoformat()}
        self.queues.append(queue)
        return queue

    def queue_id(self, pool: str, name: str) -> str:
        return next(q["id"] for q in self.queues if q["work_pool_name"] == pool and q["name"] == name)

    def add_runs(self, pool: str, queue: str, count: int, state_type: str, state_name: str | None = None,
                 *, minutes_ago: float = 5.0, in_state_for_minutes: float = 1.0,
                 worker: str | None = None) -> list[str]:
        """Runs of one queue; ``worker`` labels them as that worker's (``prefect.worker.name``, as 3.x does).
        Without it a run carries no labels at all, as on Prefect 2.x."""
        when = (NOW - timedelta(minutes=minutes_ago)).isoformat()
        since = (NOW - timedelta(minutes=in_state_for_minutes)).isoformat()
        queue_id = self.queue_id(pool, queue)
        ids = []
        for _ in range(count):
            name = state_name or state_type.title()
            ids.append(str(uuid.uuid4()))
            self.runs.append({"id": ids[-1], "work_queue_id": queue_id, "work_queue_name": queue,
                              "state_type": state_type, "state_name": name,
                              "state": {"type": state_type, "name": name, "timestamp": since},
                              "next_scheduled_start_time": when if state_type == "SCHEDULED" else None,
                              "expected_start_time": when,
                              **({"labels": {"prefect.worker.name": worker}} if worker else {})})
        return ids

    def run(self, run_id: str) -> dict[str, Any]:
        return next(r for r in self.runs if r["id"] == run_id)

    def requests_to(self, path: str) -> int:
        return sum(1 for p, _ in self.calls if p == path)

    # --- serving ---------------------------------------------------------------------

    def install(self, mock: responses.RequestsMock) -> None:
        for path, handler in [("/work_queues/filter", self._queues), ("/work_pools/filter", self._pools),
                              ("/flow_runs/filter", self._runs), ("/flow_runs/count", self._count)]:
            mock.add_callback(responses.POST, API + path, callback=self._serve(path, handler))
        run_url = re.compile(re.escape(API) + r"/flow_runs/([0-9a-f-]{36})$")
        mock.add_callback(responses.GET, run_url, callback=self._serve("GET /flow_runs/{id}", self._get_run))
        set_state = re.compile(re.escape(API) + r"/flow_runs/([0-9a-f-]{36})/set_state")
        mock.add_callback(responses.POST, set_state, callback=self._serve("/flow_runs/{id}/set_state",
                                                                          self._set_state))
        mock.add_callback(responses.GET, API + "/admin/version",
                          callback=self._serve("GET /admin/version", lambda _: self.version))
        workers = re.compile(re.escape(API) + r"/work_pools/([^/]+)/workers/filter")
        mock.add_callback(responses.POST, workers, callback=self._serve("/work_pools/{pool}/workers/filter",
                                                                        self._workers))

    def _serve(self, path: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[Any], Any]:
        def callback(request: Any) -> tuple[int, dict[str, str], str]:
            body = json.loads(request.body or b"{}")
            self._serving.url = request.url
            self.calls.append((path, body))
            self.authorizations.append(request.headers.get("Authorization"))
            fault = self.faults.get(path)
            injected = fault(body) if fault else None
            if injected is not None:
                return injected
            return 200, {"Content-Type": "application/json"}, json.dumps(handler(body))
        return callback

    @staticmethod
    def _page(items: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
        limit = body.get("limit", 200)
        assert limit <= 200, "the real API rejects limit > 200"
        offset = body.get("offset", 0)
        return items[offset:offset + limit]

    def worker(self, pool: str, *, seconds_ago: float, online: bool = True) -> None:
        beat = (NOW - timedelta(seconds=seconds_ago)).isoformat()
        self.workers.setdefault(pool, []).append(
            {"name": f"w{len(self.workers.get(pool, []))}", "last_heartbeat_time": beat,
             "status": "ONLINE" if online else "OFFLINE"})

    def _workers(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        pool = self._serving.url.rsplit("/work_pools/", 1)[1].split("/")[0]
        return self._page(self.workers.get(pool, []), body)

    def _run_id(self) -> str:
        return self._serving.url.split("/flow_runs/", 1)[1].split("/")[0]

    def _get_run(self, _: dict[str, Any]) -> dict[str, Any]:
        return self.run(self._run_id())

    def _set_state(self, body: dict[str, Any]) -> dict[str, Any]:
        run = self.run(self._run_id())
        state = body["state"]
        scheduled = (state.get("state_details") or {}).get("scheduled_time") or NOW.isoformat()
        run.update(state_type=state["type"], state_name=state.get("name") or state["type"].title(),
                   state={"type": state["type"], "name": state.get("name"), "timestamp": NOW.isoformat(),
                          "message": state.get("message"), "forced": bool(body.get("force"))},
                   next_scheduled_start_time=scheduled if state["type"] == "SCHEDULED" else None)
        return {"status": "ACCEPT", "state": run["state"]}

    def _queues(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        names = body["work_queues"]["name"]["any_"]
        return self._page([q for q in self.queues if q["name"] in names], body)

    def _pools(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ids = body["work_pools"]["id"]["any_"]
        return self._page([p for p in self.pools.values() if p["id"] in ids], body)

    def _matching(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        if "work_pool_queues" in body:
            ids = body["work_pool_queues"]["id"]["any_"]
        elif "work_pools" in body:  # a whole pool, by name
            pools = body["work_pools"]["name"]["any_"]
            ids = [q["id"] for q in self.queues if q["work_pool_name"] in pools]
        else:  # no scope: every run
            ids = [q["id"] for q in self.queues]
        flow_runs = body.get("flow_runs", {})
        state = flow_runs.get("state", {})
        run_ids = flow_runs.get("id", {})
        before = flow_runs.get("next_scheduled_start_time", {}).get("before_")
        after = flow_runs.get("next_scheduled_start_time", {}).get("after_")
        selected = []
        for run in self.runs:
            if run["work_queue_id"] not in ids:
                continue
            if "any_" in run_ids and run["id"] not in run_ids["any_"]:
                continue
            if "not_any_" in run_ids and run["id"] in run_ids["not_any_"]:
                continue
            kind, name = state.get("type", {}), state.get("name", {})
            checks = [run["state_type"] in kind["any_"]] if "any_" in kind else []
            checks += [run["state_type"] not in kind["not_any_"]] if "not_any_" in kind else []
            checks += [run["state_name"] in name["any_"]] if "any_" in name else []
            if checks and not (any(checks) if state.get("operator") == "or_" else all(checks)):
                continue
            if before and not (run["next_scheduled_start_time"] and run["next_scheduled_start_time"] <= before):
                continue
            if after and not (run["next_scheduled_start_time"] and run["next_scheduled_start_time"] >= after):
                continue
            selected.append(run)
        if body.get("sort") == "NEXT_SCHEDULED_START_TIME_ASC":
            selected.sort(key=lambda r: r["next_scheduled_start_time"] or "")
        return selected

    def _runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return self._page(self._matching(body), body)

    def _count(self, body: dict[str, Any]) -> int:
        return len(self._matching(body))


def failing(status: int, headers: dict[str, str] | None = None, body: str = '{"detail": "boom"}',
            times: int | None = None) -> Callable[[dict[str, Any]], tuple[int, dict[str, str], str] | None]:
    """A fault that answers ``status`` (``times`` times, or always) and then lets requests through."""
    counter = itertools.count()

    def fault(_: dict[str, Any]) -> tuple[int, dict[str, str], str] | None:
        if times is not None and next(counter) >= times:
            return None
        return status, {"Content-Type": "application/json", **(headers or {})}, body
    return fault


# The configuration the unit tick and handler tests publish with (a module adds pool-b's gpu queue):
# two pools' default queues on one ECS service, and a Process-worker queue on another.
PUBLISHER_CONTEXT: dict[str, Any] = {
    "prefectApiUrl": API,
    "stackName": "TestPublisher",
    "queues": [
        {"workPool": "pool-a", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
         "maxCapacity": 5, "targetBacklogPerTask": 2},
        {"workPool": "pool-b", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker"},
        {"workPool": "pool-b", "workQueue": "gpu", "cluster": "prefect", "service": "process-worker",
         "maxCapacity": 4, "runsInWorkerTask": True},
    ],
}
