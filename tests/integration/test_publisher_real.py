"""The publisher against real Prefect 2.18 and 3.x servers: what it publishes is the backlog we built.

Every backlog here is made through the REST API only (``backlog.BacklogClient``);
the publisher (``run_tick``, or the Lambda handler) reads it with its own
client, publishes to CloudWatch on moto, and each figure is read back from moto
and compared with what was created, per pool and queue. The deep-backlog tests
also compare with ``POST /flow_runs/count`` as the server's own truth.

The session servers run with the Late marker off, so an overdue "Scheduled"
run stays "Scheduled" (due but not Late) for the whole test.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.backlog import DEFAULT_AGENT_POOL, BacklogClient, Target, now_iso, state_name, state_type
from harness.prefect_server import PrefectServer
from prefect_backlog import handler
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PAGE_SIZE, DepthMemory, PrefectClient
from prefect_backlog.report import TickReport
from prefect_backlog.tick import run_tick
from tests.integration.conftest import VERSION_IDS, VERSIONS
from tests.support.lambda_context import FakeContext
from tests.support.moto_aws import PUBLISHER

if TYPE_CHECKING:
    from tests.support.moto_aws import MotoAws
    from tests.support.publisher_log import LogRecords

pytestmark = pytest.mark.integration

ClientFor = Callable[[PrefectServer], BacklogClient]
CLUSTER = "prefect-it"
AGE_SLACK = 5.0  # seconds of clock granularity and rounding allowed on top of the time the backlog has existed


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


class RecordingClient(PrefectClient):
    """The publisher's client, noting every request it sends (to tell which read path it took)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str, Any]] = []
        send = self.http.request

        def recording(method: str, path: str, body: Any = None) -> Any:
            self.calls.append((method, path, body))
            return send(method, path, body)

        self.http.request = recording  # type: ignore[method-assign]


def tick(config: Config, aws: MotoAws, client: PrefectClient | None = None, seconds: float = 40) -> TickReport:
    client = client or PrefectClient(config.api_url, deadline=time.monotonic() + seconds)
    return run_tick(config, client, ecs=aws.ecs, cloudwatch=aws.cloudwatch, now=datetime.now(UTC))


@dataclass(frozen=True)
class Truth:
    late: int
    due: int
    pending: int = 0
    running: int = 0
    oldest_late_minutes: float = 0.0  # age of the oldest Late run when it was created
    paused: bool = False


def assert_queue(aws: MotoAws, pool: str, queue: str, truth: Truth, since: float) -> None:
    """``since``: time.time() before the queue's runs were created (their ages have grown since)."""
    got = aws.queue(pool, queue)
    where = f"{pool}/{queue}"
    assert got["LateFlowRuns"] == truth.late, (where, got)
    assert got["DueFlowRuns"] == truth.due, (where, got)
    assert got["PendingFlowRuns"] == truth.pending, (where, got)
    assert got["RunningFlowRuns"] == truth.running, (where, got)
    assert got["QueuePaused"] == (1.0 if truth.paused else 0.0), (where, got)
    age = got["OldestLateRunAgeSeconds"]
    assert age is not None, where
    if truth.late == 0:
        assert age == 0, (where, age)
    else:
        expected = truth.oldest_late_minutes * 60
        assert expected <= age <= expected + (time.time() - since) + AGE_SLACK, (where, age, expected)


def assert_service(aws: MotoAws, service: str, *, demand: int, tasks: int, target: float, max_capacity: int) -> None:
    """The README's rules, written out: BacklogPerTask = demand / max(desired, 1);
    TaskShortfall = max(0, min(ceil(demand / target), max) - desired)."""
    got = aws.service_values(CLUSTER, service)
    assert got == {
        "DemandFlowRuns": demand,
        "BacklogPerTask": demand / max(tasks, 1),
        "TaskShortfall": max(0, min(math.ceil(demand / target), max_capacity) - tasks),
        "RunningTasks": tasks,
        "DesiredTasks": tasks,
    }, (service, got)


