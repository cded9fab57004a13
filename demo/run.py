"""The local demo of the whole loop: Prefect backlog -> publisher -> CloudWatch -> scaling policies -> ECS tasks.

    PYTHONPATH=lambda:. .venv/bin/python -m demo.run [--cycles 30] [--interval 5] [--no-protection]

Real: a Prefect 3.x server (SQLite, Late marker on) with 2 work pools and 3
queues, flow runs that arrive, go Late and are worked off through its REST
API; the publisher (``prefect_backlog.tick.run_tick``, the Lambda's code, with
one ``WarmState`` as a warm Lambda keeps) reading Prefect, protecting the ECS
tasks whose workers hold runs and publishing to CloudWatch on a moto server
over HTTP; the stack, synthesized from the demo configuration without the CDK
CLI (``demo/synth.py``, in a child process), whose scalable targets and
policies give every scaling parameter used here.

Simulated (``demo/simulation.py``): Application Auto Scaling acting on the
metrics read back from CloudWatch; ECS, on the stand-in ``harness.fake_ecs``
(the publisher's ECS client: it lists the tasks and protects them there),
acting on the desired count at the start of the next cycle, before its sample:
new tasks are running then, and a scale-in stops tasks chosen as the AWS model
picks them (``harness.aws_model.ecs``: Availability Zones balanced, at random
within one, among the unprotected ones); and one worker per running task, named
``ecs-<task id>``, that claims due runs (state Pending and label
``prefect.worker.name``, as a Prefect 3 worker stamps it) and moves them on.
Each worker polls at a phase of its own: about half claim before the cycle's
sample, the others after it. By default each worker is started as
``prefect-ecs-worker`` (worker/) starts it: it protects its own task at each
claim (the agent endpoint's effect, on the stand-in, for 5 minutes), and the
publisher releases by the rule the two share (docs/task-protection.md).
``--no-launcher`` starts plain workers: a run claimed after a sample then waits
for the next one to have its task protected, and a scale-in that lands before
then can stop that task busy.
A task stopped under a run it holds takes the run's process with it: the run
stays in flight in Prefect, orphaned. Alarms and policies here are still the
compressed per-cycle rules of ``demo/simulation.py``; ``make day-replay`` runs
the full AWS model.

One cycle stands for one publisher sample (a minute in production) and lasts
a few seconds here; ``prewarmSeconds`` is set to the same number of cycles
that the default 240 s is in minutes.

Everything listens on 127.0.0.1 and is stopped at the end, also on Ctrl-C and SIGTERM.
Needs the Prefect 3 venv: ``bash scripts/install-prefect.sh 3 .venvs/prefect3``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import boto3
import requests
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from demo import simulation as sim
from demo.chart import BurstMark, ServiceSeries, draw
from harness.aws_model import ecs as aws_ecs
from harness.aws_model.deployed import Deployed, deployed_policies
from harness.backlog import BacklogClient, Target, iso
from harness.fake_ecs import FakeEcs
from harness.prefect_server import PrefectServer, PrefectServerError
from prefect_backlog import metrics
from prefect_backlog.aws.ecs import EcsTaskClient
from prefect_backlog.backlog import service_signal
from prefect_backlog.config import DEFAULT_PREWARM_SECONDS, Config, ServiceConfig, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.report import TickReport
from prefect_backlog.tick import WarmState, run_tick

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "out"
REGION = "us-east-1"
HOST = "127.0.0.1"
DEFAULT_SEED = 7

T = TypeVar("T")
ServiceKey = tuple[str, str]  # (cluster, service)
QueueKey = tuple[str, str]  # (work pool, work queue)

# The queues the demo deploys (synth) and publishes for. The URL is replaced by the local server's for
# the publisher; the template does not depend on it, so synth uses this fixed one.
DEMO_API_URL = "http://127.0.0.1:4200/api"
DEMO_QUEUES: tuple[dict[str, Any], ...] = (
    {"workPool": "ecs-pool", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
     "minCapacity": 0, "maxCapacity": 4, "targetBacklogPerTask": 5},
    {"workPool": "ecs-pool", "workQueue": "high-memory", "cluster": "prefect", "service": "ecs-worker"},
    {"workPool": "process-pool", "workQueue": "default", "cluster": "prefect", "service": "process-worker",
     "minCapacity": 0, "maxCapacity": 6, "targetBacklogPerTask": 2, "runsInWorkerTask": True},
)


def demo_prewarm_seconds(interval: float) -> int:
    """The demo's prewarmSeconds: as many cycles as the default 240 s is one-minute samples (4)."""
    return max(1, round(sim.cycles_for(DEFAULT_PREWARM_SECONDS) * interval))


def demo_context(interval: float, protection: bool) -> dict[str, Any]:
    """The configuration the demo deploys: every service pre-warms over 4 cycles, protection on or off."""
    service_settings = {"prewarmSeconds": demo_prewarm_seconds(interval), "taskProtection": protection}
    return {"prefectApiUrl": DEMO_API_URL, "stackName": "PrefectAutoscalerDemo",
            "queues": [{**queue, **service_settings} for queue in DEMO_QUEUES]}


