"""The benchmark's world: one real Prefect 3.x server, one moto server, and the backlog put into them.

Everything listens on 127.0.0.1. The Prefect server runs with ``--no-services``
(no Late marker, no scheduler), so the states created here stay as created for
the whole run: Late runs are created Late directly (type SCHEDULED, name Late,
a past scheduled time), overdue Scheduled runs stay Scheduled.

The backlog is deterministic (seeded per queue), so every tick of every
implementation reads the same numbers, and the expected figures of each queue
are known here (``QueuePlan``) and checked against what was published.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3
import requests
from botocore.config import Config as BotoConfig

from harness.backlog import BacklogClient, now_iso
from harness.prefect_server import HOST, PrefectServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
CLUSTER = "prefect-bench"
TASK_FAMILY = "prefect-worker"
POOLS = 5  # queue i lives in pool i % POOLS
QUEUES_PER_SERVICE = 5  # queue i is served by ECS service i // QUEUES_PER_SERVICE
DEEP_POOL = "deep-pool"
BUSY_POOL = "busy-pool"
# The server is CPU-bound (~35 ms of its CPU per run created) and SQLite takes one writer at a time:
# measured here, 1 thread creates ~27 runs/s, 2 threads ~20/s and 4 threads ~10/s (most calls then
# fail with "database is locked" and are retried). So one thread by default.
SEED_THREADS = 1
BULK_RUNS = 100  # runs per bulk create call (the server's maximum)
BULK_ATTEMPTS = 8


class BenchPrefectServer(PrefectServer):
    """The integration suite's server, started with ``--no-services``: nothing changes a state behind our back."""

    def command(self) -> list[str]:
        return [*super().command(), "--no-services"]


