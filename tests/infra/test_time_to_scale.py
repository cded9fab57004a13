"""bench/time_to_scale.py reads the worst-case delay to scale out from the synthesized template."""

from __future__ import annotations

import pytest

from bench import time_to_scale

CDK_JSON = time_to_scale.REPO_ROOT / "cdk.json"


@pytest.mark.parametrize(("fast", "expected"), [(False, 60 + 0 + 1 * 60), (True, 10 + 0 + 1 * 10)])
def test_worst_case_from_the_template_meets_its_target(fast: bool, expected: float) -> None:
    template, packaged = time_to_scale.synthesize(time_to_scale.load_context(CDK_JSON, fast))
    row = time_to_scale.ours(template, packaged)
    assert row.worst_case_s == expected
    assert row.worst_case_s <= (time_to_scale.TARGET_FAST_SECONDS if fast else time_to_scale.TARGET_DEFAULT_SECONDS)
    assert "fastMode" in row.sampling_source if fast else row.sampling_source == "schedule rate"


def test_the_alarm_period_and_datapoints_come_from_the_template() -> None:
    template, packaged = time_to_scale.synthesize(time_to_scale.load_context(CDK_JSON, False))
    for alarm in time_to_scale.step_scale_out_alarms(template).values():
        alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"] = 120, 3, 2
    assert time_to_scale.ours(template, packaged).worst_case_s == 60 + 2 * 120


def test_the_baseline_waits_for_late_marking_and_three_datapoints() -> None:
    assert time_to_scale.baseline().worst_case_s == 60 + 15 + 5 + 3 * 60


@pytest.mark.parametrize(("fast", "lead"), [(False, 240 - (60 + 60)), (True, 240 - (10 + 10))])
def test_a_run_scheduled_ahead_has_its_alarm_fired_before_it_is_due(fast: bool, lead: float) -> None:
    template, packaged = time_to_scale.synthesize(time_to_scale.load_context(CDK_JSON, fast))
    assert time_to_scale.scheduled_lead(time_to_scale.ours(template, packaged), packaged) == (240, lead)
    context = time_to_scale.load_context(CDK_JSON, fast)
    context["queues"] = [{**q, "prewarmSeconds": 0} for q in context["queues"]]
    template, packaged = time_to_scale.synthesize(context)
    assert time_to_scale.scheduled_lead(time_to_scale.ours(template, packaged), packaged) == (0, lead - 240)