@dataclass(frozen=True)
class Burst:
    """Flow runs that come due together, at ``cycle`` (the first sample for which they are due)."""

    name: str
    cycle: int
    runs: Mapping[QueueKey, tuple[int, ...]]  # per queue, each run's time Running in cycles, in claim order
    # Cycles ahead of ``cycle`` that a deployment's schedule creates the runs (due a second before that
    # cycle starts). None: unannounced, each run created as it comes due (an ad-hoc run_deployment fan-out),
    # after the sample of the cycle before.
    created_ahead: int | None = None

    @property
    def announced(self) -> bool:
        return self.created_ahead is not None

    @property
    def creation_cycle(self) -> int:
        """The cycle after whose sample the runs are created."""
        return self.cycle - self.created_ahead if self.created_ahead is not None else self.cycle - 1


# Most runs are short; in the first burst one in each of three process-worker tasks is long, so at its
# end three tasks are busy and three idle when target tracking scales the service in.
BURSTS = (
    Burst("unannounced", cycle=2, runs={("ecs-pool", "default"): (4,) * 12, ("ecs-pool", "high-memory"): (4,) * 6,
                                        ("process-pool", "default"): (3, 10) * 3 + (3,) * 6}),
    Burst("scheduled", cycle=20, created_ahead=12,
          runs={("ecs-pool", "default"): (3,) * 6, ("process-pool", "default"): (3,) * 6}),
)

# A worker that launches each run as its own ECS task submits one at a time: the run is Pending in it
# for a cycle, then Running in its own task, which the worker's task no longer holds.
SUBMISSION_SLOTS = 1

# The Late marker flips runs 15 s after they were due (Prefect's default, kept). It looks every 5 s
# by default, a whole cycle here; looking every second keeps it fast next to a cycle, as it is next
# to a 1-minute sample in production.
LATE_MARKER_ENV = {"PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1"}


# --- the deployed template ------------------------------------------------------------------


