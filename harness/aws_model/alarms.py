"""CloudWatch metric datapoints and metric alarm evaluation.

Rules, with their sources:

* A datapoint is the statistic (Average, Maximum, ...) of the values published in one period; periods are
  aligned on the clock (``timestamp // period``). Evaluation Periods is the number of most recent periods
  evaluated, Datapoints to Alarm how many of them must breach (M of N, not necessarily consecutive).
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarm-evaluation.html
* Missing data: CloudWatch retrieves more periods than Evaluation Periods (the *evaluation range*). With at
  least N real datapoints in it, the N most recent real ones are evaluated and TreatMissingData is not used;
  with fewer, the missing ones are filled per TreatMissingData, as few times as possible: ``breaching``,
  ``notBreaching``; ``missing`` evaluates the real ones alone and goes INSUFFICIENT_DATA only when every
  datapoint in the range is missing; ``ignore`` keeps the current state when all are missing.
  https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarms-and-missing-data.html
  The page does not give the range's length ("depends on the period"): ``EXTRA_PERIODS`` is our choice.
* Alarms are evaluated on CloudWatch's schedule (every minute for a period of a minute or more, every 10 s for
  high-resolution periods), at a phase of its own, not when a datapoint arrives; only complete periods are
  evaluated here (a period still being written is not).
* Auto Scaling actions, unlike the others, are performed again at every evaluation while the alarm stays in
  ALARM. https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarm-actions.html
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

EXTRA_PERIODS = 2  # the evaluation range beyond Evaluation Periods (not documented: our choice)


class TreatMissing(StrEnum):
    MISSING = "missing"  # the default
    NOT_BREACHING = "notBreaching"
    BREACHING = "breaching"
    IGNORE = "ignore"


class Comparison(StrEnum):
    GE = "GreaterThanOrEqualToThreshold"
    GT = "GreaterThanThreshold"
    LT = "LessThanThreshold"
    LE = "LessThanOrEqualToThreshold"


class AlarmState(StrEnum):
    OK = "OK"
    ALARM = "ALARM"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


@dataclass(frozen=True)
class AlarmSpec:
    threshold: float
    comparison: Comparison
    period: int = 60
    evaluation_periods: int = 1
    datapoints_to_alarm: int = 1
    treat_missing: TreatMissing = TreatMissing.MISSING
    statistic: str = "Average"

    def breaches(self, value: float) -> bool:
        if self.comparison is Comparison.GE:
            return value >= self.threshold
        if self.comparison is Comparison.GT:
            return value > self.threshold
        if self.comparison is Comparison.LT:
            return value < self.threshold
        return value <= self.threshold

    @property
    def evaluation_interval(self) -> int:
        """How often CloudWatch evaluates it: each minute, or each 10 s for a high-resolution period."""
        return 10 if self.period < 60 else 60


@dataclass
class MetricSeries:
    """The values published for one metric, in time order; datapoints per period on demand."""

    timestamps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def put(self, timestamp: float, value: float) -> None:
        if self.timestamps and timestamp < self.timestamps[-1]:
            raise ValueError("values are published in time order here")
        self.timestamps.append(timestamp)
        self.values.append(value)

    def datapoint(self, period_index: int, period: int, statistic: str) -> float | None:
        """The statistic of the values published in ``[index * period, (index + 1) * period)``; None: missing."""
        lo = bisect.bisect_left(self.timestamps, period_index * period)
        hi = bisect.bisect_left(self.timestamps, (period_index + 1) * period)
        found = self.values[lo:hi]
        if not found:
            return None
        if statistic == "Maximum":
            return max(found)
        if statistic == "Minimum":
            return min(found)
        if statistic == "Sum":
            return sum(found)
        return sum(found) / len(found)


def evaluate(spec: AlarmSpec, datapoints: Sequence[float | None], current: AlarmState) -> AlarmState:
    """The alarm's next state from the datapoints of its evaluation range (oldest first, None: missing)."""
    n, m = spec.evaluation_periods, spec.datapoints_to_alarm
    real = [d for d in datapoints if d is not None]
    if len(real) >= n:
        window = real[-n:]
        return AlarmState.ALARM if sum(spec.breaches(v) for v in window) >= m else AlarmState.OK
    breaching = sum(spec.breaches(v) for v in real)
    if spec.treat_missing is TreatMissing.BREACHING:
        breaching += n - len(real)
    elif spec.treat_missing in (TreatMissing.MISSING, TreatMissing.IGNORE) and not real:
        return current if spec.treat_missing is TreatMissing.IGNORE else AlarmState.INSUFFICIENT_DATA
    return AlarmState.ALARM if breaching >= m else AlarmState.OK


@dataclass
class Alarm:
    """One metric alarm on one series; ``evaluate_at`` is called on CloudWatch's schedule."""

    spec: AlarmSpec
    series: MetricSeries
    state: AlarmState = AlarmState.INSUFFICIENT_DATA
    last_value: float | None = None  # the most recent real datapoint evaluated (what a policy acts on)

    def range_at(self, now: float) -> list[float | None]:
        period = self.spec.period
        newest = int(now // period) - 1  # the last complete period
        count = self.spec.evaluation_periods + EXTRA_PERIODS
        return [self.series.datapoint(k, period, self.spec.statistic) for k in range(newest - count + 1, newest + 1)]

    def evaluate_at(self, now: float) -> AlarmState:
        points = self.range_at(now)
        self.state = evaluate(self.spec, points, self.state)
        self.last_value = next((p for p in reversed(points) if p is not None), None)
        return self.state
