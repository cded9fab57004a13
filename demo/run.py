"""The local demo of the whole loop: Prefect backlog -> publisher -> CloudWatch -> scaling policies -> ECS tasks.

    PYTHONPATH=lambda:. .venv/bin/python -m demo.run [--cycles 30] [--interval 5]

Real: a Prefect 3.x server (SQLite, Late marker on) with 2 work pools and 3
queues, flow runs that arrive, go Late and are worked off through its REST
API; the publisher (``prefect_backlog.tick.run_tick``, the Lambda's code) reading
Prefect and talking to a moto server over HTTP (ECS DescribeServices, CloudWatch
PutMetricData); the stack, synthesized from the demo configuration without the
CDK CLI (``demo/synth.py``, in a child process), whose scalable targets and
policies give every scaling parameter used here.

Simulated (``demo/simulation.py``): Application Auto Scaling acting on the
metrics read back from CloudWatch, ECS starting the tasks one cycle later, and
the running tasks claiming due runs. One cycle stands for one publisher sample
(a minute in production) and lasts a few seconds here.

Everything listens on 127.0.0.1 and is stopped at the end, also on Ctrl-C.
Needs the Prefect 3 venv: ``bash scripts/install-prefect.sh 3 .venvs/prefect3``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import boto3
import requests
from moto.backends import get_backend
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

from demo import simulation as sim
from demo.chart import ServiceSeries, draw
from harness.backlog import BacklogClient, Target, iso
from harness.prefect_server import PrefectServer, PrefectServerError
from prefect_backlog import metrics
from prefect_backlog.config import Config, ServiceConfig, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.report import TickReport
from prefect_backlog.tick import run_tick

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHART = REPO_ROOT / "out" / "demo-chart.png"
REGION = "us-east-1"
HOST = "127.0.0.1"

ServiceKey = tuple[str, str]  # (cluster, service)
QueueKey = tuple[str, str]  # (work pool, work queue)

# The configuration the demo deploys (synth) and publishes with. The URL is replaced by the local
# server's for the publisher; the template does not depend on it, so synth uses this fixed one (and
# the Lambda package in .build/ stays the same from run to run).
DEMO_CONTEXT: dict[str, Any] = {
    "prefectApiUrl": "http://127.0.0.1:4200/api",
    "stackName": "PrefectAutoscalerDemo",
    "queues": [
        {"workPool": "ecs-pool", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
         "minCapacity": 0, "maxCapacity": 4, "targetBacklogPerTask": 5},
        {"workPool": "ecs-pool", "workQueue": "high-memory", "cluster": "prefect", "service": "ecs-worker"},
        {"workPool": "process-pool", "workQueue": "default", "cluster": "prefect", "service": "process-worker",
         "minCapacity": 0, "maxCapacity": 6, "targetBacklogPerTask": 2, "runsInWorkerTask": True},
    ],
}


@dataclass(frozen=True)
class Wave:
    """Flow runs that come due together, just before one cycle's sample."""

    cycle: int
    runs: Mapping[QueueKey, int]


WAVES = (
    Wave(cycle=2, runs={("ecs-pool", "default"): 16, ("ecs-pool", "high-memory"): 6, ("process-pool", "default"): 14}),
    Wave(cycle=18, runs={("ecs-pool", "default"): 7, ("process-pool", "default"): 3}),
)

WAVE_LEAD_CYCLES = 2  # runs are created this many cycles before they come due


@dataclass(frozen=True)
class WorkerModel:
    """How one service's running tasks work off runs (see ``simulation.claims_this_cycle``)."""

    claims_per_task: int  # runs one task claims per cycle
    run_cycles: int  # cycles a claimed run spends Running


WORKERS: dict[ServiceKey, WorkerModel] = {
    ("prefect", "ecs-worker"): WorkerModel(claims_per_task=1, run_cycles=4),  # submits runs as their own tasks
    ("prefect", "process-worker"): WorkerModel(claims_per_task=2, run_cycles=5),  # runs them inside its task
}


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