@contextmanager
def synthesizing(context: Mapping[str, Any]) -> Iterator[Callable[[], dict[str, dict[str, Any]]]]:
    """Start ``demo.synth`` for ``context`` in the background; yields a function that waits for the templates.

    The child runs in its own session: Ctrl-C reaches only this process, and
    leaving the block early kills the child together with CDK's node process.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "lambda"), str(REPO_ROOT)])}
    child = subprocess.Popen([sys.executable, "-m", "demo.synth", json.dumps(context)], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def templates() -> dict[str, dict[str, Any]]:
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"synthesizing the demo stack failed:\n{err.strip()}")
        result: dict[str, dict[str, Any]] = json.loads(out)
        return result

    try:
        yield templates
    finally:
        if child.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # its group: CDK's node process too
            child.communicate()


# --- AWS: CloudWatch on moto, ECS on the stand-in ---------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (a thread of this process); yields its URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_client(service: str, endpoint_url: str) -> Any:
    """A boto3 client for the moto server, with fake credentials (nothing can reach AWS).

    Uncompressed: botocore gzips PutMetricData bodies over 10 KB, and moto's
    standalone server (5.2) answers those with HTTP 500; real CloudWatch takes them.
    """
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=BotoConfig(disable_request_compression=True))


@dataclass(frozen=True)
class EcsEvent:
    """What ECS did to one service at the start of one cycle, acting on the desired count set the cycle before."""

    desired: int
    started: int = 0
    stopped_idle: tuple[str, ...] = ()
    stopped_busy: tuple[str, ...] = ()
    orphaned: int = 0  # runs that died with the busy tasks
    live: int = 0  # tasks afterwards
    protected: int = 0  # of those, protected from scale-in

    def describe(self) -> str:
        """One line on a scale-in, or "" when ECS stopped nothing and nothing waits."""
        if self.live <= self.desired and not (self.stopped_idle or self.stopped_busy):
            return ""
        parts = []
        if self.stopped_idle:
            parts.append(f"stopped {len(self.stopped_idle)} idle task(s) {_short(self.stopped_idle)}")
        if self.stopped_busy:
            parts.append(f"stopped {len(self.stopped_busy)} BUSY task(s) {_short(self.stopped_busy)}: "
                         f"{self.orphaned} flow run(s) orphaned")
        if self.live > self.desired:
            parts.append(f"{self.live - self.desired} task(s) above desired {self.desired} kept: "
                         f"{self.protected} protected")
        return "ECS scale-in: " + "; ".join(parts)


def _short(task_ids: Sequence[str]) -> str:
    return "[" + " ".join(t[:6] for t in task_ids) + "]"


LAUNCHER_PROTECTION_MINUTES = 5  # prefect_ecs_worker.options.DEFAULT_MINUTES; the publisher releases idle tasks

class SimulatedEcs:
    """The configured ECS services on :class:`FakeEcs`, which the publisher gets as its ECS client.

    The desired count set after one cycle's sample is acted on at the start of
    the next cycle (:meth:`act`), so tasks asked for in one cycle are running
    in the next one, before its sample. Task IDs and scale-in picks come from
    one seeded RNG.
    """

    def __init__(self, services: Sequence[ServiceKey], rng: random.Random) -> None:
        self.api = FakeEcs()
        self.client: EcsTaskClient = self.api  # what the publisher calls
        self.rng = rng
        self.zones: dict[str, str] = {}  # task -> its Availability Zone
        self.after_sample: dict[str, bool] = {}  # task -> its worker polls after the sample in a cycle
        for cluster, service in services:
            self.api.service(cluster, service)

    def polls_after_sample(self, task: str) -> bool:
        return self.after_sample.get(task, False)

    def protect_at_claim(self, tasks: set[str]) -> None:
        """What a worker launcher does when its worker claims a run: protect its own task (the agent endpoint)."""
        for task_id in sorted(tasks):
            task = self.api.tasks[task_id]
            self.api.update_task_protection(cluster=task.cluster, tasks=[task_id], protectionEnabled=True,
                                            expiresInMinutes=LAUNCHER_PROTECTION_MINUTES)

    def live(self, key: ServiceKey) -> list[str]:
        return self.api.live(*key)

    def desired(self, key: ServiceKey) -> int:
        return self.api.desired[key]

    def set_desired(self, key: ServiceKey, desired: int) -> None:
        """What Application Auto Scaling does: UpdateService with the new desired count."""
        self.api.desired[key] = desired

    def act(self, key: ServiceKey, busy: set[str]) -> tuple[EcsEvent, tuple[str, ...]]:
        """Start or stop tasks towards the desired count; returns the event and the busy tasks it stopped."""
        cluster, service = key
        desired = self.desired(key)
        live = self.live(key)
        protected = self.api.protected(cluster, service)
        tasks = [aws_ecs.Task(id=t, az=self.zones[t], created=0, running_at=0, ready_at=0,
                              protected_until=math.inf if t in protected else None) for t in live]
        action = sim.ecs_scale(tasks, desired, self.rng)
        stop = set(action.stop)
        for _ in range(action.start):
            task_id = f"{self.rng.getrandbits(128):032x}"
            self.zones[task_id] = aws_ecs.spread_az([t for t in tasks if t.id not in stop], self.rng)
            self.after_sample[task_id] = self.rng.random() < 0.5  # its worker's poll phase: before or after a sample
            self.api.start_task(cluster, service, task_id=task_id)
        for task in action.stop:
            self.api.stop_task(task)
        idle, stopped_busy = sim.split_stopped(action.stop, busy)
        event = EcsEvent(desired=desired, started=action.start, stopped_idle=idle, stopped_busy=stopped_busy,
                         live=len(self.live(key)), protected=len(self.api.protected(cluster, service)))
        return event, stopped_busy


# --- Prefect: the flow runs and the workers -------------------------------------------------


@dataclass
class DemoRun:
    id: str
    service: ServiceKey
    due: datetime  # its scheduled start time
    order: tuple[datetime, int]  # claim order: its burst's due moment, then creation order
    run_cycles: int
    state: str = "WAITING"  # Scheduled or Late, until a worker claims it; then PENDING, RUNNING, COMPLETED
    since_cycle: int = 0
    task: str | None = None  # the task whose worker claimed it
    orphaned: bool = False  # its task was stopped while it held it: nothing moves it on any more


@dataclass
class Workload:
    """The demo's flow runs, and the workers on the running tasks that claim and run them through the REST API.

    Requests go out a few at a time (``pool``): a state change costs a SQLite
    server a few hundred milliseconds on a busy machine.
    """

    client: BacklogClient
    pool: ThreadPoolExecutor
    targets: dict[QueueKey, Target]
    service_of: dict[QueueKey, ServiceKey]
    in_task: dict[ServiceKey, bool]  # runs execute inside the worker's task (Process worker)
    slots: dict[ServiceKey, int]  # runs one worker holds at once
    runs: list[DemoRun] = field(default_factory=list)
    creating: list[Future[DemoRun]] = field(default_factory=list)
    created: int = 0

    @classmethod
    def create(cls, client: BacklogClient, pool: ThreadPoolExecutor, config: Config) -> Workload:
        """Pools, queues and one deployment per queue, as the configuration names them."""
        targets, service_of = {}, {}
        for queue in config.queues:
            assert queue.work_pool is not None  # the demo configuration names every pool
            key = (queue.work_pool, queue.work_queue)
            targets[key] = client.target(*key, flow_name="demo-flow")
            service_of[key] = queue.service_key
        in_task = {s.key: any(config.queues[i].runs_in_worker_task for i in s.queue_indexes) for s in config.services}
        slots = {s.key: max(1, int(s.target_backlog_per_task)) if in_task[s.key] else SUBMISSION_SLOTS
                 for s in config.services}
        return cls(client, pool, targets, service_of, in_task, slots)

    def create_burst(self, burst: Burst, due: datetime | None) -> None:
        """Create the burst's runs in the background, Scheduled for ``due`` (None: each for the moment it is
        created), so that creating them never holds up a sample."""
        moment = due or datetime.now(UTC)
        for key, durations in burst.runs.items():
            for run_cycles in durations:
                order = (moment, self.created)
                self.created += 1
                self.creating.append(self.pool.submit(self._create, key, due, order, run_cycles))

    def _create(self, key: QueueKey, due: datetime | None, order: tuple[datetime, int], run_cycles: int) -> DemoRun:
        scheduled = due or datetime.now(UTC)
        state = {"type": "SCHEDULED", "state_details": {"scheduled_time": iso(scheduled)}}
        run = _once_more_on_reset(lambda: self.client.create_run(self.targets[key].deployment_id, state))
        return DemoRun(str(run["id"]), self.service_of[key], scheduled, order, run_cycles)

    def collect_created(self) -> None:
        """Wait for the runs still being created (they were started a cycle's sleep ago)."""
        wait(self.creating)
        for future in self.creating:
            if (error := future.exception()) is not None:
                print(f"  ! could not create a flow run: {error}", file=sys.stderr)
            else:
                self.runs.append(future.result())
        self.runs.sort(key=lambda r: r.order)
        self.creating = []

    def busy_tasks(self, service: ServiceKey) -> set[str]:
        """The service's tasks whose worker holds a run (its process, or its submission, lives there)."""
        return {r.task for r in self.runs if r.service == service and r.task is not None and not r.orphaned
                and sim.holds_task(r.state, self.in_task[service])}

    def orphan(self, service: ServiceKey, stopped: Sequence[str]) -> int:
        """The runs held by ``stopped`` tasks die with them: nothing moves them on; how many there were."""
        dead = [r for r in self.runs if r.service == service and r.task in stopped and not r.orphaned
                and sim.holds_task(r.state, self.in_task[service])]
        for run in dead:
            run.orphaned = True
        return len(dead)

    def work(self, cycle: int, now: datetime, live: Mapping[ServiceKey, Sequence[str]], *, advance: bool = True,
             polling: Callable[[str], bool] = lambda task: True) -> set[str]:
        """The workers: claimed runs move on (``advance``: once a cycle), then the running tasks' workers that poll
        now (``polling``) claim due runs. Returns the tasks whose worker claimed a run."""
        moves = {run.id: sim.next_run_state(run.state, cycle - run.since_cycle, run.run_cycles)
                 for run in self.runs if advance and run.state in ("PENDING", "RUNNING") and not run.orphaned}
        claims: dict[str, str] = {}  # run id -> task
        for service, tasks in live.items():
            mine = [r for r in self.runs if r.service == service]
            held = dict.fromkeys(tasks, 0)
            for run in mine:
                if run.task in held and not run.orphaned and sim.holds_task(moves.get(run.id, run.state),
                                                                            self.in_task[service]):
                    held[run.task] += 1
            waiting = [r for r in mine if r.state == "WAITING" and r.due <= now]
            free = [(task, self.slots[service] - n) for task, n in held.items() if polling(task)]
            claims.update((run.id, task) for run, task in zip(waiting, sim.assign_claims(free, len(waiting)),
                                                              strict=False))
        moves.update(dict.fromkeys(claims, "PENDING"))
        changed = [run for run in self.runs if moves.get(run.id, run.state) != run.state]
        done = list(self.pool.map(lambda r: self._apply(r, moves[r.id], claims.get(r.id)), changed))
        for run, ok in zip(changed, done, strict=True):
            if ok:
                run.state, run.since_cycle = moves[run.id], cycle
                run.task = claims.get(run.id, run.task)
        return {claims[run.id] for run, ok in zip(changed, done, strict=True) if ok and run.id in claims}

    def _apply(self, run: DemoRun, state: str, claimed_by: str | None) -> bool:
        """Move ``run`` to ``state``; a claim first labels it with its worker's name, as a Prefect 3 worker does."""
        try:
            if claimed_by is not None:
                worker = {"prefect.worker.name": f"ecs-{claimed_by}",
                          "prefect.worker.type": "process" if self.in_task[run.service] else "ecs"}
                _once_more_on_reset(lambda: self.client.request("PATCH", f"/flow_runs/{run.id}/labels", worker))
            _once_more_on_reset(lambda: self.client.set_state(run.id, state, force=True))
        except requests.RequestException as exc:  # a busy SQLite server: the run tries again next cycle
            print(f"  ! could not set run {run.id[:8]} {state}: {exc}", file=sys.stderr)
            return False
        return True


def _once_more_on_reset(call: Callable[[], T]) -> T:
    """``call()``, again once if the connection was reset: the server closes connections idle for 5 s (uvicorn's
    keep-alive), a cycle here, so a pooled one can be closed just as it is reused."""
    try:
        return call()
    except requests.ConnectionError:
        return call()


# --- what was published ---------------------------------------------------------------------

QUEUE_FIGURES = {"upcoming": metrics.UPCOMING_FLOW_RUNS, "late": metrics.LATE_FLOW_RUNS,
                 "due": metrics.DUE_FLOW_RUNS, "pending": metrics.PENDING_FLOW_RUNS,
                 "running": metrics.RUNNING_FLOW_RUNS, "orphaned": metrics.ORPHANED_FLOW_RUNS}
SERVICE_FIGURES = {"backlog_per_task": metrics.BACKLOG_PER_TASK, "task_shortfall": metrics.TASK_SHORTFALL,
                   "demand": metrics.DEMAND_FLOW_RUNS, "running_tasks": metrics.RUNNING_TASKS,
                   "desired_tasks": metrics.DESIRED_TASKS, "protected_tasks": metrics.PROTECTED_TASKS}


@dataclass(frozen=True)
class Published:
    """One service's figures as CloudWatch holds them for one sample; None where nothing was published."""

    upcoming: float | None
    late: float | None
    due: float | None
    pending: float | None
    running: float | None  # flow runs
    orphaned: float | None  # published only where the publisher checked the tasks (protection on)
    backlog_per_task: float | None
    task_shortfall: float | None
    demand: float | None
    running_tasks: float | None
    desired_tasks: float | None
    protected_tasks: float | None  # published only where protection is on


def read_published(cloudwatch: Any, config: Config, timestamp: datetime) -> dict[ServiceKey, Published]:
    """Read back, in one GetMetricData call, what the publisher put for the sample at ``timestamp``."""
    queries: list[dict[str, Any]] = []

    def query(metric: metrics.MetricDef, dimensions: Mapping[str, str]) -> str:
        query_id = f"m{len(queries)}"
        queries.append({"Id": query_id, "MetricStat": {"Period": 60, "Stat": "Maximum", "Metric": {
            "Namespace": config.namespace, "MetricName": metric.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()]}}})
        return query_id

    queue_ids = {q.index: {name: query(m, metrics.queue_dimensions(q.work_pool or "", q.work_queue))
                           for name, m in QUEUE_FIGURES.items()} for q in config.queues}
    service_ids = {s.key: {name: query(m, metrics.service_dimensions(*s.key)) for name, m in SERVICE_FIGURES.items()}
                   for s in config.services}
    start = timestamp.replace(microsecond=0)
    response = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start,
                                          EndTime=start + timedelta(seconds=1))
    values = {r["Id"]: r["Values"][0] for r in response["MetricDataResults"] if r["Values"]}

    def queue_sum(service: ServiceConfig, name: str) -> float | None:
        parts = [values.get(queue_ids[i][name]) for i in service.queue_indexes]
        return None if None in parts else sum(p for p in parts if p is not None)

    return {s.key: Published(**{name: queue_sum(s, name) for name in QUEUE_FIGURES},
                             **{name: values.get(service_ids[s.key][name]) for name in SERVICE_FIGURES})
            for s in config.services}


