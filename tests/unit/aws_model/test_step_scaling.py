"""Step scaling, rule by rule (harness/aws_model/step_scaling.py cites the pages)."""

from __future__ import annotations

from harness.aws_model.autoscaling import ScalableTarget
from harness.aws_model.step_scaling import StepAdjustment, StepScaling, StepScalingSpec

# threshold 1; a shortfall in [k, k+1) adds k (as infra/scaling.py's steps do), from 3 on: +3
SPEC = StepScalingSpec(threshold=1, cooldown=60, adjustments=(
    StepAdjustment(lower=0, upper=1, change=1), StepAdjustment(lower=1, upper=2, change=2),
    StepAdjustment(lower=2, upper=None, change=3)))


def test_step_bounds_are_relative_to_the_alarm_threshold() -> None:
    assert SPEC.adjustment(1) == 1  # breach 0
    assert SPEC.adjustment(1.99) == 1
    assert SPEC.adjustment(2) == 2
    assert SPEC.adjustment(50) == 3
    assert SPEC.adjustment(0.5) is None  # below the threshold: no step matches


def test_change_in_capacity_adds_to_desired() -> None:
    assert StepScaling(SPEC).scale_out(metric=2, desired=5, now=0) == 7


def test_a_second_step_during_the_cooldown_adds_only_what_exceeds_the_first() -> None:
    policy = StepScaling(SPEC)
    assert policy.scale_out(metric=2, desired=5, now=0) == 7  # +2
    policy.scaled(5, 7, now=0)
    assert policy.scale_out(metric=3, desired=7, now=30) == 8  # +3 during the cooldown: only 1 more
    assert policy.scale_out(metric=2, desired=7, now=30) is None  # +2 again: nothing
    assert policy.scale_out(metric=2, desired=7, now=60) == 9  # cooldown over: +2 on the current desired


def test_the_result_is_clamped_to_the_target() -> None:
    target = ScalableTarget(min_capacity=0, max_capacity=8)
    assert target.clamp(StepScaling(SPEC).scale_out(metric=9, desired=7, now=0) or 0) == 8
    assert target.clamp(-3) == 0
