"""The configuration schema: valid forms parse, every bad form names its field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prefect_backlog.config import DEFAULT_OLDEST_LATE_ALARM_SECONDS, ConfigError, parse_config
from tests.support.contexts import API, context, entry


def problems_of(ctx: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(ctx)
    return caught.value.problems


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse_config(context())
    assert config.api_url == API
    assert config.namespace == "Prefect"
    assert config.schedule == "rate(1 minute)"
    (service,) = config.services
    assert (service.min_capacity, service.max_capacity, service.target_backlog_per_task) == (0, 3, 1.0)
    assert service.resource_id == "service/prefect/worker"
    assert config.queues[0].runs_in_worker_task is False


def test_queues_accepted_as_json_string_from_the_command_line() -> None:
    as_list = parse_config(context(entry(), entry(workPool="pool-b")))
    as_string = parse_config({"prefectApiUrl": API, "queues": json.dumps([entry(), entry(workPool="pool-b")])})
    assert as_list == as_string


def test_command_line_strings_for_numbers_and_booleans() -> None:
    config = parse_config(context(entry(maxCapacity="4", minCapacity="1", runsInWorkerTask="true")))
    assert config.services[0].max_capacity == 4 and config.services[0].min_capacity == 1
    assert config.queues[0].runs_in_worker_task is True


def test_queues_on_one_service_are_grouped_and_inherit_its_settings() -> None:
    config = parse_config(context(entry(targetBacklogPerTask=5), entry(workQueue="gpu", maxCapacity=None),
                                  entry(workPool="pool-b", service="other", maxCapacity=2)))
    assert [s.key for s in config.services] == [("prefect", "worker"), ("prefect", "other")]
    assert config.services[0].queue_indexes == (0, 1)
    assert config.services[0].target_backlog_per_task == 5.0
    assert config.service_for(config.queues[1]).max_capacity == 3


def test_canonical_form_round_trips() -> None:
    ctx = context(entry(), entry(workQueue="q2", workPool=None, runsInWorkerTask=True),
                  prefectAuth={"secret": "prefect/key", "scheme": "basic"},
                  network={"subnetIds": ["subnet-0a1b2c3d"], "securityGroupIds": ["sg-0123abcd"]},
                  metricNamespace="Custom/Prefect", schedule="rate(5 minutes)", logRetentionDays=7)
    config = parse_config(ctx)
    assert parse_config(config.to_context()) == config


def test_cdk_feature_flags_in_context_are_left_alone() -> None:
    ctx = context(**{"@aws-cdk/core:newStyleStackSynthesis": True, "aws:cdk:enable-path-metadata": True})
    parse_config(ctx)


@pytest.mark.parametrize(("ctx", "expected"), [
    ({"queues": [entry()]}, "prefectApiUrl: is required"),
    ({"prefectApiUrl": API}, "queues: is required"),
    (context(entry(workQueue=None)), "queues[0].workQueue: is required"),
    (context(entry(cluster=None)), "queues[0].cluster: is required"),
    (context(entry(maxCapacity=None)), "queues[0].maxCapacity: is required"),
    (context(entry(workQeue="x")), "queues[0].workQeue: unknown key (did you mean 'workQueue'?)"),
    (context(entry(colour="red")), "queues[0].colour: unknown key"),
    (context(prefectApiURL=API), "prefectApiURL: unknown key (did you mean 'prefectApiUrl'?)"),
    (context(entry(maxCapacity="lots")), "queues[0].maxCapacity: must be a whole number"),
    (context(entry(maxCapacity=2.5)), "queues[0].maxCapacity: must be a whole number"),
    (context(entry(maxCapacity=True)), "queues[0].maxCapacity: must be a whole number"),
    (context(entry(minCapacity=-1)), "queues[0].minCapacity: must be at least 0"),
    (context(entry(minCapacity=5, maxCapacity=2)), "queues[0].maxCapacity: must be at least minCapacity (5)"),
    (context(entry(targetBacklogPerTask=0)), "queues[0].targetBacklogPerTask: must be a number greater than 0"),
    (context(entry(targetBacklogPerTask=float("nan"))), "queues[0].targetBacklogPerTask: must be a number"),
    (context(entry(runsInWorkerTask="yes")), "queues[0].runsInWorkerTask: must be true or false"),
    (context(entry(workQueue=7)), "queues[0].workQueue: must be a string"),
    (context(entry(workQueue="  ")), "queues[0].workQueue: must not be empty"),
    (context(entry(service="arn:aws:ecs:us-east-1:1:service/c/s")), "queues[0].service: must be a name"),
    ({"prefectApiUrl": "ftp://prefect/api", "queues": [entry()]}, "prefectApiUrl: must be an http(s) URL"),
    ({"prefectApiUrl": "prefect.example.com/api", "queues": [entry()]}, "prefectApiUrl: must be an http(s) URL"),
    ({"prefectApiUrl": "https://prefect.example.com", "queues": [entry()]}, "prefectApiUrl: must be the API root"),
    (context(entry(), entry()), "queues[1]: duplicates queues[0] (pool-a/default)"),
    (context(entry(), entry(workQueue="gpu", maxCapacity=5)), "queues[0].maxCapacity: entries for ECS service"),
    (context(entry(minCapacity=1), entry(workQueue="gpu", minCapacity=0)), "queues[0].minCapacity: entries for"),
    ({"prefectApiUrl": API, "queues": "[{not json"}, "queues: is a string that is not valid JSON"),
    ({"prefectApiUrl": API, "queues": []}, "queues: must list at least one queue"),
    ({"prefectApiUrl": API, "queues": {"workQueue": "x"}}, "queues: must be a list of queue entries"),
    (context("just-a-string"), "queues[0]: must be an object"),
    (context(prefectAuth={"secret": "s", "scheme": "digest"}), "prefectAuth.scheme: must be one of bearer, basic"),
    (context(prefectAuth={"scheme": "basic"}), "prefectAuth.secret: is required"),
    (context(prefectAuth="my-secret"), "prefectAuth: must be an object"),
    (context(network={"subnetIds": "subnet-1", "securityGroupIds": ["sg"]}), "network.subnetIds: must be a non-empty"),
    (context(network={"subnetIds": ["subnet-0a1b2c3d"], "securityGroupIds": ["sg-1"]}),
     "network.securityGroupIds: must hold ids like sg-0123abcd"),
    (context(schedule="every minute"), "schedule: must be an EventBridge Scheduler expression"),
    (context(metricNamespace="AWS/ECS"), "metricNamespace: must be a custom CloudWatch namespace"),
    (context(logRetentionDays=10), "logRetentionDays: must be one of CloudWatch Logs' retention periods"),
])
def test_bad_config_names_the_field(ctx: dict[str, Any], expected: str) -> None:
    problems = problems_of(ctx)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_are_reported_together_in_one_message() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"prefectApiUrl": "nope", "queues": [entry(maxCapacity=-3), entry(workQueue=None)]})
    message = str(caught.value)
    assert "prefectApiUrl" in message and "queues[0].maxCapacity" in message and "queues[1].workQueue" in message
    assert message.startswith("invalid configuration:")


def test_not_an_object_at_all() -> None:
    assert problems_of(["a"]) == ["configuration: must be an object, got list"]  # type: ignore[arg-type]


# --- the monitoring settings: alarm thresholds, alarmEmail and monitoringDetail -------------------------


def top(**settings: Any) -> dict[str, Any]:
    """One default queue entry and these top-level settings."""
    return context(entry(), **settings)


def test_defaults_alarm_after_ten_minutes_and_notify_nobody() -> None:
    config = parse_config(top())
    assert config.oldest_late_alarm_seconds == DEFAULT_OLDEST_LATE_ALARM_SECONDS == 600
    assert config.alarm_email is None


def test_given_values_are_kept() -> None:
    config = parse_config(top(oldestLateAlarmSeconds=1800, alarmEmail="ops@example.com"))
    assert (config.oldest_late_alarm_seconds, config.alarm_email) == (1800, "ops@example.com")


def test_command_line_string_for_the_threshold() -> None:  # `cdk -c oldestLateAlarmSeconds=900`
    assert parse_config(top(oldestLateAlarmSeconds="900")).oldest_late_alarm_seconds == 900


def test_null_means_the_default() -> None:
    config = parse_config(top(oldestLateAlarmSeconds=None, alarmEmail=None))
    assert (config.oldest_late_alarm_seconds, config.alarm_email) == (600, None)


@pytest.mark.parametrize("extra", [{}, {"alarmEmail": "ops@example.com", "oldestLateAlarmSeconds": 120}])
def test_canonical_form_spells_out_the_alarm_defaults(extra: dict[str, Any]) -> None:
    config = parse_config(top(**extra))
    canonical = config.to_context()
    assert canonical["oldestLateAlarmSeconds"] == config.oldest_late_alarm_seconds  # the default is spelled out
    assert ("alarmEmail" in canonical) == ("alarmEmail" in extra)
    assert parse_config(canonical) == config


@pytest.mark.parametrize(("ctx", "expected"), [
    (top(oldestLateAlarmSeconds=59), "oldestLateAlarmSeconds: must be at least 60, got 59"),
    (top(oldestLateAlarmSeconds=0), "oldestLateAlarmSeconds: must be at least 60"),
    (top(oldestLateAlarmSeconds=600.5), "oldestLateAlarmSeconds: must be a whole number"),
    (top(oldestLateAlarmSeconds="ten minutes"), "oldestLateAlarmSeconds: must be a whole number"),
    (top(oldestLateAlarmSeconds=True), "oldestLateAlarmSeconds: must be a whole number"),
    (top(alarmEmail="ops"), "alarmEmail: must be one email address"),
    (top(alarmEmail="ops@example.com, dev@example.com"), "alarmEmail: must be one email address"),
    (top(alarmEmail=["ops@example.com"]), "alarmEmail: must be a string"),
    (top(alarmEmail=""), "alarmEmail: must not be empty"),
    (top(alarmEmail=" ops@example.com"), "alarmEmail: must not start or end with white space"),
    (top(alarmEmial="ops@example.com"), "alarmEmial: unknown key (did you mean 'alarmEmail'?)"),
    (top(oldestLateAlarmSecs=600), "oldestLateAlarmSecs: unknown key (did you mean 'oldestLateAlarmSeconds'?)"),
])
def test_bad_monitoring_settings_name_the_field(ctx: dict[str, Any], expected: str) -> None:
    problems = problems_of(ctx)
    assert any(p.startswith(expected) for p in problems), problems


def test_operator_thresholds_for_workers_and_stuck_runs() -> None:
    defaults = parse_config(top())
    assert (defaults.unpolled_alarm_seconds, defaults.stuck_pending_seconds) == (300, 900)
    assert (defaults.reschedule_stuck_pending, defaults.max_reschedules_per_run) == (False, 10)
    given = parse_config(top(unpolledAlarmSeconds=120, stuckPendingSeconds="600", rescheduleStuckPending="true",
                             maxReschedulesPerRun=3))
    assert (given.unpolled_alarm_seconds, given.stuck_pending_seconds) == (120, 600)
    assert (given.reschedule_stuck_pending, given.max_reschedules_per_run) == (True, 3)
    assert parse_config(given.to_context()) == given


@pytest.mark.parametrize(("ctx", "expected"), [
    (top(unpolledAlarmSeconds=30), "unpolledAlarmSeconds: must be at least 60"),
    (top(stuckPendingSeconds="soon"), "stuckPendingSeconds: must be a whole number"),
    (top(rescheduleStuckPending=1), "rescheduleStuckPending: must be true or false"),
    (top(maxReschedulesPerRun=0), "maxReschedulesPerRun: must be at least 1"),
    (top(unpoledAlarmSeconds=300), "unpoledAlarmSeconds: unknown key (did you mean 'unpolledAlarmSeconds'?)"),
])
def test_bad_operator_thresholds_name_the_field(ctx: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(ctx)), problems_of(ctx)


def test_monitoring_detail_defaults_to_auto_and_keeps_what_is_asked_for() -> None:
    default = parse_config(top())
    assert default.monitoring_detail == "auto" and default.to_context()["monitoringDetail"] == "auto"
    for detail in ("queue", "pool"):
        given = parse_config(top(monitoringDetail=detail))
        assert (given.monitoring_detail, given.work_pools) == (detail, ("pool-a",))
        assert parse_config(given.to_context()) == given


@pytest.mark.parametrize(("ctx", "expected"), [
    (top(monitoringDetail="pools"), "monitoringDetail: must be one of auto, queue, pool"),
    (top(monitoringDetail=True), "monitoringDetail: must be one of auto, queue, pool"),
    ({"prefectApiUrl": API, "monitoringDetail": "pool", "queues": [entry(), {**entry(), "workPool": None,
                                                                             "workQueue": "etl"}]},
     'queues[1].workPool: is required with monitoringDetail "pool"'),
])
def test_bad_monitoring_detail_names_the_field(ctx: dict[str, Any], expected: str) -> None:
    problems = problems_of(ctx)
    assert any(p.startswith(expected) for p in problems), problems


# --- what the CDK CLI delivers: every -c value is a string ------------------------------------------


def test_object_settings_accept_the_json_string_that_dash_c_delivers() -> None:
    auth = {"secret": "prefect/server-auth", "scheme": "basic"}
    network = {"subnetIds": ["subnet-0a1b2c3d"], "securityGroupIds": ["sg-0123abcd"]}
    as_objects = parse_config(context(prefectAuth=auth, network=network))
    as_strings = parse_config(context(prefectAuth=json.dumps(auth), network=json.dumps(network)))
    assert as_strings == as_objects and as_strings.auth is not None and as_strings.auth.scheme == "basic"


def test_scalars_accept_the_strings_that_dash_c_delivers() -> None:
    config = parse_config(context(fastMode="true", logRetentionDays="14", rescheduleStuckPending="false"))
    assert (config.fast_mode, config.log_retention_days, config.reschedule_stuck_pending) == (True, 14, False)
    assert parse_config(context(entry(targetBacklogPerTask="2.5"))).services[0].target_backlog_per_task == 2.5


@pytest.mark.parametrize(("ctx", "expected"), [
    (context(prefectAuth='{"secret": "prefect/auth", scheme: basic}'),
     "prefectAuth: is a string that is not valid JSON (Expecting property name enclosed in double quotes"),
    (context(network='{"subnetIds": ["subnet-0a1b2c3d"]'), "network: is a string that is not valid JSON"),
    (context(prefectAuth='["prefect/auth"]'), "prefectAuth: must be an object, got list"),
    (context(prefectAuth='{"secret": "prefect/auth", "scheme": "digest"}'),
     'prefectAuth.scheme: must be one of bearer, basic, got "digest"'),
    (context(network='{"subnetIds": "subnet-0a1b2c3d", "securityGroupIds": ["sg-0123abcd"]}'),
     "network.subnetIds: must be a non-empty list of ids like subnet-0123abcd"),
    (context(fastMode="yes"), 'fastMode: must be true or false, got "yes"'),
    (context(logRetentionDays="two weeks"), 'logRetentionDays: must be a whole number, got "two weeks"'),
])
def test_a_bad_dash_c_string_names_the_field(ctx: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(ctx)), problems_of(ctx)


def test_pool_and_queue_names_keep_the_spaces_prefect_accepts() -> None:
    config = parse_config(context(entry(workPool=" spaced pool ", workQueue="queue ")))
    (queue,) = config.queues
    assert (queue.work_pool, queue.work_queue, queue.path) == (" spaced pool ", "queue ", " spaced pool /queue ")
    assert parse_config(config.to_context()) == config


# --- pre-warm and task protection: settings of the ECS service -----------------------------------------


def test_prewarm_defaults_to_a_fargate_start_and_zero_turns_it_off() -> None:
    assert parse_config(context()).services[0].prewarm_seconds == 240
    assert parse_config(context(entry(prewarmSeconds=0))).services[0].prewarm_seconds == 0
    assert parse_config(context(entry(prewarmSeconds="600"))).services[0].prewarm_seconds == 600


@pytest.mark.parametrize(("ctx", "expected"), [
    (context(entry(prewarmSeconds=-1)), "queues[0].prewarmSeconds: must be at least 0, got -1"),
    (context(entry(prewarmSeconds=3601)), "queues[0].prewarmSeconds: must be at most 3600, got 3601"),
    (context(entry(prewarmSeconds=1.5)), "queues[0].prewarmSeconds: must be a whole number"),
    (context(entry(prewarmSeconds=120), entry(workQueue="gpu", prewarmSeconds=300, maxCapacity=None)),
     "queues[0].prewarmSeconds: entries for ECS service prefect/worker disagree"),
    (context(entry(taskProtection="sometimes")), "queues[0].taskProtection: must be true or false"),
    (context(entry(taskProtection=True), entry(workQueue="gpu", taskProtection=False, maxCapacity=None)),
     "queues[0].taskProtection: entries for ECS service prefect/worker disagree"),
    (context(maxCrashesPerRun=0), "maxCrashesPerRun: must be at least 1"),
    (context(crashOrphanedRuns="yes"), "crashOrphanedRuns: must be true or false"),
    (context(fullReadEverySamples=0), "fullReadEverySamples: must be at least 1"),
])
def test_bad_service_settings_name_the_field(ctx: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(ctx)), problems_of(ctx)


def test_service_settings_round_trip_in_every_entry() -> None:
    config = parse_config(context(entry(prewarmSeconds=90, taskProtection=False), entry(workQueue="gpu",
                                                                                         maxCapacity=None)))
    assert [e["prewarmSeconds"] for e in config.to_context()["queues"]] == [90, 90]
    assert parse_config(config.to_context()) == config


def test_the_readmes_error_example_is_what_the_parser_says() -> None:
    """Each problem once, by field: a minCapacity above maxCapacity in one entry is not reported again for its
    service (that check is for values from different entries)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("Configuration error (cdk.json context or -c options)")
    shown = readme[start:readme.index("```", start)].strip()
    with pytest.raises(ConfigError) as raised:
        parse_config({"prefectApiUrl": "http://p:4200/api", "prefectAuth": "{secret",
                      "queues": [{"workPool": "p", "workQueue": "q", "cluster": "c", "servcie": "s",
                                  "minCapacity": 3, "maxCapacity": 1}]})
    assert shown == f"Configuration error (cdk.json context or -c options): {raised.value}"


