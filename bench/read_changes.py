"""Reading by changes (#22): what a warm sample costs the Prefect server as the runs in flight grow.

    PYTHONPATH=lambda:. .venv/bin/python -m bench.read_changes [--sizes 50,1000,5000] [--churn 0,1,10]
        [--ticks 8] [--churn-ticks 4] [--prefect-venv .venvs/prefect3]     (make bench runs it after bench.run)

One real Prefect 3.x server (``--no-services``, SQLite, 127.0.0.1). Per size N,
a pool of 5 queues on one protected Process-worker service of 100 tasks, with N
Running runs spread over the 100 workers (each labelled ``ecs-<task id>``, as
a 3.1.9+ worker stamps its runs). For each churn rate, a cold sample and then
``--ticks`` (``--churn-ticks`` with churn) warm samples of the publisher's tick with a warm ``RunLedger``; before
each, ``rate`` % of the Running runs move (rotating: Completed, AwaitingRetry,
Cancelling, Paused, Crashed), the ones moved out of Running but not ended the
sample before come back to Running (with their old start time), and new
Running runs replace the ended ones. After each warm sample, the same tick
reading everything in full (its own warm state and ECS) must publish the same
figures and protect and release the same tasks; the full read's requests and
server CPU are recorded too, as "today".

Server CPU: the server process session's user + system time from /proc, in
10 ms clock ticks, so the medians are coarse below ~50 ms; means are given too.
Raw figures go to ``bench/results-read-changes.json``, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.world import BULK_ATTEMPTS, REPO_ROOT, BenchPrefectServer, CountingSession, endpoint
from harness.backlog import BacklogClient
from harness.fake_ecs import FakeEcs
from harness.prefect_server import PrefectServer
from harness.process_worker import ecs_worker_name, fake_task_id
from prefect_backlog import metrics
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.report import TickReport, metric_data
from prefect_backlog.tick import WarmState, run_tick

DEFAULT_RESULTS = REPO_ROOT / "bench" / "results-read-changes.json"
CLUSTER, SERVICE, TASKS, QUEUES = "prefect-rc", "process-worker", 100, 5
BULK = 100
MOVES = [("COMPLETED", None), ("SCHEDULED", "AwaitingRetry"), ("CANCELLING", None), ("PAUSED", "Paused"),
         ("CRASHED", None)]
TERMINAL = {"COMPLETED", "CRASHED"}


class Pool:
    """One pool of QUEUES queues whose Running runs are spread over TASKS workers named after their tasks."""

    def __init__(self, c: BacklogClient, name: str, tasks: list[str]) -> None:
        self.c, self.name, self.tasks = c, name, tasks
        c.create_pool(name, type="process")
        self.queues = [f"q{i}" for i in range(QUEUES)]
        for queue in self.queues:
            c.create_queue(name, queue)
        self.deployment = c.create_deployment(c.create_flow(f"rc-{name}"), f"rc-{name}", name, self.queues[0])
        self.running: list[str] = []
        self.parked: list[str] = []  # moved out of Running, not ended: back to Running next sample
        self.made = 0

    def start(self, count: int) -> None:
        """``count`` new Running runs, round-robin over queues and workers (the 3.x bulk endpoint)."""
        body = []
        for _ in range(count):
            n = self.made
            self.made += 1
            body.append({"state": {"type": "RUNNING"}, "work_queue_name": self.queues[n % QUEUES],
                         "labels": {"prefect.worker.name": ecs_worker_name(self.tasks[n % len(self.tasks)])}})
        for i in range(0, len(body), BULK):
            batch = body[i:i + BULK]
            for attempt in range(BULK_ATTEMPTS):  # SQLite refuses some under load ("database is locked")
                answer = self.c.post(f"/deployments/{self.deployment}/create_flow_run/bulk", batch)
                results = answer["results"]
                self.running += [str(r["flow_run_id"]) for r in results if r.get("status") == "CREATED"]
                batch = [run for run, r in zip(batch, results, strict=True) if r.get("status") != "CREATED"]
                if not batch:
                    break
                time.sleep(min(0.2 * 2 ** attempt, 3.0))
            else:
                raise RuntimeError(f"bulk create in {self.name}: {len(batch)} runs still failing")

    def churn(self, count: int, sample: int) -> int:
        """Move ``count`` Running runs out (rotating kinds), bring the parked ones back, replace the ended."""
        back, self.parked = self.parked, []
        for run in back:
            self.c.set_state(run, "RUNNING")
        self.running += back
        moved, self.running = self.running[:count], self.running[count:]
        ended = 0
        for i, run in enumerate(moved):
            state_type, name = MOVES[(sample + i) % len(MOVES)]
            self.c.set_state(run, state_type, name)
            if state_type in TERMINAL:
                ended += 1
            else:
                self.parked.append(run)
        self.start(ended)
        return len(back) + len(moved) + ended


def publisher_config(api_url: str, pool: str) -> Config:
    return parse_config({"prefectApiUrl": api_url, "stackName": "ReadChangesBench", "queues": [
        {"workPool": pool, "workQueue": f"q{i}", "cluster": CLUSTER, "service": SERVICE, "maxCapacity": TASKS,
         "targetBacklogPerTask": 10, "runsInWorkerTask": True} for i in range(QUEUES)]})


def ecs_for(tasks: list[str]) -> FakeEcs:
    ecs = FakeEcs()
    ecs.service(CLUSTER, SERVICE)
    for task in tasks:
        ecs.start_task(CLUSTER, SERVICE, task)
    ecs.desired[(CLUSTER, SERVICE)] = len(tasks)
    return ecs


def figures(report: TickReport) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted((d.metric.name, tuple(sorted(d.dimensions.items())), d.value)
                  for d in metric_data(report, "ReadChangesBench") if d.metric is not metrics.TICK_DURATION)


class Side:
    """One publisher: with a warm ledger ("ours") or reading in full ("full"), with its own ECS."""

    def __init__(self, server: PrefectServer, config: Config, tasks: list[str], ledger: bool) -> None:
        self.server, self.config, self.ledger = server, config, ledger
        self.warm = WarmState()
        self.ecs = ecs_for(tasks)
        self.session = CountingSession()

    def tick(self, now: datetime) -> tuple[TickReport, dict[str, Any]]:
        client = PrefectClient(self.config.api_url, deadline=time.monotonic() + 47, session=self.session,
                               depth_memory=self.warm.depth, ledger=self.warm.ledger if self.ledger else None)
        changes, full = self.warm.ledger.stats.changes, sum(self.warm.ledger.stats.full.values())
        self.session.sent.clear()
        cpu, wall = self.server.cpu_seconds(), time.perf_counter()
        report = run_tick(self.config, client, ecs=self.ecs, cloudwatch=None, now=now, warm=self.warm)
        sample = {"server_cpu_s": self.server.cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall,
                  "requests": report.prefect_requests,
                  "read": ("changes" if self.warm.ledger.stats.changes > changes else
                           "full" if sum(self.warm.ledger.stats.full.values()) > full else "-")}
        self.last_sent = list(self.session.sent)
        return report, sample


REPLAY_REPEATS = 10  # /proc counts in 10 ms ticks: a request of a few ms needs several sends


def kind_of(method: str, url: str, body: Any) -> str:
    kind = f"{method} {endpoint(url)}"
    ids = body.get("flow_runs", {}).get("id", {}) if isinstance(body, dict) else {}
    return kind + (" (left: kept ids)" if "any_" in ids else " (rest: not the kept ids)" if "not_any_" in ids else "")


def replay(server: PrefectServer, sent: Sequence[tuple[str, str, Any]]) -> dict[str, dict[str, float]]:
    """Each request of one sample sent again ``REPLAY_REPEATS`` times, one at a time: its own server CPU (ms)."""
    session = requests.Session()
    kinds: dict[str, dict[str, float]] = {}
    for method, url, body in sent:
        cpu = server.cpu_seconds()
        for _ in range(REPLAY_REPEATS):
            session.request(method, url, json=body, timeout=60).raise_for_status()
        row = kinds.setdefault(kind_of(method, url, body), {"requests": 0, "server_cpu_ms": 0.0})
        row["requests"] += 1
        row["server_cpu_ms"] += (server.cpu_seconds() - cpu) * 1000 / REPLAY_REPEATS
    return kinds


def scenario(server: PrefectServer, pool: Pool, size: int, rate: float, ticks: int,
             note: Any) -> dict[str, Any]:
    """``ticks`` warm samples at ``rate`` % churn on the size's pool (each rate starts from a cold sample)."""
    tasks = pool.tasks
    config = publisher_config(server.api_url, pool.name)
    ours, full = Side(server, config, tasks, ledger=True), Side(server, config, tasks, ledger=False)
    samples: list[dict[str, Any]] = []
    mismatches: list[str] = []
    busy = set(tasks[:min(size, TASKS)])  # the runs are spread round-robin over the workers
    for i in range(ticks + 1):
        changed = pool.churn(round(size * rate / 100), i) if i else 0
        now = datetime.now(UTC)
        mine, sample = ours.tick(now)
        theirs, today = full.tick(now)
        if figures(mine) != figures(theirs):
            mismatches.append(f"{size} runs, {rate:g} %: sample {i}: figures differ")
        a, b = mine.services[0].protection, theirs.services[0].protection
        if a is None or b is None or (a.protect, a.release, a.orphaned) != (b.protect, b.release, b.orphaned) or (
                ours.ecs.protected(CLUSTER, SERVICE) != full.ecs.protected(CLUSTER, SERVICE)):
            mismatches.append(f"{size} runs, {rate:g} %: sample {i}: protection differs")
        protected = ours.ecs.protected(CLUSTER, SERVICE)
        samples.append({"sample": i, "changed": changed, "ours": sample, "full": today,
                        "protected": len(protected), "busy_protected": busy <= protected if rate == 0 else None})
    warm = samples[1:]
    replayed = replay(server, ours.last_sent) if rate == 0 and samples[-1]["ours"]["read"] == "changes" else {}
    by_changes = [s for s in warm if s["ours"]["read"] == "changes"]

    def med(rows: Sequence[dict[str, Any]], who: str, key: str) -> float:
        return float(statistics.median(r[who][key] for r in rows)) if rows else float("nan")

    def mean(rows: Sequence[dict[str, Any]], who: str, key: str) -> float:
        return float(statistics.mean(r[who][key] for r in rows)) if rows else float("nan")

    result: dict[str, Any] = {
        "size": size, "churn_percent": rate, "ticks": ticks, "samples": samples, "mismatches": mismatches,
        "ours_requests_median": med(warm, "ours", "requests"),
        "ours_requests_by_changes_median": med(by_changes, "ours", "requests"),
        "ours_server_cpu_median_s": med(warm, "ours", "server_cpu_s"),
        "ours_server_cpu_mean_s": mean(warm, "ours", "server_cpu_s"),
        "ours_server_cpu_by_changes_median_s": med(by_changes, "ours", "server_cpu_s"),
        "ours_server_cpu_by_changes_mean_s": mean(by_changes, "ours", "server_cpu_s"),
        "full_requests_median": med(warm, "full", "requests"),
        "full_server_cpu_median_s": med(warm, "full", "server_cpu_s"),
        "full_server_cpu_mean_s": mean(warm, "full", "server_cpu_s"),
        "samples_by_changes": len(by_changes), "warm_samples": len(warm),
        "all_busy_protected": all(s["busy_protected"] for s in warm) if rate == 0 else None,
        "ledger_full_reads": dict(ours.warm.ledger.stats.full),
        "replayed_last_sample": replayed,
    }
    note(f"{size} in flight, {rate:g} % churn: ours {result['ours_requests_median']:.0f} req, "
         f"{result['ours_server_cpu_median_s'] * 1000:.0f} ms server CPU (by changes "
         f"{result['ours_server_cpu_by_changes_median_s'] * 1000:.0f}); full read "
         f"{result['full_requests_median']:.0f} req, {result['full_server_cpu_median_s'] * 1000:.0f} ms; "
         f"{len(mismatches)} mismatches")
    return result


