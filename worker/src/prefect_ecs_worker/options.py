"""The launcher's own decisions, before Prefect is imported: options, refusals, version, environment.

``prefect-ecs-worker [--unprotected] <options of prefect worker start>``: every option but ``--name`` is passed
through to ``prefect worker start`` unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prefect_ecs_worker.ecs import AGENT_ENV, METADATA_ENV

UNPROTECTED_FLAG = "--unprotected"
UNPROTECTED_ENV = "PREFECT_ECS_WORKER_UNPROTECTED"
MINUTES_ENV = "PREFECT_ECS_WORKER_PROTECTION_MINUTES"
REFRESH_ENV = "PREFECT_ECS_WORKER_REFRESH_SECONDS"
MIN_PREFECT = (3, 1, 9)
# The publisher protects for ceil(interval / 60) + 4 minutes (5 at its 60 s and 10 s samples). The shared
# release rule (docs/task-protection.md) needs a PUT of the worker's to give a later expiry than any the
# publisher set before it, which holds when the worker's minutes are at least the publisher's.
MIN_MINUTES = 5
DEFAULT_MINUTES = 5
_TRUE = {"1", "true", "yes", "on"}

USAGE = """\
usage: prefect-ecs-worker [--unprotected] [options of `prefect worker start`]

Starts `prefect worker start` with the options given (--pool, --type, --limit, --work-queue, ...), named
ecs-<task id> after the ECS task it runs in, and enables the task's scale-in protection (through the ECS
agent) right after each flow run it claims, before the run's code starts, refreshing it while it holds runs.
It never releases protection: the autoscaler's publisher does, once the task is idle.

  --unprotected   run without protection: outside ECS (Prefect names the worker), or inside ECS without
                  the agent endpoint (the worker is still named after its task). Same as
                  PREFECT_ECS_WORKER_UNPROTECTED=1.
  --name, -n      refused: the worker's name is the task's (the publisher maps runs to tasks by it).

See `prefect worker start --help` for the options passed through.
"""


class Refusal(Exception):
    """The launcher will not start: ``str()`` is the message for the user."""

    exit_code = 2


@dataclass(frozen=True)
class Launch:
    """What to start: the pass-through arguments and how to protect."""

    passthrough: tuple[str, ...]
    unprotected: bool
    help: bool = False


_NAME = re.compile(r"^(--name(=.*)?|-n.*)$")


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> Launch:
    """Split our flag from Prefect's and refuse ``--name``. ``argv`` excludes the program name."""
    passthrough: list[str] = []
    unprotected = env.get(UNPROTECTED_ENV, "").strip().lower() in _TRUE
    wants_help = False
    for i, arg in enumerate(argv):
        if arg == "--":
            passthrough.extend(argv[i:])
            break
        if arg == UNPROTECTED_FLAG:
            unprotected = True
        elif _NAME.match(arg):
            raise Refusal(
                "prefect-ecs-worker: --name is not accepted: the worker is named ecs-<task id> after the ECS task "
                "it runs in, which is how the autoscaler's publisher finds the task that holds a run. "
                "Remove --name (use plain `prefect worker start` to choose a name)."
            )
        elif arg in ("--help", "-h"):
            wants_help = True
        else:
            passthrough.append(arg)
    return Launch(tuple(passthrough), unprotected, wants_help)


def parse_version(version: str) -> tuple[int, int, int]:
    """``"3.1.9"`` -> (3, 1, 9); pre-releases and local parts are read by their release numbers."""
    found = re.match(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if not found:
        raise ValueError(f"unreadable version {version!r}")
    major, minor, micro = (int(part) if part else 0 for part in found.groups())
    return major, minor, micro


def check_prefect_version(version: str | None) -> None:
    """Refuse Prefect that is missing, 2.x, or older than 3.1.9, saying what would go wrong."""
    if version is None:
        raise Refusal("prefect-ecs-worker: Prefect is not installed in this environment (it needs prefect>=3.1.9).")
    parsed = parse_version(version)
    if parsed[0] < 3:
        raise Refusal(
            f"prefect-ecs-worker: Prefect {version} is installed; it needs Prefect 3.1.9 or newer. Prefect 2.x "
            "agents (`prefect agent start`) and 2.x workers are not supported: they do not stamp the worker's name "
            "on the runs they submit, so the publisher cannot tell which task holds a run and protects none (it "
            "still scales on the backlog). Keep `prefect agent start` on 2.x, or upgrade the worker image to 3.1.9+."
        )
    if parsed < MIN_PREFECT:
        raise Refusal(
            f"prefect-ecs-worker: Prefect {version} is installed; it needs Prefect 3.1.9 or newer. Before 3.1.9 "
            "workers do not stamp the `prefect.worker.name` label on the runs they submit to a self-hosted server "
            "(3.1.2+ on Prefect Cloud), so the publisher cannot map runs to tasks: it would release this task's "
            "protection while its runs are in flight. Upgrade the worker image's Prefect."
        )


@dataclass(frozen=True)
class Environment:
    """Where the ECS endpoints are, and the protection settings."""

    metadata_uri: str | None
    agent_uri: str | None
    minutes: int
    refresh_seconds: float


def read_environment(env: Mapping[str, str]) -> Environment:
    minutes = _int(env, MINUTES_ENV, DEFAULT_MINUTES)
    refresh = _float(env, REFRESH_ENV, 60.0)
    if not MIN_MINUTES <= minutes <= 2880:
        raise Refusal(f"prefect-ecs-worker: {MINUTES_ENV} must be {MIN_MINUTES}-2880 (minutes, at least the "
                      f"publisher's protection minutes), not {minutes}.")
    if not 0 < refresh < minutes * 60 / 2:
        raise Refusal(f"prefect-ecs-worker: {REFRESH_ENV} must be positive and under half the protection's "
                      f"{minutes} minutes, not {refresh}.")
    return Environment(env.get(METADATA_ENV) or None, env.get(AGENT_ENV) or None, minutes, refresh)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_number(env, name, default, int, "a whole number"))


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _number(env: Mapping[str, str], name: str, default: float, convert: Callable[[str], float], what: str) -> float:
    """``name`` from the environment through ``convert``, ``default`` when unset or blank; a Refusal naming it."""
    raw = (env.get(name) or "").strip()
    try:
        return convert(raw) if raw else default
    except ValueError:
        raise Refusal(f"prefect-ecs-worker: {name}={raw!r} is not {what}.") from None


def check_environment(environment: Environment, unprotected: bool) -> None:
    """Refuse to run unprotected unless told to."""
    if unprotected:
        return
    if environment.metadata_uri is None:
        raise Refusal(
            f"prefect-ecs-worker: not in an ECS task (${METADATA_ENV} is not set), so there is no task to name the "
            f"worker after or to protect. Run it in an ECS task (Fargate, or EC2 with agent 1.65+), or pass "
            f"{UNPROTECTED_FLAG} (or set {UNPROTECTED_ENV}=1) to run a plain, unprotected worker."
        )
    if environment.agent_uri is None:
        raise Refusal(
            f"prefect-ecs-worker: ${AGENT_ENV} is not set, so this task cannot protect itself from scale-in (the ECS "
            f"agent sets it on Fargate and on EC2 with agent 1.65+). Pass {UNPROTECTED_FLAG} to run unprotected "
            f"(the worker is still named after its task)."
        )
