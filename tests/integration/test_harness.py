"""The integration harness against real Prefect 2.18.x and 3.x servers.

Checks that the backlog built through the REST API is what the publisher will
read, and pins down the API facts the client relies on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from harness.backlog import BacklogClient, Target, now_iso, parse_time, state_name, state_type
from harness.prefect_server import PrefectServer, basic_auth_header

pytestmark = pytest.mark.integration

ClientFor = Callable[[PrefectServer], BacklogClient]


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _by_id(queue_ids: list[str], **flow_runs: object) -> dict[str, object]:
    body: dict[str, object] = {"work_pool_queues": {"id": {"any_": queue_ids}}}
    if flow_runs:
        body["flow_runs"] = flow_runs
    return body


def _build(c: BacklogClient) -> dict[str, Target]:
    """Two pools, each with ``default`` and ``gpu``; pool B's gpu queue paused.

    a/default: 2 Late, 1 overdue Scheduled, 1 future Scheduled, 1 Pending, 1 Running
    a/gpu:     1 Late
    b/default: 3 Late, 1 overdue Scheduled
    b/gpu:     1 Late (queue paused)
    """
    s = _suffix()
    t = {
        "a": c.target(f"pool-a-{s}", "default"),
        "a_gpu": c.target(f"pool-a-{s}", "gpu"),
        "b": c.target(f"pool-b-{s}", "default"),
        "b_gpu": c.target(f"pool-b-{s}", "gpu"),
    }
    for _ in range(2):
        c.late_run(t["a"].deployment_id)
    c.overdue_scheduled_run(t["a"].deployment_id)
    c.future_scheduled_run(t["a"].deployment_id)
    c.pending_run(t["a"].deployment_id)
    c.running_run(t["a"].deployment_id)
    c.late_run(t["a_gpu"].deployment_id)
    for _ in range(3):
        c.late_run(t["b"].deployment_id)
    c.overdue_scheduled_run(t["b"].deployment_id)
    c.late_run(t["b_gpu"].deployment_id)
    c.pause_queue(t["b_gpu"].queue_id)
    return t


def test_backlog_counts_per_pool_and_queue(prefect_server: PrefectServer, client_for: ClientFor) -> None:
    c = client_for(prefect_server)
    t = _build(c)
    a, b = t["a"], t["b"]
    late = {"state": state_name("Late")}

    assert c.count_in_queue(a.pool, "default", **late) == 2
    assert c.count_in_queue(b.pool, "default", **late) == 3
    assert c.count_in_queue(a.pool, "gpu", **late) == 1
    assert c.count_runs(_by_id([a.queue_id], **late)) == 2
    assert c.count_runs(_by_id([a.queue_id, t["a_gpu"].queue_id], **late)) == 3

    overdue = {"state": state_type("SCHEDULED"), "next_scheduled_start_time": {"before_": now_iso()}}
    assert c.count_runs(_by_id([a.queue_id], **overdue)) == 3  # 2 Late + 1 Scheduled
    overdue_named = {"state": {**state_type("SCHEDULED"), **state_name("Scheduled")}}
    overdue_named["next_scheduled_start_time"] = {"before_": now_iso()}
    assert c.count_runs(_by_id([a.queue_id], **overdue_named)) == 1
    future = {"state": state_type("SCHEDULED"), "next_scheduled_start_time": {"after_": now_iso()}}
    assert c.count_runs(_by_id([a.queue_id], **future)) == 1
    assert c.count_runs(_by_id([a.queue_id], state=state_type("PENDING", "RUNNING"))) == 2
    assert c.count_runs(_by_id([a.queue_id], state=state_type("RUNNING"))) == 1
    assert c.count_runs(_by_id([a.queue_id])) == 6

    # Pending/Running runs have no next_scheduled_start_time: a time filter alone
    # only matches SCHEDULED-type runs.
    assert c.count_runs(_by_id([a.queue_id], next_scheduled_start_time={"before_": now_iso(timedelta(hours=2))})) == 4

    # A paused queue still holds (and counts) its Late runs.
    assert c.get_queue(b.pool, "gpu")["is_paused"] is True
    assert c.count_in_queue(b.pool, "gpu", **late) == 1

    # Pitfalls the client must avoid:
    # flow_runs.work_queue_name alone matches "default" in every pool...
    by_name_only = {
        "flow_runs": {"state": state_name("Late"), "work_queue_name": {"any_": ["default"]}},
        "work_pools": {"name": {"any_": [a.pool, b.pool]}},
    }
    assert c.count_runs(by_name_only) == 5
    # ...an unknown pool/queue counts 0 rather than failing...
    assert c.count_in_queue(a.pool, "no-such-queue") == 0
    assert c.count_in_queue(f"no-such-pool-{_suffix()}", "default") == 0
    # ...and an unknown top-level key is ignored (unfiltered total).
    total = c.count_runs({})
    assert c.count_runs({"work_queues": {"id": {"any_": [a.queue_id]}}}) == total >= 10


def test_queue_and_pool_lookups(prefect_server: PrefectServer, client_for: ClientFor) -> None:
    c = client_for(prefect_server)
    s = _suffix()
    a, b = c.target(f"pa-{s}", "default"), c.target(f"pb-{s}", f"gpu-{s}")
    c.create_queue(b.pool, "default")

    queues = c.post(
        "/work_queues/filter", {"work_queues": {"name": {"any_": ["default", f"gpu-{s}"]}}, "limit": 200, "offset": 0}
    )
    ours = {(q["work_pool_name"], q["name"]): q for q in queues if q["work_pool_name"] in (a.pool, b.pool)}
    assert set(ours) == {(a.pool, "default"), (b.pool, "default"), (b.pool, f"gpu-{s}")}
    for q in ours.values():
        assert q["work_pool_id"] in (a.pool_id, b.pool_id)
        assert {"id", "is_paused", "concurrency_limit", "priority", "last_polled", "status"} <= q.keys()

    by_id = c.post("/work_queues/filter", {"work_queues": {"id": {"any_": [a.queue_id, b.queue_id]}}})
    assert {(q["work_pool_name"], q["name"]) for q in by_id} == {(a.pool, "default"), (b.pool, f"gpu-{s}")}
    assert c.request("POST", "/work_queues/filter", {"limit": 201}, ok=(422,)).status_code == 422

    c.pause_pool(a.pool)
    pools = c.post("/work_pools/filter", {"work_pools": {"name": {"any_": [a.pool]}}})
    assert [(p["name"], p["is_paused"], p["concurrency_limit"]) for p in pools] == [(a.pool, True, None)]

    status = c.get(f"/work_queues/{a.queue_id}/status")
    assert {"healthy", "late_runs_count", "last_polled", "health_check_policy"} <= status.keys()

    c.create_queue(a.pool, "doomed")
    c.delete_queue(a.pool, "doomed")
    assert c.request("GET", f"/work_pools/{a.pool}/queues/doomed", ok=(404,)).status_code == 404
    assert c.request("POST", "/work_pools/", {"name": a.pool, "type": "process"}, ok=(409,)).status_code == 409
    assert c.create_pool(a.pool)["id"] == a.pool_id  # 409 handled


def test_flow_run_filter_shape(prefect_server: PrefectServer, client_for: ClientFor) -> None:
    c = client_for(prefect_server)
    t = c.target(f"shape-{_suffix()}", "default")
    late = c.late_run(t.deployment_id, timedelta(minutes=30))
    c.overdue_scheduled_run(t.deployment_id, timedelta(minutes=5))
    c.pending_run(t.deployment_id)
    body = {
        "flow_runs": {"state": state_type("SCHEDULED"), "next_scheduled_start_time": {"before_": now_iso()}},
        "work_pool_queues": {"id": {"any_": [t.queue_id]}},
        "limit": 200,
        "offset": 0,
    }
    for sort in ("ID_DESC", "NEXT_SCHEDULED_START_TIME_ASC", "EXPECTED_START_TIME_ASC"):
        runs = c.filter_runs({**body, "sort": sort})
        assert len(runs) == 2, sort
    runs = c.filter_runs({**body, "sort": "NEXT_SCHEDULED_START_TIME_ASC"})
    first = runs[0]
    assert first["id"] == late["id"]
    assert (first["state_type"], first["state_name"]) == ("SCHEDULED", "Late")
    assert first["work_queue_id"] == t.queue_id and first["work_queue_name"] == "default"
    assert first["next_scheduled_start_time"] and first["expected_start_time"] and first["state"]["timestamp"]
    assert c.count_runs({k: v for k, v in body.items() if k not in ("limit", "offset")}) == 2
    assert c.request("POST", "/flow_runs/filter", {**body, "limit": 201}, ok=(422,)).status_code == 422


def test_restart_keeps_data_and_port(prefect_server: PrefectServer, client_for: ClientFor) -> None:
    c = client_for(prefect_server)
    t = c.target(f"restart-{_suffix()}", "default")
    c.late_run(t.deployment_id)
    url = prefect_server.api_url
    try:
        prefect_server.stop()
        with pytest.raises(requests.ConnectionError):
            c.count_in_queue(t.pool, "default")
    finally:
        prefect_server.start()
    assert prefect_server.api_url == url
    assert c.count_in_queue(t.pool, "default", state=state_name("Late")) == 1


def test_basic_auth(prefect3_auth_server: PrefectServer) -> None:
    url = prefect3_auth_server.api_url
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    wrong = {"Authorization": basic_auth_header("prefect-admin:wrong")}
    for headers in ({}, wrong, {"Authorization": "Bearer x"}):
        resp = requests.post(f"{url}/flow_runs/count", json={}, headers=headers, timeout=10)
        assert resp.status_code == 401
        assert resp.json() == {"exception_message": "Unauthorized"}
    c = BacklogClient(url, auth_string=prefect3_auth_server.auth_string)
    t = c.target(f"auth-{_suffix()}", "default")
    c.late_run(t.deployment_id)
    assert c.count_in_queue(t.pool, "default") == 1


@pytest.mark.parametrize("version", ["2", "3"])
def test_late_marker_only_when_enabled(
    version: str,
    request: pytest.FixtureRequest,
    client_for: ClientFor,
    prefect_venv_for: Callable[[str], Path],
) -> None:
    quiet: PrefectServer = request.getfixturevalue(f"prefect{version}_server")  # marker off
    with PrefectServer(version, prefect_venv_for(version), late_marking=True) as marking:
        runs = []
        for server in (marking, quiet):
            c = client_for(server)
            t = c.target(f"marker-{_suffix()}", "default")
            runs.append((c, c.overdue_scheduled_run(t.deployment_id, timedelta(minutes=10))["id"]))
        (mc, mid), (qc, qid) = runs
        deadline = time.monotonic() + 60
        while mc.get_run(mid)["state_name"] != "Late":
            assert time.monotonic() < deadline, "the Late marker did not flip an overdue run in 60 s"
            time.sleep(1)
        flipped = mc.get_run(mid)
        assert flipped["state_type"] == "SCHEDULED"
        assert parse_time(flipped["next_scheduled_start_time"]) < parse_time(now_iso())  # keeps its past time
        time.sleep(6)  # > one marker loop (5 s)
        assert qc.get_run(qid)["state_name"] == "Scheduled"
