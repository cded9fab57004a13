"""The two ECS endpoints a task's containers can reach: task metadata (v4) and the agent's task protection.

Both are plain HTTP on a link-local address that ECS injects as environment variables:

- ``$ECS_CONTAINER_METADATA_URI_V4/task``: the task's metadata; ``TaskARN`` ends in the task id
  (``arn:aws:ecs:<region>:<account>:task/<cluster>/<task id>``).
- ``$ECS_AGENT_URI/task-protection/v1/state``: ``PUT {"ProtectionEnabled": true, "ExpiresInMinutes": N}`` sets the
  task's scale-in protection (ECS developer guide, "Task scale-in protection endpoint"); the answer is
  ``{"protection": {"ExpirationDate", "ProtectionEnabled", "TaskArn"}}``, or ``{"failure": {...}}`` /
  ``{"error": {...}}``.

Standard library only. Nothing logged or raised here carries the endpoints' addresses or credentials.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"
AGENT_ENV = "ECS_AGENT_URI"
PROTECTION_PATH = "/task-protection/v1/state"
# The publisher recognises only worker names of exactly this form (prefect_backlog.protection.TASK_ID).
TASK_ID = re.compile(r"[0-9a-f]{32}")
WORKER_NAME = re.compile(r"ecs-[0-9a-f]{32}")


class EcsError(RuntimeError):
    """An ECS endpoint could not be read, or answered something unusable (the message is safe to log)."""


def task_id_from_arn(task_arn: str) -> str:
    """The task id: the last path segment of a task ARN, which must be 32 lowercase hex characters."""
    task_id = task_arn.rsplit("/", 1)[-1]
    if not TASK_ID.fullmatch(task_id):
        raise EcsError(f"the task ARN's last segment {task_id!r} is not a 32-character hex task id")
    return task_id


def worker_name(task_id: str) -> str:
    """``ecs-<task id>``: the worker name the publisher maps back to the task."""
    name = f"ecs-{task_id}"
    if not WORKER_NAME.fullmatch(name):
        raise EcsError(f"{task_id!r} is not a 32-character hex task id")
    return name


Opener = Callable[..., Any]


def _request(opener: Opener, method: str, url: str, body: Mapping[str, Any] | None, timeout: float
             ) -> tuple[int, Any]:
    """(status, parsed JSON or None). Raises OSError (URLError, timeouts) when no answer came."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with opener(req, timeout=timeout) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:  # 4xx/5xx still carry the agent's JSON
        status, raw = int(exc.code), exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def read_task_arn(metadata_uri: str, *, timeout: float = 5.0, attempts: int = 5, pause: float = 1.0,
                  opener: Opener = urllib.request.urlopen) -> str:
    """``TaskARN`` from ``<metadata_uri>/task``, retried a few times (the endpoint can lag a container's start)."""
    last = "no answer"
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause)
        try:
            status, doc = _request(opener, "GET", metadata_uri.rstrip("/") + "/task", None, timeout)
        except OSError as exc:
            last = f"{type(exc).__name__}"
            continue
        if status == 200 and isinstance(doc, dict) and isinstance(doc.get("TaskARN"), str):
            return str(doc["TaskARN"])
        last = f"HTTP {status}" + ("" if status != 200 else " without a TaskARN")
    raise EcsError(f"could not read the task metadata ({METADATA_ENV}/task): {last}")


@dataclass(frozen=True)
class ProtectionResult:
    """What one PUT to the agent's protection endpoint achieved."""

    ok: bool
    expiration: str | None = None  # ExpirationDate as the agent gave it
    problem: str | None = None  # why not ok: safe to log (status, code, reason; never the endpoint or a secret)


class AgentClient:
    """``PUT/GET $ECS_AGENT_URI/task-protection/v1/state``."""

    def __init__(self, agent_uri: str, *, timeout: float = 5.0, opener: Opener = urllib.request.urlopen) -> None:
        self._url = agent_uri.rstrip("/") + PROTECTION_PATH
        self._timeout = timeout
        self._opener = opener

    def protect(self, minutes: int) -> ProtectionResult:
        """Enable protection for ``minutes`` from now (a repeat resets the expiry). Never raises."""
        if not 1 <= minutes <= 2880:
            raise ValueError(f"ExpiresInMinutes must be 1-2880, not {minutes}")
        try:
            status, doc = _request(self._opener, "PUT", self._url,
                                   {"ProtectionEnabled": True, "ExpiresInMinutes": minutes}, self._timeout)
        except OSError as exc:
            return ProtectionResult(False, problem=f"no answer from the ECS agent ({type(exc).__name__})")
        return _result(status, doc)

    def state(self) -> ProtectionResult:
        """The task's protection as the agent reads it (GET). Never raises."""
        try:
            status, doc = _request(self._opener, "GET", self._url, None, self._timeout)
        except OSError as exc:
            return ProtectionResult(False, problem=f"no answer from the ECS agent ({type(exc).__name__})")
        return _result(status, doc)


def _result(status: int, doc: Any) -> ProtectionResult:
    protection = doc.get("protection") if isinstance(doc, dict) else None
    if 200 <= status < 300 and isinstance(protection, dict) and protection.get("ProtectionEnabled") is True:
        expiration = protection.get("ExpirationDate")
        return ProtectionResult(True, expiration=None if expiration is None else str(expiration))
    return ProtectionResult(False, problem=_problem(status, doc))


def _problem(status: int, doc: Any) -> str:
    """HTTP status plus the failure's reason or the error's code (and a short message): no ARNs, no URLs."""
    parts = [f"HTTP {status}"]
    if isinstance(doc, dict):
        failure, error = doc.get("failure"), doc.get("error")
        if isinstance(failure, dict) and failure.get("Reason"):
            parts.append(f"failure {failure['Reason']}")
        if isinstance(error, dict):
            if error.get("Code"):
                parts.append(f"error {error['Code']}")
            message = error.get("Message")
            if isinstance(message, str) and message:
                # AccessDenied messages name the task role and ARNs; keep the reason's gist only.
                parts.append(_scrub(message)[:160])
        protection = doc.get("protection")
        if isinstance(protection, dict) and protection.get("ProtectionEnabled") is not True:
            parts.append("protection not enabled in the answer")
    return ", ".join(parts)


_ARN = re.compile(r"arn:aws[\w-]*:[^\s\"']+")


def _scrub(text: str) -> str:
    return _ARN.sub("<arn>", text)