def entry(target: Target | None, queue: str, service: str, **settings: Any) -> dict[str, Any]:
    """A queue entry; ``target`` None leaves workPool out (a pool-less 2.x agent queue)."""
    item: dict[str, Any] = {"workQueue": queue, "cluster": CLUSTER, "service": service, **settings}
    if target is not None:
        item["workPool"] = target.pool
    return item


# --- two pools sharing `default`, every kind of run, a paused queue and a paused pool ------------


def test_every_published_value_is_the_backlog(prefect_server: PrefectServer, client_for: ClientFor,
                                              aws: MotoAws) -> None:
    c = client_for(prefect_server)
    s = _suffix()
    since = time.time()
    a = c.target(f"pool-a-{s}", "default")
    a_mem = c.target(a.pool, "high-mem")
    b = c.target(f"pool-b-{s}", "default")
    b_gpu = c.target(b.pool, "gpu")
    p = c.target(f"pool-c-{s}", "default")  # its pool gets paused

    c.late_run(a.deployment_id, timedelta(minutes=10))
    c.late_run(a.deployment_id, timedelta(minutes=25))
    c.overdue_scheduled_run(a.deployment_id, timedelta(minutes=5))
    c.future_scheduled_run(a.deployment_id)
    c.pending_run(a.deployment_id)
    c.running_run(a.deployment_id)
    c.run_in_state(a.deployment_id, "AwaitingConcurrencySlot")  # waits on a limit: not due
    c.late_run(a_mem.deployment_id, timedelta(minutes=5))
    c.pause_queue(a_mem.queue_id)
    for _ in range(3):
        c.late_run(b.deployment_id, timedelta(minutes=10))
    for _ in range(2):
        c.overdue_scheduled_run(b.deployment_id, timedelta(minutes=2))
    # Past backlog.RETRY_START_GRACE_SECONDS: due on every version (on 2.x, which has no labels, one nearer its
    # time is taken for an agent's run waiting to retry in its process: tests/integration/test_no_run_lost.py).
    c.run_in_state(b.deployment_id, "AwaitingRetry", timedelta(minutes=3))
    c.late_run(b_gpu.deployment_id, timedelta(minutes=3))
    c.pending_run(b_gpu.deployment_id)
    c.running_run(b_gpu.deployment_id)
    c.running_run(b_gpu.deployment_id)
    c.future_scheduled_run(b_gpu.deployment_id)
    c.late_run(p.deployment_id, timedelta(minutes=7))
    c.late_run(p.deployment_id, timedelta(minutes=7))
    c.pause_pool(p.pool)

    aws.service(CLUSTER, "ecs-worker", 1)
    aws.service(CLUSTER, "process-worker", 0)
    aws.service(CLUSTER, "paused-worker", 2)
    config = parse_config({
        "prefectApiUrl": prefect_server.api_url,
        "stackName": PUBLISHER,
        "queues": [
            entry(a, "default", "ecs-worker", maxCapacity=4, targetBacklogPerTask=2),
            entry(a_mem, "high-mem", "ecs-worker"),
            entry(b, "default", "ecs-worker"),
            entry(b_gpu, "gpu", "process-worker", maxCapacity=10, targetBacklogPerTask=2, runsInWorkerTask=True),
            entry(p, "default", "paused-worker", maxCapacity=3),
        ],
    })
    report = tick(config, aws)

    assert report.whole_failure is None and report.queue_errors == 0, report.summary()
    assert_queue(aws, a.pool, "default", Truth(late=2, due=3, pending=1, running=1, oldest_late_minutes=25), since)
    assert_queue(aws, a.pool, "high-mem", Truth(late=1, due=1, oldest_late_minutes=5, paused=True), since)
    assert_queue(aws, b.pool, "default", Truth(late=3, due=6, oldest_late_minutes=10), since)
    assert_queue(aws, b.pool, "gpu", Truth(late=1, due=1, pending=1, running=2, oldest_late_minutes=3), since)
    assert_queue(aws, p.pool, "default", Truth(late=2, due=2, oldest_late_minutes=7, paused=True), since)
    # ecs-worker: 3 due (a/default) + 0 (a/high-mem is paused) + 6 due (b/default)
    assert_service(aws, "ecs-worker", demand=9, tasks=1, target=2, max_capacity=4)
    # process-worker: 1 due + 1 pending + 2 running, all inside the worker task
    assert_service(aws, "process-worker", demand=4, tasks=0, target=2, max_capacity=10)
    # paused pool: its Late runs are reported but are no demand
    assert_service(aws, "paused-worker", demand=0, tasks=2, target=1, max_capacity=3)
    health = aws.health()
    assert (health["QueuesRead"], health["QueueReadErrors"], health["ServiceReadErrors"]) == (5, 0, 0)
    assert health["PublisherDuration"] is not None and health["PublisherDuration"] > 0


