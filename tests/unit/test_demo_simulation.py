"""The demo's own rules: what ECS stops on scale-in given protection, how workers claim runs, the timeline."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

import pytest

from demo import simulation as sim
from demo.run import EcsEvent, demo_context, demo_prewarm_seconds
from harness.aws_model import ecs as aws_ecs
from harness.aws_model.alarms import AlarmSpec, Comparison
from harness.aws_model.autoscaling import ScalableTarget
from harness.aws_model.deployed import Deployed
from harness.aws_model.step_scaling import StepAdjustment, StepScalingSpec
from harness.aws_model.target_tracking import TargetTrackingSpec
from prefect_backlog.config import parse_config

TASKS = ("a" * 32, "b" * 32, "c" * 32, "d" * 32, "e" * 32, "f" * 32)


def scale(live: Sequence[str], protected: Collection[str], desired: int, seed: int) -> sim.ScaleAction:
    """``sim.ecs_scale`` on ``live`` tasks in one Availability Zone, ``protected`` ones protected."""
    tasks = [aws_ecs.Task(id=t, az="a", created=0, running_at=0, ready_at=0,
                          protected_until=math.inf if t in protected else None) for t in live]
    return sim.ecs_scale(tasks, desired, random.Random(seed))


# --- ECS: scale-out and scale-in -------------------------------------------------------------


def test_scale_out_starts_the_missing_tasks_and_stops_none() -> None:
    assert scale(TASKS[:2], set(), 5, 1) == sim.ScaleAction(start=3)
    assert scale(TASKS[:2], set(), 2, 1) == sim.ScaleAction()


def test_scale_in_stops_the_excess_among_unprotected_tasks_only() -> None:
    protected = set(TASKS[:3])
    for seed in range(50):
        action = scale(TASKS, protected, 4, seed)
        assert action.start == 0
        assert len(action.stop) == 2
        assert not set(action.stop) & protected


def test_scale_in_skips_protected_tasks_even_if_the_service_stays_above_desired() -> None:
    protected = set(TASKS[:4])
    action = scale(TASKS, protected, 1, 3)
    assert set(action.stop) == set(TASKS[4:])  # 5 too many, only 2 may go: 4 stay with desired 1
    assert scale(TASKS, set(TASKS), 0, 3) == sim.ScaleAction()


def test_the_pick_is_random_but_fixed_by_the_seed() -> None:
    picks = {scale(TASKS, set(), 3, seed).stop for seed in range(30)}
    assert len(picks) > 1  # not always the same tasks (ECS picks at random)
    assert scale(TASKS, set(), 3, 9) == scale(TASKS[::-1], set(), 3, 9)


def test_without_protection_a_scale_in_below_the_busy_count_must_stop_busy_tasks() -> None:
    busy = set(TASKS[:3])
    for seed in range(30):
        idle, stopped_busy = sim.split_stopped(scale(TASKS, set(), 2, seed).stop, busy)
        assert len(idle) + len(stopped_busy) == 4
        assert len(stopped_busy) >= 1  # only 3 idle tasks to stop
        idle, stopped_busy = sim.split_stopped(scale(TASKS, busy, 2, seed).stop, busy)
        assert (len(idle), stopped_busy) == (3, ())


def test_split_stopped() -> None:
    assert sim.split_stopped([TASKS[2], TASKS[0], TASKS[1]], {TASKS[1]}) == ((TASKS[0], TASKS[2]), (TASKS[1],))


# --- workers -----------------------------------------------------------------------------------


def test_claims_fill_each_workers_free_slots_in_turn() -> None:
    assert sim.assign_claims([("t1", 2), ("t2", 2), ("t3", 2)], 5) == ["t1", "t1", "t2", "t2", "t3"]
    assert sim.assign_claims([("t1", 2), ("t2", 2)], 9) == ["t1", "t1", "t2", "t2"]  # the rest wait


def test_a_full_worker_claims_nothing() -> None:
    assert sim.assign_claims([("t1", 0), ("t2", 1), ("t3", -1)], 3) == ["t2"]
    assert sim.assign_claims([], 3) == []
    assert sim.assign_claims([("t1", 2)], 0) == []


def test_which_runs_hold_their_task() -> None:
    for state in ("PENDING", "RUNNING"):
        assert sim.holds_task(state, runs_in_worker_task=True)
    assert sim.holds_task("PENDING", runs_in_worker_task=False)  # still being submitted
    assert not sim.holds_task("RUNNING", runs_in_worker_task=False)  # runs in its own ECS task
    assert not sim.holds_task("COMPLETED", runs_in_worker_task=True)
    assert not sim.holds_task("WAITING", runs_in_worker_task=True)


def test_a_run_is_pending_a_cycle_then_running_for_its_cycles() -> None:
    assert sim.next_run_state("PENDING", 0, 3) == "PENDING"
    assert sim.next_run_state("PENDING", 1, 3) == "RUNNING"
    assert sim.next_run_state("RUNNING", 2, 3) == "RUNNING"
    assert sim.next_run_state("RUNNING", 3, 3) == "COMPLETED"


def test_protected_busy_tasks_survive_a_scale_in_after_claiming_with_concurrency() -> None:
    """Two slots per task: the first three tasks hold runs; a scale-in to 1 stops only idle ones."""
    claimed = sim.assign_claims([(t, 2) for t in TASKS], 5)
    busy = set(claimed)
    assert busy == set(TASKS[:3])
    action = scale(TASKS, busy, 1, 0)
    assert set(action.stop) == set(TASKS[3:])


# --- the policies: the demo's compressed alarms on the model's arithmetic --------------------------

POLICIES = Deployed(
    resource_id="service/prefect/worker", target=ScalableTarget(0, 6),
    tracking=TargetTrackingSpec(target_value=2), tracking_metric="BacklogPerTask",
    step=StepScalingSpec(threshold=1, adjustments=(StepAdjustment(lower=0, upper=1, change=1),
                                                   StepAdjustment(lower=1, upper=None, change=3))),
    step_alarm=AlarmSpec(threshold=1, comparison=Comparison.GE), step_metric="TaskShortfall")


def alarms_after(values: Sequence[float | None]) -> sim.TrackingAlarms:
    alarms = sim.TrackingAlarms()
    for value in values:
        alarms = sim.next_alarms(alarms, value, POLICIES.tracking.target_value)
    return alarms


def test_tracking_scales_out_on_the_third_datapoint_above_the_target_on_desired() -> None:
    assert sim.tracking_ask(POLICIES, alarms_after([3, 3]), 3, desired=2) is None  # 2 datapoints: not yet
    assert sim.tracking_ask(POLICIES, alarms_after([3, 3, 3]), 3, desired=2) == 3  # ceil(2 * 3 / 2)
    assert sim.tracking_ask(POLICIES, alarms_after([2, 2, 2]), 2, desired=2) is None  # at the target: no breach
    assert sim.tracking_ask(POLICIES, alarms_after([3, None, 3, 3]), 3, desired=2) is None  # missing restarts
    assert sim.tracking_ask(POLICIES, alarms_after([9, 9, 9]), 9, desired=2) == 6  # clamped to the maximum


def test_tracking_scales_in_only_below_90_percent_after_the_compressed_count() -> None:
    quiet = [1.0] * sim.TRACKING_SCALE_IN_DATAPOINTS
    assert sim.tracking_ask(POLICIES, alarms_after(quiet), 1.0, desired=4) == 2  # ceil(4 * 1 / 2)
    assert sim.tracking_ask(POLICIES, alarms_after(quiet[1:]), 1.0, desired=4) is None  # one datapoint short
    assert alarms_after([1.8] * 3).low == 0  # 90 % of the target exactly: not below it
    assert alarms_after([1.79] * 3).low == 3


def test_step_adds_the_matching_step_from_the_threshold_and_never_at_missing_data() -> None:
    assert sim.step_ask(POLICIES, 0.99, desired=0) is None  # below the threshold
    assert sim.step_ask(POLICIES, 1, desired=0) == 1  # at it: the first step
    assert sim.step_ask(POLICIES, 2, desired=0) == 3  # 1 above it: the second step
    assert sim.step_ask(POLICIES, 2, desired=5) == 6  # clamped to the maximum
    assert sim.step_ask(POLICIES, None, desired=0) is None


def test_the_largest_ask_wins_and_none_keeps_desired() -> None:
    assert sim.next_desired(2, (3, 5)) == 5
    assert sim.next_desired(2, (None, None)) == 2
    assert sim.next_desired(4, (2, None)) == 2


# --- the timeline ------------------------------------------------------------------------------


def test_tasks_up_ahead_of_a_scheduled_burst() -> None:
    running = [0, 0, 3, 3, 3, 3, 0]
    assert sim.tasks_up_from(running, 3, 5) == 2  # up 3 cycles before cycle 5
    assert sim.tasks_up_from([4, 0, 3, 3], 3, 3) == 2  # the stretch that leads to the due cycle


def test_tasks_up_after_an_unannounced_burst() -> None:
    assert sim.tasks_up_from([0, 0, 0, 2, 4, 4], 4, 2) == 4
    assert sim.tasks_up_from([0, 0, 0], 4, 1) is None
    assert sim.tasks_up_from([0, 0], 1, 5) is None


def test_cycle_position() -> None:
    starts = [0.0, 5.0, 10.5, 15.5]
    assert sim.cycle_position(7.75, starts, 5.0) == pytest.approx(1.5)
    assert sim.cycle_position(19.0, starts, 5.0) == pytest.approx(3.7)
    assert sim.cycle_position(-2.5, starts, 5.0) == pytest.approx(-0.5)
    assert sim.cycle_position(12.0, [], 5.0) == pytest.approx(2.4)


def test_one_cycle_per_one_minute_sample() -> None:
    assert sim.cycles_for(240) == 4
    assert sim.cycles_for(60) == 1


# --- the demo's configuration and its printed events ------------------------------------------


@pytest.mark.parametrize(("interval", "prewarm"), [(5.0, 20), (2.0, 8), (0.1, 1)])
def test_the_demo_prewarms_four_cycles(interval: float, prewarm: int) -> None:
    assert demo_prewarm_seconds(interval) == prewarm
    config = parse_config(demo_context(interval, protection=True))
    assert {s.prewarm_seconds for s in config.services} == {prewarm}
    assert all(s.task_protection for s in config.services)


def test_no_protection_switches_it_off_for_every_service() -> None:
    config = parse_config(demo_context(5.0, protection=False))
    assert not any(s.task_protection for s in config.services)


def test_a_scale_in_is_described_with_idle_busy_and_kept_tasks() -> None:
    assert EcsEvent(desired=2, started=2, live=2).describe() == ""
    kept = EcsEvent(desired=2, stopped_idle=("a" * 32,), live=3, protected=3).describe()
    assert kept == "ECS scale-in: stopped 1 idle task(s) [aaaaaa]; 1 task(s) above desired 2 kept: 3 protected"
    busy = EcsEvent(desired=0, stopped_busy=("b" * 32, "c" * 32), orphaned=3, live=0).describe()
    assert busy == "ECS scale-in: stopped 2 BUSY task(s) [bbbbbb cccccc]: 3 flow run(s) orphaned"