# --- one row per service and cycle ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    cycle: int
    elapsed: float  # seconds since the first cycle began, at the sample
    service: ServiceKey
    published: Published
    tracking_ask: int | None
    step_ask: int | None
    desired: int  # after the policies acted
    ecs: EcsEvent  # what ECS did at the start of this cycle
    note: str = ""


HEADER = (f"{'':28}{' flow runs (published) ':-^46}  {' published signal ':-^28}  {' policies ':-^14}  "
          f"{' tasks ':-^27}\n"
          f"{'cycle':>5} {'t(s)':>5}  {'service':<14} {'Upcoming':>8} {'Late':>5} {'Due':>5} {'Pending':>7} "
          f"{'Running':>7} {'Orphaned':>8}  {'BacklogPerTask':>14} {'TaskShortfall':>13}  {'tracking':>8} "
          f"{'step':>5}  {'desired':>7} {'running':>7} {'protected':>9}")


def _cell(value: float | None, width: int, decimals: int = 0) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{decimals}f}"


def format_row(row: Row, first: bool) -> str:
    p = row.published
    lead = f"{row.cycle:>5} {row.elapsed:>5.0f}" if first else " " * 11
    line = (f"{lead}  {row.service[1]:<14} {_cell(p.upcoming, 8)} {_cell(p.late, 5)} {_cell(p.due, 5)} "
            f"{_cell(p.pending, 7)} {_cell(p.running, 7)} {_cell(p.orphaned, 8)}  {_cell(p.backlog_per_task, 14, 2)} "
            f"{_cell(p.task_shortfall, 13)}  {_cell(row.tracking_ask, 8)} {_cell(row.step_ask, 5)}  "
            f"{row.desired:>7} {_cell(p.running_tasks, 7)} {_cell(p.protected_tasks, 9)}").rstrip()
    notes = [n for n in (row.ecs.describe(), row.note) if n]
    return "\n".join([line, *(f"{'':13}{row.service[1]}: {n}" for n in notes)])