# --- AWS: moto on loopback ------------------------------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1 (a thread of this process, so ECS can be driven below); yields its URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def aws_client(service: str, endpoint_url: str) -> Any:
    """A boto3 client for the moto server, with fake credentials (nothing can reach AWS)."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


class SimulatedEcs:
    """The configured ECS services in moto: desired counts set with UpdateService, tasks running a cycle later.

    ECS has no API that sets how many tasks run (its scheduler decides), and
    moto's UpdateService starts every task at once; so the running count is
    held back in moto's backend, which lives in this process.
    """

    def __init__(self, ecs: Any, services: Sequence[ServiceKey]) -> None:
        self.ecs = ecs
        self.desired = dict.fromkeys(services, 0)
        self.running = dict.fromkeys(services, 0)
        ecs.register_task_definition(family="prefect-worker",
                                     containerDefinitions=[{"name": "worker", "image": "prefect", "memory": 512}])
        for cluster in sorted({c for c, _ in services}):
            ecs.create_cluster(clusterName=cluster)
        for cluster, service in services:
            ecs.create_service(cluster=cluster, serviceName=service, taskDefinition="prefect-worker", desiredCount=0)

    def start_tasks(self) -> None:
        """The tasks asked for in the previous cycle are running now (and stopped ones are gone)."""
        for key in self.running:
            self.running[key] = self.desired[key]
            self._hold_running(key)

    def set_desired(self, key: ServiceKey, desired: int) -> None:
        """What Application Auto Scaling does: UpdateService with the new desired count."""
        cluster, service = key
        self.desired[key] = desired
        self.ecs.update_service(cluster=cluster, service=service, desiredCount=desired)
        self._hold_running(key)

    def _hold_running(self, key: ServiceKey) -> None:
        cluster, service = key
        described = get_backend("ecs")[DEFAULT_ACCOUNT_ID][REGION].services[f"{cluster}:{service}"]
        described.running_count = self.running[key]
        described.pending_count = max(0, self.desired[key] - self.running[key])


# --- Prefect: the flow runs and the workers -------------------------------------------------


@dataclass
class DemoRun:
    id: str
    service: ServiceKey
    due: datetime
    state: str = "WAITING"  # Scheduled or Late, until a task claims it; then PENDING, RUNNING, COMPLETED
    since_cycle: int = 0


@dataclass
class Workload:
    """The demo's flow runs, and the running tasks that claim and run them through the REST API.

    Requests go out a few at a time (``pool``): a state change costs a SQLite
    server a few hundred milliseconds on a busy machine.
    """

    client: BacklogClient
    pool: ThreadPoolExecutor
    targets: dict[QueueKey, Target]
    service_of: dict[QueueKey, ServiceKey]
    runs: list[DemoRun] = field(default_factory=list)
    creating: list[Future[DemoRun]] = field(default_factory=list)

    @classmethod
    def create(cls, client: BacklogClient, pool: ThreadPoolExecutor, config: Config) -> Workload:
        """Pools, queues and one deployment per queue, as the configuration names them."""
        targets, service_of = {}, {}
        for queue in config.queues:
            assert queue.work_pool is not None  # the demo configuration names every pool
            key = (queue.work_pool, queue.work_queue)
            targets[key] = client.target(*key, flow_name="demo-flow")
            service_of[key] = queue.service_key
        return cls(client, pool, targets, service_of)

    def schedule(self, wave: Wave, due: datetime) -> None:
        """Create the wave's runs in the background, Scheduled for ``due`` (Prefect's scheduler too creates
        runs ahead of time), so that creating them never holds up a cycle."""
        for key, count in wave.runs.items():
            self.creating += [self.pool.submit(self._create, key, due) for _ in range(count)]

    def _create(self, key: QueueKey, due: datetime) -> DemoRun:
        state = {"type": "SCHEDULED", "state_details": {"scheduled_time": iso(due)}}
        run = self.client.create_run(self.targets[key].deployment_id, state)
        return DemoRun(str(run["id"]), self.service_of[key], due)

    def work(self, cycle: int, now: datetime, running_tasks: Mapping[ServiceKey, int],
             runs_per_task: Mapping[ServiceKey, int | None]) -> None:
        """One cycle of the workers: claimed runs move on, then the running tasks claim due runs."""
        self._collect_created()
        moves = {run.id: sim.next_run_state(run.state, cycle - run.since_cycle, WORKERS[run.service].run_cycles)
                 for run in self.runs if run.state in ("PENDING", "RUNNING")}
        for service, tasks in running_tasks.items():
            mine = [r for r in self.runs if r.service == service]
            waiting = sorted((r for r in mine if r.state == "WAITING" and r.due <= now), key=lambda r: r.due)
            in_flight = sum(1 for r in mine if moves.get(r.id) in ("PENDING", "RUNNING"))
            count = sim.claims_this_cycle(tasks, WORKERS[service].claims_per_task, len(waiting), in_flight,
                                          runs_per_task[service])
            moves.update((run.id, "PENDING") for run in waiting[:count])
        changed = [run for run in self.runs if moves.get(run.id, run.state) != run.state]
        for run, done in zip(changed, self.pool.map(lambda r: self._set_state(r, moves[r.id]), changed), strict=True):
            if done:
                run.state, run.since_cycle = moves[run.id], cycle

    def _collect_created(self) -> None:
        still_creating = []
        for future in self.creating:
            if not future.done():
                still_creating.append(future)
            elif (error := future.exception()) is not None:
                print(f"  ! could not create a flow run: {error}", file=sys.stderr)
            else:
                self.runs.append(future.result())
        self.creating = still_creating

    def _set_state(self, run: DemoRun, state: str) -> bool:
        try:
            self.client.set_state(run.id, state, force=True)
        except requests.RequestException as exc:  # a busy SQLite server: the run tries again next cycle
            print(f"  ! could not set run {run.id[:8]} {state}: {exc}", file=sys.stderr)
            return False
        return True


# --- what was published ---------------------------------------------------------------------

QUEUE_FIGURES = {"late": metrics.LATE_FLOW_RUNS, "due": metrics.DUE_FLOW_RUNS,
                 "pending": metrics.PENDING_FLOW_RUNS, "running": metrics.RUNNING_FLOW_RUNS}
SERVICE_FIGURES = {"backlog_per_task": metrics.BACKLOG_PER_TASK, "task_shortfall": metrics.TASK_SHORTFALL,
                   "demand": metrics.DEMAND_FLOW_RUNS, "running_tasks": metrics.RUNNING_TASKS,
                   "desired_tasks": metrics.DESIRED_TASKS}


@dataclass(frozen=True)
class Published:
    """One service's figures as CloudWatch holds them for one sample; None where nothing was published."""

    late: float | None
    due: float | None
    pending: float | None
    running: float | None  # flow runs
    backlog_per_task: float | None
    task_shortfall: float | None
    demand: float | None
    running_tasks: float | None
    desired_tasks: float | None


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
    elapsed: float
    service: ServiceKey
    published: Published
    tracking_ask: int | None
    step_ask: int | None
    desired: int  # after the policies acted
    note: str = ""


