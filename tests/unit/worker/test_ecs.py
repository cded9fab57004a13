"""The launcher's ECS endpoints: the task's name from its metadata, the agent's protection PUT."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from harness.ecs_endpoints import EcsEndpoints
from prefect_backlog.protection import WORKER_NAME as PUBLISHER_WORKER_NAME
from prefect_backlog.protection import task_id_of
from prefect_ecs_worker.ecs import WORKER_NAME, AgentClient, EcsError, read_task_arn, task_id_from_arn, worker_name


@pytest.fixture
def endpoints() -> Iterator[EcsEndpoints]:
    with EcsEndpoints(uuid.uuid4().hex) as stand_in:
        yield stand_in


def test_the_name_is_the_one_the_publisher_maps_back_to_the_task() -> None:
    """One rule, owned by prefect_backlog.protection.WORKER_NAME; the launcher (a separate distribution that
    cannot import the publisher) spells the same pattern, and both must agree."""
    assert WORKER_NAME.pattern == PUBLISHER_WORKER_NAME.pattern.replace("([0-9a-f]{32})", "[0-9a-f]{32}")
    task = uuid.uuid4().hex
    name = worker_name(task_id_from_arn(f"arn:aws:ecs:eu-west-1:123456789012:task/prefect/{task}"))
    assert name == f"ecs-{task}" and task_id_of(name) == task


@pytest.mark.parametrize("arn", [
    "arn:aws:ecs:us-east-1:123456789012:task/prefect/ABCDEF0123456789abcdef0123456789",  # upper case
    "arn:aws:ecs:us-east-1:123456789012:task/prefect/0123456789abcdef",  # too short
    "arn:aws:ecs:us-east-1:123456789012:task/0123456789abcdef0123456789abcdef0",  # 33
    "",
])
def test_a_task_arn_without_a_32_hex_task_id_is_refused(arn: str) -> None:
    with pytest.raises(EcsError, match="32-character hex task id"):
        task_id_from_arn(arn)


def test_the_task_arn_is_read_from_the_metadata_endpoint(endpoints: EcsEndpoints) -> None:
    assert read_task_arn(endpoints.metadata_uri) == endpoints.task_arn
    assert [c.path for c in endpoints.metadata_reads()] == ["/v4/metadata/task"]


def test_an_unreachable_metadata_endpoint_is_retried_then_refused_without_its_address() -> None:
    with pytest.raises(EcsError) as raised:
        read_task_arn("http://127.0.0.1:9/v4/secret-path", attempts=2, pause=0.01, timeout=0.5)
    assert "could not read the task metadata" in str(raised.value) and "secret-path" not in str(raised.value)


def test_protect_puts_the_agents_body_and_reads_its_answer(endpoints: EcsEndpoints) -> None:
    result = AgentClient(endpoints.agent_uri).protect(15)
    assert result.ok and result.expiration and result.expiration.endswith("Z")
    (put,) = endpoints.protection_puts()
    assert put.body == {"ProtectionEnabled": True, "ExpiresInMinutes": 15}
    assert put.path == "/agent/task-protection/v1/state"


def test_a_failing_agent_is_a_result_not_an_exception_and_its_problem_names_no_arn(endpoints: EcsEndpoints) -> None:
    endpoints.fail_next = 1
    result = AgentClient(endpoints.agent_uri).protect(15)
    assert not result.ok and result.problem is not None
    assert "HTTP 500" in result.problem and "ServerException" in result.problem
    unreachable = AgentClient("http://127.0.0.1:9", timeout=0.5).protect(15)
    assert not unreachable.ok and "no answer from the ECS agent" in (unreachable.problem or "")
    assert "127.0.0.1" not in (unreachable.problem or "")


def test_an_access_denied_message_has_its_arns_scrubbed() -> None:
    from prefect_ecs_worker.ecs import _problem

    problem = _problem(400, {"error": {"Code": "AccessDeniedException", "Message":
                                       "User: arn:aws:sts::123456789012:assumed-role/task/x is not authorized"}})
    assert "AccessDeniedException" in problem and "123456789012" not in problem and "<arn>" in problem


@pytest.mark.parametrize("minutes", [0, 2881])
def test_minutes_outside_the_agents_range_are_a_programming_error(minutes: int) -> None:
    with pytest.raises(ValueError):
        AgentClient("http://127.0.0.1:9").protect(minutes)