# --- the loop -------------------------------------------------------------------------------


def service_notes(report: TickReport) -> dict[ServiceKey, str]:
    """Why a service's signal was not published this sample (the publisher withholds, never guesses)."""
    return {s.config.key: f"not published: {s.error}" for s in report.services if s.error}


@dataclass
class Timeline:
    """When things happened, in seconds since the first cycle began (``time.monotonic`` based)."""

    began: float
    cycle_starts: list[float] = field(default_factory=list)
    burst_due: dict[str, float] = field(default_factory=dict)  # burst name -> when its runs came due
    samples_ms: list[float] = field(default_factory=list)  # the publisher's tick durations

    def now(self) -> float:
        return time.monotonic() - self.began


@dataclass
class World:
    config: Config
    policies: Mapping[ServiceKey, Deployed]
    workload: Workload
    ecs: SimulatedEcs
    cloudwatch: Any
    warm: WarmState = field(default_factory=WarmState)
    protect_at_claim: bool = True  # prefect-ecs-worker protects its task when its worker claims a run


def run_cycles(world: World, cycles: int, interval: float) -> tuple[list[Row], Timeline]:
    """ECS acts, workers work, the publisher samples, the policies decide: once per ``interval`` seconds."""
    config, ecs, workload = world.config, world.ecs, world.workload
    alarms = {s.key: sim.TrackingAlarms() for s in config.services}
    rows: list[Row] = []
    print(HEADER)
    timeline = Timeline(began=time.monotonic())
    wall_began = datetime.now(UTC)
    next_start = timeline.began
    for cycle in range(cycles):
        time.sleep(max(0.0, next_start - time.monotonic()))
        next_start = max(next_start, time.monotonic()) + interval  # a slow cycle delays, never bunches, the next
        timeline.cycle_starts.append(timeline.now())
        workload.collect_created()

        # ECS acts on the desired counts set after the last sample; the runs of busy tasks it stops die.
        events = {}
        for service in config.services:
            event, stopped_busy = ecs.act(service.key, workload.busy_tasks(service.key))
            events[service.key] = replace(event, orphaned=workload.orphan(service.key, stopped_busy))
        # Workers poll at phases of their own: those polling before this cycle's sample claim now, the others
        # after it (below), so their claims wait a whole cycle for the publisher to protect their task, and a
        # scale-in that lands at the next cycle's start may stop them busy.
        claimed = workload.work(cycle, datetime.now(UTC), {s.key: ecs.live(s.key) for s in config.services},
                                polling=lambda task: not ecs.polls_after_sample(task))
        if world.protect_at_claim:
            ecs.protect_at_claim(claimed)

        now = datetime.now(UTC)
        prefect = PrefectClient(config.api_url, deadline=time.monotonic() + max(interval, 10.0),
                                depth_memory=world.warm.depth)
        report = run_tick(config, prefect, ecs=ecs.client, cloudwatch=world.cloudwatch, now=now, warm=world.warm)
        timeline.samples_ms.append(report.duration_ms)
        elapsed = timeline.now()
        published = read_published(world.cloudwatch, config, now)
        notes = service_notes(report)

        asks: dict[ServiceKey, tuple[int | None, int | None]] = {}
        for service in config.services:
            key, seen, rules = service.key, published[service.key], world.policies[service.key]
            alarms[key] = sim.next_alarms(alarms[key], seen.backlog_per_task, rules.tracking.target_value)
            tracking = sim.tracking_ask(rules, alarms[key], seen.backlog_per_task, ecs.desired(key))
            step = sim.step_ask(rules, seen.task_shortfall, ecs.desired(key))
            asks[key] = (tracking, step)
            ecs.set_desired(key, sim.next_desired(ecs.desired(key), (tracking, step)))

        claimed = workload.work(cycle, datetime.now(UTC), {s.key: ecs.live(s.key) for s in config.services},
                                advance=False, polling=ecs.polls_after_sample)
        if world.protect_at_claim:
            ecs.protect_at_claim(claimed)

        for burst in BURSTS:  # created after this sample: an unannounced one comes due as it is created
            if burst.creation_cycle == cycle:
                due = None if not burst.announced else wall_began + timedelta(seconds=burst.cycle * interval - 1)
                workload.create_burst(burst, due)
                timeline.burst_due[burst.name] = timeline.now() if due is None else burst.cycle * interval - 1

        for position, service in enumerate(config.services):
            key = service.key
            row = Row(cycle, elapsed, key, published[key], *asks[key], desired=ecs.desired(key), ecs=events[key],
                      note=notes.get(key, ""))
            rows.append(row)
            print(format_row(row, first=position == 0), flush=True)
    return rows, timeline


