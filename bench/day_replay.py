"""Replay one realistic day of flow runs against three ways to scale a Process-worker service; compare the cost.

    PYTHONPATH=lambda:. .venv/bin/python -m bench.day_replay [--json]      (or: make day-replay)

The day (deterministic): deployments on a cron at :00/:15/:30/:45, an hourly
batch of a few hundred runs at :05, and three ad-hoc ``run_deployment``
fan-outs of 748 runs at odd times. Prefect's scheduler creates the cron and
batch runs ahead of time (Scheduled, with their start time); the fan-outs are
created the moment they are due. It is replayed in 10-second steps against:

* **recipe**: the per-queue Late count published every minute, target
  tracking on that raw count (minimum 1 task: proportional tracking cannot
  leave 0);
* **ours, no pre-warm**: our signal (due and in-flight runs; BacklogPerTask
  and TaskShortfall) and both our policies, with ``prewarmSeconds`` 0;
* **ours**: the same with the default ``prewarmSeconds``: Scheduled runs that
  start within it are demand already.

Our policies (capacities, target, step adjustments) are read from the
synthesized template of the replay's configuration, the demand and signals
come from the publisher's own model (``prefect_backlog.backlog``), and the
policies act through the demo's simulation of Application Auto Scaling
(``demo.simulation``). What is modelled beyond those: a Fargate task runs
``TASK_START_SECONDS`` after it is asked for; a worker polls every 10 s and
holds up to its concurrency runs; Prefect marks a run Late 15 s after it was
due; scale-in stops idle tasks (as task protection makes it, for all three,
so that the comparison is about the signal alone).

It reports, per policy: **Late run-seconds** (the seconds runs spent Late,
i.e. waiting more than 15 s past their start for a worker), the runs that
went Late, **task-minutes** (from a task being asked for to its stop: what
Fargate bills, roughly), and scale-in events in the cron-only hours (a calm
policy keeps its tasks between schedules that fire every few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from demo import simulation as sim
from prefect_backlog.backlog import QueueBacklog, queue_demand, service_signal
from prefect_backlog.config import DEFAULT_PREWARM_SECONDS, parse_config

STEP_SECONDS = 10  # a worker's poll interval, and the replay's resolution
SAMPLE_SECONDS = 60  # the publisher's schedule
DAY_SECONDS = 86_400
TASK_START_SECONDS = 75  # a Fargate task: image pull, ENI, container start
LATE_AFTER_SECONDS = 15  # Prefect marks a Scheduled run Late this long after it was due
CONCURRENCY = 4  # runs one Process-worker task holds at once (its --limit): targetBacklogPerTask
MAX_TASKS = 100
RECIPE_TARGET_LATE = 5  # the recipe's target tracking value on the raw LateFlowRuns count
CRON_RUNS, CRON_SECONDS = 25, 180  # every 15 minutes
BATCH_RUNS, BATCH_SECONDS, BATCH_AT = 300, 120, 300  # every hour at :05
FANOUTS = ((10 * 3600 + 17 * 60, 748), (14 * 3600 + 42 * 60, 748), (19 * 3600 + 3 * 60, 748))
FANOUT_SECONDS = 60
CRON_ONLY_HOURS = (0, 10)  # before the first fan-out: what scale-in does between regular schedules

CONTEXT: dict[str, Any] = {
    "prefectApiUrl": "https://prefect.example.com/api", "stackName": "DayReplay",
    "queues": [{"workPool": "process-pool", "workQueue": "default", "cluster": "prefect", "service": "worker",
                "minCapacity": 0, "maxCapacity": MAX_TASKS, "targetBacklogPerTask": CONCURRENCY,
                "runsInWorkerTask": True}],
}


@dataclass
class Run:
    due: float
    seconds: float
    announced: bool  # created ahead of its start (a schedule), or the moment it is due (a fan-out)
    claimed: float | None = None
    ends: float | None = None


def the_day(seed: int = 7) -> list[Run]:
    rng = random.Random(seed)
    runs = []
    for quarter in range(DAY_SECONDS // 900):
        runs += [Run(quarter * 900 + rng.uniform(0, 5), CRON_SECONDS * rng.uniform(0.7, 1.3), True)
                 for _ in range(CRON_RUNS)]
    for hour in range(24):
        runs += [Run(hour * 3600 + BATCH_AT + rng.uniform(0, 10), BATCH_SECONDS * rng.uniform(0.5, 1.5), True)
                 for _ in range(BATCH_RUNS)]
    for at, count in FANOUTS:
        runs += [Run(at + rng.uniform(0, 20), FANOUT_SECONDS * rng.uniform(0.5, 1.5), False) for _ in range(count)]
    return sorted(runs, key=lambda r: r.due)


@dataclass
class Task:
    asked: float
    starts: float
    stopped: float | None = None
    runs: list[Run] = field(default_factory=list)


@dataclass
class Outcome:
    policy: str
    late_run_seconds: float
    late_runs: int
    worst_wait_seconds: float
    task_minutes: float
    peak_tasks: int
    scale_ins_cron_hours: int
    desired_changes: int


def replay(policy: str, policies: sim.ServicePolicies, prewarm_seconds: int, runs: Sequence[Run]) -> Outcome:
    """Step through the day: ECS starts and stops tasks, workers claim and finish runs, the publisher samples,
    the policies set the desired count."""
    runs = [Run(r.due, r.seconds, r.announced) for r in runs]
    recipe = policy == "recipe"
    tasks: list[Task] = []
    desired = policies.min_capacity
    alarms = sim.TrackingAlarms()
    scale_ins = changes = 0
    pending_runs = list(runs)  # not yet claimed, in due order
    for _ in range(desired):
        tasks.append(Task(asked=0, starts=TASK_START_SECONDS))
    for t in range(0, DAY_SECONDS + 3600, STEP_SECONDS):
        live = [task for task in tasks if task.stopped is None]
        for task in live:  # runs finish, then each running task claims due runs into its free slots
            task.runs = [r for r in task.runs if r.ends is not None and r.ends > t]
        for task in live:
            if task.starts > t:
                continue
            while len(task.runs) < CONCURRENCY and pending_runs and pending_runs[0].due <= t:
                run = pending_runs.pop(0)
                run.claimed, run.ends = t, t + run.seconds
                task.runs.append(run)
        if t % SAMPLE_SECONDS:
            continue
        running = [task for task in live if task.starts <= t]
        in_flight = sum(len(task.runs) for task in live)
        due = [r for r in pending_runs if r.due <= t]
        late = sum(1 for r in due if r.due + LATE_AFTER_SECONDS <= t)
        upcoming = sum(1 for r in pending_runs if r.announced and t < r.due <= t + prewarm_seconds)
        if recipe:  # target tracking on the raw Late count (the metric is not per task: it is the count)
            alarms = sim.next_alarms(alarms, late, policies.target_value)
            ask = sim.tracking_ask(policies, alarms, late, len(running), desired, sim.AWS_SCALE_IN_DATAPOINTS)
            asks: tuple[int | None, ...] = (ask,)
        else:
            backlog = QueueBacklog(late=late, due=len(due), pending=0, running=in_flight, upcoming=upcoming,
                                   oldest_late_age_seconds=0, paused=False)
            signal = service_signal(queue_demand(backlog, runs_in_worker_task=True), len(running), desired,
                                    policies.target_value, policies.max_capacity)
            alarms = sim.next_alarms(alarms, signal.backlog_per_task, policies.target_value)
            asks = (sim.tracking_ask(policies, alarms, signal.backlog_per_task, len(running), desired,
                                     sim.AWS_SCALE_IN_DATAPOINTS),
                    sim.step_ask(policies, signal.task_shortfall, desired))
        wanted = sim.next_desired(desired, asks)
        if wanted != desired:
            changes += 1
        if wanted > desired:
            tasks += [Task(asked=t, starts=t + TASK_START_SECONDS) for _ in range(wanted - desired)]
        elif wanted < desired:
            idle = [task for task in live if not task.runs]
            for task in idle[:desired - wanted]:
                task.stopped = t
            if CRON_ONLY_HOURS[0] * 3600 <= t < CRON_ONLY_HOURS[1] * 3600:
                scale_ins += 1
        desired = wanted

    waits = [max(0.0, (r.claimed if r.claimed is not None else DAY_SECONDS + 3600) - r.due) for r in runs]
    lateness = [max(0.0, w - LATE_AFTER_SECONDS) for w in waits]
    end = DAY_SECONDS + 3600
    task_seconds = sum((task.stopped if task.stopped is not None else end) - task.asked for task in tasks)
    peak = max(sum(1 for task in tasks if task.asked <= t < (task.stopped or end)) for t in range(0, end, 600))
    return Outcome(policy, sum(lateness), sum(1 for x in lateness if x > 0), max(waits), task_seconds / 60, peak,
                   scale_ins, changes)


def recipe_policies(ours: sim.ServicePolicies) -> sim.ServicePolicies:
    return sim.ServicePolicies(resource_id=ours.resource_id, min_capacity=1, max_capacity=ours.max_capacity,
                               target_value=RECIPE_TARGET_LATE, step_threshold=math.inf, step_adjustments=())


def ours_policies() -> sim.ServicePolicies:
    """Our scalable target and policies, from the synthesized template of the replay's configuration."""
    from demo.synth import synthesize  # starts jsii: only here

    config = parse_config(CONTEXT)
    return sim.policies_from_templates(synthesize(CONTEXT).values())[config.services[0].resource_id]


