"""The ECS API on loopback, backed by :class:`harness.fake_ecs.FakeEcs`, for a publisher that calls it over HTTP.

moto implements none of ECS's task-level calls for services (ListTasks of a
service's tasks, DescribeTasks of them, Get/UpdateTaskProtection), so the
packaged Lambda handler, which talks to AWS through boto3, is pointed here for
ECS (``AWS_ENDPOINT_URL_ECS``) and at moto for everything else. The wire format
is ECS's: JSON 1.1, the operation in ``X-Amz-Target``
(``AmazonEC2ContainerServiceV20141113.<Operation>``), timestamps as epoch
seconds. Only the operations the publisher uses are served.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.fake_ecs import FakeEcs

HOST = "127.0.0.1"
TARGET_PREFIX = "AmazonEC2ContainerServiceV20141113."
# Operation -> FakeEcs method; the request's JSON members are its keyword arguments.
OPERATIONS = {"DescribeServices": "describe_services", "ListTasks": "list_tasks", "DescribeTasks": "describe_tasks",
              "GetTaskProtection": "get_task_protection", "UpdateTaskProtection": "update_task_protection"}


def _wire(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


class EcsApi:
    """Serve ``ecs`` on ``http://127.0.0.1:<port>`` until :meth:`stop`."""

    def __init__(self, ecs: FakeEcs) -> None:
        self.ecs = ecs
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ecs-api", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> EcsApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EcsApi:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        ecs = self.ecs

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                target = self.headers.get("X-Amz-Target", "")
                operation = target.removeprefix(TARGET_PREFIX)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                method = OPERATIONS.get(operation)
                if method is None:
                    self._answer(400, {"__type": "UnknownOperationException", "message": f"not served: {target}"})
                    return
                try:
                    result = getattr(ecs, method)(**body)  # FakeEcs takes ECS's member names
                except Exception as exc:  # a failure injected into FakeEcs: answered as ECS's errors are
                    kind = re.match(r"(\w+Exception)", str(exc))
                    self._answer(400, {"__type": kind.group(1) if kind else "ServerException", "message": str(exc)})
                    return
                self._answer(200, _wire(result))

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
