"""Reading by changes (#22) against a REAL Prefect 3 server: under churn, every sample equals a full read.

One pool of two queues on a protected Process-worker service with four tasks,
each worker named after its task. Runs are made Running with the worker's
label, as a 3.1.9+ worker stamps it. Between samples, runs are moved through
every transition into and out of Running that sets no time a filter could
use (forced as by hand, with ``set_state``): a retry to AwaitingRetry and
back, Paused and resumed, Suspended, Cancelling, Crashed, set back to
Scheduled, a deleted run, Late claimed by another worker, plus plain
completions and starts. At every sample the publisher with a warm ledger
must publish exactly what one reading everything in full publishes, and
protect and release exactly the same tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.backlog import BacklogClient, now_iso
from harness.fake_ecs import FakeEcs
from harness.prefect_server import PrefectServer
from harness.process_worker import ecs_worker_name, fake_task_id
from prefect_backlog import metrics
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.prefect_api.ledger import RESYNC_EVERY_SAMPLES
from prefect_backlog.report import TickReport, metric_data
from prefect_backlog.tick import WarmState, run_tick
from tests.support.moto_aws import PUBLISHER

pytestmark = pytest.mark.integration

CLUSTER, SERVICE = "prefect-rc", "process-worker"


class World:
    """The pool, its deployments, and runs Running on named workers, built through the REST API."""

    def __init__(self, server: PrefectServer) -> None:
        self.c = BacklogClient(server.api_url)
        self.pool = f"rc-{fake_task_id()[:8]}"
        self.c.create_pool(self.pool, type="process")
        flow = self.c.create_flow("read-changes")
        self.deployments = {}
        for queue in ("a", "b"):
            self.c.create_queue(self.pool, queue)
            self.deployments[queue] = self.c.create_deployment(flow, f"rc-{queue}", self.pool, queue)
        self.tasks = [fake_task_id() for _ in range(4)]

    def run(self, queue: str, task: str, state: str = "RUNNING", *, labelled: bool = True) -> str:
        labels = {"labels": {"prefect.worker.name": ecs_worker_name(task)}} if labelled else {}
        run = self.c.create_run(self.deployments[queue], {"type": "SCHEDULED", "state_details": {
            "scheduled_time": now_iso()}}, **labels)
        for step in ("PENDING", "RUNNING")[:("PENDING", "RUNNING").index(state) + 1]:
            self.c.set_state(run["id"], step)
        return str(run["id"])

    def late(self, queue: str) -> str:
        return str(self.c.late_run(self.deployments[queue], age=timedelta(minutes=3))["id"])

    def move(self, run_id: str, state_type: str, name: str | None = None) -> None:
        self.c.set_state(run_id, state_type, name)

    def claim(self, run_id: str, task: str) -> None:
        """What a worker does with a Late run: Pending, its label, then Running."""
        self.c.set_state(run_id, "PENDING")
        self.c.request("PATCH", f"/flow_runs/{run_id}/labels", json={"prefect.worker.name": ecs_worker_name(task)})
        self.c.set_state(run_id, "RUNNING")

    def delete(self, run_id: str) -> None:
        self.c.request("DELETE", f"/flow_runs/{run_id}")


def publisher_config(server: PrefectServer, pool: str) -> Config:
    return parse_config({"prefectApiUrl": server.api_url, "stackName": PUBLISHER, "queues": [
        {"workPool": pool, "workQueue": queue, "cluster": CLUSTER, "service": SERVICE, "maxCapacity": 10,
         "targetBacklogPerTask": 4, "runsInWorkerTask": True} for queue in ("a", "b")]})


def ecs_with(tasks: list[str]) -> FakeEcs:
    ecs = FakeEcs()
    ecs.service(CLUSTER, SERVICE)
    for task in tasks:
        ecs.start_task(CLUSTER, SERVICE, task)
    ecs.start_task(CLUSTER, SERVICE)  # and an idle one
    ecs.desired[(CLUSTER, SERVICE)] = len(tasks) + 1
    return ecs


def figures(report: TickReport) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Everything published but the tick's own duration (which differs by what it read)."""
    return sorted((d.metric.name, tuple(sorted(d.dimensions.items())), d.value) for d in metric_data(report, PUBLISHER)
                  if d.metric is not metrics.TICK_DURATION)