def test_prefect2_agent_queues_without_work_pool(prefect2_server: PrefectServer, client_for: ClientFor,
                                                 aws: MotoAws) -> None:
    """2.18 agents poll pool-less queues, which live in default-agent-pool; the config names no pool."""
    c = client_for(prefect2_server)
    s = _suffix()
    since = time.time()
    etl = c.agent_target(f"etl-{s}")
    ml = c.agent_target(f"ml-{s}")
    assert c.get_queue(DEFAULT_AGENT_POOL, etl.queue)["id"] == etl.queue_id
    for _ in range(4):
        c.late_run(etl.deployment_id, timedelta(minutes=8))
    c.overdue_scheduled_run(etl.deployment_id, timedelta(minutes=1))
    c.running_run(etl.deployment_id)
    c.pending_run(ml.deployment_id)
    c.future_scheduled_run(ml.deployment_id)

    aws.service(CLUSTER, "agent", 1)
    config = parse_config({
        "prefectApiUrl": prefect2_server.api_url,
        "stackName": PUBLISHER,
        "queues": [
            entry(None, etl.queue, "agent", maxCapacity=3, targetBacklogPerTask=4, runsInWorkerTask=True),
            entry(None, ml.queue, "agent", runsInWorkerTask=True),
        ],
    })
    assert all(q.work_pool is None for q in config.queues)
    report = tick(config, aws)

    assert report.queue_errors == 0, report.summary()
    assert {q.resolved.pool for q in report.queues if q.resolved} == {DEFAULT_AGENT_POOL}
    assert_queue(aws, DEFAULT_AGENT_POOL, etl.queue, Truth(late=4, due=5, running=1, oldest_late_minutes=8), since)
    assert_queue(aws, DEFAULT_AGENT_POOL, ml.queue, Truth(late=0, due=0, pending=1), since)
    # runsInWorkerTask (a 2.x Process agent): 5 due + 1 running (etl) + 1 pending (ml)
    assert_service(aws, "agent", demand=7, tasks=1, target=4, max_capacity=3)


# --- the Lambda handler, with the basic-auth credential in Secrets Manager (3.x) ------------------


@dataclass(frozen=True)
class AuthBacklog:
    x: Target  # 2 Late runs, 4 minutes old
    y: Target  # 1 Running, 1 overdue Scheduled
    since: float


@pytest.fixture
def auth_backlog(prefect3_auth_server: PrefectServer, client_for: ClientFor) -> AuthBacklog:
    c = client_for(prefect3_auth_server)
    s = _suffix()
    since = time.time()
    x, y = c.target(f"auth-x-{s}", "default"), c.target(f"auth-y-{s}", "default")
    c.late_run(x.deployment_id, timedelta(minutes=4))
    c.late_run(x.deployment_id, timedelta(minutes=4))
    c.running_run(y.deployment_id)
    c.overdue_scheduled_run(y.deployment_id, timedelta(minutes=1))
    return AuthBacklog(x, y, since)


def _handler_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_url: str, secret: str,
                    x: Target, y: Target) -> None:
    config = parse_config({
        "prefectApiUrl": api_url,
        "stackName": PUBLISHER,
        "prefectAuth": {"secret": secret, "scheme": "basic"},
        "queues": [entry(x, "default", "ecs-worker", maxCapacity=2),
                   entry(y, "default", "process-worker", maxCapacity=2, runsInWorkerTask=True)],
    })
    path = tmp_path / "publisher_config.json"
    path.write_text(json.dumps(config.to_context()))  # the canonical form, as the stack packages it
    monkeypatch.setattr(handler, "CONFIG_FILE", path)