HEADER = (f"{'':28}{' flow runs ':-^29}  {' published signal ':-^28}  {' policies ask ':-^15}  {' tasks ':-^16}\n"
          f"{'cycle':>5} {'t(s)':>5}  {'service':<14} {'Late':>5} {'Due':>5} {'Pending':>8} {'Running':>8}  "
          f"{'BacklogPerTask':>14} {'TaskShortfall':>13}  {'tracking':>8} {'step':>6}  {'desired':>7} {'running':>8}")


def _cell(value: float | None, width: int, decimals: int = 0) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{decimals}f}"


def format_row(row: Row, first: bool) -> str:
    p = row.published
    lead = f"{row.cycle:>5} {row.elapsed:>5.0f}" if first else " " * 11
    return (f"{lead}  {row.service[1]:<14} {_cell(p.late, 5)} {_cell(p.due, 5)} {_cell(p.pending, 8)} "
            f"{_cell(p.running, 8)}  {_cell(p.backlog_per_task, 14, 2)} {_cell(p.task_shortfall, 13)}  "
            f"{_cell(row.tracking_ask, 8)} {_cell(row.step_ask, 6)}  {row.desired:>7} "
            f"{_cell(p.running_tasks, 8)}{'  ' + row.note if row.note else ''}").rstrip()


