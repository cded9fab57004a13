"""Time from a flow run being due to a task running it, measured on ``harness.aws_model`` over random phases.

Everything both sides pay is in: the publisher's sampling, CloudWatch's evaluation on its own schedule,
Application Auto Scaling's action, ECS placement and the Fargate start (drawn), the worker's boot and its
10 s poll. Each trial puts a burst of ``BURST_TASKS`` tasks' worth of runs on an idle service at 0 tasks, due at a
random moment (so the publisher's sample, CloudWatch's evaluation and the workers' polls fall at random phases),
and records how long after it was due the first run, and the last of the burst, were claimed by a worker.
For a burst scheduled ahead (created an hour before), the lead: how long before its start a worker was up.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench import replay_policies as rp
from harness.aws_model.runs import Run

BURST_TASKS = 2  # the burst: two tasks' worth of runs
TRIALS = 200
RUN_SECONDS = 300


@dataclass(frozen=True)
class Spread:
    median: float
    p95: float

    @staticmethod
    def of(values: Sequence[float]) -> Spread:
        ordered = sorted(values)
        return Spread(round(statistics.median(ordered), 1), round(ordered[min(len(ordered) - 1,
                                                                              int(0.95 * len(ordered)))], 1))


@dataclass(frozen=True)
class RunningTime:
    policy: str
    first_run_running_s: Spread  # from due to the first run claimed
    burst_running_s: Spread  # from due to the last of the burst claimed


@dataclass(frozen=True)
class Lead:
    policy: str
    prewarm_seconds: int
    worker_up_before_start_s: Spread  # positive: a worker was polling before the runs' start
    burst_running_s: Spread  # from the start to the last of the burst claimed (0 at best: none waits)


def _burst(rng: random.Random, announced: bool, slots: int) -> tuple[float, list[Run]]:
    due = 1800 + rng.uniform(0, 60)
    return due, [Run(due, RUN_SECONDS, announced) for _ in range(BURST_TASKS * slots)]


def time_to_running(policy: rp.Policy, trials: int = TRIALS, seed: int = 1, slots: int = 4) -> RunningTime:
    rng = random.Random(seed)
    first, last = [], []
    for trial in range(trials):
        due, runs = _burst(rng, announced=False, slots=slots)
        world = policy.build(runs, due + 1200, seed * 100_000 + trial)
        world.run()
        claims = [r.claimed if r.claimed is not None else world.horizon for r in world.book.runs]
        first.append(min(claims) - due)
        last.append(max(claims) - due)
    return RunningTime(policy.name, Spread.of(first), Spread.of(last))


def lead(policy: rp.Policy, prewarm_seconds: int, trials: int = TRIALS, seed: int = 2, slots: int = 4) -> Lead:
    rng = random.Random(seed)
    ahead, last = [], []
    for trial in range(trials):
        due, runs = _burst(rng, announced=True, slots=slots)
        world = policy.build(runs, due + 1200, seed * 100_000 + trial)
        world.run()
        ready = min((t.ready_at for t in world.service.tasks), default=world.horizon)
        ahead.append(due - ready)
        last.append(max(r.claimed if r.claimed is not None else world.horizon for r in world.book.runs) - due)
    return Lead(policy.name, prewarm_seconds, Spread.of(ahead), Spread.of(last))