def test_handler_reads_the_basic_auth_secret(prefect3_auth_server: PrefectServer, auth_backlog: AuthBacklog,
                                            aws: MotoAws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y, since = auth_backlog.x, auth_backlog.y, auth_backlog.since
    secret = f"prefect/server-auth-{_suffix()}"  # Powertools caches secrets by name for 5 min
    assert prefect3_auth_server.auth_string
    aws.secrets.create_secret(Name=secret, SecretString=prefect3_auth_server.auth_string + "\n")
    aws.service(CLUSTER, "ecs-worker", 0)
    aws.service(CLUSTER, "process-worker", 1)
    _handler_config(tmp_path, monkeypatch, prefect3_auth_server.api_url, secret, x, y)

    summary = handler.lambda_handler({}, FakeContext())

    assert summary["samples"] == 1 and summary["queuesRead"] == 2 and summary["queueReadErrors"] == 0, summary
    assert_queue(aws, x.pool, "default", Truth(late=2, due=2, oldest_late_minutes=4), since)
    assert_queue(aws, y.pool, "default", Truth(late=0, due=1, running=1), since)
    assert_service(aws, "ecs-worker", demand=2, tasks=0, target=1, max_capacity=2)
    assert_service(aws, "process-worker", demand=2, tasks=1, target=1, max_capacity=2)


def test_handler_with_a_wrong_secret_fails_clearly_and_publishes_no_queue_data(
        prefect3_auth_server: PrefectServer, auth_backlog: AuthBacklog, aws: MotoAws, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, publisher_log: LogRecords) -> None:
    x, y = auth_backlog.x, auth_backlog.y
    secret = f"prefect/server-auth-{_suffix()}"
    aws.secrets.create_secret(Name=secret, SecretString="prefect-admin:not-the-password")
    aws.service(CLUSTER, "ecs-worker", 0)
    aws.service(CLUSTER, "process-worker", 1)
    _handler_config(tmp_path, monkeypatch, prefect3_auth_server.api_url, secret, x, y)

    with pytest.raises(handler.PublisherFailed) as failed:
        handler.lambda_handler({}, FakeContext())

    message = str(failed.value)
    assert "credentials" in message and "HTTP 401" in message, message
    assert "not-the-password" not in message and "not-the-password" not in publisher_log.text()
    for target in (x, y):
        assert aws.nothing_for_queue(target.pool, "default")
    for service in ("ecs-worker", "process-worker"):
        assert aws.metrics_with(ClusterName=CLUSTER, ServiceName=service) == []
    health = aws.health()
    assert (health["QueuesRead"], health["QueueReadErrors"], health["ServiceReadErrors"]) == (0, 2, 2)
    causes = publisher_log.causes()
    assert len(causes) == 2 and all("rejected the credentials" in c for c in causes.values()), causes


# --- deep backlogs: the per-queue count path and the paging path -----------------------------------

DEEP_LATE = 150  # in queue q0, 10 minutes old, plus one 2 hours old
DEEP_SCHEDULED = 60  # overdue "Scheduled" in q0
SMALL_QUEUES = 7  # q1..q7, each 3 Late + 2 overdue Scheduled; q1 also 1 Running


@dataclass(frozen=True)
class DeepBacklog:
    server: PrefectServer
    client: BacklogClient
    pool: str
    queues: list[Target]
    since: float  # time.time() when its runs began to be created


@pytest.fixture(scope="module", params=VERSIONS, ids=VERSION_IDS)
def deep_backlog(request: pytest.FixtureRequest) -> DeepBacklog:
    """One pool: q0 holds 211 due runs, q1..q7 five each (246 due in the pool, two pages)."""
    server: PrefectServer = request.getfixturevalue(f"prefect{request.param.replace('.', '')}_server")
    c = BacklogClient(server.api_url, auth_string=server.auth_string)
    pool = f"deep-{_suffix()}"
    since = time.time()
    queues = [c.target(pool, f"q{i}") for i in range(SMALL_QUEUES + 1)]
    c.late_run(queues[0].deployment_id, timedelta(hours=2))
    for _ in range(DEEP_LATE):
        c.late_run(queues[0].deployment_id, timedelta(minutes=10))
    for _ in range(DEEP_SCHEDULED):
        c.overdue_scheduled_run(queues[0].deployment_id, timedelta(minutes=3))
    for t in queues[1:]:
        for _ in range(3):
            c.late_run(t.deployment_id, timedelta(minutes=6))
        for _ in range(2):
            c.overdue_scheduled_run(t.deployment_id, timedelta(minutes=1))
    c.running_run(queues[1].deployment_id)
    return DeepBacklog(server, c, pool, queues, since)


def server_truth(deep: DeepBacklog, queue: str) -> Truth:
    """The server's own counts for one queue (POST /flow_runs/count)."""
    c = deep.client
    due = {"state": {**state_type("SCHEDULED"), **state_name("Scheduled", "Late", "AwaitingRetry")},
           "next_scheduled_start_time": {"before_": now_iso()}}
    return Truth(
        late=c.count_in_queue(deep.pool, queue, state=state_name("Late")),
        due=c.count_in_queue(deep.pool, queue, **due),
        pending=c.count_in_queue(deep.pool, queue, state=state_type("PENDING")),
        running=c.count_in_queue(deep.pool, queue, state=state_type("RUNNING")),
    )


def assert_matches_server(aws: MotoAws, deep: DeepBacklog, queue: str, created: Truth) -> None:
    truth = server_truth(deep, queue)
    assert (truth.late, truth.due, truth.pending, truth.running) == (
        created.late, created.due, created.pending, created.running), (queue, truth)
    assert_queue(aws, deep.pool, queue, created, deep.since)


def deep_config(deep: DeepBacklog, targets: list[Target]) -> Config:
    return parse_config({
        "prefectApiUrl": deep.server.api_url, "stackName": PUBLISHER,
        "queues": [entry(t, t.queue, "deep-worker", maxCapacity=20, targetBacklogPerTask=10) for t in targets],
    })


Q0 = Truth(late=DEEP_LATE + 1, due=DEEP_LATE + 1 + DEEP_SCHEDULED, oldest_late_minutes=120)


def small(i: int) -> Truth:
    return Truth(late=3, due=5, running=1 if i == 1 else 0, oldest_late_minutes=6)


def test_deep_backlog_on_few_queues_is_counted_per_queue(deep_backlog: DeepBacklog, aws: MotoAws) -> None:
    """One queue with 211 due runs: paging would take 2 pages, 3 counts are cheaper (PAGE_COST_IN_COUNTS)."""
    q0 = deep_backlog.queues[0]
    aws.service(CLUSTER, "deep-worker", 2)
    config = deep_config(deep_backlog, [q0])
    client = RecordingClient(config.api_url, deadline=time.monotonic() + 40)
    report = tick(config, aws, client)

    assert report.queue_errors == 0, report.summary()
    per_queue_counts = [b for _, path, b in client.calls
                        if path == "/flow_runs/count" and b["work_pool_queues"]["id"]["any_"] == [q0.queue_id]]
    assert len(per_queue_counts) >= 2, client.calls  # the count path ran (due, late), not more pages
    assert not [b for _, path, b in client.calls if path == "/flow_runs/filter" and b.get("offset", 0) >= PAGE_SIZE]
    assert_matches_server(aws, deep_backlog, "q0", Q0)
    assert_service(aws, "deep-worker", demand=Q0.due, tasks=2, target=10, max_capacity=20)


def test_backlog_over_one_page_across_many_queues_is_paged(deep_backlog: DeepBacklog, aws: MotoAws) -> None:
    """Eight queues, 246 due runs in the pool: two pages are cheaper than 24 counts."""
    aws.service(CLUSTER, "deep-worker", 2)
    config = deep_config(deep_backlog, deep_backlog.queues)
    client = RecordingClient(config.api_url, deadline=time.monotonic() + 40)
    report = tick(config, aws, client)

    assert report.queue_errors == 0, report.summary()
    second_pages = [b for _, path, b in client.calls if path == "/flow_runs/filter" and b.get("offset") == PAGE_SIZE]
    assert len(second_pages) == 1, client.calls
    assert not [b for _, path, b in client.calls
                if path == "/flow_runs/count" and len(b["work_pool_queues"]["id"]["any_"]) == 1]
    assert_matches_server(aws, deep_backlog, "q0", Q0)
    for i in range(1, SMALL_QUEUES + 1):
        assert_matches_server(aws, deep_backlog, f"q{i}", small(i))
    demand = Q0.due + 5 * SMALL_QUEUES
    assert_service(aws, "deep-worker", demand=demand, tasks=2, target=10, max_capacity=20)


def test_deep_slices_and_a_warm_depth_memory_read_the_same_values(deep_backlog: DeepBacklog, aws: MotoAws) -> None:
    """q0 and q1: 216 due runs for two queues, read as Late and waiting slices counted per queue.

    q0's oldest Late runs fill the shared oldest-Late list, so q1's oldest is asked on its own. The
    second tick starts from what the first one learnt (the handler keeps its DepthMemory while warm):
    no due page and no due total, the same values.
    """
    aws.service(CLUSTER, "deep-worker", 2)
    config = deep_config(deep_backlog, deep_backlog.queues[:2])
    memory = DepthMemory()
    backlogs = []
    for warm in (False, True):
        client = RecordingClient(config.api_url, deadline=time.monotonic() + 40, depth_memory=memory)
        report = tick(config, aws, client)
        assert report.queue_errors == 0, report.summary()
        due_reads = [(path, b) for _, path, b in client.calls if path.startswith("/flow_runs/")
                     and b["flow_runs"]["state"] == state_name("Scheduled", "Late")]  # AwaitingRetry: in flight
        assert len(due_reads) == (0 if warm else 2), due_reads  # cold: a full page, then the total
        per_queue = [b for _, path, b in client.calls
                     if path == "/flow_runs/count" and len(b["work_pool_queues"]["id"]["any_"]) == 1]
        assert len(per_queue) == 4, client.calls  # Late and waiting, for each queue
        backlogs.append([q.backlog for q in report.queues])
        if not warm:  # what the cold tick published (each figure may be published once per test)
            assert_matches_server(aws, deep_backlog, "q0", Q0)
            assert_matches_server(aws, deep_backlog, "q1", small(1))
    cold, warm_read = backlogs
    for before, after in zip(cold, warm_read, strict=True):
        assert before is not None and after is not None
        assert (after.late, after.due, after.pending, after.running) == (
            before.late, before.due, before.pending, before.running)
        assert 0 <= after.oldest_late_age_seconds - before.oldest_late_age_seconds < 30  # the same run, older


# --- a pool's concurrency limit: 3.x reports the pool's active slots, 2.x does not ----------------


def test_due_runs_behind_a_full_pool_are_no_demand(prefect_server: PrefectServer, client_for: ClientFor,
                                                   aws: MotoAws) -> None:
    """The pool's limit is used up by runs of a queue the publisher is not even configured for."""
    c = client_for(prefect_server)
    s = _suffix()
    pool = f"limited-{s}"
    waiting = c.target(pool, "default")
    busy = c.target(pool, "busy")
    c.request("PATCH", f"/work_pools/{pool}", {"concurrency_limit": 2})
    for _ in range(3):
        c.late_run(waiting.deployment_id, timedelta(minutes=4))
    c.running_run(busy.deployment_id)
    c.pending_run(busy.deployment_id)
    aws.service(CLUSTER, "limited-worker", 1)
    config = parse_config({"prefectApiUrl": prefect_server.api_url, "stackName": PUBLISHER,
                           "queues": [entry(waiting, "default", "limited-worker", maxCapacity=3)]})
    report = tick(config, aws)
    assert report.queue_errors == 0, report.summary()
    assert aws.value("ConcurrencyLimited", WorkPool=pool, WorkQueue="default") == 1
    assert aws.value("LateFlowRuns", WorkPool=pool, WorkQueue="default") == 3
    assert aws.value("DemandFlowRuns", ClusterName=CLUSTER, ServiceName="limited-worker") == 0