def render(outcomes: Sequence[Outcome], runs: Sequence[Run]) -> str:
    base = {o.policy: o for o in outcomes}
    lines = [f"One day: {len(runs)} runs ({sum(1 for r in runs if r.announced)} scheduled ahead, "
             f"{sum(1 for r in runs if not r.announced)} in 3 unannounced fan-outs of 748); Process workers of "
             f"concurrency {CONCURRENCY}, 0..{MAX_TASKS} tasks, a task up {TASK_START_SECONDS} s after it is asked "
             "for.", "",
             "| policy | Late run-seconds | runs that went Late | worst wait s | task-minutes | peak tasks "
             f"| scale-ins {CRON_ONLY_HOURS[0]:02d}-{CRON_ONLY_HOURS[1]:02d}h (cron only) | desired-count changes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        lines.append(f"| {o.policy} | {o.late_run_seconds:,.0f} | {o.late_runs:,} | {o.worst_wait_seconds:,.0f} "
                     f"| {o.task_minutes:,.0f} | {o.peak_tasks} | {o.scale_ins_cron_hours} | {o.desired_changes} |")
    with_prewarm, without, recipe = base["ours"], base["ours, no pre-warm"], base["recipe"]
    extra = with_prewarm.task_minutes - without.task_minutes
    saved = without.late_run_seconds - with_prewarm.late_run_seconds
    lines += ["", f"Pre-warm saves {saved:,.0f} Late run-seconds for {extra:,.0f} extra task-minutes "
                  f"({saved / extra:,.1f} Late run-seconds saved per task-minute)" if extra > 0 else
              f"Pre-warm saves {saved:,.0f} Late run-seconds at no extra task-minutes ({extra:,.0f})",
              f"Against the recipe: {recipe.late_run_seconds - with_prewarm.late_run_seconds:,.0f} Late run-seconds "
              f"fewer, {with_prewarm.task_minutes - recipe.task_minutes:+,.0f} task-minutes."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.day_replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--prewarm-seconds", type=int, default=DEFAULT_PREWARM_SECONDS,
                        help=f"the pre-warm window of 'ours' (default {DEFAULT_PREWARM_SECONDS})")
    args = parser.parse_args(argv)
    runs = the_day()
    ours = ours_policies()
    outcomes = [replay("recipe", recipe_policies(ours), 0, runs),
                replay("ours, no pre-warm", ours, 0, runs),
                replay("ours", ours, args.prewarm_seconds, runs)]
    if args.json:
        print(json.dumps({"started": datetime.now(UTC).isoformat(), "outcomes": [asdict(o) for o in outcomes],
                          "prewarm_seconds": args.prewarm_seconds}, indent=1))
    else:
        print(render(outcomes, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
