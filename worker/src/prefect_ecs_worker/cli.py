"""``prefect-ecs-worker``: the console script.

Decides everything it can before importing Prefect (options, Prefect's version, the ECS environment, the
task's name), then installs the hook and runs ``prefect worker start ... --name ecs-<task id>`` in-process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata

from prefect_ecs_worker.ecs import AgentClient, EcsError, read_task_arn, task_id_from_arn, worker_name
from prefect_ecs_worker.options import (
    USAGE,
    Launch,
    Refusal,
    check_environment,
    check_prefect_version,
    parse_args,
    read_environment,
)
from prefect_ecs_worker.protector import Protector, RefreshSchedule


def installed_prefect() -> str | None:
    try:
        return metadata.version("prefect")
    except metadata.PackageNotFoundError:
        return None


def prefect_command(launch: Launch, name: str | None) -> list[str]:
    """The ``prefect`` arguments: ``worker start``, the user's options, and the task's name."""
    return ["worker", "start", *launch.passthrough, *(["--name", name] if name else [])]


def prepare(argv: Sequence[str], env: Mapping[str, str], prefect_version: str | None
            ) -> tuple[Launch, str | None, Protector | None]:
    """Everything before Prefect runs: raises Refusal or EcsError with the user's message."""
    launch = parse_args(argv, env)
    if launch.help:
        return launch, None, None
    check_prefect_version(prefect_version)
    environment = read_environment(env)
    check_environment(environment, launch.unprotected)
    name = None
    if environment.metadata_uri is not None:
        name = worker_name(task_id_from_arn(read_task_arn(environment.metadata_uri)))
    protector = None
    if not launch.unprotected and environment.agent_uri is not None:
        schedule = RefreshSchedule(refresh_every=environment.refresh_seconds)
        protector = Protector(AgentClient(environment.agent_uri), minutes=environment.minutes, schedule=schedule)
    return launch, name, protector


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        launch, name, protector = prepare(args, os.environ, installed_prefect())
    except Refusal as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except EcsError as exc:
        print(f"prefect-ecs-worker: {exc}", file=sys.stderr)
        return 1
    if launch.help:
        print(USAGE)
        return 0

    from prefect_ecs_worker.hook import HookError, install, run_prefect

    if protector is not None:
        try:
            install(protector)
        except HookError as exc:
            print(f"prefect-ecs-worker: this Prefect's worker cannot be hooked ({exc}); "
                  f"Prefect {installed_prefect()} is not supported.", file=sys.stderr)
            return 1
        protector.start()
    where = f"named {name}" if name else "named by Prefect"
    how = "protecting its ECS task at each claim" if protector else "UNPROTECTED (no scale-in protection)"
    print(f"prefect-ecs-worker: starting `prefect worker start`, {where}, {how}", file=sys.stderr, flush=True)
    try:
        return run_prefect(prefect_command(launch, name))
    finally:
        if protector is not None:
            protector.stop()


if __name__ == "__main__":
    sys.exit(main())
