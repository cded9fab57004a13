"""The replayed days (deterministic, seeded): what users' queues see."""

from __future__ import annotations

import random
from dataclasses import dataclass

from harness.aws_model.runs import Run

DAY = 86_400


@dataclass(frozen=True)
class Day:
    name: str
    runs: tuple[Run, ...]
    horizon: float  # the replay runs until then (an hour past the last run's start, for the tail)


def fanout_day(seed: int = 7) -> Day:
    """Three unannounced ``run_deployment`` fan-outs of 748 runs of about a minute, created as they are due."""
    rng = random.Random(seed)
    runs = [Run(at + rng.uniform(0, 20), 60 * rng.uniform(0.5, 1.5), False)
            for at in (10 * 3600 + 17 * 60, 14 * 3600 + 42 * 60, 19 * 3600 + 3 * 60) for _ in range(748)]
    return Day("748-run fan-outs", tuple(sorted(runs, key=lambda r: r.due)), DAY)


def steady_load(seed: int = 11, runs_per_hour: int = 25_000, hours: float = 3.0) -> Day:
    """Runs of about 30 s created as they are due, 25,000 an hour (Poisson arrivals), for ``hours``: the steady
    state repeats itself after the first hour, so a full day would only take longer."""
    rng = random.Random(seed)
    runs, t = [], 60.0
    while t < 60 + hours * 3600:
        t += rng.expovariate(runs_per_hour / 3600)
        runs.append(Run(t, 30 * rng.uniform(0.8, 1.2), False))
    return Day(f"steady {runs_per_hour:,} runs/hour of 30 s ({hours:g} h)", tuple(runs), 60 + hours * 3600 + 1800)


def cron_day(seed: int = 13) -> Day:
    """Deployments on a cron every 15 minutes (25 runs of ~3 min) and an hourly batch of 300 runs of ~2 min at :05,
    all created ahead by Prefect's scheduler."""
    rng = random.Random(seed)
    runs = [Run(q * 900 + rng.uniform(0, 5), 180 * rng.uniform(0.7, 1.3), True)
            for q in range(DAY // 900) for _ in range(25)]
    runs += [Run(h * 3600 + 300 + rng.uniform(0, 10), 120 * rng.uniform(0.5, 1.5), True)
             for h in range(24) for _ in range(300)]
    return Day("cron every 15 min + hourly batch", tuple(sorted(runs, key=lambda r: r.due)), DAY + 1800)


def days() -> list[Day]:
    return [fanout_day(), steady_load(), cron_day()]
