"""CloudWatch alarm evaluation, rule by rule (harness/aws_model/alarms.py cites the pages)."""

from __future__ import annotations

import pytest

from harness.aws_model.alarms import Alarm, AlarmSpec, AlarmState, Comparison, MetricSeries, TreatMissing, evaluate

B, OK_ = 5.0, 0.0  # a breaching and a non-breaching value for threshold 1, >=


def spec(n: int = 3, m: int = 3, missing: TreatMissing = TreatMissing.MISSING) -> AlarmSpec:
    return AlarmSpec(threshold=1, comparison=Comparison.GE, evaluation_periods=n, datapoints_to_alarm=m,
                     treat_missing=missing)


def test_m_of_n_need_not_be_consecutive() -> None:
    assert evaluate(spec(3, 2), [B, OK_, B], AlarmState.OK) is AlarmState.ALARM
    assert evaluate(spec(3, 2), [OK_, OK_, B], AlarmState.OK) is AlarmState.OK


def test_with_enough_real_datapoints_in_the_range_the_older_ones_are_evaluated_and_missing_is_not_used() -> None:
    # 3 of 3 with the newest period missing: the 3 most recent real datapoints, one from further back, breach
    for missing in TreatMissing:
        assert evaluate(spec(missing=missing), [B, B, None, B, None], AlarmState.OK) is AlarmState.ALARM
        assert evaluate(spec(missing=missing), [OK_, B, None, B, None], AlarmState.OK) is AlarmState.OK


@pytest.mark.parametrize(("missing", "current", "expected"), [
    (TreatMissing.MISSING, AlarmState.ALARM, AlarmState.INSUFFICIENT_DATA),
    (TreatMissing.IGNORE, AlarmState.ALARM, AlarmState.ALARM),
    (TreatMissing.IGNORE, AlarmState.OK, AlarmState.OK),
    (TreatMissing.BREACHING, AlarmState.OK, AlarmState.ALARM),
    (TreatMissing.NOT_BREACHING, AlarmState.ALARM, AlarmState.OK),
])
def test_a_range_with_no_datapoint(missing: TreatMissing, current: AlarmState, expected: AlarmState) -> None:
    assert evaluate(spec(missing=missing), [None] * 5, current) is expected


def test_too_few_real_datapoints_are_filled_per_treat_missing_data() -> None:
    points = [None, None, None, B, B]  # two real, both breaching; 3 of 3
    assert evaluate(spec(missing=TreatMissing.BREACHING), points, AlarmState.OK) is AlarmState.ALARM
    assert evaluate(spec(missing=TreatMissing.NOT_BREACHING), points, AlarmState.OK) is AlarmState.OK
    assert evaluate(spec(missing=TreatMissing.MISSING), points, AlarmState.OK) is AlarmState.OK
    assert evaluate(spec(n=3, m=2, missing=TreatMissing.MISSING), points, AlarmState.OK) is AlarmState.ALARM


def test_only_complete_periods_are_evaluated_on_cloudwatchs_own_schedule() -> None:
    series = MetricSeries()
    alarm = Alarm(spec(1, 1), series)
    series.put(30, B)  # in period [0, 60)
    assert alarm.evaluate_at(50) is AlarmState.INSUFFICIENT_DATA  # the period is still being written
    assert alarm.evaluate_at(60) is AlarmState.ALARM
    assert alarm.last_value == B


def test_a_datapoint_is_the_periods_statistic() -> None:
    series = MetricSeries()
    for t, v in ((0, 1.0), (20, 3.0), (59.9, 8.0), (60, 100.0)):
        series.put(t, v)
    assert series.datapoint(0, 60, "Average") == 4.0
    assert series.datapoint(0, 60, "Maximum") == 8.0
    assert series.datapoint(1, 60, "Maximum") == 100.0
    assert series.datapoint(2, 60, "Average") is None