# --- the loop -------------------------------------------------------------------------------


def service_notes(report: TickReport) -> dict[ServiceKey, str]:
    """Why a service's signal was not published this sample (the publisher withholds, never guesses)."""
    return {s.config.key: f"not published: {s.error}" for s in report.services if s.error}


def worker_concurrency(config: Config, service: ServiceConfig) -> int | None:
    """Runs one task holds at once when runs live in the worker's task: its target backlog per task."""
    in_task = any(config.queues[i].runs_in_worker_task for i in service.queue_indexes)
    return max(1, int(service.target_backlog_per_task)) if in_task else None


def run_cycles(config: Config, policies: Mapping[ServiceKey, sim.ServicePolicies], workload: Workload,
               ecs: SimulatedEcs, ecs_client: Any, cloudwatch: Any, cycles: int, interval: float) -> list[Row]:
    """Publish, decide, scale and work, once per ``interval`` seconds; print and return a row per service."""
    alarms = {s.key: sim.TrackingAlarms() for s in config.services}
    runs_per_task = {s.key: worker_concurrency(config, s) for s in config.services}
    rows: list[Row] = []
    print(HEADER)
    started = next_start = time.monotonic()
    for cycle in range(cycles):
        time.sleep(max(0.0, next_start - time.monotonic()))
        next_start = max(next_start, time.monotonic()) + interval  # a slow cycle delays, never bunches, the next
        elapsed = time.monotonic() - started
        for wave in WAVES:  # created two cycles ahead, due a second before the wave's cycle would start
            if wave.cycle - WAVE_LEAD_CYCLES == cycle or (cycle == 0 and wave.cycle < WAVE_LEAD_CYCLES):
                workload.schedule(wave, datetime.now(UTC) + timedelta(seconds=(wave.cycle - cycle) * interval - 1))
        now = datetime.now(UTC)
        prefect = PrefectClient(config.api_url, deadline=time.monotonic() + max(interval, 10.0))
        report = run_tick(config, prefect, ecs=ecs_client, cloudwatch=cloudwatch, now=now)
        published = read_published(cloudwatch, config, now)
        notes = service_notes(report)

        ecs.start_tasks()  # what was asked for last cycle is up now; the publisher saw it still starting
        asks: dict[ServiceKey, tuple[int | None, int | None]] = {}
        for service in config.services:
            key, seen, rules = service.key, published[service.key], policies[service.key]
            alarms[key] = sim.next_alarms(alarms[key], seen.backlog_per_task, rules.target_value)
            running = None if seen.running_tasks is None else int(seen.running_tasks)
            tracking = None if running is None else sim.tracking_ask(rules, alarms[key], seen.backlog_per_task,
                                                                     running, ecs.desired[key])
            step = sim.step_ask(rules, seen.task_shortfall, ecs.desired[key])
            asks[key] = (tracking, step)
            ecs.set_desired(key, sim.next_desired(ecs.desired[key], (tracking, step)))
        workload.work(cycle, now, ecs.running, runs_per_task)

        for position, service in enumerate(config.services):
            key = service.key
            row = Row(cycle, elapsed, key, published[key], *asks[key], desired=ecs.desired[key],
                      note=notes.get(key, ""))
            rows.append(row)
            print(format_row(row, first=position == 0), flush=True)
    return rows


def chart(path: Path, config: Config, policies: Mapping[ServiceKey, sim.ServicePolicies], rows: Sequence[Row],
          interval: float) -> Path:
    """Draw the rows' history, per service, to ``path``."""
    series = []
    for service in config.services:
        mine = [r for r in rows if r.service == service.key]
        in_flight = [None if r.published.pending is None or r.published.running is None
                     else r.published.pending + r.published.running for r in mine]
        series.append(ServiceSeries(
            name=service.service, late=[r.published.late for r in mine], due=[r.published.due for r in mine],
            in_flight=in_flight, desired=[r.desired for r in mine],
            running=[r.published.running_tasks for r in mine],
            tracking_asks=[r.tracking_ask for r in mine], step_asks=[r.step_ask for r in mine],
            target_value=policies[service.key].target_value, max_capacity=policies[service.key].max_capacity))
    elapsed = [r.elapsed for r in rows if r.service == config.services[0].key]
    arrivals = [elapsed[w.cycle] - 1 for w in WAVES if w.cycle < len(elapsed)]
    title = (f"Prefect backlog driving ECS scaling (local demo: Prefect 3 server, publisher, moto; "
             f"one cycle = {interval:g} s, standing for a 1-minute sample)")
    return draw(path, elapsed, series, arrivals, title)


