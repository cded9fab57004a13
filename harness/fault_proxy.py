"""A small fault-injecting HTTP proxy on 127.0.0.1, in front of a real Prefect server.

For faults a real server cannot be made to produce on demand (a response that
hangs, a 500, a 429 with ``Retry-After``, an HTML page where JSON belongs, a
credential revoked half-way through a run, one pool that is slow), the
publisher is pointed at the proxy instead of the server. Requests that match no
rule are forwarded unchanged, so everything else is the real server's answer.

    with FaultProxy(server.base_url) as proxy:
        proxy.add(Rule(for_queues([queue_id]), Respond(500, body="boom")))
        ...  # configure prefectApiUrl = proxy.api_url

A rule matches on the request (method, path, decoded JSON body); ``times``
limits how often it fires (None: always). Every request is recorded with the
rule that handled it and when it finished, so a test can tell what the client
actually did (retries, concurrency).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, e.g. /api/flow_runs/filter
    body: Any  # decoded JSON, or None

    def queue_ids(self) -> set[str]:
        """The ``work_pool_queues.id.any_`` a flow-run read is scoped to (empty if none)."""
        if not isinstance(self.body, dict):
            return set()
        scope = self.body.get("work_pool_queues") or {}
        return set(((scope.get("id") or {}).get("any_")) or [])


# --- actions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Respond:
    """Answer instead of the server."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(frozen=True)
class Delay:
    """Forward to the server, but only after ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Hang:
    """Read the request and never answer (until ``seconds`` pass or the proxy stops), then drop the connection."""

    seconds: float = 120.0


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering (a crashed server or a reset)."""


@dataclass(frozen=True)
class Call:
    """Run ``hook`` (e.g. stop the real server), then forward."""

    hook: Callable[[], None]


Action = Respond | Delay | Hang | Drop | Call


@dataclass
class Rule:
    match: Callable[[Request], bool]
    action: Action
    times: int | None = None  # how many requests it handles; None: every matching one
    hits: int = 0
    name: str = ""


@dataclass
class Seen:
    """One request, recorded when it arrives; ``finished`` and ``status`` are set once it is answered."""

    request: Request
    rule: str | None  # name of the rule that handled it, None when forwarded untouched
    started: float  # time.monotonic()
    finished: float | None = None  # None while it is still being handled (a hang)
    status: int | None = None  # what the client got; None when the connection was dropped (or not yet)


# --- matchers -------------------------------------------------------------------------


def path_is(*suffixes: str) -> Callable[[Request], bool]:
    """Requests to any of these API paths (without the /api prefix), e.g. path_is("/flow_runs/filter")."""
    return lambda r: any(r.path.split("?")[0].rstrip("/").endswith(s.rstrip("/")) for s in suffixes)


def for_queues(queue_ids: set[str] | list[str]) -> Callable[[Request], bool]:
    """Flow-run reads (filter or count) scoped to any of these queue ids."""
    wanted = set(queue_ids)
    runs = path_is("/flow_runs/filter", "/flow_runs/count")
    return lambda r: runs(r) and bool(r.queue_ids() & wanted)


def any_request(_: Request) -> bool:
    return True


# --- the proxy ------------------------------------------------------------------------


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        """``upstream``: the server's base URL, e.g. ``http://127.0.0.1:4200``."""
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or HOST
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # hung handlers must not hold up stop()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            if not rule.name:
                rule.name = f"rule{len(self.rules)}"
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    def handled_by(self, name: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.rule == name]

    def _pick(self, request: Request) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if (rule.times is None or rule.hits < rule.times) and rule.match(request):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # wake hung handlers
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the request handler ----------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                request = Request(self.command, self.path, body)
                rule = proxy._pick(request)
                seen = Seen(request, rule.name if rule else None, started)
                proxy._record(seen)
                try:
                    seen.status = self._act(rule.action if rule else None, raw)
                finally:
                    seen.finished = time.monotonic()

            def _act(self, action: Action | None, raw: bytes) -> int | None:
                if isinstance(action, Respond):
                    self._send(action.status, action.body.encode(),
                               {"Content-Type": action.content_type, **action.headers})
                    return action.status
                if isinstance(action, Hang):
                    proxy._released.wait(action.seconds)
                    self._drop()
                    return None
                if isinstance(action, Drop):
                    self._drop()
                    return None
                if isinstance(action, Delay) and proxy._released.wait(action.seconds):
                    self._drop()  # the proxy is stopping
                    return None
                if isinstance(action, Call):
                    action.hook()
                return self._forward(raw)

            def _forward(self, raw: bytes) -> int | None:
                connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection", "content-length")}
                    connection.request(self.command, self.path, body=raw or None, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                except OSError:
                    self._drop()  # the server is gone: so is the connection the client holds
                    return None
                finally:
                    connection.close()
                headers = {k: v for k, v in response.getheaders()
                           if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                self._send(response.status, payload, headers)
                return response.status

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

            def _drop(self) -> None:
                self.close_connection = True
                with suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        return Handler
