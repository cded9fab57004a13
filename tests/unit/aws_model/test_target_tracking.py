"""Target tracking, rule by rule (harness/aws_model/target_tracking.py cites the pages)."""

from __future__ import annotations

from harness.aws_model.alarms import Comparison
from harness.aws_model.target_tracking import TargetTracking, TargetTrackingSpec, proportional_capacity

SPEC = TargetTrackingSpec(target_value=4, scale_out_cooldown=60, scale_in_cooldown=300)


def test_new_capacity_is_proportional_on_the_desired_count() -> None:
    assert proportional_capacity(5, 8, 4) == 10
    assert proportional_capacity(3, 7 / 3, 1) == 7  # not 8: 3 * (7/3) is 7.000000000000001
    assert proportional_capacity(4, 4.1, 4) == 5  # rounded up
    assert proportional_capacity(0, 1000, 4) == 0  # the product cannot leave 0: see the next test


def test_at_zero_one_datapoint_showing_demand_asks_for_one_task() -> None:
    policy = TargetTracking(SPEC)
    assert policy.scale_out_from_zero(0.5, desired=0) == 1
    assert policy.scale_out_from_zero(0.0, desired=0) is None
    assert policy.scale_out_from_zero(None, desired=0) is None  # no data, no scaling
    assert policy.scale_out_from_zero(9.0, desired=2) is None  # not at zero: proportional


def test_the_managed_alarms_3_high_and_15_low_at_90_percent() -> None:
    high, low = SPEC.high_alarm(), SPEC.low_alarm()
    assert (high.evaluation_periods, high.datapoints_to_alarm, high.period) == (3, 3, 60)
    assert (low.evaluation_periods, low.datapoints_to_alarm, low.period) == (15, 15, 60)
    assert high.comparison is Comparison.GT and high.threshold == 4
    assert not high.breaches(4.0) and high.breaches(4.01)
    assert low.threshold == 3.6
    assert not low.breaches(3.6) and low.breaches(3.59)


def test_during_the_scale_out_cooldown_only_a_larger_scale_out_acts() -> None:
    policy = TargetTracking(SPEC)
    policy.scaled(4, 8, now=0)
    assert policy.scale_out(metric=7 * 4 / 6, desired=6, now=30) is None  # 7: not above the 8 it set
    assert policy.scale_out(metric=9 * 4 / 6, desired=6, now=30) == 9
    assert policy.scale_out(metric=7 * 4 / 6, desired=6, now=60) == 7  # the cooldown is over


def test_scale_in_waits_for_both_cooldowns_and_a_scale_out_does_not() -> None:
    policy = TargetTracking(SPEC)
    policy.scaled(4, 8, now=0)
    assert policy.scale_in(metric=1, desired=8, now=59) is None  # scale-out cooldown
    assert policy.scale_in(metric=1, desired=8, now=60) == 2
    policy.scaled(8, 2, now=60)
    assert policy.scale_in(metric=1, desired=2, now=359) is None  # scale-in cooldown
    assert policy.scale_out(metric=8, desired=2, now=100) == 4  # acts at once during the scale-in cooldown
    assert policy.scale_in(metric=2, desired=2, now=360) == 1


def test_scale_in_disabled() -> None:
    policy = TargetTracking(TargetTrackingSpec(target_value=4, disable_scale_in=True))
    assert policy.scale_in(metric=0, desired=5, now=10_000) is None