# --- orphanedRuns (#23): report, crash (crashOrphanedRuns: true is its older spelling), reschedule ------------


@pytest.mark.parametrize(("given", "expected"), [
    ({}, "report"),
    ({"orphanedRuns": "reschedule"}, "reschedule"),
    ({"orphanedRuns": "crash"}, "crash"),
    ({"crashOrphanedRuns": True}, "crash"),  # the alias
    ({"crashOrphanedRuns": "true"}, "crash"),  # as -c delivers it
    ({"crashOrphanedRuns": False}, "report"),
    ({"crashOrphanedRuns": True, "orphanedRuns": "crash"}, "crash"),  # both, agreeing
    ({"crashOrphanedRuns": False, "orphanedRuns": "reschedule"}, "reschedule"),
])
def test_orphaned_runs_and_its_alias(given: dict[str, Any], expected: str) -> None:
    config = parse_config(context(**given))
    assert config.orphaned_runs == expected
    assert config.crash_orphaned_runs is (expected == "crash")
    canonical = config.to_context()
    assert (canonical["orphanedRuns"], canonical["crashOrphanedRuns"]) == (expected, expected == "crash")
    assert parse_config(canonical) == config


@pytest.mark.parametrize(("given", "expected"), [
    ({"orphanedRuns": "retry"}, 'orphanedRuns: must be one of report, crash, reschedule, got "retry"'),
    ({"orphanedRuns": True}, "orphanedRuns: must be one of report, crash, reschedule, got true"),
    ({"crashOrphanedRuns": True, "orphanedRuns": "reschedule"},
     'crashOrphanedRuns: is true but orphanedRuns is "reschedule": give orphanedRuns alone'),
    ({"crashOrphanedRuns": True, "orphanedRuns": "report"}, 'crashOrphanedRuns: is true but orphanedRuns is "report"'),
    ({"crashOrphanedRuns": False, "orphanedRuns": "crash"}, 'crashOrphanedRuns: is false but orphanedRuns is "crash"'),
])
def test_a_bad_or_conflicting_orphaned_runs_names_the_field(given: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems_of(context(**given))), problems_of(context(**given))
