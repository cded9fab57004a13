"""The configuration schema: valid forms parse, every bad form names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prefect_backlog.config import ConfigError, parse_config

API = "https://prefect.example.com/api"


def entry(**overrides: Any) -> dict[str, Any]:
    return {"workPool": "pool-a", "workQueue": "default", "cluster": "c1", "service": "worker",
            "maxCapacity": 3, **overrides}


def context(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"prefectApiUrl": API, "queues": list(entries) or [entry()], **top}


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
    assert service.resource_id == "service/c1/worker"
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
    assert [s.key for s in config.services] == [("c1", "worker"), ("c1", "other")]
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
