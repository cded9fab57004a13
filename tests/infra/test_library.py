"""The constructs as a library user calls them (in process, from this tree; the installed package and the
example app are tested in test_installed_library.py): typed keywords that mean what cdk.json's keys mean,
the same checks and messages, service objects from the user's app, and monitoring left out on request."""

from __future__ import annotations

import inspect
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_secretsmanager as secretsmanager

from infra.assembly import synthesize
from infra.autoscaler import (
    PUBLISHER_SETTINGS,
    SCALING_SETTINGS,
    WORK_QUEUE_SETTINGS,
    PrefectAuth,
    PrefectBacklogPublisher,
    PublisherNetwork,
    publisher_settings,
    scaling_settings,
)
from infra.scaling import WorkerServiceScaling, WorkQueue
from prefect_backlog.config import AUTH, NETWORK, QUEUE_ENTRY, TOP_LEVEL, ConfigError, parse_config
from tests.infra.synth import Templates

API = "https://prefect.example.com/api"


def user_stack() -> tuple[cdk.App, cdk.Stack, ecs.FargateService]:
    """A user's stack with a Fargate service it defines, named (the publisher reads services by name)."""
    app = cdk.App()
    stack = cdk.Stack(app, "UserStack", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    cluster = ecs.Cluster(stack, "Cluster", vpc=vpc, cluster_name="workers")
    task = ecs.FargateTaskDefinition(stack, "Task")
    task.add_container("worker", image=ecs.ContainerImage.from_registry("prefecthq/prefect:3-latest"))
    service = ecs.FargateService(stack, "Service", cluster=cluster, task_definition=task,
                                 service_name="process-worker", min_healthy_percent=100)
    return app, stack, service


def test_every_setting_has_one_keyword_and_every_keyword_one_setting() -> None:
    def keywords(callable_: Any, leave_out: set[str]) -> set[str]:
        return set(inspect.signature(callable_).parameters) - leave_out

    assert set(PUBLISHER_SETTINGS.values()) == set(TOP_LEVEL.keys) - {"queues"}
    assert keywords(PrefectBacklogPublisher.__init__, {"self", "scope", "construct_id", "services", "monitoring",
                                                       "nested_stacks", "parsed"}) == set(PUBLISHER_SETTINGS)
    assert set(SCALING_SETTINGS.values()) | set(WORK_QUEUE_SETTINGS.values()) == set(QUEUE_ENTRY.keys)
    assert keywords(WorkerServiceScaling.__init__, {"self", "scope", "construct_id", "queues"}) == set(SCALING_SETTINGS)
    assert set(inspect.signature(WorkQueue).parameters) == set(WORK_QUEUE_SETTINGS)
    assert {f"{s}" for s in inspect.signature(PrefectAuth).parameters} == {s.attr for s in AUTH.settings}
    assert set(inspect.signature(PublisherNetwork).parameters) == {s.attr for s in NETWORK.settings}


def test_the_publisher_parses_its_keywords_as_cdk_json_and_scales_the_service_object() -> None:
    _, stack, service = user_stack()
    scaling = WorkerServiceScaling(stack, "Scaling", service=service, max_capacity=8, target_backlog_per_task=2,
                                   queues=[WorkQueue("default", work_pool="process-pool", runs_in_worker_task=True),
                                           WorkQueue("urgent", work_pool="process-pool")])
    secret = secretsmanager.Secret.from_secret_name_v2(stack, "Key", "prefect/api-key")
    publisher = PrefectBacklogPublisher(stack, "Autoscaler", prefect_api_url=API, services=[scaling],
                                        prefect_auth=PrefectAuth(secret, "bearer"), fast_mode=True)
    config = publisher.config
    assert config.stack_name == "UserStack"  # alarms and dashboards are named after the enclosing stack
    assert config.auth is not None and config.auth.secret == "prefect/api-key"
    assert [(q.work_pool, q.work_queue, q.runs_in_worker_task) for q in config.queues] == [
        ("process-pool", "default", True), ("process-pool", "urgent", False)]
    (parsed,) = config.services
    assert (parsed.key, parsed.max_capacity, parsed.target_backlog_per_task) == (("workers", "process-worker"), 8, 2)
    templates = Templates(synthesize(stack))
    (target_id,) = templates.find_resources("AWS::ApplicationAutoScaling::ScalableTarget",
                                            {"Properties": {"ResourceId": "service/workers/process-worker"}})
    target = templates.by_name["root"]["Resources"][target_id]
    service_id = stack.get_logical_id(service.node.default_child)  # type: ignore[arg-type]
    assert service_id in target["DependsOn"]  # registered once the service exists
    templates.has_resource_properties("AWS::ApplicationAutoScaling::ScalingPolicy", {
        "PolicyType": "StepScaling", "StepScalingPolicyConfiguration": {"Cooldown": 60}})
    # fast mode: the step alarm on 10 s datapoints, as the standalone stack does it
    templates.has_resource_properties("AWS::CloudWatch::Alarm", {"MetricName": "TaskShortfall", "Period": 10})
    assert templates.lint_errors() == {}


def test_a_bad_setting_gets_the_context_paths_message_naming_where_it_was_given() -> None:
    _, stack, service = user_stack()
    scaling = WorkerServiceScaling(stack, "Scaling", service=service, max_capacity=0, prewarm_seconds=99_999,
                                   queues=[WorkQueue("", work_pool="process-pool")])
    with pytest.raises(ConfigError) as raised:
        PrefectBacklogPublisher(stack, "Autoscaler", prefect_api_url="prefect.example.com", services=[scaling],
                                log_retention_days=8)
    problems = raised.value.problems
    with pytest.raises(ConfigError) as from_context:  # the same values through cdk.json's way in
        parse_config({"prefectApiUrl": "prefect.example.com", "logRetentionDays": 8, "queues": [
            {"workQueue": "", "workPool": "process-pool", "cluster": "workers", "service": "process-worker",
             "maxCapacity": 0, "prewarmSeconds": 99_999}]})
    assert len(problems) == len(from_context.value.problems) == 5
    expected = [p.replace("queues[0].workQueue", "WorkerServiceScaling UserStack/Scaling queues[0].workQueue")
                 .replace("queues[0].maxCapacity", "WorkerServiceScaling UserStack/Scaling maxCapacity")
                 .replace("queues[0].prewarmSeconds", "WorkerServiceScaling UserStack/Scaling prewarmSeconds")
                for p in from_context.value.problems]
    assert problems == expected
    assert any(p.startswith("prefectApiUrl: must be an http(s) URL") for p in problems)


@pytest.mark.parametrize(("make", "message"), [
    (lambda stack, service: WorkerServiceScaling(stack, "S", service="svc", max_capacity=2,
                                                 queues=[WorkQueue("q")]),
     "cluster is required when service is given by name"),
    (lambda stack, service: WorkerServiceScaling(stack, "S", service=service, cluster="other", max_capacity=2,
                                                 queues=[WorkQueue("q")]),
     "cluster comes from the service object"),
    (lambda stack, service: WorkerServiceScaling(stack, "S", service=service, max_capacity=2, queues=[]),
     "queues: must list at least one work queue"),
    (lambda stack, service: WorkerServiceScaling(
        stack, "S", max_capacity=2, queues=[WorkQueue("q")], service=ecs.FargateService(
            stack, "Unnamed", cluster=service.cluster, task_definition=service.task_definition,
            min_healthy_percent=100)),
     "the ECS service name is known only at deploy time"),
])
def test_a_service_that_cannot_be_read_by_name_is_refused(make: Any, message: str) -> None:
    _, stack, service = user_stack()
    with pytest.raises(ConfigError, match=message):
        make(stack, service)


def test_a_service_scaling_no_publisher_takes_fails_synth_and_one_service_takes_one_scaling() -> None:
    app, stack, service = user_stack()
    WorkerServiceScaling(stack, "Forgotten", service=service, max_capacity=2, queues=[WorkQueue("q")])
    with pytest.raises(Exception, match="UserStack/Forgotten is not in any PrefectBacklogPublisher's services"):
        app.synth()
    _, stack, service = user_stack()
    twice = [WorkerServiceScaling(stack, f"S{i}", service=service, max_capacity=2, queues=[WorkQueue(f"q{i}")])
             for i in range(2)]
    with pytest.raises(ConfigError, match="workers/process-worker has more than one WorkerServiceScaling"):
        PrefectBacklogPublisher(stack, "Autoscaler", prefect_api_url=API, services=twice)


def test_without_monitoring_there_are_no_alarms_but_the_step_policys_own() -> None:
    _, stack, service = user_stack()
    scaling = WorkerServiceScaling(stack, "Scaling", service=service, max_capacity=2, queues=[WorkQueue("q")])
    publisher = PrefectBacklogPublisher(stack, "Autoscaler", prefect_api_url=API, services=[scaling],
                                        monitoring=False)
    assert publisher.monitoring is None
    templates = Templates(synthesize(stack))
    alarms = templates.find_resources("AWS::CloudWatch::Alarm")
    assert [a["Properties"]["MetricName"] for a in alarms.values()] == ["TaskShortfall"]
    templates.resource_count_is("AWS::CloudWatch::Dashboard", 0)
    templates.resource_count_is("AWS::CloudFormation::Stack", 0)  # nothing placed in nested stacks
    with pytest.raises(ConfigError, match="alarmEmail needs the monitoring"):
        PrefectBacklogPublisher(stack, "Again", prefect_api_url=API, services=[scaling], monitoring=False,
                                alarm_email="ops@example.com")


def test_network_and_secret_objects_give_their_ids_and_refuse_ones_known_only_at_deploy() -> None:
    _, stack, service = user_stack()
    scaling = WorkerServiceScaling(stack, "Scaling", service="svc", cluster=service.cluster, max_capacity=2,
                                   queues=[WorkQueue("q")])
    subnet = ec2.Subnet.from_subnet_id(stack, "Subnet", "subnet-0123abcd")
    group = ec2.SecurityGroup.from_security_group_id(stack, "Group", "sg-0123456789abcdef0")
    secret = secretsmanager.Secret.from_secret_complete_arn(
        stack, "Key", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prefect-AbCdEf")
    publisher = PrefectBacklogPublisher(stack, "Autoscaler", prefect_api_url=API, services=[scaling],
                                        network=PublisherNetwork([subnet], [group]),
                                        prefect_auth=PrefectAuth(secret, "basic"))
    assert publisher.config.network is not None
    assert (publisher.config.network.subnet_ids, publisher.config.network.security_group_ids) == (
        ("subnet-0123abcd",), ("sg-0123456789abcdef0",))
    assert publisher.config.auth is not None and publisher.config.auth.secret == secret.secret_arn
    assert publisher.config.services[0].key == ("workers", "svc")  # a cluster object of this app, by its name
    created = secretsmanager.Secret(stack, "Created")
    with pytest.raises(ConfigError, match=r"prefectAuth\.secret is known only at deploy time"):
        PrefectBacklogPublisher(stack, "WithCreated", prefect_api_url=API, services=[scaling],
                                prefect_auth=PrefectAuth(created, "bearer"))


def test_the_standalone_stacks_keywords_parse_back_to_its_configuration() -> None:
    """infra/stack.py builds the constructs from the parsed context: nothing is lost on the way."""
    config = parse_config({
        "prefectApiUrl": API, "fastMode": True, "alarmEmail": "ops@example.com", "monitoringDetail": "queue",
        "prefectAuth": {"secret": "prefect/key", "scheme": "basic"}, "crashOrphanedRuns": True,
        "network": {"subnetIds": ["subnet-0123abcd"], "securityGroupIds": ["sg-0123abcd"]},
        "queues": [{"workQueue": "a", "workPool": "p", "cluster": "c", "service": "s1", "maxCapacity": 3,
                    "prewarmSeconds": 0},
                   {"workQueue": "b", "cluster": "c", "service": "s2", "maxCapacity": 5, "taskProtection": False,
                    "runsInWorkerTask": True},
                   {"workQueue": "c", "workPool": "p", "cluster": "c", "service": "s1"}]})
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    settings = scaling_settings(config)
    services = [WorkerServiceScaling(stack, f"S{i}", **settings[s.key]) for i, s in enumerate(config.services)]
    publisher = PrefectBacklogPublisher(stack, "P", **publisher_settings(config), services=services)
    again, original = publisher.config.to_context(), config.to_context()
    # The queues come back grouped by service (a, c for s1, then b): the same entries, in the services' order.
    assert [q["workQueue"] for q in again.pop("queues")] == ["a", "c", "b"]
    assert sorted(q["workQueue"] for q in original.pop("queues")) == ["a", "b", "c"]
    assert again == original
    assert {s.key: s for s in publisher.config.services}.keys() == {s.key for s in config.services}
    for before in config.services:
        after = next(s for s in publisher.config.services if s.key == before.key)
        assert (after.min_capacity, after.max_capacity, after.target_backlog_per_task, after.task_protection,
                after.prewarm_seconds) == (before.min_capacity, before.max_capacity, before.target_backlog_per_task,
                                           before.task_protection, before.prewarm_seconds)
