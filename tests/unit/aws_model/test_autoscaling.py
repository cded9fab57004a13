"""Application Auto Scaling on a service: actions repeated in ALARM, largest capacity, deployments."""

from __future__ import annotations

import random

from harness.aws_model.alarms import AlarmSpec, Comparison, MetricSeries
from harness.aws_model.autoscaling import ScalableTarget, ServiceAutoScaling
from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService
from harness.aws_model.step_scaling import StepAdjustment, StepScalingSpec
from harness.aws_model.target_tracking import TargetTrackingSpec

STEP = StepScalingSpec(threshold=1, cooldown=60, adjustments=(StepAdjustment(lower=0, upper=None, change=2),))
STEP_ALARM = AlarmSpec(threshold=1, comparison=Comparison.GE, statistic="Maximum")


def scaling(maximum: int = 10, minimum: int = 0) -> tuple[ServiceAutoScaling, MetricSeries, MetricSeries]:
    clock = Clock()
    aas = ServiceAutoScaling(clock, EcsService(clock, random.Random(1)), ScalableTarget(minimum, maximum))
    tracking, shortfall = MetricSeries(), MetricSeries()
    aas.add_target_tracking(TargetTrackingSpec(target_value=4), tracking)
    aas.add_step_scaling(STEP, STEP_ALARM, shortfall)
    return aas, tracking, shortfall


def test_the_step_action_repeats_each_minute_while_the_alarm_stays_in_alarm() -> None:
    aas, _, shortfall = scaling()
    for minute in range(6):
        shortfall.put(minute * 60 + 5, 3)  # the same datapoint each minute: nothing tells it tasks were added
    aas.start(phase=30, until=400)
    aas.clock.run_until(90)
    assert aas.service.desired == 2  # evaluated at 30 (period 0 still open) and at 90: +2
    aas.clock.run_until(150)
    assert aas.service.desired == 4  # in ALARM again one minute later, cooldown over: +2 again
    aas.clock.run_until(400)
    assert aas.service.desired == 10  # and on, up to the maximum


def test_the_largest_capacity_wins() -> None:
    aas, tracking, shortfall = scaling(maximum=50)
    aas.service.desired = 1
    for minute in range(4):
        tracking.put(minute * 60, 24)  # 1 task * 24 / 4 = 6
        shortfall.put(minute * 60, 1)  # +2: 3
    aas.start(phase=0, until=300)
    aas.clock.run_until(60)
    assert aas.service.desired == 3  # one tracking datapoint: only the step has fired, +2
    aas.clock.run_until(120)
    assert aas.service.desired == 5  # the step again (its alarm still in ALARM, its cooldown over)
    aas.clock.run_until(180)
    assert aas.service.desired == 30  # the high alarm now (3 of 3): 5 * 24 / 4 beats 5 + 2


def test_no_datapoints_no_scaling_either_way() -> None:
    aas, _, _ = scaling(minimum=0)
    aas.service.desired = 5
    aas.start(phase=0, until=3600)
    aas.clock.run_until(3600)
    assert aas.service.desired == 5 and aas.scale_ins == 0


def test_scale_in_after_15_low_minutes_and_not_during_a_deployment() -> None:
    for deploying in (False, True):
        aas, tracking, _ = scaling()
        aas.service.desired = 4
        aas.deployment_in_progress = deploying
        for minute in range(30):
            tracking.put(minute * 60, 1)  # 4 * 1 / 4: 1 task
        aas.start(phase=0, until=1800)
        aas.clock.run_until(15 * 60 - 1)
        assert aas.service.desired == 4
        aas.clock.run_until(15 * 60)
        assert aas.service.desired == (4 if deploying else 1)


def test_clamped_to_the_minimum_at_registration() -> None:
    aas, _, _ = scaling(minimum=2)
    aas.start(phase=0, until=10)
    assert aas.service.desired == 2


def test_target_tracking_leaves_zero_on_one_datapoint_then_tracks_proportionally() -> None:
    clock = Clock()
    aas = ServiceAutoScaling(clock, EcsService(clock, random.Random(1)), ScalableTarget(0, 50))
    metric = MetricSeries()
    aas.add_target_tracking(TargetTrackingSpec(target_value=4), metric)
    aas.start(phase=0, until=600)
    for minute in range(6):
        clock.run_until(minute * 60 + 30)
        metric.put(clock.now, 40 / max(aas.service.desired, 1))  # 40 runs waiting, per desired task
    clock.run_until(400)
    assert aas.service.desired == 10  # 1 after the first datapoint; then 3 high datapoints: 1 * 40 / 4
