"""The operators' view: dashboard, alarms, notifications, and the cdk-nag gate on every synth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from infra.ids import construct_id
from infra.metric_queries import insights_string, search_string
from infra.monitoring.alarms import MAX_DESCRIPTION, publisher_window
from prefect_backlog import metrics
from prefect_backlog.config import schedule_interval_seconds
from prefect_backlog.late_cause import ADVICE, LATE_CAUSES
from tests.infra.synth import REPO, Templates, nag_checked_app, synth

# One queue in a known pool, defaults everywhere: no email, 600 s Late threshold, a 1-minute publisher.
PLAIN: dict[str, Any] = {
    "prefectApiUrl": "http://prefect.internal:4200/api",
    "stackName": "Plain",
    "queues": [{"workPool": "ecs-pool", "workQueue": "default", "cluster": "agents", "service": "agent",
                "maxCapacity": 4}],
}
# Email, a custom threshold and namespace, a 5-minute publisher in private subnets, a queue without workPool
# (resolved at run time) on a service whose runs execute inside the worker tasks.
FULL: dict[str, Any] = {
    "prefectApiUrl": "https://prefect.internal.example.com/api",
    "stackName": "Full",
    "metricNamespace": "Prefect/Prod",
    "schedule": "rate(5 minutes)",
    "oldestLateAlarmSeconds": 900,
    "alarmEmail": "ops@example.com",
    "network": {"subnetIds": ["subnet-0a1b2c3d"], "securityGroupIds": ["sg-0123456789abcdef0"]},
    "queues": [
        {"workPool": "pool-a", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
         "maxCapacity": 6},
        {"workQueue": "gpu", "cluster": "gpu-cluster", "service": "process-worker", "maxCapacity": 50,
         "targetBacklogPerTask": 2, "runsInWorkerTask": True},
    ],
}


@pytest.fixture(scope="module")
def plain() -> Templates:
    return synth(PLAIN)[1]


@pytest.fixture(scope="module")
def full() -> Templates:
    return synth(FULL)[1]


def flatten(value: Any) -> str:
    """A CloudFormation value as one string; intrinsic functions (Refs, GetAtts) as their JSON."""
    if isinstance(value, dict) and set(value) == {"Fn::Join"}:
        return "".join(flatten(part) for part in value["Fn::Join"][1])
    return value if isinstance(value, str) else json.dumps(value)


def dashboard_body(template: Templates) -> str:
    (dashboard,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    return flatten(dashboard["Properties"]["DashboardBody"])


def alarm(template: Templates, name: str) -> dict[str, Any]:
    found = [r["Properties"] for r in template.find_resources("AWS::CloudWatch::Alarm").values()
             if r["Properties"].get("AlarmName") == name]
    assert len(found) == 1, f"no alarm named {name!r}"
    return found[0]


def monitoring_alarms(template: Templates) -> dict[str, dict[str, Any]]:
    """Our alarms (metric and composite), without the ones Application Auto Scaling's step policies own."""
    found = {**template.find_resources("AWS::CloudWatch::Alarm"),
             **template.find_resources("AWS::CloudWatch::CompositeAlarm")}
    return {k: r["Properties"] for k, r in found.items() if k.startswith(("Monitoring", "AutoscalerMonitoring"))}


def topic_ref(template: Templates) -> dict[str, str]:
    (logical_id,) = template.find_resources("AWS::SNS::Topic")
    return {"Ref": logical_id}


def refers_to_topic(template: Templates, value: Any) -> bool:
    """``value`` (an alarm action) is the topic: a Ref to it in the root, or in a nested stack a Ref to the
    parameter the root stack passes the topic's Ref in."""
    topic = topic_ref(template)
    passed = [r["Properties"].get("Parameters", {}) for r in template.by_name["root"]["Resources"].values()
              if r["Type"] == "AWS::CloudFormation::Stack"]
    return value == topic or (isinstance(value, dict) and any(p.get(value.get("Ref")) == topic for p in passed))


