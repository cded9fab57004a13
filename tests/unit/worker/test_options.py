"""The launcher's decisions before Prefect runs: options passed through, refusals, versions, environment."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from harness.ecs_endpoints import EcsEndpoints
from prefect_ecs_worker.cli import prefect_command, prepare
from prefect_ecs_worker.options import Refusal, check_prefect_version, parse_args, read_environment

OPTIONS = ["--pool", "process-pool", "--type", "process", "--limit", "2", "--work-queue", "gpu", "--with-healthcheck"]


@pytest.fixture
def endpoints() -> Iterator[EcsEndpoints]:
    with EcsEndpoints(uuid.uuid4().hex) as stand_in:
        yield stand_in


def test_the_options_of_prefect_worker_start_pass_through_in_order() -> None:
    launch = parse_args(OPTIONS, {})
    assert launch.passthrough == tuple(OPTIONS) and not launch.unprotected
    assert prefect_command(launch, "ecs-x") == ["worker", "start", *OPTIONS, "--name", "ecs-x"]


@pytest.mark.parametrize("name", [["--name", "w"], ["--name=w"], ["-n", "w"], ["-nw"]])
def test_a_name_of_ones_own_is_refused(name: list[str]) -> None:
    with pytest.raises(Refusal, match="--name is not accepted"):
        parse_args(["--pool", "p", *name], {})


def test_unprotected_by_flag_or_environment_and_not_passed_on() -> None:
    assert parse_args(["--unprotected", "--pool", "p"], {}).passthrough == ("--pool", "p")
    assert parse_args(["--pool", "p"], {"PREFECT_ECS_WORKER_UNPROTECTED": "1"}).unprotected
    assert not parse_args(["--pool", "p"], {"PREFECT_ECS_WORKER_UNPROTECTED": "0"}).unprotected


@pytest.mark.parametrize(("version", "ok"), [
    ("3.1.9", True), ("3.8.8", True), ("3.9.1", True), ("4.0.0", True), ("3.1.9rc1", True),
    ("3.1.8", False), ("3.0.11", False), ("2.18.3", False), (None, False),
])
def test_prefect_3_1_9_or_newer(version: str | None, ok: bool) -> None:
    if ok:
        check_prefect_version(version)
        return
    with pytest.raises(Refusal) as refused:
        check_prefect_version(version)
    message = str(refused.value)
    assert "3.1.9" in message
    if version and version.startswith("2."):
        assert "agent" in message  # 2.x: keep the agent, it cannot be protected


@pytest.mark.parametrize(("env", "problem"), [
    ({"PREFECT_ECS_WORKER_PROTECTION_MINUTES": "4"}, "at least the publisher's"),
    ({"PREFECT_ECS_WORKER_PROTECTION_MINUTES": "2881"}, "5-2880"),
    ({"PREFECT_ECS_WORKER_PROTECTION_MINUTES": "x"}, "not a whole number"),
    ({"PREFECT_ECS_WORKER_REFRESH_SECONDS": "150"}, "under half"),  # of the default 5 minutes
    ({"PREFECT_ECS_WORKER_REFRESH_SECONDS": "0"}, "positive"),
])
def test_settings_out_of_range_are_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(Refusal, match=problem):
        read_environment(env)


def test_defaults_5_minutes_refreshed_every_60_s() -> None:
    environment = read_environment({})
    assert (environment.minutes, environment.refresh_seconds) == (5, 60.0)
    assert environment.metadata_uri is None and environment.agent_uri is None


def test_outside_ecs_it_refuses_unless_told_to_run_unprotected() -> None:
    with pytest.raises(Refusal, match="not in an ECS task"):
        prepare(["--pool", "p"], {}, "3.8.8")
    launch, name, protector = prepare(["--unprotected", "--pool", "p"], {}, "3.8.8")
    assert launch.passthrough == ("--pool", "p") and name is None and protector is None  # Prefect names it


def test_in_ecs_without_the_agent_endpoint_it_refuses_unless_unprotected(endpoints: EcsEndpoints) -> None:
    env = {"ECS_CONTAINER_METADATA_URI_V4": endpoints.metadata_uri}
    with pytest.raises(Refusal, match="ECS_AGENT_URI"):
        prepare(["--pool", "p"], env, "3.8.8")
    _, name, protector = prepare(["--pool", "p", "--unprotected"], env, "3.8.8")
    assert name == f"ecs-{endpoints.task_arn.rsplit('/', 1)[1]}" and protector is None  # still named


def test_in_ecs_it_is_named_after_its_task_and_protects(endpoints: EcsEndpoints) -> None:
    launch, name, protector = prepare(OPTIONS, endpoints.environment(), "3.8.8")
    task_id = endpoints.task_arn.rsplit("/", 1)[1]
    assert name == f"ecs-{task_id}" and protector is not None and protector.minutes == 5
    assert prefect_command(launch, name)[-2:] == ["--name", f"ecs-{task_id}"]
    assert endpoints.protection_puts() == []  # nothing is protected before a claim


def test_an_old_prefect_is_refused_before_ecs_is_even_asked(endpoints: EcsEndpoints) -> None:
    with pytest.raises(Refusal, match=r"2\.18\.3"):
        prepare(["--pool", "p"], endpoints.environment(), "2.18.3")
    assert endpoints.metadata_reads() == []
