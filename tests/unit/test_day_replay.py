"""The day replay on small days, with our policies written out as the template deploys them
(harness/aws_model/deployed.py reads them from the synthesized template in the bench itself)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from bench import day_replay, replay_policies
from bench.days import Day, fanout_day
from harness.aws_model.alarms import AlarmSpec, Comparison
from harness.aws_model.autoscaling import ScalableTarget
from harness.aws_model.deployed import Deployed
from harness.aws_model.runs import Run
from harness.aws_model.step_scaling import StepAdjustment, StepScalingSpec
from harness.aws_model.target_tracking import TargetTrackingSpec

MAX = 20
DEPLOYED = Deployed(
    resource_id="service/prefect/worker", target=ScalableTarget(0, MAX),
    tracking=TargetTrackingSpec(target_value=4, scale_out_cooldown=60, scale_in_cooldown=300),
    tracking_metric="BacklogPerTask",
    step=StepScalingSpec(threshold=1, cooldown=60, adjustments=(
        *(StepAdjustment(lower=k - 1, upper=k, change=k) for k in range(1, MAX)),
        StepAdjustment(lower=MAX - 1, upper=None, change=MAX))),
    step_alarm=AlarmSpec(threshold=1, comparison=Comparison.GE, statistic="Maximum"), step_metric="TaskShortfall")


def small_days() -> list[Day]:
    rng = random.Random(4)
    burst = Day("burst", tuple(Run(1800 + rng.uniform(0, 20), 60 * rng.uniform(0.5, 1.5), False)
                               for _ in range(150)), 5400)
    steady = Day("steady", tuple(sorted((Run(rng.uniform(60, 1860), 30, False) for _ in range(1500)),
                                        key=lambda r: r.due)), 3600)
    cron = Day("cron", tuple(Run(q * 900 + rng.uniform(0, 5), 180, True) for q in range(1, 8) for _ in range(25)),
               8 * 900 + 1800)
    return [burst, steady, cron]


@pytest.fixture(scope="module")
def outcomes() -> list[day_replay.Outcome]:
    return [day_replay.replay(p, d) for d in small_days() for p in day_replay.policies(DEPLOYED, 240)]


def test_no_policy_goes_above_the_maximum(outcomes: list[day_replay.Outcome]) -> None:
    assert all(o.peak_tasks <= MAX for o in outcomes)


def test_the_bound_is_at_or_below_every_policy(outcomes: list[day_replay.Outcome]) -> None:
    for day in {o.day for o in outcomes}:
        bound = next(o for o in outcomes if o.day == day and o.policy == day_replay.BOUND)
        assert bound.never_claimed == 0 and bound.busy_tasks_stopped == 0
        for o in outcomes:
            if o.day == day:
                assert bound.late_run_seconds <= o.late_run_seconds, (day, o.policy)
                assert bound.task_minutes <= o.task_minutes, (day, o.policy)


def test_every_policy_runs_every_run(outcomes: list[day_replay.Outcome]) -> None:
    assert all(o.never_claimed == 0 for o in outcomes)  # the recipe at min 0 too: it leaves 0 on one datapoint


def test_pre_warm_helps_only_runs_announced_ahead(outcomes: list[day_replay.Outcome]) -> None:
    by = {(o.day, o.policy): o for o in outcomes}
    assert dataclasses.replace(by["burst", "ours, no pre-warm"], policy="ours") == by["burst", "ours"]
    assert by["cron", "ours"].late_run_seconds < by["cron", "ours, no pre-warm"].late_run_seconds


def test_without_protection_the_recipe_stops_busy_tasks_and_ours_with_the_launcher_stops_none(
        outcomes: list[day_replay.Outcome]) -> None:
    by = {(o.day, o.policy): o for o in outcomes}
    assert by["steady", "recipe (min 1)"].busy_tasks_stopped > 0
    assert by["steady", "recipe (min 1)"].orphaned_runs >= by["steady", "recipe (min 1)"].busy_tasks_stopped
    assert all(by[d.name, day_replay.LAUNCHER].busy_tasks_stopped == 0 for d in small_days())
    # ours without the launcher: a run claimed after a sample waits for the next one to be protected
    assert by["steady", "ours"].busy_tasks_stopped > 0
    # and the release rule the launcher shares with the publisher costs (almost) no task-minutes
    assert by["steady", day_replay.LAUNCHER].task_minutes <= 1.05 * by["steady", "ours"].task_minutes


def test_ratios_are_ours_over_the_bound(outcomes: list[day_replay.Outcome]) -> None:
    rows = day_replay.ratios(outcomes)
    burst = next(r for r in rows if r["day"] == "burst" and r["policy"] == "ours")
    by = {(o.day, o.policy): o for o in outcomes}
    assert burst["task_minutes"] == round(by["burst", "ours"].task_minutes / by["burst", day_replay.BOUND].task_minutes,
                                          2)


def test_the_replay_is_deterministic() -> None:
    policy = replay_policies.ours(DEPLOYED, 4, 240, "ours")
    day = small_days()[0]
    assert day_replay.replay(policy, day) == day_replay.replay(policy, day)


def test_the_fanout_day_holds_three_fanouts_of_748() -> None:
    assert len(fanout_day().runs) == 3 * 748