# --- dashboard -------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["plain", "full"])
def test_one_dashboard_named_after_the_stack(fixture: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(fixture)
    template.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    template.has_resource_properties("AWS::CloudWatch::Dashboard", {"DashboardName": fixture.capitalize()})


def test_dashboard_shows_queue_service_and_publisher_metrics(plain: Templates) -> None:
    body = dashboard_body(plain)
    queue = '"Prefect","{}","WorkPool","ecs-pool","WorkQueue","default"'
    for metric in (metrics.LATE_FLOW_RUNS, metrics.DUE_FLOW_RUNS, metrics.PENDING_FLOW_RUNS,
                   metrics.RUNNING_FLOW_RUNS, metrics.OLDEST_LATE_RUN_AGE, metrics.QUEUE_PAUSED):
        assert queue.format(metric.name) in body, metric.name
    service = '"Prefect","{}","ClusterName","agents","ServiceName","agent"'
    for metric in (metrics.DESIRED_TASKS, metrics.RUNNING_TASKS, metrics.BACKLOG_PER_TASK, metrics.TASK_SHORTFALL,
                   metrics.DEMAND_FLOW_RUNS):
        assert service.format(metric.name) in body, metric.name
    publisher = '"Prefect","{}","Publisher","Plain"'
    for metric in (metrics.QUEUE_READ_ERRORS, metrics.TICK_DURATION, metrics.QUEUES_READ):
        assert publisher.format(metric.name) in body, metric.name
    assert re.search(r'"AWS/Lambda","Errors","FunctionName","\{"Ref": "AutoscalerPublisherFunction\w+"\}"', body)
    # The Late-age graph marks the alarm threshold; the tasks graph marks maxCapacity.
    assert '"value":600,' in body and '"label":"maxCapacity"' in body and '"value":4,' in body


def test_dashboard_finds_a_queue_without_work_pool_with_search(full: Templates) -> None:
    body = dashboard_body(full)
    for metric in (metrics.LATE_FLOW_RUNS, metrics.DUE_FLOW_RUNS, metrics.PENDING_FLOW_RUNS,
                   metrics.RUNNING_FLOW_RUNS, metrics.OLDEST_LATE_RUN_AGE):
        search = (f"SEARCH('{{\\\"Prefect/Prod\\\",WorkPool,WorkQueue}} MetricName=\\\"{metric.name}\\\" "
                  f"WorkQueue=\\\"gpu\\\"', 'Maximum', 60)")
        assert search in body, metric.name
    assert "Dim.WorkPool" in body  # each series is labelled with the pool it was found in


def test_dashboard_shows_every_alarm_and_the_scale_out_alarms(full: Templates) -> None:
    """By the ARN built from each alarm's fixed name: the alarms are in nested stacks, the dashboard in the root."""
    body = dashboard_body(full)
    shown = [p for p in monitoring_alarms(full).values() if "composite alarm" not in flatten(p["AlarmDescription"])]
    scale_out = full.find_resources("AWS::CloudWatch::Alarm", {"Properties": {"MetricName": "TaskShortfall"}})
    assert len(shown) == 11 and len(scale_out) == 2
    for name in [*(p["AlarmName"] for p in shown), *(a["Properties"]["AlarmName"] for a in scale_out.values())]:
        arn = ('"arn:{"Ref": "AWS::Partition"}:cloudwatch:{"Ref": "AWS::Region"}:{"Ref": "AWS::AccountId"}:alarm:'
               f'{name}"')
        assert arn in body, name
    assert "Full scale-out prefect/ecs-worker" in [a["Properties"]["AlarmName"] for a in scale_out.values()]
    assert '"Fn::GetAtt"' not in body  # no reference into another stack


def test_overview_shows_late_runs_by_cause_and_what_to_do(plain: Templates) -> None:
    """The publisher's LateFlowRuns per service and Cause, its log line per Late queue, and the advice."""
    body = dashboard_body(plain)
    search = ("SEARCH('{\\\"Prefect\\\",ClusterName,ServiceName,Cause} MetricName=\\\"LateFlowRuns\\\"', "
              "'Maximum', 60)")
    assert search in body
    assert "${PROP('Dim.Cause')}" in body
    (log_group,) = plain.find_resources("AWS::Logs::LogGroup")
    start = body.index('"query":"SOURCE ')  # the Logs Insights widget
    query = body[start:body.index('"region"', start)]
    assert f'SOURCE \'{{"Ref": "{log_group}"}}\'' in query  # the publisher's own log group, in the same stack
    assert "filter ispresent(lateCause)" in query and "by queue" in query
    assert '"view":"table"' in body
    for cause in LATE_CAUSES:
        assert f"- `{cause}`: {ADVICE[cause]}" in body, cause


def test_a_big_fleets_overview_keeps_the_late_causes(fleet: tuple[Any, Templates]) -> None:
    _, template = fleet
    body = dashboard_body(template)
    assert "Why runs are Late" in body and "ClusterName,ServiceName,Cause}" in body


# --- alarms ----------------------------------------------------------------------------


def test_alarm_set_per_queue_service_and_publisher(plain: Templates, full: Templates) -> None:
    # publisher failing + silent + orphaned runs; per queue oldest Late, blocked backlog, workers; per service at-max
    assert len(monitoring_alarms(plain)) == 3 + 3 + 1
    # the queue without workPool: blocked backlog and workers are composites over three Metrics Insights alarms each
    assert len(monitoring_alarms(full)) == 3 + 3 + (1 + 4 + 4) + 2 * 1
    full.resource_count_is("AWS::CloudWatch::CompositeAlarm", 2)
    plain.resource_count_is("AWS::CloudWatch::CompositeAlarm", 0)


@pytest.mark.parametrize("fixture", ["plain", "full"])
def test_every_alarm_tells_the_operator_what_is_wrong_and_what_to_do(fixture: str,
                                                                      request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(fixture)
    for logical_id, props in monitoring_alarms(template).items():
        description = flatten(props["AlarmDescription"])
        assert len(description) <= MAX_DESCRIPTION, logical_id
        assert props["AlarmName"].startswith(fixture.capitalize() + " "), logical_id
        if "composite alarm" in description:  # a part of a composite alarm points at the composite
            continue
        assert "What to do:" in description, logical_id


def test_publisher_failing_alarm(plain: Templates) -> None:
    props = alarm(plain, "Plain publisher failing")
    assert (props["Threshold"], props["ComparisonOperator"], props["TreatMissingData"]) == (
        0, "GreaterThanThreshold", "notBreaching")
    assert (props["DatapointsToAlarm"], props["EvaluationPeriods"]) == (2, 3)
    by_id = {m["Id"]: m for m in props["Metrics"]}
    (expression,) = [m for m in props["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == ("FILL(lambdaErrors, 0) + FILL(queueReadErrors, 0) + FILL(serviceReadErrors, 0) "
                                        "+ FILL(protectionErrors, 0)")
    assert by_id["lambdaErrors"]["MetricStat"]["Metric"]["Namespace"] == "AWS/Lambda"
    assert by_id["lambdaErrors"]["MetricStat"]["Stat"] == "Sum"
    assert by_id["queueReadErrors"]["MetricStat"]["Metric"] == {
        "Namespace": "Prefect", "MetricName": "QueueReadErrors", "Dimensions": [{"Name": "Publisher",
                                                                                "Value": "Plain"}]}
    assert all(m.get("MetricStat", {}).get("Period", 60) == 60 for m in props["Metrics"])


def test_publisher_silent_alarm_treats_missing_data_as_breaching(plain: Templates, full: Templates) -> None:
    props = alarm(plain, "Plain publisher silent")
    assert (props["Threshold"], props["ComparisonOperator"], props["TreatMissingData"]) == (
        1, "LessThanThreshold", "breaching")
    (query,) = props["Metrics"]
    assert query["MetricStat"]["Metric"]["MetricName"] == "QueuesRead"
    assert (query["MetricStat"]["Stat"], query["MetricStat"]["Period"]) == ("SampleCount", 60)
    assert (props["DatapointsToAlarm"], props["EvaluationPeriods"]) == (3, 3)
    # A 5-minute publisher: one period per run, so three missed runs.
    slow = alarm(full, "Full publisher silent")
    assert (slow["Metrics"][0]["MetricStat"]["Period"], slow["EvaluationPeriods"]) == (300, 3)
    assert all(m.get("MetricStat", {}).get("Period", 300) == 300
               for m in alarm(full, "Full publisher failing")["Metrics"])


def test_oldest_late_alarm_per_queue_uses_the_configured_threshold(plain: Templates, full: Templates) -> None:
    props = alarm(plain, "Plain oldest Late run ecs-pool/default")
    assert (props["Threshold"], props["ComparisonOperator"], props["TreatMissingData"]) == (
        600, "GreaterThanThreshold", "missing")
    (query,) = props["Metrics"]
    assert query["MetricStat"]["Metric"] == {
        "Namespace": "Prefect", "MetricName": "OldestLateRunAgeSeconds",
        "Dimensions": [{"Name": "WorkPool", "Value": "ecs-pool"}, {"Name": "WorkQueue", "Value": "default"}]}
    assert alarm(full, "Full oldest Late run pool-a/default")["Threshold"] == 900


def test_oldest_late_alarms_point_at_the_cause_and_say_what_to_do_for_each(
        plain: Templates, fleet: tuple[Any, Templates]) -> None:
    for template, name in ((plain, "Plain oldest Late run ecs-pool/default"),
                           (fleet[1], "Fleet oldest Late run in pool pool-3")):
        description = flatten(alarm(template, name)["AlarmDescription"])
        stack = name.split()[0]
        assert ('https://console.aws.amazon.com/cloudwatch/home?region={"Ref": "AWS::Region"}'
                f'#dashboards:name={stack}') in description
        for cause in LATE_CAUSES:
            assert f"{cause}: {ADVICE[cause]}" in description, (name, cause)


def test_long_names_give_up_the_advice_list_not_the_synth() -> None:
    """Queue names have no length limit in Prefect; CloudWatch's AlarmDescription has 1,024 characters."""
    pool, queue = "p" * 150, "q" * 150
    _, template = synth({"prefectApiUrl": "http://prefect.internal:4200/api", "stackName": "Long",
                         "queues": [{"workPool": pool, "workQueue": queue, "cluster": "c", "service": "s",
                                     "maxCapacity": 2}]})
    (props,) = [r["Properties"] for r in template.find_resources("AWS::CloudWatch::Alarm").values()
                if r["Properties"].get("AlarmName", "").startswith("Long oldest Late run ")]  # name cut at 255
    description = flatten(props["AlarmDescription"])
    assert len(description) <= MAX_DESCRIPTION
    assert "dashboards:name=Long" in description and "see the dashboard's list by cause" in description
    assert ADVICE["paused"] not in description


def test_oldest_late_alarm_for_a_queue_without_work_pool_uses_metrics_insights(full: Templates) -> None:
    props = alarm(full, "Full oldest Late run gpu (any pool)")
    assert props["Threshold"] == 900 and props["TreatMissingData"] == "missing"
    (query,) = props["Metrics"]
    assert query["Expression"] == ("SELECT MAX(OldestLateRunAgeSeconds) FROM SCHEMA(\"Prefect/Prod\", WorkPool, "
                                   "WorkQueue) WHERE WorkQueue = 'gpu'")
    assert query["Period"] == 60


def test_at_max_capacity_alarm_is_metric_math_on_desired_tasks_and_demand(full: Templates) -> None:
    props = alarm(full, "Full at max capacity prefect/ecs-worker")
    assert (props["Threshold"], props["ComparisonOperator"], props["TreatMissingData"]) == (
        1, "GreaterThanOrEqualToThreshold", "missing")
    assert (props["DatapointsToAlarm"], props["EvaluationPeriods"]) == (10, 10)
    (expression,) = [m for m in props["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == "IF(desired >= 6 AND demand > 0, 1, 0)"
    inputs = {m["Id"]: m["MetricStat"]["Metric"]["MetricName"] for m in props["Metrics"] if "MetricStat" in m}
    assert inputs == {"desired": "DesiredTasks", "demand": "DemandFlowRuns"}
    # Runs inside the worker tasks count in DemandFlowRuns while they run: runs wait only beyond max x target.
    in_task = alarm(full, "Full at max capacity gpu-cluster/process-worker")
    (expression,) = [m for m in in_task["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == "IF(desired >= 50 AND demand > 100, 1, 0)"


def test_blocked_backlog_alarm_is_metric_math_for_a_known_pool(plain: Templates) -> None:
    props = alarm(plain, "Plain blocked backlog ecs-pool/default")
    assert (props["Threshold"], props["ComparisonOperator"], props["TreatMissingData"]) == (
        1, "GreaterThanOrEqualToThreshold", "missing")
    (expression,) = [m for m in props["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == "IF((paused > 0 OR limited > 0) AND due > 0, 1, 0)"
    inputs = {m["Id"]: m["MetricStat"]["Metric"]["MetricName"] for m in props["Metrics"] if "MetricStat" in m}
    assert inputs == {"paused": "QueuePaused", "limited": "ConcurrencyLimited", "due": "DueFlowRuns"}


def test_workers_alarm_is_metric_math_for_a_known_pool(plain: Templates) -> None:
    props = alarm(plain, "Plain workers not taking runs ecs-pool/default")
    assert (props["EvaluationPeriods"], props["DatapointsToAlarm"], props["TreatMissingData"]) == (3, 3, "missing")
    (expression,) = [m for m in props["Metrics"] if m.get("ReturnData")]
    assert expression["Expression"] == "IF((polled > 300 AND due > 0) OR stuck > 0, 1, 0)"
    inputs = {m["Id"]: m["MetricStat"]["Metric"]["MetricName"] for m in props["Metrics"] if "MetricStat" in m}
    assert inputs == {"polled": "SecondsSinceLastPolled", "due": "DueFlowRuns", "stuck": "StuckPendingFlowRuns"}
    assert "What to do:" in props["AlarmDescription"]


def composite(template: Templates, name: str) -> dict[str, Any]:
    (found,) = [r["Properties"] for r in template.find_resources("AWS::CloudWatch::CompositeAlarm").values()
                if r["Properties"]["AlarmName"] == name]
    return found


def test_queue_alarms_are_composites_for_a_queue_without_work_pool(full: Templates) -> None:
    parts = {kind: alarm(full, f"Full {kind} gpu (any pool)")
             for kind in ("paused", "limited", "due", "unpolled", "duenow", "stuck")}
    for kind, metric in [("paused", "QueuePaused"), ("limited", "ConcurrencyLimited"), ("due", "DueFlowRuns"),
                         ("unpolled", "SecondsSinceLastPolled"), ("stuck", "StuckPendingFlowRuns")]:
        assert parts[kind]["Metrics"][0]["Expression"].startswith(
            f"SELECT MIN({metric}) FROM SCHEMA(\"Prefect/Prod\""), kind
        assert parts[kind]["ComparisonOperator"] == "GreaterThanThreshold"
        assert "AlarmActions" not in parts[kind] and "OKActions" not in parts[kind]  # the composite notifies, once
    assert parts["unpolled"]["Threshold"] == 300 and parts["paused"]["Threshold"] == 0
    blocked = flatten(composite(full, "Full blocked backlog gpu (any pool)")["AlarmRule"])
    assert re.fullmatch(r'\(\(ALARM\("\{"Fn::GetAtt": \["Monitoring\w+Paused\w+", "Arn"\]\}"\) OR '
                        r'ALARM\("\{"Fn::GetAtt": \["Monitoring\w+Limited\w+", "Arn"\]\}"\)\) AND '
                        r'ALARM\("\{"Fn::GetAtt": \["Monitoring\w+Due\w+", "Arn"\]\}"\)\)', blocked), blocked
    workers = flatten(composite(full, "Full workers not taking runs gpu (any pool)")["AlarmRule"])
    assert re.fullmatch(r'\(\(ALARM\("\{"Fn::GetAtt": \["Monitoring\w+Unpolled\w+", "Arn"\]\}"\) AND '
                        r'ALARM\("\{"Fn::GetAtt": \["Monitoring\w+DueNow\w+", "Arn"\]\}"\)\) OR '
                        r'ALARM\("\{"Fn::GetAtt": \["Monitoring\w+Stuck\w+", "Arn"\]\}"\)\)', workers), workers


# --- notifications ---------------------------------------------------------------------


def test_no_topic_and_no_actions_without_alarm_email(plain: Templates) -> None:
    plain.resource_count_is("AWS::SNS::Topic", 0)
    plain.resource_count_is("AWS::SNS::Subscription", 0)
    for logical_id, props in monitoring_alarms(plain).items():
        assert "AlarmActions" not in props and "OKActions" not in props, logical_id


def test_alarm_email_subscribes_to_one_topic_that_every_alarm_notifies(full: Templates) -> None:
    full.resource_count_is("AWS::SNS::Topic", 1)
    full.has_resource_properties("AWS::SNS::Subscription", {
        "Protocol": "email", "Endpoint": "ops@example.com", "TopicArn": topic_ref(full)})
    notifying = {k: p for k, p in monitoring_alarms(full).items()
                 if "composite alarm" not in flatten(p["AlarmDescription"])}
    assert len(notifying) == 11
    for logical_id, props in notifying.items():
        (alarm_action,), (ok_action,) = props["AlarmActions"], props["OKActions"]
        assert refers_to_topic(full, alarm_action) and refers_to_topic(full, ok_action), logical_id


def test_topic_enforces_tls_and_lets_only_this_accounts_alarms_publish(full: Templates) -> None:
    full.has_resource_properties("AWS::SNS::TopicPolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Action": "sns:Publish",
                           "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
        Match.object_like({"Effect": "Allow", "Action": "sns:Publish",
                           "Principal": {"Service": "cloudwatch.amazonaws.com"},
                           "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
                                         "ArnLike": {"aws:SourceArn": Match.any_value()}}}),
    ])}})


# --- cfn-lint and cdk-nag --------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["plain", "full"])
def test_cfn_lint_finds_no_errors(fixture: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(fixture)
    assert template.lint_errors() == {}


def test_cdk_nag_in_the_test_synth_helper_rejects_an_unacknowledged_finding() -> None:
    app = nag_checked_app()
    stack = cdk.Stack(app, "Bad")
    sns.Topic(stack, "PlainTextTopic")  # no TLS enforcement: AwsSolutions-SNS3
    with pytest.raises(RuntimeError, match=r"(?s)Bad/PlainTextTopic/Resource.*AwsSolutions-SNS3"):
        Template.from_stack(stack)


# app.py's main() with one deliberately bad construct added to the stack. A subprocess, because the CLI hands
# app.py its context through CDK_CONTEXT_JSON, which jsii's already running Node process here would not see.
BAD_APP = """
from aws_cdk import aws_iam as iam
import app
from infra.stack import PrefectAutoscalerStack

class StackWithABadConstruct(PrefectAutoscalerStack):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        user = iam.User(self, "DeliberatelyBad")
        user.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=["*"]))

app.PrefectAutoscalerStack = StackWithABadConstruct
app.main()
"""


def test_cdk_nag_in_app_py_fails_the_synth_on_exactly_the_bad_construct(tmp_path: Path) -> None:
    """The example cdk.json through app.py: the synth fails, and the report names only the bad construct,
    so cdk-nag runs in app.py and the real stack has no unacknowledged finding."""
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path),
           "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"}
    result = subprocess.run([sys.executable, "-c", BAD_APP], cwd=REPO, env=env, capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode != 0 and "ValidationFailed" in result.stderr, result.stderr[-2000:]
    report = json.loads((tmp_path / "validation-report.json").read_text())
    violations = [(v["ruleName"], c["constructPath"])
                  for plugin in report["pluginReports"] if plugin["pluginName"] == "AwsSolutions"
                  for v in plugin["violations"] for c in v["violatingConstructs"]]
    assert violations and all("/DeliberatelyBad/" in path for _, path in violations), violations
    assert {rule for rule, _ in violations} == {"AwsSolutions-IAM5[Resource::*]"}


# --- publisher schedule ----------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(2 hours)", 7200), ("rate(1 day)", 86_400),
    ("cron(* * * * ? *)", 60), ("cron(*/5 * * * ? *)", 300), ("cron(0/15 * * * ? *)", 900),
    ("cron(0 * * * ? *)", 3600), ("cron(0 */6 * * ? *)", 21_600), ("cron(30 9 * * ? *)", 86_400),
    ("cron(0 9 ? * MON-FRI *)", 7 * 86_400),
])
def test_schedule_interval(schedule: str, seconds: int) -> None:
    assert schedule_interval_seconds(schedule) == seconds


@pytest.mark.parametrize(("schedule", "window"), [
    ("rate(1 minute)", (60, 3)), ("rate(10 minutes)", (600, 3)), ("rate(1 hour)", (3600, 3)),
    ("rate(1 day)", (86_400, 3)), ("rate(3 days)", (86_400, 7)),  # capped at CloudWatch's 7-day range
])
def test_publisher_window_stays_within_cloudwatch_limits(schedule: str, window: tuple[int, int]) -> None:
    period, periods = publisher_window(schedule, 3)
    assert (period, periods) == window
    assert period * periods <= (86_400 if period < 3600 else 7 * 86_400)


# --- names and quoting -----------------------------------------------------------------


def test_construct_ids_follow_the_names_and_never_collide() -> None:
    assert construct_id("Queue", "a-b", "c") != construct_id("Queue", "a", "b-c")
    assert construct_id("Queue", None, "gpu") != construct_id("Queue", "any-pool", "gpu")
    assert construct_id("Queue", "pool-a", "default").startswith("Queue-pool-a-default-")


def test_queue_names_are_quoted_for_search_and_metrics_insights() -> None:
    assert search_string("it's \"x\"") == '"it\\\'s \\"x\\""'
    assert insights_string("it's") == "'it\\'s'"


# --- monitoringDetail "pool": alarms and dashboard rows per work pool ------------------------------------

FLEET_QUEUES, FLEET_POOLS, FLEET_SERVICES = 60, 6, 12


@pytest.fixture(scope="module")
def fleet() -> tuple[Any, Templates]:
    return synth({
        "prefectApiUrl": "https://prefect.internal/api", "stackName": "Fleet", "monitoringDetail": "pool",
        "queues": [{"workPool": f"pool-{i % FLEET_POOLS}", "workQueue": f"q{i}", "cluster": "prefect",
                    "service": f"w{i % FLEET_SERVICES}", "maxCapacity": 4} for i in range(FLEET_QUEUES)]})


def test_monitoring_per_pool_has_pool_alarms_and_no_queue_alarms(fleet: tuple[Any, Templates]) -> None:
    _, template = fleet
    ours = monitoring_alarms(template)
    # per pool: oldest Late and stuck Pending; per service: at max capacity; the publisher's three
    assert len(ours) == 2 * FLEET_POOLS + FLEET_SERVICES + 3
    assert not [a for a in ours.values() if re.search(r"/q\d+\b", a["AlarmName"])]  # no per-queue alarm
    assert template.layout["monitoring"]["detail"] == "pool"
    assert template.lint_errors() == {}


def test_pool_alarms_take_the_worst_queue_of_the_pool(fleet: tuple[Any, Templates]) -> None:
    _, template = fleet
    late = alarm(template, "Fleet oldest Late run in pool pool-3")
    (query,) = late["Metrics"]
    assert query["Expression"] == ("SELECT MAX(OldestLateRunAgeSeconds) FROM SCHEMA(\"Prefect\", WorkPool, "
                                   "WorkQueue) WHERE WorkPool = 'pool-3'")
    assert (late["Threshold"], late["ComparisonOperator"], late["TreatMissingData"]) == (
        600, "GreaterThanThreshold", "missing")
    stuck = alarm(template, "Fleet runs stuck in Pending in pool pool-3")
    assert "MAX(StuckPendingFlowRuns)" in stuck["Metrics"][0]["Expression"]
    assert (stuck["EvaluationPeriods"], stuck["DatapointsToAlarm"]) == (3, 3)


def test_pool_rows_show_each_queue_of_the_pool_with_search(fleet: tuple[Any, Templates]) -> None:
    _, template = fleet
    dashboard = dashboard_body(template)
    assert (f"## Work pool pool-0: {FLEET_QUEUES // FLEET_POOLS} queues, one line each") in dashboard
    search = ("SEARCH('{\\\"Prefect\\\",WorkPool,WorkQueue} MetricName=\\\"LateFlowRuns\\\" "
              "WorkPool=\\\"pool-0\\\"', 'Maximum', 60)")
    assert search in dashboard
    assert "## Queue" not in dashboard  # no per-queue rows


def test_one_alarm_for_runs_left_orphaned_by_a_stopped_task(plain: Templates) -> None:
    props = alarm(plain, "Plain orphaned flow runs")
    (query,) = props["Metrics"]
    stat = query["MetricStat"]
    assert (stat["Metric"]["MetricName"], stat["Metric"]["Dimensions"], stat["Stat"]) == (
        "OrphanedFlowRuns", [{"Name": "Publisher", "Value": "Plain"}], "Minimum")
    assert (props["Threshold"], props["EvaluationPeriods"], props["DatapointsToAlarm"], props["TreatMissingData"]) == (
        0, 5, 5, "missing")
    assert "crashOrphanedRuns" in props["AlarmDescription"]