@pytest.mark.parametrize("version", ["3", "3.9"], ids=["prefect3", "prefect39"])
def test_under_churn_every_warm_sample_publishes_and_protects_what_a_full_read_does(
        version: str, request: pytest.FixtureRequest) -> None:
    server: PrefectServer = request.getfixturevalue(f"prefect{version.replace('.', '')}_server")
    w = World(server)
    t0, t1, t2, t3 = w.tasks
    running = {queue: [w.run(queue, task) for task in (t0, t1, t2) for _ in range(4)] for queue in ("a", "b")}
    a, b = running["a"], running["b"]
    pending = w.run("b", t3, state="PENDING")
    late = [w.late("a"), w.late("b")]
    config = publisher_config(server, w.pool)
    ours, full = WarmState(), WarmState()
    ours_ecs, full_ecs = ecs_with(w.tasks), ecs_with(w.tasks)

    # Each sample's transitions, made just before it; the first sample is the cold start.
    churn: list[Callable[[], Any]] = [
        lambda: None,
        lambda: (w.move(a[0], "COMPLETED"), w.run("a", t3)),  # ends; starts
        lambda: (w.move(a[1], "SCHEDULED", "AwaitingRetry"), w.move(b[0], "CANCELLING")),  # a retry; cancelling
        lambda: (w.move(a[1], "RUNNING"), w.move(b[1], "PAUSED", "Paused")),  # runs again, old start time; pauses
        lambda: (w.move(b[1], "RUNNING"), w.move(b[2], "PAUSED", "Suspended")),  # resumes; suspends
        lambda: (w.claim(late[0], t3), w.move(pending, "RUNNING")),  # Late claimed by another worker; starts
        lambda: (w.move(a[2], "SCHEDULED", "Scheduled"), w.move(a[3], "CRASHED")),  # set back by hand; crashes
        lambda: w.delete(a[4]),  # deleted: no read sees it, the count does
        lambda: (w.move(b[0], "CANCELLED"), w.move(a[2], "PENDING")),  # cancelled; claimed again, Pending
        lambda: (w.move(a[2], "RUNNING"), w.claim(late[1], t0), w.move(b[3], "COMPLETED")),  # in, in, out
    ]
    for i, change in enumerate(churn):
        change()
        now = datetime.now(UTC)
        with_ledger = run_tick(config, PrefectClient(config.api_url, deadline=time.monotonic() + 30,
                                                     depth_memory=ours.depth, ledger=ours.ledger),
                               ecs=ours_ecs, cloudwatch=None, now=now, warm=ours)
        in_full = run_tick(config, PrefectClient(config.api_url, deadline=time.monotonic() + 30,
                                                 depth_memory=full.depth),
                           ecs=full_ecs, cloudwatch=None, now=now, warm=full)
        assert not with_ledger.queue_errors and not in_full.queue_errors
        assert figures(with_ledger) == figures(in_full), f"sample {i}"
        ours_step, full_step = with_ledger.services[0].protection, in_full.services[0].protection
        assert ours_step is not None and full_step is not None
        assert (ours_step.protect, ours_step.release, ours_step.orphaned) == (
            full_step.protect, full_step.release, full_step.orphaned), f"sample {i}"
        assert ours_ecs.protected(CLUSTER, SERVICE) == full_ecs.protected(CLUSTER, SERVICE), f"sample {i}"
    # The warm samples were read by their changes, but for the deletion (caught by the count) and the resync.
    resyncs = (len(churn) - 1) // RESYNC_EVERY_SAMPLES
    assert ours.ledger.stats.full == {"cold": 1, "resync": resyncs, "counts differ": 1}
    assert ours.ledger.stats.changes == len(churn) - 2 - resyncs
    assert ours_ecs.protected(CLUSTER, SERVICE) == {t0, t1, t2, t3}  # every busy task, and not the idle one


def test_a_server_without_labels_is_read_in_full_every_sample(prefect2_server: PrefectServer) -> None:
    """Prefect 2.18: no flow-run labels (so no task protection) and no ``state.type.not_any_``."""
    w = World(prefect2_server)
    for queue in ("a", "b"):
        w.run(queue, w.tasks[0], labelled=False)  # 2.18 has no labels field
    config = publisher_config(prefect2_server, w.pool)
    warm = WarmState()
    for _ in range(3):
        client = PrefectClient(config.api_url, deadline=time.monotonic() + 30, depth_memory=warm.depth,
                               ledger=warm.ledger)
        report = run_tick(config, client, ecs=ecs_with(w.tasks), cloudwatch=None, now=datetime.now(UTC), warm=warm)
        assert not report.queue_errors
        assert [q.backlog.running for q in report.queues if q.backlog] == [1, 1]
    assert warm.ledger.stats.changes == 0 and not warm.ledger.labels_seen
    assert sum(warm.ledger.stats.full.values()) == 3