def markdown(results: dict[str, Any]) -> str:
    rows = results["scenarios"]
    lines = ["| in flight | churn per sample | warm samples (by changes) | ours req/sample: median (by changes) "
             "| ours server CPU ms/sample: median; mean (by changes: median; mean) | full read req/sample "
             "| full read server CPU ms/sample: median; mean | ours/full CPU (medians) | exact samples "
             "| busy tasks protected |",
             "|---:|---:|---|---|---|---:|---|---:|---|---|"]
    for r in rows:
        ms = 1000
        ratio = (r["ours_server_cpu_median_s"] / r["full_server_cpu_median_s"]
                 if r["full_server_cpu_median_s"] else float("nan"))
        exact = len(r["samples"]) - len({m.split(": sample ")[1].split(":")[0] for m in r["mismatches"]})
        busy = "-" if r["all_busy_protected"] is None else ("all" if r["all_busy_protected"] else "NOT ALL")
        lines.append(
            f"| {r['size']:,} | {r['churn_percent']:g} % | {r['warm_samples']} ({r['samples_by_changes']}) "
            f"| {r['ours_requests_median']:.0f} ({r['ours_requests_by_changes_median']:.0f}) "
            f"| {r['ours_server_cpu_median_s'] * ms:.0f}; {r['ours_server_cpu_mean_s'] * ms:.0f} "
            f"({r['ours_server_cpu_by_changes_median_s'] * ms:.0f}; {r['ours_server_cpu_by_changes_mean_s'] * ms:.0f}) "
            f"| {r['full_requests_median']:.0f} | {r['full_server_cpu_median_s'] * ms:.0f}; "
            f"{r['full_server_cpu_mean_s'] * ms:.0f} | {ratio:.2f}x | {exact}/{len(r['samples'])} | {busy} |")
    zero = {r["size"]: r for r in rows if r["churn_percent"] == 0}
    if 50 in zero and 1000 in zero:
        small, big = zero[50], zero[1000]
        lines += ["", f"Nothing changed, 1,000 against 50 in flight: server CPU "
                  f"{big['ours_server_cpu_by_changes_median_s'] / small['ours_server_cpu_by_changes_median_s']:.2f}x "
                  f"(medians of the samples read by changes; means "
                  f"{big['ours_server_cpu_by_changes_mean_s'] / small['ours_server_cpu_by_changes_mean_s']:.2f}x; "
                  "all warm samples, medians "
                  f"{big['ours_server_cpu_median_s'] / small['ours_server_cpu_median_s']:.2f}x), "
                  f"requests {big['ours_requests_by_changes_median']:.0f} against "
                  f"{small['ours_requests_by_changes_median']:.0f}."]
    replays = [r for r in rows if r.get("replayed_last_sample")]
    if replays:
        lines += ["", f"The last warm sample's requests (read by changes, nothing changed), each sent again "
                  f"{REPLAY_REPEATS} times one at a time: mean server CPU ms per request.", "",
                  "| in flight | request | n | server CPU ms each |", "|---:|---|---:|---:|"]
        for r in replays:
            for kind, row in sorted(r["replayed_last_sample"].items()):
                lines.append(f"| {r['size']:,} | `{kind}` | {row['requests']:.0f} "
                             f"| {row['server_cpu_ms'] / row['requests']:.1f} |")
            lines.append(f"| {r['size']:,} | **the sample, one request at a time** | "
                         f"{sum(row['requests'] for row in r['replayed_last_sample'].values()):.0f} "
                         f"| {replay_sum(r):.1f} |")
        by_size = {r["size"]: r for r in replays}
        if 50 in by_size and 1000 in by_size:
            ratio = replay_sum(by_size[1000]) / replay_sum(by_size[50])
            lines += ["", f"Replayed, 1,000 against 50 in flight: {ratio:.2f}x the server CPU."]
    return "\n".join(lines)