# --- the outcome ----------------------------------------------------------------------------


def _per_service(rows: Sequence[Row], key: ServiceKey) -> list[Row]:
    return [r for r in rows if r.service == key]


def needed_tasks(config: Config, burst: Burst, service: ServiceConfig) -> int:
    """Tasks the burst's runs of ``service`` need: what the step policy asks for them (the publisher's
    shortfall from 0 tasks)."""
    mine = {(config.queues[i].work_pool, config.queues[i].work_queue) for i in service.queue_indexes}
    runs = sum(len(durations) for queue, durations in burst.runs.items() if queue in mine)
    return service_signal(runs, 0, 0, service.target_backlog_per_task, service.max_capacity).task_shortfall


def burst_lines(config: Config, rows: Sequence[Row], cycles: int) -> list[str]:
    """When each burst's tasks were running relative to its due cycle, and how many of its runs went Late."""
    lines = []
    for number, burst in enumerate(BURSTS):
        if burst.cycle >= cycles:
            continue
        until = BURSTS[number + 1].cycle if number + 1 < len(BURSTS) else cycles
        parts, late = [], 0
        for service in config.services:
            mine = _per_service(rows, service.key)
            needed = needed_tasks(config, burst, service)
            if not needed:
                continue
            late = max(late, max((int(r.published.late or 0) for r in mine[burst.cycle:until]), default=0))
            up = sim.tasks_up_from([int(r.published.running_tasks or 0) for r in mine], needed, burst.cycle)
            if up is None:
                parts.append(f"{service.service}'s {needed} task(s) never running")
                continue
            lead = burst.cycle - up
            when = (f"{lead} cycle(s) before it was due" if lead > 0 else "as it was due" if lead == 0
                    else f"{-lead} cycle(s) after it was due")
            parts.append(f"{service.service}'s {needed} task(s) running from cycle {up}, {when}")
        created = (f"created at cycle {burst.creation_cycle}, due at cycle {burst.cycle}" if burst.announced
                   else f"created as it came due, for cycle {burst.cycle}")
        went_late = f"up to {late} of its runs Late at a sample" if late else "none of its runs went Late"
        lines.append(f"{burst.name} burst ({created}): {'; '.join(parts)}; {went_late}")
    return lines


