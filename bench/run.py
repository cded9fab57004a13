"""Benchmark one publisher tick against the per-queue baseline, on a real Prefect 3.x server and moto.

    PYTHONPATH=lambda:. .venv/bin/python -m bench.run [--sizes 1,50,200,500] [--ticks 5] [--deep 5x1000]
        [--latency-ms 5,20]      (or: make bench ARGS="...")

Starts one Prefect 3.x server (``--no-services``, SQLite, 127.0.0.1) and one
``moto_server`` (127.0.0.1), then for each size N adds queues until N exist
(``bench/world.py``: 5 pools, 5 queues per ECS service, about 7 runs per
queue in Late, overdue Scheduled, future Scheduled, Pending and Running), and
runs, alternating which goes first, one warm-up and ``--ticks`` timed ticks of

* ours: ``prefect_backlog.tick.run_tick`` with a config from ``parse_config``
  and a fresh ``PrefectClient`` (and HTTP session) per tick, as a Lambda
  invocation has, all sharing one ``DepthMemory`` per scenario as the
  handler's warm container does (the warm-up tick starts without it: a cold
  start, reported as "first tick");
* the baseline (``bench/baseline.py``): per queue one ``/flow_runs/count`` and
  one ``PutMetricData``, sequentially;

then one more tick of each under ``tracemalloc`` for its peak memory. Then the
same for a deep backlog (a few queues with thousands of Late runs each).

Every tick is checked: ours must publish, per queue, the ``LateFlowRuns`` the
baseline published and the Due/Pending/Running counts that were created. The
markdown tables go to stdout, the raw per-tick figures to ``bench/results.json``.
boto3 clients are made once (outside the timed ticks) for both.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import signal
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from bench.baseline import baseline_tick
from bench.world import (
    CLUSTER,
    REPO_ROOT,
    SEED_THREADS,
    AwsCallCounter,
    BenchPrefectServer,
    CountingSession,
    Latency,
    MotoServer,
    QueuePlan,
    Seeder,
    aws_client,
    config_context,
    endpoint,
    plan_busy,
    plan_deep,
    plan_queue,
    seed_ecs,
)
from harness.prefect_server import PrefectServer
from prefect_backlog.aws.cloudwatch import MAX_DATA_PER_PUT
from prefect_backlog.aws.ecs import MAX_SERVICES_PER_DESCRIBE
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.prefect_api.runs import in_flight_stream
from prefect_backlog.prefect_api.transport import PAGE_SIZE
from prefect_backlog.tick import WarmState, run_tick

DEFAULT_RESULTS = REPO_ROOT / "bench" / "results.json"
# The handler's read budget for a 1-minute invocation: 50 s timeout, 3 s kept for publishing.
READ_BUDGET_SECONDS = 47.0
LAMBDA_TIMEOUT_SECONDS = 50.0
# Lambda gives a function CPU in proportion to memory: 1,769 MB is one vCPU, so 256 MB is ~0.145 vCPU.
LAMBDA_VCPU_AT_256_MB = 256 / 1769

log = logging.getLogger("bench")


class Bench:
    def __init__(self, server: PrefectServer, moto_url: str, ticks: int) -> None:
        self.server = server
        self.api_url = server.api_url
        self.ticks = ticks
        self.ecs = aws_client("ecs", moto_url)
        self.ours_cloudwatch = aws_client("cloudwatch", moto_url)
        self.base_cloudwatch = aws_client("cloudwatch", moto_url)
        self.ours_aws = AwsCallCounter(self.ecs, self.ours_cloudwatch)
        self.base_aws = AwsCallCounter(self.base_cloudwatch)
        self.latency = Latency()
        self.latency.attach(self.ecs, self.ours_cloudwatch, self.base_cloudwatch)
        self.mismatches: list[str] = []
        self.last_sent: dict[str, list[tuple[str, str, Any]]] = {}

    # --- one tick of each ----------------------------------------------------------

    def ours(self, config: Config, plans: Sequence[QueuePlan],
             warm: WarmState) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
        self.ours_aws.reset()
        session = CountingSession(self.latency)
        client = PrefectClient(config.api_url, deadline=time.monotonic() + READ_BUDGET_SECONDS, session=session,
                               depth_memory=warm.depth)
        wall, cpu, server_cpu = time.perf_counter(), time.process_time(), self.server.cpu_seconds()
        report = run_tick(config, client, ecs=self.ecs, cloudwatch=self.ours_cloudwatch, now=datetime.now(UTC),
                          warm=warm)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_cpu = self.server.cpu_seconds() - server_cpu
        published = {name: self.ours_aws.published_values(name)
                     for name in ("LateFlowRuns", "DueFlowRuns", "PendingFlowRuns", "RunningFlowRuns")}
        for plan in plans:
            key = (plan.pool, plan.queue)
            got = {name: values.get(key) for name, values in published.items()}
            want = {"LateFlowRuns": plan.late, "DueFlowRuns": plan.due, "PendingFlowRuns": plan.pending,
                    "RunningFlowRuns": plan.running}
            if got != want:
                self.mismatches.append(f"ours {plan.pool}/{plan.queue}: published {got}, created {want}")
        sample = {
            "wall_s": wall,
            "cpu_s": cpu,
            "server_cpu_s": server_cpu,
            "read_s": report.duration_ms / 1000,
            "publish_s": wall - report.duration_ms / 1000,
            "prefect_requests": report.prefect_requests,
            "prefect_requests_by_endpoint": dict(session.count),
            "prefect_seconds_by_endpoint": {k: round(v, 4) for k, v in session.seconds.items()},
            "aws_calls": sum(self.ours_aws.calls.values()),
            "aws_calls_by_operation": dict(self.ours_aws.calls),
            "data_published": len(self.ours_aws.published),
            "queue_errors": report.queue_errors,
            "service_errors": sum(1 for s in report.services if s.error),
        }
        if report.queue_errors or sample["service_errors"]:
            self.mismatches.append(f"ours: {report.summary()}")
        self.last_sent["ours"] = session.sent
        return sample, {(k[0], k[1]): int(v) for k, v in published["LateFlowRuns"].items()}

    def baseline(self, plans: Sequence[QueuePlan]) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
        self.base_aws.reset()
        session = CountingSession(self.latency)
        wall, cpu, server_cpu = time.perf_counter(), time.process_time(), self.server.cpu_seconds()
        report = baseline_tick(self.api_url, [(p.pool, p.queue) for p in plans], self.base_cloudwatch,
                               session=session)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_cpu = self.server.cpu_seconds() - server_cpu
        for plan in plans:
            if report.late.get((plan.pool, plan.queue)) != plan.late:
                self.mismatches.append(f"baseline {plan.pool}/{plan.queue}: counted "
                                       f"{report.late.get((plan.pool, plan.queue))}, created {plan.late} Late")
        sample = {
            "wall_s": wall,
            "cpu_s": cpu,
            "server_cpu_s": server_cpu,
            "read_s": report.prefect_seconds,
            "publish_s": report.publish_seconds,
            "prefect_requests": report.prefect_requests,
            "prefect_requests_by_endpoint": dict(session.count),
            "prefect_seconds_by_endpoint": {k: round(v, 4) for k, v in session.seconds.items()},
            "aws_calls": sum(self.base_aws.calls.values()),
            "aws_calls_by_operation": dict(self.base_aws.calls),
            "data_published": len(self.base_aws.published),
        }
        self.last_sent["baseline"] = session.sent
        return sample, dict(report.late)

    def alternatives(self, plans: Sequence[QueuePlan]) -> dict[str, Any]:
        """What one request per queue of other kinds costs, one at a time: candidates for count mode.

        ``/flow_runs/history`` over one interval ending now, filtered to one queue, returns that queue's
        runs counted per state name (Late, Scheduled, AwaitingRetry, Pending, Running) in one call.
        """
        session = requests.Session()
        ids = self.queue_ids(session, plans)
        now = datetime.now(UTC).isoformat()
        rows = []
        for plan in plans:
            queue_id = ids[(plan.pool, plan.queue)]
            body = {"history_start": "2000-01-01T00:00:00+00:00", "history_end": now,
                    "history_interval_seconds": 10 ** 9, "work_queues": {"id": {"any_": [queue_id]}}}
            ms, answer = timed(session, "POST", f"{self.api_url}/flow_runs/history", body)
            late = sum(s["count_runs"] for bucket in answer for s in bucket["states"] if s["state_name"] == "Late")
            oldest = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}, "name": {"any_": ["Late"]}}},
                      "work_pool_queues": {"id": {"any_": [queue_id]}}, "sort": "NEXT_SCHEDULED_START_TIME_ASC",
                      "limit": 1}
            oldest_ms, _ = timed(session, "POST", f"{self.api_url}/flow_runs/filter", oldest)
            count_ms, _ = timed(session, "POST", f"{self.api_url}/flow_runs/count",
                                {"flow_runs": oldest["flow_runs"], "work_pool_queues": oldest["work_pool_queues"]})
            # Late by state name and start time, and by state name alone (the publisher's count): the filters
            # decide which index SQLite walks.
            timed_body = {"state": {"name": {"any_": ["Late"]}}, "next_scheduled_start_time": {"before_": now}}
            scope = {"work_pool_queues": oldest["work_pool_queues"]}
            timed_ms, _ = timed(session, "POST", f"{self.api_url}/flow_runs/count", {"flow_runs": timed_body, **scope})
            name_ms, _ = timed(session, "POST", f"{self.api_url}/flow_runs/count",
                               {"flow_runs": {"state": timed_body["state"]}, **scope})
            rows.append({"queue": f"{plan.pool}/{plan.queue}", "history_ms": ms, "history_late": late,
                         "late_expected": plan.late, "oldest_late_filter_limit_1_ms": oldest_ms,
                         "late_count_ms": count_ms, "late_name_and_time_count_ms": timed_ms,
                         "late_name_only_count_ms": name_ms})
        return {"per_queue": rows,
                "history_ms_median": statistics.median(r["history_ms"] for r in rows),
                "oldest_late_filter_ms_median": statistics.median(r["oldest_late_filter_limit_1_ms"] for r in rows),
                "late_count_ms_median": statistics.median(r["late_count_ms"] for r in rows),
                "late_name_and_time_count_ms_median": statistics.median(r["late_name_and_time_count_ms"]
                                                                        for r in rows),
                "late_name_only_count_ms_median": statistics.median(r["late_name_only_count_ms"] for r in rows),
                "history_late_correct": all(r["history_late"] == r["late_expected"] for r in rows)}

    def queue_ids(self, session: requests.Session, plans: Sequence[QueuePlan]) -> dict[tuple[str, str], str]:
        names = [p.queue for p in plans]
        ids: dict[tuple[str, str], str] = {}
        for offset in range(0, len(names), PAGE_SIZE):  # the server answers at most PAGE_SIZE queues at a time
            found = session.post(f"{self.api_url}/work_queues/filter", timeout=30, json={
                "work_queues": {"name": {"any_": names}}, "limit": PAGE_SIZE, "offset": offset}).json()
            ids |= {(q["work_pool_name"], q["name"]): q["id"] for q in found}
        return ids

    def in_flight_candidates(self, plans: Sequence[QueuePlan]) -> list[dict[str, Any]]:
        """Per pool, what each way to read its in-flight runs costs the server, one request at a time.

        ``concurrency_status`` (Prefect 3.6.23+) answers per queue with its Pending and Running count in
        one request; it is weighed here against the in-flight page the publisher sends and a plain count.
        Its counts are checked against the runs created (Pending + Running per queue).
        """
        session = requests.Session()
        ids = self.queue_ids(session, plans)
        in_flight = in_flight_stream().flow_runs  # the publisher's own in-flight page
        rows = []
        for pool in sorted({p.pool for p in plans}):
            mine = [p for p in plans if p.pool == pool]
            scope = {"work_pool_queues": {"id": {"any_": [ids[(pool, p.queue)] for p in mine]}}}
            status = f"/work_pools/{quote(pool, safe='')}/concurrency_status"
            candidates = {
                "concurrency_status, flow_run_limit 0": (status, {"page": 1, "limit": PAGE_SIZE, "flow_run_limit": 0}),
                "concurrency_status, flow_run_limit 200": (status, {"page": 1, "limit": PAGE_SIZE,
                                                                    "flow_run_limit": PAGE_SIZE}),
                "in-flight page (ours), limit 200": ("/flow_runs/filter", {"flow_runs": in_flight, **scope,
                                                                           "sort": "ID_DESC", "limit": PAGE_SIZE}),
                "in-flight count": ("/flow_runs/count", {"flow_runs": in_flight, **scope}),
            }
            row: dict[str, Any] = {"pool": pool, "queues": len(mine),
                                   "in_flight": sum(p.pending + p.running for p in mine)}
            for name, (path, body) in candidates.items():
                row[name], answer = self.server_cost(session, path, body)
                if name.startswith("concurrency_status"):
                    counted = {q["queue_name"]: q["flow_run_count"] for q in answer["queues"]}
                    row["concurrency_status_counts_correct"] = all(
                        counted.get(p.queue, 0) == p.pending + p.running for p in mine)
            rows.append(row)
        return rows

    def server_cost(self, session: requests.Session, path: str, body: Any) -> tuple[dict[str, float], Any]:
        """Median wall ms and mean server CPU ms of ``CANDIDATE_REPEATS`` sends of one request, and its answer."""
        walls = []
        cpu_before = self.server.cpu_seconds()
        for _ in range(CANDIDATE_REPEATS):
            began = time.perf_counter()
            response = session.post(f"{self.api_url}{path}", json=body, timeout=60)
            walls.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
        cpu_ms = (self.server.cpu_seconds() - cpu_before) * 1000 / CANDIDATE_REPEATS
        return {"wall_ms": statistics.median(walls), "server_cpu_ms": cpu_ms}, response.json()

    # --- a scenario ------------------------------------------------------------------

    def scenario(self, name: str, plans: Sequence[QueuePlan], *, ticks: int | None = None, latency_ms: float = 0,
                 memory: bool = True, replay_requests: bool = True, alternatives: bool = False) -> dict[str, Any]:
        """Warm-up, ``ticks`` alternating timed ticks, then (optionally) a tracemalloc tick of each and a
        one-at-a-time replay of the last tick's Prefect requests (each request's own cost on the server)."""
        ticks = self.ticks if ticks is None else ticks
        config = parse_config(config_context(self.api_url, plans))
        self.latency.seconds = latency_ms / 1000
        # One per scenario, as the handler keeps one per container: the warm-up tick starts without it.
        warm = WarmState()
        runs: dict[str, Callable[[], tuple[dict[str, Any], dict[tuple[str, str], int]]]] = {
            "ours": lambda: self.ours(config, plans, warm),
            "baseline": lambda: self.baseline(plans),
        }
        began = time.monotonic()
        first_ticks = {which: run()[0] for which, run in runs.items()}  # warm-up: connections, caches, memory
        samples: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": []}
        late_equal = 0
        for tick in range(ticks):
            order = ("ours", "baseline") if tick % 2 == 0 else ("baseline", "ours")
            late: dict[str, dict[tuple[str, str], int]] = {}
            for which in order:
                sample, late[which] = runs[which]()
                sample["tick"], sample["position"] = tick, order.index(which)
                samples[which].append(sample)
            if late["ours"] == late["baseline"] and len(late["ours"]) == len(plans):
                late_equal += 1
            else:
                diff = sorted(k for k in set(late["ours"]) | set(late["baseline"])
                              if late["ours"].get(k) != late["baseline"].get(k))
                self.mismatches.append(f"{name} tick {tick}: LateFlowRuns differ for {diff[:5]}")
        peak = {}
        for which, run in runs.items() if memory else ():
            tracemalloc.start()
            tracemalloc.reset_peak()
            run()
            peak[which] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        self.latency.seconds = 0.0
        replayed = {which: replay(sent) for which, sent in self.last_sent.items()} if replay_requests else {}
        result = {
            "name": name,
            "queues": len(plans),
            "pools": len({p.pool for p in plans}),
            "services": len(config.services),
            "runs": sum(p.runs for p in plans),
            "late_runs": sum(p.late for p in plans),
            "ticks": ticks,
            "latency_ms_per_request": latency_ms,
            "late_equal_ticks": late_equal,
            "peak_tracemalloc_bytes": peak,
            "samples": samples,
            "first_ticks": first_ticks,
            "replay": replayed,
            "alternatives": self.alternatives(plans) if alternatives else None,
            "seconds": time.monotonic() - began,
        }
        result["summary"] = summarize(result)
        return result


REPLAY_REPEATS = 3
REPLAY_MAX_PER_KIND = 25
BIG_PAGE = 100  # pages at least this full are also timed without their sort
# Each in-flight candidate is sent this many times: /proc counts CPU in 10 ms clock ticks, and a request of a
# few ms needs several sends to read as more than 0 or 10.
CANDIDATE_REPEATS = 10


def timed(session: requests.Session, method: str, url: str, body: Any) -> tuple[float, Any]:
    """Median milliseconds of ``REPLAY_REPEATS`` sends of one request, and its answer."""
    times = []
    for _ in range(REPLAY_REPEATS):
        began = time.perf_counter()
        response = session.request(method, url, json=body, timeout=60)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    return statistics.median(times), response.json()


def replay(sent: Sequence[tuple[str, str, Any]]) -> dict[str, Any]:
    """Send a tick's Prefect requests again, one at a time, each ``REPLAY_REPEATS`` times: per request kind,
    how many, their summed server cost, and the runs they returned. The sum is the tick's read cost on a
    server that runs one request at a time; compare it with the tick's read time to see what concurrency bought.

    Of a kind sent more than ``REPLAY_MAX_PER_KIND`` times (the baseline's counts), an evenly spaced sample
    is replayed and its cost scaled to all of them.
    """
    session = requests.Session()
    by_kind: dict[str, list[tuple[str, str, Any]]] = {}
    for method, url, body in sent:
        kind = f"{method} {endpoint(url)}"
        if isinstance(body, dict) and "limit" in body and endpoint(url) == "/flow_runs/filter":
            kind += f" (limit {body['limit']})"
        by_kind.setdefault(kind, []).append((method, url, body))
    kinds: dict[str, dict[str, Any]] = {}
    for kind, requests_of_kind in by_kind.items():
        step = max(1, math.ceil(len(requests_of_kind) / REPLAY_MAX_PER_KIND))
        sample = requests_of_kind[::step]
        ms = items = 0.0
        big_pages = big_sorted_ms = big_unsorted_ms = 0.0
        for method, url, body in sample:
            took, answer = timed(session, method, url, body)
            ms += took
            items += len(answer) if isinstance(answer, list) else 0
            if isinstance(answer, list) and len(answer) >= BIG_PAGE and isinstance(body, dict) and "sort" in body:
                # The same page without its sort: what ordering costs the server on a large page.
                unsorted, _ = timed(session, method, url, {k: v for k, v in body.items() if k != "sort"})
                big_pages += 1
                big_sorted_ms += took
                big_unsorted_ms += unsorted
        scale = len(requests_of_kind) / len(sample)
        kinds[kind] = {"requests": len(requests_of_kind), "replayed": len(sample), "ms": ms * scale,
                       "items": round(items * scale), "big_pages": big_pages, "big_pages_sorted_ms": big_sorted_ms,
                       "big_pages_unsorted_ms": big_unsorted_ms}
    return {"by_kind": kinds, "serial_ms": sum(k["ms"] for k in kinds.values())}


def median(samples: Sequence[dict[str, Any]], key: str) -> float:
    return float(statistics.median(s[key] for s in samples))


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    ours, base = result["samples"]["ours"], result["samples"]["baseline"]
    data = median(ours, "data_published")
    aws_target = math.ceil(data / MAX_DATA_PER_PUT) + math.ceil(result["services"] / MAX_SERVICES_PER_DESCRIBE)
    peak = result["peak_tracemalloc_bytes"]
    summary = {
        # The warm-up tick: new connections, and for ours an empty depth memory (a Lambda cold start).
        "ours_first_wall_s": result["first_ticks"]["ours"]["wall_s"],
        "ours_first_prefect_requests": result["first_ticks"]["ours"]["prefect_requests"],
        **{f"{who}_{key}": median(samples, key) for who, samples in (("ours", ours), ("base", base))
           for key in ("wall_s", "read_s", "publish_s", "cpu_s", "server_cpu_s", "prefect_requests", "aws_calls")},
        **{f"{who}_wall_{bound.__name__}_s": bound(s["wall_s"] for s in samples)
           for who, samples in (("ours", ours), ("base", base)) for bound in (min, max)},
        "ours_aws_target": aws_target,
        "ours_data": data,
        "base_data": median(base, "data_published"),
        "ours_peak_mib": peak["ours"] / 2**20 if peak else None,
        "base_peak_mib": peak["baseline"] / 2**20 if peak else None,
        # A CPU-bound bound on a 256 MB Lambda: local CPU seconds stretched to 0.145 vCPU (x86 here, arm64 there).
        "ours_lambda_cpu_estimate_s": median(ours, "cpu_s") / LAMBDA_VCPU_AT_256_MB,
        "ours_requests_by_endpoint": ours[-1]["prefect_requests_by_endpoint"],
        "ours_aws_by_operation": ours[-1]["aws_calls_by_operation"],
    }
    summary["speedup"] = summary["base_wall_s"] / summary["ours_wall_s"]
    # What a tick costs the Prefect server, ours over the baseline's (below 1: ours costs it less).
    summary["server_cpu_ratio"] = (summary["ours_server_cpu_s"] / summary["base_server_cpu_s"]
                                   if summary["base_server_cpu_s"] else None)
    # /proc counts CPU in clock ticks (10 ms here), so a tick of tens of ms reads as a multiple of 10 ms: its
    # median is coarse, and the mean over the timed ticks (their sum, whose rounding errors partly cancel) is
    # the steadier figure for short ticks.
    for who, samples in (("ours", ours), ("base", base)):
        summary[f"{who}_server_cpu_mean_s"] = float(statistics.mean(s["server_cpu_s"] for s in samples))
    summary["server_cpu_ratio_of_means"] = (summary["ours_server_cpu_mean_s"] / summary["base_server_cpu_mean_s"]
                                            if summary["base_server_cpu_mean_s"] else None)
    # The same ratio per tick pair (ours and baseline ran back to back): robust to drifting machine load.
    pairs = [b["wall_s"] / o["wall_s"] for o, b in zip(ours, base, strict=True)]
    summary["speedup_pairwise_median"] = float(statistics.median(pairs))
    summary["speedup_pairwise_min"] = min(pairs)
    if result["replay"]:
        summary["ours_serial_read_s"] = result["replay"]["ours"]["serial_ms"] / 1000
        summary["base_serial_read_s"] = result["replay"]["baseline"]["serial_ms"] / 1000
    return summary


# --- report ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")), 0)
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory_gib": round(memory_kib / 2**20, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()}


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(results: dict[str, Any]) -> str:
    rows = results["scenarios"]
    lines = [
        "| scenario | queues | pools | services | runs | ours wall s (min-max) | baseline wall s (min-max) "
        "| baseline/ours (pairwise) | Prefect server CPU ms/tick ours / baseline: median (ratio); mean (ratio) "
        "| ours first tick s (req) | ours CPU s | ours peak MiB | baseline peak MiB | Late equal |",
        "|---|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        s = r["summary"]
        lines.append(
            f"| {r['name']} | {r['queues']} | {r['pools']} | {r['services']} | {r['runs']} "
            f"| {s['ours_wall_s']:.3f} ({s['ours_wall_min_s']:.3f}-{s['ours_wall_max_s']:.3f}) "
            f"| {s['base_wall_s']:.3f} ({s['base_wall_min_s']:.3f}-{s['base_wall_max_s']:.3f}) "
            f"| {s['speedup']:.2f}x ({s['speedup_pairwise_median']:.2f}x) "
            f"| {s['ours_server_cpu_s'] * 1000:.0f} / {s['base_server_cpu_s'] * 1000:.0f} "
            f"({_ratio(s['server_cpu_ratio'])}); {s['ours_server_cpu_mean_s'] * 1000:.0f} / "
            f"{s['base_server_cpu_mean_s'] * 1000:.0f} ({_ratio(s['server_cpu_ratio_of_means'])}) "
            f"| {s['ours_first_wall_s']:.3f} ({s['ours_first_prefect_requests']:.0f}) | {s['ours_cpu_s']:.3f} "
            f"| {_mib(s['ours_peak_mib'])} | {_mib(s['base_peak_mib'])} | {r['late_equal_ticks']}/{r['ticks']} |")
    lines += [
        "",
        "| scenario | ours Prefect req/tick | baseline Prefect req/tick | ours AWS calls/tick (target) "
        "| baseline AWS calls/tick | ours data/tick | ours read s | ours publish s | baseline count s "
        "| baseline put s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["summary"]
        aws = ", ".join(f"{k} {v}" for k, v in sorted(s["ours_aws_by_operation"].items()))
        lines.append(
            f"| {r['name']} | {s['ours_prefect_requests']:.0f} | {s['base_prefect_requests']:.0f} "
            f"| {s['ours_aws_calls']:.0f} ({aws}; target {s['ours_aws_target']}) | {s['base_aws_calls']:.0f} "
            f"| {s['ours_data']:.0f} | {s['ours_read_s']:.3f} | {s['ours_publish_s']:.3f} "
            f"| {s['base_read_s']:.3f} | {s['base_publish_s']:.3f} |")
    lines += ["", "Each Prefect request of the last timed tick sent again one at a time (median of "
              f"{REPLAY_REPEATS}): what it costs the server alone.", "",
              "| scenario | who | request | n | serial ms | ms each | runs returned |",
              "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        for who, replayed in r["replay"].items():
            for kind, k in sorted(replayed["by_kind"].items(), key=lambda item: -item[1]["ms"]):
                sampled = "" if k["replayed"] == k["requests"] else f" ({k['replayed']} replayed)"
                unsorted = (f"; {k['big_pages']:.0f} pages of >= {BIG_PAGE} runs: {k['big_pages_sorted_ms']:.0f} ms, "
                            f"{k['big_pages_unsorted_ms']:.0f} ms without sort" if k.get("big_pages") else "")
                lines.append(f"| {r['name']} | {who} | `{kind}` | {k['requests']}{sampled} | {k['ms']:.0f} "
                             f"| {k['ms'] / k['requests']:.1f} | {k['items']}{unsorted} |")
            read = r["summary"]["ours_read_s" if who == "ours" else "base_read_s"]
            lines.append(f"| {r['name']} | {who} | **sum, one at a time** (tick read median {read * 1000:.0f} ms) "
                         f"| | {replayed['serial_ms']:.0f} | | |")
    candidates = results.get("in_flight_candidates") or {}
    first = next((row for pools in candidates.values() for row in pools), None)
    if first is not None:
        ways = [name for name, value in first.items() if isinstance(value, dict)]
        lines += ["", "Ways to a pool's in-flight runs, each request sent "
                  f"{CANDIDATE_REPEATS} times one at a time: median wall ms / mean Prefect server CPU ms.", "",
                  "| world | pool | queues | in flight | " + " | ".join(f"`{name}`" for name in ways)
                  + " | concurrency_status counts correct |",
                  "|---|---|---:|---:|" + "---:|" * len(ways) + "---|"]
        for world, pools in candidates.items():
            for row in pools:
                cells = " | ".join(f"{row[name]['wall_ms']:.1f} / {row[name]['server_cpu_ms']:.1f}" for name in ways)
                lines.append(f"| {world} | {row['pool']} | {row['queues']} | {row['in_flight']} | {cells} "
                             f"| {row['concurrency_status_counts_correct']} |")
    for r in rows:
        alt = r.get("alternatives")
        if alt:
            lines += ["", f"{r['name']}, candidate per-queue requests (one at a time, median ms): "
                      f"`/flow_runs/history` (counts per state name) {alt['history_ms_median']:.1f} "
                      f"(Late counts correct: {alt['history_late_correct']}), `/flow_runs/count` "
                      f"{alt['late_count_ms_median']:.1f} (state type and name; state name and start time: "
                      f"{alt['late_name_and_time_count_ms_median']:.1f}; state name only, as the publisher counts: "
                      f"{alt['late_name_only_count_ms_median']:.1f}), oldest Late `/flow_runs/filter` limit 1 "
                      f"{alt['oldest_late_filter_ms_median']:.1f}."]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,50,200,500", help="queue counts, ascending (default 1,50,200,500)")
    parser.add_argument("--ticks", type=int, default=5, help="timed ticks per implementation and size (default 5)")
    parser.add_argument("--deep", default="5x1000",
                        help="deep backlog QUEUESxLATE_RUNS_PER_QUEUE (default 5x1000); 'none' to skip")
    parser.add_argument("--busy", default="5x200",
                        help="busy pool QUEUESxRUNNING_RUNS_PER_QUEUE whose in-flight reads are weighed (default "
                             "5x200); 'none' to skip")
    parser.add_argument("--latency-ms", default="5,20",
                        help="simulated latencies (comma-separated) added to every Prefect request and AWS call, "
                             "one extra scenario each (default 5,20; 0 to skip them)")
    parser.add_argument("--latency-sizes", default="200",
                        help="sizes that get an extra scenario with --latency-ms (default 200)")
    parser.add_argument("--latency-ticks", type=int, default=3, help="timed ticks of those scenarios (default 3)")
    parser.add_argument("--seed-threads", type=int, default=SEED_THREADS,
                        help=f"threads creating the backlog (default {SEED_THREADS}: SQLite takes one writer)")
    parser.add_argument("--prefect-venv", type=Path, default=REPO_ROOT / ".venvs" / "prefect3",
                        help="Prefect 3.x server virtualenv (scripts/install-prefect.sh 3 .venvs/prefect3; "
                             "3.9 .venvs/prefect39 for 3.9.1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="raw results (default bench/results.json)")
    args = parser.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    args.latency_ms = [ms for ms in (float(s) for s in args.latency_ms.split(",") if s.strip()) if ms > 0]
    args.latency_sizes = {int(s) for s in args.latency_sizes.split(",") if s.strip()} if args.latency_ms else set()
    args.deep, args.busy = _queues_by_runs(args.deep), _queues_by_runs(args.busy)
    return args


def _queues_by_runs(value: str) -> tuple[int, int] | None:
    """``5x1000`` as (5, 1000); ``none`` as None."""
    if value == "none":
        return None
    queues, runs = value.lower().split("x")
    return int(queues), int(runs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A stopped run (SIGTERM) still unwinds, so both servers it started are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The bench world's workers carry no task ID in their names: the publisher would say so every tick.
    logging.getLogger("prefect_backlog").setLevel(logging.ERROR)
    began = time.monotonic()
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "machine": machine(),
                               "args": {"sizes": args.sizes, "ticks": args.ticks, "deep": args.deep,
                                        "latency_ms": args.latency_ms, "latency_sizes": sorted(args.latency_sizes),
                                        "latency_ticks": args.latency_ticks},
                               "scenarios": [], "seeding": [], "in_flight_candidates": {}}

    def note(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    with ExitStack() as stack:
        moto = stack.enter_context(MotoServer())
        note(f"moto_server on {moto.endpoint_url}")
        server = stack.enter_context(BenchPrefectServer("3", args.prefect_venv, late_marking=False))
        results["prefect_startup_s"] = server.startup_seconds
        results["prefect_version"] = requests.get(f"{server.api_url}/admin/version", timeout=10).json()
        note(f"Prefect {results['prefect_version']} server on {server.api_url} "
             f"(started in {server.startup_seconds:.0f}s)")
        bench = Bench(server, moto.endpoint_url, args.ticks)
        seeder = Seeder(server.api_url, args.seed_threads)
        services: set[str] = set()

        def seed(plans: list[QueuePlan]) -> None:
            t = time.monotonic()
            created = seeder.seed(plans)
            seed_ecs(bench.ecs, plans, services)
            seconds = time.monotonic() - t
            results["seeding"].append({"queues": len(plans), "runs": created, "seconds": seconds})
            note(f"created {len(plans)} queues, {created} runs and their ECS services in {seconds:.1f}s")

        plans: list[QueuePlan] = []
        for size in args.sizes:
            new = [plan_queue(i) for i in range(len(plans), size)]
            if new:
                seed(new)
            plans += new
            scenario = bench.scenario(f"{size} queues", plans)
            results["scenarios"].append(scenario)
            s = scenario["summary"]
            note(f"{size} queues: ours {s['ours_wall_s']:.3f}s, baseline {s['base_wall_s']:.3f}s "
                 f"({s['speedup']:.1f}x), {s['ours_prefect_requests']:.0f} vs {s['base_prefect_requests']:.0f} "
                 "Prefect requests")
            if size in args.latency_sizes or size == args.sizes[-1]:
                results["in_flight_candidates"][f"{size} queues"] = bench.in_flight_candidates(plans)
            for latency_ms in args.latency_ms if size in args.latency_sizes else ():
                scenario = bench.scenario(f"{size} queues, +{latency_ms:g} ms/request", plans,
                                          ticks=args.latency_ticks, latency_ms=latency_ms, memory=False,
                                          replay_requests=False)
                results["scenarios"].append(scenario)
                s = scenario["summary"]
                note(f"{size} queues +{latency_ms:g} ms: ours {s['ours_wall_s']:.3f}s, "
                     f"baseline {s['base_wall_s']:.3f}s ({s['speedup']:.1f}x)")
        if args.deep:
            queues, late = args.deep
            deep = plan_deep(queues, late)
            seed(deep)
            scenario = bench.scenario(f"deep {queues}x{late} Late", deep, alternatives=True)
            results["scenarios"].append(scenario)
            s = scenario["summary"]
            note(f"deep: ours {s['ours_wall_s']:.3f}s, baseline {s['base_wall_s']:.3f}s ({s['speedup']:.2f}x)")
        if args.busy:
            queues, running = args.busy
            busy = plan_busy(queues, running)
            seed(busy)
            results["in_flight_candidates"][f"busy {queues}x{running} Running"] = bench.in_flight_candidates(busy)
            note(f"busy pool: in-flight candidates read for {queues * running} Running runs")
        results["seed_retried_503"] = seeder.retried_503
        results["seed_bulk_retries"] = seeder.bulk_retries
        results["cluster"] = CLUSTER

    results["mismatches"] = bench.mismatches
    results["total_seconds"] = time.monotonic() - began
    results["markdown"] = markdown(results)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(results["markdown"])
    print(f"\nTotal bench runtime {results['total_seconds']:.0f} s; raw results in {args.out}")
    if bench.mismatches:
        print(f"\n{len(bench.mismatches)} CORRECTNESS MISMATCHES, first: " + "; ".join(bench.mismatches[:5]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
