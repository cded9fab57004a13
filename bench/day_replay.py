"""Replay days of flow runs against ways to scale a Process-worker service on the AWS model; compare the cost.

    PYTHONPATH=lambda:. .venv/bin/python -m bench.day_replay [--json]      (or: make day-replay)

Three days (``bench.days``, deterministic): three unannounced fan-outs of 748 runs; a steady 25,000 runs an
hour of 30 s runs; deployments on a cron every 15 minutes with an hourly batch, created ahead by Prefect's
scheduler. Each is replayed on ``harness.aws_model`` (CloudWatch alarms on their own schedule, Application
Auto Scaling with its cooldowns, ECS with random start latencies, AZ-balanced random scale-in victims and task
protection, workers polling at random phases) against:

* **recipe (min 1)** and **recipe (min 0)**: the queue's Late count per task (divided by the desired count),
  published each minute, target tracking at one task's concurrency; no task protection;
* **ours, no pre-warm**, **ours**, **ours + launcher**: the publisher's own decisions (demand, BacklogPerTask,
  TaskShortfall, task protection) and the policies of its synthesized template; ``prewarmSeconds`` 0, then the
  default; the launcher also protects its task at the claim;
* **causal lower bound**: sees each run the moment Prefect has it, asks for exactly the tasks needed at once,
  stops idle tasks at once; its tasks still take their start latency.

Per policy: Late run-seconds (seconds runs waited beyond Prefect's 15 s before Late, runs never claimed counted
to the end), runs that went Late, task-minutes (creation to stop), peak tasks, scale-ins, busy tasks stopped
and the runs orphaned with them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bench import replay_policies as rp
from bench.days import Day, days
from harness.aws_model.deployed import Deployed, deployed_policies
from prefect_backlog.config import DEFAULT_PREWARM_SECONDS, parse_config

CONCURRENCY = 4  # runs one Process-worker task holds at once (its --limit): targetBacklogPerTask
MAX_TASKS = 100
SEED = 20

CONTEXT: dict[str, Any] = {
    "prefectApiUrl": "https://prefect.example.com/api", "stackName": "DayReplay",
    "queues": [{"workPool": "process-pool", "workQueue": "default", "cluster": "prefect", "service": "worker",
                "minCapacity": 0, "maxCapacity": MAX_TASKS, "targetBacklogPerTask": CONCURRENCY,
                "runsInWorkerTask": True}],
}
BOUND = "causal lower bound"
LAUNCHER = "ours + launcher (protect at claim)"


@dataclass(frozen=True)
class Outcome:
    day: str
    policy: str
    late_run_seconds: float
    late_runs: int
    worst_wait_seconds: float
    task_minutes: float
    peak_tasks: int
    scale_ins: int
    busy_tasks_stopped: int
    orphaned_runs: int
    never_claimed: int


def ours_deployed(context: dict[str, Any] = CONTEXT) -> Deployed:
    """Our scalable target and policies, from the synthesized template of the replay's configuration."""
    from demo.synth import synthesize  # starts jsii: only here

    config = parse_config(context)
    return deployed_policies(synthesize(context).values())[config.services[0].resource_id]


def policies(deployed: Deployed, prewarm_seconds: int) -> list[rp.Policy]:
    return [rp.recipe(deployed, 1, CONCURRENCY), rp.recipe(deployed, 0, CONCURRENCY),
            rp.ours(deployed, CONCURRENCY, 0, "ours, no pre-warm"),
            rp.ours(deployed, CONCURRENCY, prewarm_seconds, "ours"),
            rp.ours(deployed, CONCURRENCY, prewarm_seconds, LAUNCHER, protect_at_claim=True),
            rp.lower_bound(deployed.target.max_capacity, CONCURRENCY)]


def replay(policy: rp.Policy, day: Day, seed: int = SEED) -> Outcome:
    result = policy.build(day.runs, day.horizon, seed).run()
    return Outcome(day=day.name, policy=policy.name, **asdict(result))


def ratios(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Per day, ours / bound on Late run-seconds and task-minutes."""
    rows = []
    for day in dict.fromkeys(o.day for o in outcomes):
        by = {o.policy: o for o in outcomes if o.day == day}
        bound = by[BOUND]
        for name in ("ours", LAUNCHER):
            o = by[name]
            rows.append({"day": day, "policy": name,
                         "late_run_seconds": _ratio(o.late_run_seconds, bound.late_run_seconds),
                         "task_minutes": _ratio(o.task_minutes, bound.task_minutes),
                         "busy_tasks_stopped": o.busy_tasks_stopped})
    return rows


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def render(outcomes: Sequence[Outcome], seconds: float) -> str:
    lines = [f"Process workers of concurrency {CONCURRENCY}, 0..{MAX_TASKS} tasks; AWS from harness.aws_model "
             f"({seconds:.0f} s)."]
    for day in dict.fromkeys(o.day for o in outcomes):
        lines += ["", f"### {day}", "",
                  "| policy | Late run-seconds | runs Late | worst wait s | task-minutes | peak tasks | scale-ins "
                  "| busy tasks stopped | orphaned runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for o in outcomes:
            if o.day == day:
                lines.append(f"| {o.policy} | {o.late_run_seconds:,.0f} | {o.late_runs:,} "
                             f"| {o.worst_wait_seconds:,.0f} | {o.task_minutes:,.0f} | {o.peak_tasks} | {o.scale_ins} "
                             f"| {o.busy_tasks_stopped} "
                             f"| {o.orphaned_runs} |")
    lines += ["", "| day | policy | Late run-seconds / bound | task-minutes / bound | busy tasks stopped |",
              "|---|---|---:|---:|---:|"]
    for r in ratios(outcomes):
        lines.append(f"| {r['day']} | {r['policy']} | {r['late_run_seconds']} | {r['task_minutes']} "
                     f"| {r['busy_tasks_stopped']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.day_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--prewarm-seconds", type=int, default=DEFAULT_PREWARM_SECONDS,
                        help=f"the pre-warm window of 'ours' (default {DEFAULT_PREWARM_SECONDS})")
    args = parser.parse_args(argv)
    deployed = ours_deployed()
    began = time.perf_counter()
    outcomes = [replay(policy, day) for day in days() for policy in policies(deployed, args.prewarm_seconds)]
    seconds = time.perf_counter() - began
    if args.json:
        print(json.dumps({"started": datetime.now(UTC).isoformat(), "max_tasks": deployed.target.max_capacity,
                          "prewarm_seconds": args.prewarm_seconds, "seconds": round(seconds, 1),
                          "outcomes": [asdict(o) for o in outcomes], "ours_vs_bound": ratios(outcomes)}, indent=1))
    else:
        print(render(outcomes, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