def outcome(config: Config, rows: Sequence[Row], workload: Workload, cycles: int, protection: bool,
            launcher: bool = True) -> list[str]:
    """The demo's checkable result: busy tasks stopped on scale-in, orphaned runs, when the bursts' tasks were up."""
    events = [r.ecs for r in rows]
    busy = sum(len(e.stopped_busy) for e in events)
    idle = sum(len(e.stopped_idle) for e in events)
    waited = sum(1 for e in events if e.live > e.desired and e.protected)
    orphaned = sum(1 for r in workload.runs if r.orphaned)
    last = {s.key: _per_service(rows, s.key)[-1].published for s in config.services}
    published = [p.orphaned for p in last.values()]
    reported = (f"OrphanedFlowRuns last published: {sum(p for p in published if p is not None):g}"
                if None not in published else
                "OrphanedFlowRuns not published: with taskProtection false the publisher does not look at tasks")
    return [f"Outcome (taskProtection {'on' if protection else 'off'}, workers "
            f"{'protecting their task at the claim (prefect-ecs-worker)' if launcher else 'without the launcher'}):",
            f"  scale-in stopped {busy} busy task(s) (and {idle} idle); in {waited} cycle(s) a service stayed above "
            "its desired count because its tasks were protected",
            f"  orphaned runs: {orphaned} (runs whose task ECS stopped under them; they stay in flight in Prefect); "
            f"{reported}",
            *(f"  {line}" for line in burst_lines(config, rows, cycles))]


def chart(path: Path, config: Config, policies: Mapping[ServiceKey, Deployed], rows: Sequence[Row],
          timeline: Timeline, interval: float, protection: bool) -> Path:
    """Draw the rows' history, per service, to ``path``."""
    series = []
    for service in config.services:
        mine = _per_service(rows, service.key)
        p = [r.published for r in mine]
        series.append(ServiceSeries(
            name=service.service, late=[x.late for x in p], due=[x.due for x in p],
            upcoming=[x.upcoming for x in p],
            in_flight=[None if x.pending is None or x.running is None else x.pending + x.running for x in p],
            desired=[r.desired for r in mine], running=[x.running_tasks for x in p],
            protected=[x.protected_tasks for x in p],
            tracking_asks=[r.tracking_ask for r in mine], step_asks=[r.step_ask for r in mine],
            stopped_idle=[len(r.ecs.stopped_idle) for r in mine], stopped_busy=[len(r.ecs.stopped_busy) for r in mine],
            target_value=policies[service.key].tracking.target_value,
            max_capacity=policies[service.key].target.max_capacity))
    bursts = [BurstMark(at=sim.cycle_position(timeline.burst_due[b.name], timeline.cycle_starts, interval),
                        label=(f"scheduled burst due (created at cycle {b.creation_cycle})" if b.announced
                               else "unannounced burst due (created as it came due)"), announced=b.announced)
              for b in BURSTS if b.name in timeline.burst_due]
    title = (f"Prefect backlog driving ECS scaling, task protection {'on' if protection else 'OFF'} "
             f"(local demo; one cycle = {interval:g} s, standing for a 1-minute sample)")
    return draw(path, list(range(len(series[0].desired))), series, bursts, title)