def replay_sum(row: dict[str, Any]) -> float:
    return float(sum(kind["server_cpu_ms"] for kind in row["replayed_last_sample"].values()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.read_changes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,1000,5000", help="Running runs in flight (default 50,1000,5000)")
    parser.add_argument("--churn", default="0,1,10", help="percent of them changing per sample (default 0,1,10)")
    parser.add_argument("--ticks", type=int, default=8, help="warm samples with nothing changed (default 8)")
    parser.add_argument("--churn-ticks", type=int, default=4,
                        help="warm samples of each churned scenario (default 4: making 10 %% of 5,000 runs move "
                             "costs the server ~30 s a sample)")
    parser.add_argument("--prefect-venv", type=Path, default=REPO_ROOT / ".venvs" / "prefect3")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rates = [float(s) for s in args.churn.split(",") if s.strip()]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("prefect_backlog").setLevel(logging.ERROR)
    began = time.monotonic()

    def note(message: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {message}", file=sys.stderr, flush=True)

    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "scenarios": []}
    with BenchPrefectServer("3", args.prefect_venv, late_marking=False) as server:
        results["prefect_version"] = requests.get(f"{server.api_url}/admin/version", timeout=10).json()
        note(f"Prefect {results['prefect_version']} on {server.api_url}")
        c = BacklogClient(server.api_url)
        for size in sizes:
            began_seeding = time.monotonic()
            pool = Pool(c, f"rc-{size}", [fake_task_id() for _ in range(TASKS)])
            pool.start(size)
            seconds = time.monotonic() - began_seeding
            note(f"pool {pool.name}: {size} Running runs on {TASKS} workers in {seconds:.0f} s")
            for rate in rates:
                ticks = args.ticks if rate == 0 else args.churn_ticks
                results["scenarios"].append(scenario(server, pool, size, rate, ticks, note))
                args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")  # so far
    results["total_seconds"] = time.monotonic() - began
    results["markdown"] = markdown(results)
    mismatches = [m for r in results["scenarios"] for m in r["mismatches"]]
    results["mismatches"] = mismatches
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(results["markdown"])
    print(f"\nTotal runtime {results['total_seconds']:.0f} s; raw results in {args.out}")
    if mismatches:
        print(f"\n{len(mismatches)} MISMATCHES against a full read, first: " + "; ".join(mismatches[:5]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
