"""The monitoring settings of the configuration: alarm thresholds, alarmEmail and monitoringDetail."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_backlog.config import DEFAULT_OLDEST_LATE_ALARM_SECONDS, ConfigError, parse_config

API = "https://prefect.example.com/api"
QUEUE = {"workPool": "pool-a", "workQueue": "default", "cluster": "c1", "service": "worker", "maxCapacity": 3}


def context(**top: Any) -> dict[str, Any]:
    return {"prefectApiUrl": API, "queues": [dict(QUEUE)], **top}


def problems_of(ctx: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(ctx)
    return caught.value.problems


def test_defaults_alarm_after_ten_minutes_and_notify_nobody() -> None:
    config = parse_config(context())
    assert config.oldest_late_alarm_seconds == DEFAULT_OLDEST_LATE_ALARM_SECONDS == 600
    assert config.alarm_email is None


def test_given_values_are_kept() -> None:
    config = parse_config(context(oldestLateAlarmSeconds=1800, alarmEmail="ops@example.com"))
    assert (config.oldest_late_alarm_seconds, config.alarm_email) == (1800, "ops@example.com")


def test_command_line_string_for_the_threshold() -> None:  # `cdk -c oldestLateAlarmSeconds=900`
    assert parse_config(context(oldestLateAlarmSeconds="900")).oldest_late_alarm_seconds == 900


def test_null_means_the_default() -> None:
    config = parse_config(context(oldestLateAlarmSeconds=None, alarmEmail=None))
    assert (config.oldest_late_alarm_seconds, config.alarm_email) == (600, None)


@pytest.mark.parametrize("extra", [{}, {"alarmEmail": "ops@example.com", "oldestLateAlarmSeconds": 120}])
def test_canonical_form_round_trips(extra: dict[str, Any]) -> None:
    config = parse_config(context(**extra))
    canonical = config.to_context()
    assert canonical["oldestLateAlarmSeconds"] == config.oldest_late_alarm_seconds  # the default is spelled out
    assert ("alarmEmail" in canonical) == ("alarmEmail" in extra)
    assert parse_config(canonical) == config


@pytest.mark.parametrize(("ctx", "expected"), [
    (context(oldestLateAlarmSeconds=59), "oldestLateAlarmSeconds: must be at least 60, got 59"),
    (context(oldestLateAlarmSeconds=0), "oldestLateAlarmSeconds: must be at least 60"),
    (context(oldestLateAlarmSeconds=600.5), "oldestLateAlarmSeconds: must be a whole number"),
    (context(oldestLateAlarmSeconds="ten minutes"), "oldestLateAlarmSeconds: must be a whole number"),
    (context(oldestLateAlarmSeconds=True), "oldestLateAlarmSeconds: must be a whole number"),
    (context(alarmEmail="ops"), "alarmEmail: must be one email address"),
    (context(alarmEmail="ops@example.com, dev@example.com"), "alarmEmail: must be one email address"),
    (context(alarmEmail=["ops@example.com"]), "alarmEmail: must be a string"),
    (context(alarmEmail=""), "alarmEmail: must not be empty"),
    (context(alarmEmail=" ops@example.com"), "alarmEmail: must not start or end with white space"),
    (context(alarmEmial="ops@example.com"), "alarmEmial: unknown key (did you mean 'alarmEmail'?)"),
    (context(oldestLateAlarmSecs=600), "oldestLateAlarmSecs: unknown key (did you mean 'oldestLateAlarmSeconds'?)"),
])
def test_bad_monitoring_settings_name_the_field(ctx: dict[str, Any], expected: str) -> None:
    problems = problems_of(ctx)
    assert any(p.startswith(expected) for p in problems), problems


def test_operator_thresholds_for_workers_and_stuck_runs() -> None:
    defaults = parse_config(context())
    assert (defaults.unpolled_alarm_seconds, defaults.stuck_pending_seconds) == (300, 900)
    assert (defaults.reschedule_stuck_pending, defaults.max_reschedules_per_run) == (False, 10)
    given = parse_config(context(unpolledAlarmSeconds=120, stuckPendingSeconds="600", rescheduleStuckPending="true",
                                 maxReschedulesPerRun=3))
    assert (given.unpolled_alarm_seconds, given.stuck_pending_seconds) == (120, 600)
    assert (given.reschedule_stuck_pending, given.max_reschedules_per_run) == (True, 3)
    assert parse_config(given.to_context()) == given


@pytest.mark.parametrize(("ctx", "expected"), [
    (context(unpolledAlarmSeconds=30), "unpolledAlarmSeconds: must be at least 60"),
    (context(stuckPendingSeconds="soon"), "stuckPendingSeconds: must be a whole number"),
    (context(rescheduleStuckPending=1), "rescheduleStuckPending: must be true or false"),
    (context(maxReschedulesPerRun=0), "maxReschedulesPerRun: must be at least 1"),
    (context(unpoledAlarmSeconds=300), "unpoledAlarmSeconds: unknown key (did you mean 'unpolledAlarmSeconds'?)"),
])
def test_bad_operator_thresholds_name_the_field(ctx: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(ctx)), problems_of(ctx)


def test_monitoring_detail_is_per_queue_unless_pool_is_asked_for() -> None:
    assert parse_config(context()).monitoring_detail == "queue"
    pooled = parse_config(context(monitoringDetail="pool"))
    assert (pooled.monitoring_detail, pooled.work_pools) == ("pool", ("pool-a",))
    assert parse_config(pooled.to_context()) == pooled


@pytest.mark.parametrize(("ctx", "expected"), [
    (context(monitoringDetail="pools"), "monitoringDetail: must be one of queue, pool"),
    (context(monitoringDetail=True), "monitoringDetail: must be one of queue, pool"),
    ({"prefectApiUrl": API, "monitoringDetail": "pool", "queues": [dict(QUEUE), {**QUEUE, "workPool": None,
                                                                             "workQueue": "etl"}]},
     'queues[1].workPool: is required with monitoringDetail "pool"'),
])
def test_bad_monitoring_detail_names_the_field(ctx: dict[str, Any], expected: str) -> None:
    problems = problems_of(ctx)
    assert any(p.startswith(expected) for p in problems), problems