# --- main -----------------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every `finally` like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30, help="publisher samples to run (default 30)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds per cycle (default 5)")
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART, help=f"PNG to write (default {DEFAULT_CHART})")
    parser.add_argument("--prefect-venv", type=Path,
                        default=Path(os.environ.get("PREFECT3_VENV") or REPO_ROOT / ".venvs" / "prefect3"),
                        help="virtualenv holding the Prefect 3 server (default .venvs/prefect3)")
    args = parser.parse_args(argv)
    if not (args.prefect_venv / "bin" / "prefect").exists():
        print(f"no Prefect 3 server in {args.prefect_venv}: run `bash scripts/install-prefect.sh 3 "
              f"{args.prefect_venv}` first", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    began = time.monotonic()
    try:
        with ExitStack() as stack:
            print("Starting a Prefect 3 server (SQLite, Late marker on) and moto on 127.0.0.1; synthesizing ...")
            templates = stack.enter_context(synthesizing(DEMO_CONTEXT))  # overlaps the server's start
            server = stack.enter_context(PrefectServer("3", args.prefect_venv, late_marking=True,
                                                       extra_env=LATE_MARKER_ENV))
            endpoint = stack.enter_context(moto_server())
            by_resource = sim.policies_from_templates(templates().values())
            config = parse_config({**DEMO_CONTEXT, "prefectApiUrl": server.api_url})
            policies = {s.key: by_resource[s.resource_id] for s in config.services}
            print(f"Ready in {time.monotonic() - began:.0f} s (Prefect server up in {server.startup_seconds:.0f} s at "
                  f"{server.api_url}, moto at {endpoint}). From the synthesized template:")
            for p in policies.values():
                print(f"  {p.resource_id}: {p.min_capacity}..{p.max_capacity} tasks, target tracking "
                      f"BacklogPerTask = {p.target_value:g}, step scale-out on TaskShortfall >= "
                      f"{p.step_threshold:g} (+1..+{max(s.change for s in p.step_adjustments)})")

            ecs_client, cloudwatch = aws_client("ecs", endpoint), aws_client("cloudwatch", endpoint)
            ecs = SimulatedEcs(ecs_client, [s.key for s in config.services])
            requests_pool = ThreadPoolExecutor(max_workers=4)
            stack.callback(requests_pool.shutdown, wait=True, cancel_futures=True)  # before the server stops
            workload = Workload.create(BacklogClient(server.api_url), requests_pool, config)
            print(f"\n{args.cycles} cycles of {args.interval:g} s; waves of flow runs at cycles "
                  f"{', '.join(str(w.cycle) for w in WAVES)}. Every figure below was read back from CloudWatch "
                  "(moto); 'policies ask' is the capacity each policy sets ('-': it does not act), "
                  "'desired' what ECS is told (largest wins), 'running' the tasks the publisher saw.\n")
            loop_began = time.monotonic()
            rows = run_cycles(config, policies, workload, ecs, ecs_client, cloudwatch, args.cycles, args.interval)
            loop_seconds = time.monotonic() - loop_began
            path = chart(args.chart, config, policies, rows, args.interval)
            print("\nStopping the Prefect server and moto ...")
    except KeyboardInterrupt:
        print("\nInterrupted: everything the demo started has been stopped.", file=sys.stderr)
        return 130
    except (PrefectServerError, RuntimeError) as exc:
        print(f"\nThe demo could not run (everything it started has been stopped): {exc}", file=sys.stderr)
        return 1
    print(f"Chart: {path}")
    print(f"Total {time.monotonic() - began:.0f} s ({loop_seconds:.0f} s of cycles).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