# --- main -----------------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `finally` like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30, help="publisher samples to run (default 30)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds per cycle (default 5)")
    parser.add_argument("--no-protection", dest="protection", action="store_false",
                        help="set taskProtection false for every service and start plain workers (no "
                             "prefect-ecs-worker), to see what protection prevents")
    parser.add_argument("--no-launcher", dest="protect_at_claim", action="store_false",
                        help="workers started with plain `prefect worker start --name ecs-<task id>` instead of "
                             "prefect-ecs-worker: a claim is unprotected until the publisher's next sample")
    parser.add_argument("--protect-at-claim", dest="protect_at_claim", action="store_true",
                        help="(the default) workers protect their own task when they claim a run, as "
                             "prefect-ecs-worker does")
    parser.set_defaults(protect_at_claim=True)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of ECS's task IDs and scale-in picks (default {DEFAULT_SEED})")
    parser.add_argument("--chart", type=Path, default=None,
                        help=f"PNG to write (default {OUT_DIR / 'demo-chart.png'}, with --no-protection "
                             f"{OUT_DIR / 'demo-chart-no-protection.png'})")
    parser.add_argument("--prefect-venv", type=Path,
                        default=Path(os.environ.get("PREFECT3_VENV") or REPO_ROOT / ".venvs" / "prefect3"),
                        help="virtualenv holding the Prefect 3 server (default .venvs/prefect3)")
    args = parser.parse_args(argv)
    if not args.protection:
        args.protect_at_claim = False  # no protection at all: neither the publisher's nor the workers' own
    chart_path = args.chart or OUT_DIR / ("demo-chart.png" if args.protection else "demo-chart-no-protection.png")
    if not (args.prefect_venv / "bin" / "prefect").exists():
        print(f"no Prefect 3 server in {args.prefect_venv}: run `bash scripts/install-prefect.sh 3 "
              f"{args.prefect_venv}` first", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    context = demo_context(args.interval, args.protection)
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            print("Starting a Prefect 3 server (SQLite, Late marker on) and moto (CloudWatch) on 127.0.0.1; "
                  "synthesizing ...")
            templates = stack.enter_context(synthesizing(context))  # overlaps the server's start
            server = stack.enter_context(PrefectServer("3", args.prefect_venv, late_marking=True,
                                                       extra_env=LATE_MARKER_ENV))
            endpoint = stack.enter_context(moto_server())
            server_up = time.monotonic() - began
            by_resource = deployed_policies(templates().values())
            config = parse_config({**context, "prefectApiUrl": server.api_url})
            policies = {s.key: by_resource[s.resource_id] for s in config.services}
            ready = time.monotonic() - began
            print(f"Ready in {ready:.0f} s (Prefect server up in {server.startup_seconds:.0f} s at {server.api_url}, "
                  f"moto at {endpoint}; the synth finished {max(0.0, ready - server_up):.0f} s after both were up). "
                  "From the synthesized template:")
            for p in policies.values():
                print(f"  {p.resource_id}: {p.target.min_capacity}..{p.target.max_capacity} tasks, target tracking "
                      f"BacklogPerTask = {p.tracking.target_value:g}, step scale-out on TaskShortfall >= "
                      f"{p.step.threshold:g} (+1..+{max(s.change for s in p.step.adjustments)})")

            ecs = SimulatedEcs([s.key for s in config.services], random.Random(args.seed))
            requests_pool = ThreadPoolExecutor(max_workers=4)
            stack.callback(requests_pool.shutdown, wait=True, cancel_futures=True)  # before the server stops
            workload = Workload.create(BacklogClient(server.api_url), requests_pool, config)
            prewarm = config.services[0].prewarm_seconds
            print(f"\n{args.cycles} cycles of {args.interval:g} s, each standing for a 1-minute sample. "
                  f"prewarmSeconds = {prewarm} for every service: {sim.cycles_for(DEFAULT_PREWARM_SECONDS)} cycles, "
                  f"as the default {DEFAULT_PREWARM_SECONDS} s is {sim.cycles_for(DEFAULT_PREWARM_SECONDS)} "
                  f"one-minute samples. taskProtection {'on' if args.protection else 'OFF (--no-protection)'}.")
            for burst in BURSTS:
                runs = sum(len(d) for d in burst.runs.values())
                how = (f"created at cycle {burst.creation_cycle} by a schedule, Scheduled for cycle {burst.cycle}"
                       if burst.announced else f"created as they come due, just before cycle {burst.cycle}")
                print(f"  {burst.name} burst: {runs} flow runs, {how}")
            print("ECS (harness/fake_ecs.py, the publisher's ECS client) acts on the desired count at the start of "
                  "the next cycle, before its sample: tasks asked for in one cycle are running in the next, and a "
                  f"scale-in stops tasks at random among the unprotected ones (seed {args.seed}). Each task's "
                  "worker is named ecs-<task id>. Every figure below was read back from CloudWatch (moto); "
                  "'policies ask' is the capacity each policy sets ('-': it does not act), 'desired' what ECS is "
                  "told (largest wins), 'running' and 'protected' the tasks the publisher saw.\n")
            world = World(config, policies, workload, ecs, aws_client("cloudwatch", endpoint),
                          protect_at_claim=args.protect_at_claim)
            loop_began = time.monotonic()
            rows, timeline = run_cycles(world, args.cycles, args.interval)
            loop_seconds = time.monotonic() - loop_began
            result = outcome(config, rows, workload, args.cycles, args.protection, args.protect_at_claim)
            chart_began = time.monotonic()
            path = chart(chart_path, config, policies, rows, timeline, args.interval, args.protection)
            chart_seconds = time.monotonic() - chart_began
            print("\nStopping the Prefect server and moto ...")
            stopping = time.monotonic()
    except KeyboardInterrupt:
        print("\nInterrupted: everything the demo started has been stopped.", file=sys.stderr)
        return 130
    except (PrefectServerError, RuntimeError) as exc:
        print(f"\nThe demo could not run (everything it started has been stopped): {exc}", file=sys.stderr)
        return 1
    total = time.monotonic() - began
    print("\n".join(["", *result, ""]))
    print(f"Chart: {path}")
    samples = timeline.samples_ms
    print(f"Total {total:.0f} s: {ready:.0f} s to get ready (Prefect server {server.startup_seconds:.0f} s, synth "
          f"overlapped), {loop_seconds:.0f} s of cycles ({len(samples)} x {args.interval:g} s; publisher sample "
          f"{sum(samples) / len(samples) / 1000:.2f} s on average, at most {max(samples) / 1000:.2f} s), "
          f"{chart_seconds:.1f} s chart, {time.monotonic() - stopping:.1f} s stopping.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
