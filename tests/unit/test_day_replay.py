"""The day replay's own mechanics, on a small day and policies written out (the bench reads them from a template)."""

from __future__ import annotations

from bench import day_replay
from bench.day_replay import Run, replay
from demo import simulation as sim

POLICIES = sim.ServicePolicies(
    resource_id="service/prefect/worker", min_capacity=0, max_capacity=10, target_value=4, step_threshold=1,
    step_adjustments=(*(sim.StepAdjustment(lower=k - 1, upper=k, change=k) for k in range(1, 10)),
                      sim.StepAdjustment(lower=9, upper=None, change=10)))


def test_a_burst_announced_ahead_is_worked_off_with_less_lateness_when_pre_warmed() -> None:
    day = [Run(due=3600 + i, seconds=120, announced=True) for i in range(20)]
    cold = replay("ours, no pre-warm", POLICIES, 0, day)
    warm = replay("ours", POLICIES, 240, day)
    assert cold.late_runs > 0 and warm.late_runs == 0  # its tasks were up before it was due
    assert warm.late_run_seconds < cold.late_run_seconds
    assert warm.task_minutes >= cold.task_minutes  # the tasks started earlier: that is the cost


def test_an_unannounced_burst_cannot_be_pre_warmed() -> None:
    day = [Run(due=3600 + i, seconds=120, announced=False) for i in range(20)]
    assert replay("ours", POLICIES, 240, day) == replay("ours", POLICIES, 0, day)


def test_the_recipe_waits_for_late_runs() -> None:
    day = [Run(due=3600 + i, seconds=120, announced=True) for i in range(20)]
    recipe = replay("recipe", day_replay.recipe_policies(POLICIES), 0, day)
    assert recipe.late_run_seconds > replay("ours", POLICIES, 0, day).late_run_seconds
