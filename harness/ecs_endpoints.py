"""Stand-ins, on loopback, for the two HTTP endpoints ECS gives a task's containers.

- task metadata v4 (``$ECS_CONTAINER_METADATA_URI_V4``): ``GET <base>/task`` answers ``TaskARN`` (and a few
  other fields of the real document);
- the agent's task protection (``$ECS_AGENT_URI``): ``PUT /task-protection/v1/state`` with
  ``{"ProtectionEnabled": bool, "ExpiresInMinutes": N}``, ``GET`` the same path, answering
  ``{"protection": {"ExpirationDate", "ProtectionEnabled", "TaskArn"}}`` as the agent does
  (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-scale-in-protection-endpoint.html).

Every request is recorded with its wall-clock time (``time.time()``, comparable with what a flow process on
the same machine records). ``fail_next`` makes the next protection PUTs answer 500, as an agent that cannot
reach ECS does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

PROTECTION_PATH = "/task-protection/v1/state"


@dataclass(frozen=True)
class Call:
    at: float  # time.time() when the request arrived
    method: str
    path: str
    body: Any  # parsed JSON, or None


class EcsEndpoints:
    """Both endpoints on one loopback port: ``metadata_uri`` and ``agent_uri`` are what ECS would export."""

    def __init__(self, task_id: str, cluster: str = "prefect", region: str = "us-east-1") -> None:
        self.task_arn = f"arn:aws:ecs:{region}:123456789012:task/{cluster}/{task_id}"
        self.cluster = cluster
        self.calls: list[Call] = []
        self.protected_until: datetime | None = None
        self.fail_next = 0
        # Called with (enabled, minutes) after each protection PUT that succeeded: tests point it at an ECS
        # stand-in the publisher also uses, so both act on one task's protection.
        self.on_put: Callable[[bool, int], None] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what the task sees ----------------------------------------------------------------
    @property
    def base(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def metadata_uri(self) -> str:
        return f"{self.base}/v4/metadata"

    @property
    def agent_uri(self) -> str:
        return f"{self.base}/agent"

    def environment(self) -> dict[str, str]:
        return {"ECS_CONTAINER_METADATA_URI_V4": self.metadata_uri, "ECS_AGENT_URI": self.agent_uri}

    # -- what was asked --------------------------------------------------------------------
    def protection_puts(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == "PUT" and c.path.endswith(PROTECTION_PATH)]

    def metadata_reads(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == "GET" and c.path.endswith("/task")]

    # -- serving ---------------------------------------------------------------------------
    def _answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            self.calls.append(Call(time.time(), method, path, body))
            if method == "GET" and path == "/v4/metadata/task":
                return 200, {"Cluster": self.cluster, "TaskARN": self.task_arn, "Family": "worker",
                             "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING", "LaunchType": "FARGATE"}
            if path != f"/agent{PROTECTION_PATH}":
                return 404, {"error": {"Code": "NotFound", "Message": "no such path"}}
            if method == "PUT":
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return 500, {"error": {"Code": "ServerException", "Message": "stand-in told to fail"}}
                if not isinstance(body, dict) or not isinstance(body.get("ProtectionEnabled"), bool):
                    return 400, {"error": {"Code": "InvalidParameterException", "Message": "bad body"}}
                minutes = int(body.get("ExpiresInMinutes", 120))
                if body["ProtectionEnabled"]:
                    self.protected_until = datetime.now(UTC) + timedelta(minutes=minutes)
                else:
                    self.protected_until = None
                if self.on_put is not None:
                    self.on_put(bool(body["ProtectionEnabled"]), minutes)
            return 200, {"protection": {
                "ProtectionEnabled": self.protected_until is not None, "TaskArn": self.task_arn,
                "ExpirationDate": None if self.protected_until is None else
                self.protected_until.isoformat().replace("+00:00", "Z")}}

    def start(self) -> EcsEndpoints:
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                status, doc = endpoints._answer(self.command, self.path, body)
                payload = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = _serve

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="ecs-endpoints")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> EcsEndpoints:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