class MotoServer:
    """moto's standalone server (``moto_server``) on a free loopback port; a context manager."""

    def __init__(self, executable: Path = REPO_ROOT / ".venv" / "bin" / "moto_server",
                 log_path: Path | None = None) -> None:
        self.executable = executable
        self.port = free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> MotoServer:
        self._log = open(self.log_path, "ab") if self.log_path else None  # closed in __exit__
        self._proc = subprocess.Popen([str(self.executable), "-H", HOST, "-p", str(self.port)],
                                      stdin=subprocess.DEVNULL, stdout=self._log or subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError("moto_server did not start listening within 60 s")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


class AwsCallCounter:
    """Counts the API calls a boto3 client makes (botocore ``before-call``: once per call, retries excluded)
    and keeps the PutMetricData parameters as given, i.e. exactly what was published."""

    def __init__(self, *clients: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.published: list[dict[str, Any]] = []
        for client in clients:
            client.meta.events.register("before-call", self._count)
            client.meta.events.register("provide-client-params.cloudwatch.PutMetricData", self._keep)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def _keep(self, params: dict[str, Any], **_: Any) -> None:
        self.published.extend(params.get("MetricData", []))

    def reset(self) -> None:
        self.calls.clear()
        self.published.clear()

    def published_values(self, metric_name: str) -> dict[tuple[str, ...], float]:
        """{dimension values in order: value} of one metric."""
        return {tuple(d["Value"] for d in datum.get("Dimensions", [])): float(datum["Value"])
                for datum in self.published if datum["MetricName"] == metric_name}


def aws_client(service: str, endpoint_url: str) -> Any:
    """A boto3 client pointed at the moto server with fake credentials.

    Request compression is off: botocore gzips PutMetricData bodies over 10 KB, and moto's
    standalone server (5.2.1) answers those with HTTP 500 (it decompresses them twice).
    """
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, aws_access_key_id="bench",
                        aws_secret_access_key="bench",
                        config=BotoConfig(disable_request_compression=True, retries={"max_attempts": 1}))


class Latency:
    """Simulated network latency: ``seconds`` slept before every Prefect request and AWS call it is attached to.

    0 by default (loopback). Set for a scenario to see what a remote Prefect API (Prefect Cloud, a
    server in another network) and CloudWatch's own service time do to N sequential round trips.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def wait(self, **_: Any) -> None:
        if self.seconds:
            time.sleep(self.seconds)

    def attach(self, *clients: Any) -> None:
        for client in clients:
            client.meta.events.register("before-send", self.wait)


class CountingSession(requests.Session):
    """A requests session that counts requests and their summed latency per endpoint (pool names folded),
    keeps what was sent (to replay it one request at a time) and can add a simulated latency."""

    def __init__(self, latency: Latency | None = None) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.latency = latency
        self.count: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.sent: list[tuple[str, str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        began = time.perf_counter()
        try:
            if self.latency is not None:
                self.latency.wait()
            return super().request(method, url, *args, **kwargs)
        finally:
            key = f"{method!s} {endpoint(str(url))}"
            with self._lock:
                self.count[key] += 1
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - began
                self.sent.append((str(method), str(url), kwargs.get("json")))


def endpoint(url: str) -> str:
    path = url.split("/api", 1)[-1]
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "work_pools":  # /work_pools/<pool>/workers/filter
        parts[2] = "{pool}"
    return "/".join(parts)


# --- the backlog --------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuePlan:
    """One configured queue, its ECS service, and the runs created in it (the expected figures)."""

    index: int
    pool: str
    queue: str
    service: str
    late: int
    overdue: int  # Scheduled, start time passed (due, not yet Late: the marker is off)
    future: int  # Scheduled in an hour: not due
    pending: int
    running: int
    runs_in_worker_task: bool

    @property
    def due(self) -> int:
        return self.late + self.overdue

    @property
    def runs(self) -> int:
        return self.late + self.overdue + self.future + self.pending + self.running


def service_name(number: int) -> str:
    return f"svc-{number:03d}"


def plan_queue(index: int) -> QueuePlan:
    """Queue ``index`` of the size series: a small, uneven backlog (about 7 runs, a fifth of queues without Late)."""
    rng = random.Random(index)
    service = index // QUEUES_PER_SERVICE
    return QueuePlan(
        index=index, pool=f"bench-pool-{index % POOLS}", queue=f"q{index:03d}", service=service_name(service),
        late=rng.choice((0, 0, 1, 2, 3, 4, 5, 7)), overdue=rng.choice((0, 1, 1, 2)),
        future=rng.choice((0, 1, 2, 3)), pending=rng.choice((0, 0, 1)), running=rng.choice((0, 1, 1, 2)),
        runs_in_worker_task=service % 2 == 0,
    )


def plan_deep(queues: int, late_per_queue: int) -> list[QueuePlan]:
    """A handful of queues in one pool, each with thousands of Late runs and nothing else."""
    return [QueuePlan(index=i, pool=DEEP_POOL, queue=f"deep{i}", service=service_name(900 + i // QUEUES_PER_SERVICE),
                      late=late_per_queue, overdue=0, future=0, pending=0, running=0, runs_in_worker_task=False)
            for i in range(queues)]


def plan_busy(queues: int, running_per_queue: int) -> list[QueuePlan]:
    """A pool whose queues each hold hundreds of Running runs: what an in-flight read costs when it is busy."""
    return [QueuePlan(index=i, pool=BUSY_POOL, queue=f"busy{i}", service=service_name(950 + i // QUEUES_PER_SERVICE),
                      late=0, overdue=0, future=0, pending=0, running=running_per_queue, runs_in_worker_task=True)
            for i in range(queues)]


def service_settings(plan: QueuePlan) -> dict[str, Any]:
    """Every entry of one service gives the same settings (the config requires it)."""
    process = plan.runs_in_worker_task
    return {"maxCapacity": 10, "targetBacklogPerTask": 2 if process else 5, "runsInWorkerTask": process}


def config_context(api_url: str, plans: Sequence[QueuePlan]) -> dict[str, Any]:
    """The CDK context (as a user would write it in cdk.json) for these queues."""
    return {
        "prefectApiUrl": api_url,
        "stackName": "PrefectBench",
        "queues": [{"workPool": p.pool, "workQueue": p.queue, "cluster": CLUSTER, "service": p.service,
                    **service_settings(p)} for p in plans],
    }


class Seeder:
    """Creates pools, queues and runs through the REST helpers (``BacklogClient``), from several threads.

    Runs are created with the 3.x bulk endpoint (``POST /deployments/{id}/create_flow_run/bulk``, at most
    100 runs a call) straight into their state, from one deployment per pool whose runs are routed to each
    queue by ``work_queue_name``: about twice as fast as one run per call (the helpers' ``late_run`` etc.),
    which, with ``pending_run``/``running_run`` needing 3-5 calls a run, would take this machine ~15 minutes
    for the default backlog.
    """

    def __init__(self, api_url: str, threads: int = SEED_THREADS) -> None:
        self.api_url = api_url
        self.threads = threads
        self._local = threading.local()
        self._clients: list[BacklogClient] = []
        self._lock = threading.Lock()
        self._deployments: dict[str, str] = {}  # pool -> its deployment
        self.bulk_retries = 0

    def _client(self) -> BacklogClient:
        client: BacklogClient | None = getattr(self._local, "client", None)
        if client is None:
            client = BacklogClient(self.api_url, timeout=120.0, retries_503=12)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    @property
    def retried_503(self) -> int:
        return sum(c.retried_503 for c in self._clients)

    def _parallel(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            return list(pool.map(fn, items))

    def seed(self, plans: Sequence[QueuePlan]) -> int:
        """Create the queues of ``plans`` (their pools first) and their runs; returns the runs created."""
        client = self._client()
        for pool in sorted({p.pool for p in plans} - set(self._deployments)):  # sequential: names would race
            client.create_pool(pool)
            flow_id = client.create_flow(f"bench-{pool}")
            self._deployments[pool] = client.create_deployment(flow_id, f"bench-{pool}", pool, "default")
        self._parallel(lambda p: self._client().create_queue(p.pool, p.queue), plans)
        runs: list[tuple[QueuePlan, dict[str, Any]]] = []
        for plan in plans:
            kinds = (["late"] * plan.late + ["overdue"] * plan.overdue + ["future"] * plan.future
                     + ["pending"] * plan.pending + ["running"] * plan.running)
            runs += [(plan, _state(kind, len(runs) + n)) for n, kind in enumerate(kinds)]
        random.Random(len(runs)).shuffle(runs)  # run ids interleave queues, as in a real database
        batches: dict[str, list[dict[str, Any]]] = {}
        for plan, state in runs:
            batches.setdefault(plan.pool, []).append({"state": state, "work_queue_name": plan.queue})
        jobs = [(pool, body[i:i + BULK_RUNS]) for pool, body in batches.items()
                for i in range(0, len(body), BULK_RUNS)]
        created = self._parallel(self._create_runs, jobs)
        return sum(created)

    def _create_runs(self, job: tuple[str, list[dict[str, Any]]]) -> int:
        """One bulk call; the runs SQLite refused ("database is locked": concurrent writers) are sent again."""
        pool, body = job
        created = 0
        for attempt in range(BULK_ATTEMPTS):
            answer = self._client().post(f"/deployments/{self._deployments[pool]}/create_flow_run/bulk", body)
            results = answer["results"]
            if len(results) != len(body):
                raise RuntimeError(f"bulk create in pool {pool}: {len(results)} results for {len(body)} runs")
            created += sum(1 for r in results if r.get("status") == "CREATED")
            body = [run for run, r in zip(body, results, strict=True) if r.get("status") != "CREATED"]
            if not body:
                return created
            with self._lock:
                self.bulk_retries += 1
            time.sleep(min(0.2 * 2 ** attempt, 3.0))
        raise RuntimeError(f"bulk create in pool {pool}: {len(body)} runs still failing after {BULK_ATTEMPTS} tries")


def _state(kind: str, number: int) -> dict[str, Any]:
    """The initial state of a run of ``kind``; due runs are 2 to 32 minutes overdue, spread by ``number``."""
    overdue = timedelta(seconds=120 + (number * 7) % 1800)
    if kind == "late":
        return {"type": "SCHEDULED", "name": "Late", "state_details": {"scheduled_time": now_iso(-overdue)}}
    if kind == "overdue":
        return {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now_iso(-overdue)}}
    if kind == "future":
        return {"type": "SCHEDULED", "name": "Scheduled",
                "state_details": {"scheduled_time": now_iso(timedelta(hours=1))}}
    return {"type": kind.upper()}  # PENDING, RUNNING: claimed by a worker just now


def seed_ecs(ecs: Any, plans: Sequence[QueuePlan], existing: set[str]) -> None:
    """The ECS services of ``plans`` that do not exist yet (cluster and task definition on first use)."""
    if not existing:
        ecs.create_cluster(clusterName=CLUSTER)
        ecs.register_task_definition(family=TASK_FAMILY,
                                     containerDefinitions=[{"name": "worker", "image": "prefect", "memory": 512}])
    for plan in plans:
        if plan.service in existing:
            continue
        number = int(plan.service.rsplit("-", 1)[1])
        ecs.create_service(cluster=CLUSTER, serviceName=plan.service, taskDefinition=TASK_FAMILY,
                           desiredCount=number % 3)
        existing.add(plan.service)
