"""The synthesized stack (aws_cdk.assertions; no AWS account is reachable, so the template is what we check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match

from infra.packaging import build_package
from infra.scaling import EXACT_STEPS, MAX_STEP_ADJUSTMENTS, shortfall_lower_bounds
from infra.stack import PrefectAutoscalerStack
from prefect_backlog.config import parse_config
from tests.infra.synth import REPO, Templates, cfn_lint_errors, synth

ONE_QUEUE: dict[str, Any] = {
    "prefectApiUrl": "http://prefect.internal:4200/api",
    "queues": [{"workQueue": "default", "cluster": "agents", "service": "agent", "maxCapacity": 2}],
}
# Two pools that share a queue name; two queues on one ECS service; a Prefect Cloud key; private subnets.
SEVERAL_QUEUES: dict[str, Any] = {
    "prefectApiUrl": "https://api.prefect.cloud/api/accounts/a1/workspaces/w1",
    "stackName": "Several",
    "prefectAuth": {"secret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect/key-AbCdEf",
                    "scheme": "bearer"},
    "network": {"subnetIds": ["subnet-0a1b2c3d", "subnet-0e1f2a3b"], "securityGroupIds": ["sg-0123456789abcdef0"]},
    "metricNamespace": "Prefect/Prod",
    "queues": [
        {"workPool": "pool-a", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
         "minCapacity": 1, "maxCapacity": 6, "targetBacklogPerTask": 5},
        {"workPool": "pool-b", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker"},
        {"workPool": "pool-b", "workQueue": "gpu", "cluster": "gpu-cluster", "service": "process-worker",
         "maxCapacity": 50, "runsInWorkerTask": True},
    ],
}


@pytest.fixture(scope="module")
def one() -> tuple[PrefectAutoscalerStack, Templates]:
    return synth(ONE_QUEUE)


@pytest.fixture(scope="module")
def several() -> tuple[PrefectAutoscalerStack, Templates]:
    return synth(SEVERAL_QUEUES)


def statements(template: Templates) -> list[dict[str, Any]]:
    """Every statement of the inline and customer-managed policies (DescribeServices has managed ones)."""
    policies = {**template.find_resources("AWS::IAM::Policy"), **template.find_resources("AWS::IAM::ManagedPolicy")}
    return [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]


def statement_for(template: Templates, action: str) -> dict[str, Any]:
    (found,) = [s for s in statements(template) if action in (s["Action"] if isinstance(s["Action"], list)
                                                               else [s["Action"]])]
    return found


def test_lambda_is_arm64_current_python_single_flight_without_retries(one: Any) -> None:
    _, template = one
    template.has_resource_properties("AWS::Lambda::Function", {
        "Runtime": "python3.13", "Architectures": ["arm64"], "Handler": "prefect_backlog.handler.lambda_handler",
        "ReservedConcurrentExecutions": 1, "Timeout": 50, "TracingConfig": {"Mode": "Active"},
        "Layers": [{"Ref": Match.string_like_regexp("SsmParameterValueawsservicepowertoolspythonarm64python313")}],
    })
    template.has_resource_properties("AWS::Lambda::EventInvokeConfig",
                                     {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 60})
    template.has_resource_properties("AWS::Scheduler::Schedule", {
        "ScheduleExpression": "rate(1 minute)",
        "Target": Match.object_like({"RetryPolicy": {"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 60}}),
    })
    template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 30})


def test_packaged_code_carries_the_parsed_config_and_no_boto3(one: Any) -> None:
    stack, _ = one
    package = build_package(stack.config)  # cached: the directory the asset was staged from
    config = json.loads((package / "prefect_backlog" / "publisher_config.json").read_text())
    assert parse_config(config) == stack.config
    assert (package / "requests").is_dir() and (package / "prefect_backlog" / "handler.py").is_file()
    assert not (package / "boto3").exists() and not (package / "botocore").exists()


def test_the_packaged_config_keeps_cdk_json_s_queue_order_when_services_interleave() -> None:
    first, second, third = SEVERAL_QUEUES["queues"]
    context = {**SEVERAL_QUEUES, "queues": [first, third, second]}  # ecs-worker, process-worker, ecs-worker
    stack = PrefectAutoscalerStack(cdk.App(), "Interleaved", config=parse_config(context))
    assert stack.autoscaler.config == stack.config
    package = build_package(stack.config)
    packaged = parse_config(json.loads((package / "prefect_backlog" / "publisher_config.json").read_text()))
    assert [q.label for q in packaged.queues] == [q.label for q in parse_config(context).queues]


def test_iam_is_least_privilege(several: Any) -> None:
    _, template = several
    put = statement_for(template, "cloudwatch:PutMetricData")
    assert put["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Prefect/Prod"}}
    describe = json.dumps(statement_for(template, "ecs:DescribeServices")["Resource"])
    assert ":service/prefect/ecs-worker" in describe and ":service/gpu-cluster/process-worker" in describe
    assert describe.count(":service/") == 2
    secret = statement_for(template, "secretsmanager:GetSecretValue")
    assert secret["Resource"] == SEVERAL_QUEUES["prefectAuth"]["secret"]
    all_actions = {a for s in statements(template) for a in (s["Action"] if isinstance(s["Action"], list)
                                                            else [s["Action"]])}
    assert not any(a.endswith(":*") or a == "*" for a in all_actions)


def test_the_grants_on_star_are_the_ones_the_readme_lists(one: Any, several: Any) -> None:
    """Unconditioned: X-Ray always, the VPC network-interface actions only with ``network`` (PutMetricData is on
    "*" too, under its namespace condition); the secret read also describes the secret."""
    def on_star(template: Templates) -> set[str]:
        return {a for st in statements(template) if st["Resource"] == "*" and "Condition" not in st
                for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])}

    xray = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    eni = {"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
           "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
    assert on_star(one[1]) == xray
    assert on_star(several[1]) == xray | eni
    secret = statement_for(several[1], "secretsmanager:GetSecretValue")
    assert set(secret["Action"]) == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
    readme = " ".join((REPO / "README.md").read_text().split())
    for action in sorted(xray | eni | set(secret["Action"])):
        assert action.split(":")[1] in readme, action


def test_task_protection_may_touch_only_the_configured_clusters_tasks(several: Any) -> None:
    _, template = several
    listing = statement_for(template, "ecs:ListTasks")
    assert json.dumps(listing["Resource"]).count(":container-instance/") == 2
    assert "ecs:cluster" in listing["Condition"]["ArnEquals"]
    protection = statement_for(template, "ecs:UpdateTaskProtection")
    assert set(protection["Action"]) == {"ecs:DescribeTasks", "ecs:GetTaskProtection", "ecs:UpdateTaskProtection"}
    resources = json.dumps(protection["Resource"])
    assert ":task/prefect/*" in resources and ":task/gpu-cluster/*" in resources and resources.count(":task/") == 2
    assert '"*"' not in json.dumps([listing["Resource"], protection["Resource"]])


def test_no_task_protection_rights_where_every_service_turns_it_off() -> None:
    queues = [{**q, "taskProtection": False} for q in SEVERAL_QUEUES["queues"]]
    _, template = synth({**SEVERAL_QUEUES, "stackName": "NoProtection", "queues": queues})
    assert not [s for s in statements(template) if "Task" in json.dumps(s["Action"])]


def test_no_secret_access_without_prefect_auth(one: Any) -> None:
    _, template = one
    assert not [s for s in statements(template) if "secretsmanager" in json.dumps(s["Action"])]


def test_lambda_joins_the_private_subnets(several: Any) -> None:
    _, template = several
    template.has_resource_properties("AWS::Lambda::Function", {
        "VpcConfig": {"SubnetIds": ["subnet-0a1b2c3d", "subnet-0e1f2a3b"],
                      "SecurityGroupIds": ["sg-0123456789abcdef0"]}})


def test_one_scalable_target_per_service_on_the_service_linked_role(several: Any) -> None:
    _, template = several
    template.resource_count_is("AWS::ApplicationAutoScaling::ScalableTarget", 2)
    template.has_resource_properties("AWS::ApplicationAutoScaling::ScalableTarget", {
        "ServiceNamespace": "ecs", "ScalableDimension": "ecs:service:DesiredCount",
        "ResourceId": "service/prefect/ecs-worker", "MinCapacity": 1, "MaxCapacity": 6,
        "RoleARN": {"Fn::Join": ["", Match.array_with([Match.string_like_regexp(
            "AWSServiceRoleForApplicationAutoScaling_ECSService")])]},
    })
    template.resource_count_is("AWS::IAM::Role", 2)  # the publisher's and the scheduler's; none for scaling


def test_target_tracking_follows_backlog_per_task(several: Any) -> None:
    _, template = several
    template.has_resource_properties("AWS::ApplicationAutoScaling::ScalingPolicy", {
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 5,
            "CustomizedMetricSpecification": {
                "MetricName": "BacklogPerTask", "Namespace": "Prefect/Prod", "Statistic": "Average",
                "Dimensions": [{"Name": "ClusterName", "Value": "prefect"},
                               {"Name": "ServiceName", "Value": "ecs-worker"}]},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60,
        },
    })


def test_step_policy_only_scales_out_by_the_shortfall(several: Any) -> None:
    _, template = several
    steps = template.find_resources("AWS::ApplicationAutoScaling::ScalingPolicy",
                                    {"Properties": {"PolicyType": "StepScaling"}})
    assert len(steps) == 2
    for policy in steps.values():
        adjustments = policy["Properties"]["StepScalingPolicyConfiguration"]["StepAdjustments"]
        assert all(a["ScalingAdjustment"] > 0 for a in adjustments)  # never scales in
    alarms = template.find_resources("AWS::CloudWatch::Alarm", {"Properties": {"MetricName": "TaskShortfall"}})
    assert len(alarms) == 2  # one upper alarm per service, no lower alarm
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert (props["ComparisonOperator"], props["Threshold"], props["EvaluationPeriods"]) == (
            "GreaterThanOrEqualToThreshold", 1, 1)
        # no data: back to OK, not the older datapoints again (an alarm in ALARM repeats its action each minute)
        assert props["TreatMissingData"] == "notBreaching"


def test_large_services_keep_within_the_default_step_adjustment_quota(several: Any) -> None:
    _, template = several
    policies = template.find_resources("AWS::ApplicationAutoScaling::ScalingPolicy",
                                       {"Properties": {"PolicyType": "StepScaling"}})
    by_count = sorted((p["Properties"]["StepScalingPolicyConfiguration"]["StepAdjustments"] for p in policies.values()),
                      key=len)
    assert [len(a) for a in by_count] == [6, 20]  # maxCapacity 6 -> +1..+6; maxCapacity 50 -> Application Auto
    # Scaling's default quota of 20 adjustments, the last one open-ended and adding all 50
    largest = by_count[-1]
    assert "MetricIntervalUpperBound" not in largest[-1] and largest[-1]["ScalingAdjustment"] == 50


@pytest.mark.parametrize("max_capacity", [1, 6, 20, 21, 50, 100, 1000])
def test_each_step_adds_at_most_the_shortfall_and_all_of_it_at_max(max_capacity: int) -> None:
    bounds = shortfall_lower_bounds(max_capacity)
    assert len(bounds) <= MAX_STEP_ADJUSTMENTS and bounds == sorted(set(bounds))
    assert bounds[0] == 1 and bounds[-1] == max_capacity
    assert bounds[:EXACT_STEPS] == list(range(1, min(EXACT_STEPS, max_capacity) + 1))
    if max_capacity > MAX_STEP_ADJUSTMENTS:  # beyond the exact steps, at least 1/1.8 of the shortfall per datapoint
        spread = bounds[EXACT_STEPS - 1:]
        assert all(upper / lower < 1.8 for lower, upper in pairwise(spread))


@pytest.mark.parametrize("fixture", ["one", "several"])
def test_cfn_lint_finds_no_errors(fixture: str, request: pytest.FixtureRequest) -> None:
    _, template = request.getfixturevalue(fixture)
    assert template.lint_errors() == {}


def test_cfn_lint_check_is_live() -> None:
    broken = {"Resources": {"Fn": {"Type": "AWS::Lambda::Function", "Properties": {"Runtime": "python9"}}}}
    assert cfn_lint_errors(broken)


def _run_app(context: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path),
           "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"}
    return subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False, timeout=300)


def test_bad_config_fails_synth_with_one_clear_message(tmp_path: Path) -> None:
    bad = {**ONE_QUEUE, "queues": [{"workQueue": "default", "cluster": "agents", "service": "agent",
                                    "maxCapacity": 1, "minCapacity": 3, "servcie": "x"}]}
    result = _run_app(bad, tmp_path)
    assert result.returncode == 1
    assert "queues[0].maxCapacity: must be at least minCapacity (3), got 1" in result.stderr
    assert "queues[0].servcie: unknown key (did you mean 'service'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_fast_mode_uses_10_second_scale_out_alarms_and_a_longer_timeout() -> None:
    _, template = synth({**ONE_QUEUE, "fastMode": True})
    template.has_resource_properties("AWS::CloudWatch::Alarm", {"MetricName": "TaskShortfall", "Period": 10})
    template.has_resource_properties("AWS::Lambda::Function", {"Timeout": 58})
    template.has_resource_properties("AWS::Scheduler::Schedule", {"ScheduleExpression": "rate(1 minute)"})
    assert template.lint_errors() == {}


def test_services_whose_names_differ_only_in_punctuation_each_get_their_scaling() -> None:
    """``ecs_worker``/``ecs-worker`` and cluster ``a-b`` service ``c`` / cluster ``a`` service ``b-c`` read the
    same once punctuation is folded; each still gets its own target, policies and alarm."""
    names = [("prefect", "ecs_worker"), ("prefect", "ecs-worker"), ("a-b", "c"), ("a", "b-c")]
    _, template = synth({"prefectApiUrl": "http://prefect.internal:4200/api", "queues": [
        {"workPool": "pool", "workQueue": f"q{i}", "cluster": cluster, "service": service, "maxCapacity": 2}
        for i, (cluster, service) in enumerate(names)]})
    targets = template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget")
    assert sorted(t["Properties"]["ResourceId"] for t in targets.values()) == sorted(
        f"service/{cluster}/{service}" for cluster, service in names)
    template.resource_count_is("AWS::ApplicationAutoScaling::ScalingPolicy", 2 * len(names))
    at_max = [a for a in template.find_resources("AWS::CloudWatch::Alarm").values()
              if "at max capacity" in a["Properties"].get("AlarmName", "")]
    assert len(at_max) == len(names)
    assert template.lint_errors() == {}
