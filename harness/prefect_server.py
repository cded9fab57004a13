"""Run a real Prefect server (2.18.x or 3.x) on loopback for integration tests.

The server runs from its own virtualenv (see ``scripts/install-prefect.sh``);
this module never imports prefect. Each server gets a fresh temporary
``PREFECT_HOME`` (SQLite database and log file live there), a free port on
127.0.0.1, the UI and telemetry switched off, and its own process group so that
``stop()`` removes the webserver children too. Servers still running when the
interpreter exits are stopped by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

from harness.processes import prefect_environment, read_log, spawn_logged

HOST = "127.0.0.1"
_LIVE: set[PrefectServer] = set()


class PrefectServerError(RuntimeError):
    """The server could not be started (the message carries its log)."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def basic_auth_header(auth_string: str) -> str:
    """``Authorization`` header value for a Prefect ``"user:pass"`` auth string."""
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


class PrefectServer:
    """A Prefect server process bound to 127.0.0.1, usable as a context manager.

    >>> with PrefectServer("3", ".venvs/prefect3") as srv:   # doctest: +SKIP
    ...     requests.get(srv.api_url + "/health")
    """

    def __init__(
        self,
        version: str,
        venv: str | os.PathLike[str],
        *,
        auth_string: str | None = None,
        late_marking: bool = True,
        startup_timeout: float = 120.0,
        extra_env: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        version = str(version).split(".")[0]
        if version not in ("2", "3"):
            raise ValueError(f"version must be '2' or '3', not {version!r}")
        if auth_string is not None and version != "3":
            raise ValueError("auth_string needs Prefect 3.x (2.x has no built-in auth)")
        self.version = version
        self.venv = Path(venv).resolve()
        self.auth_string = auth_string
        self.late_marking = late_marking
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.die_with_parent = die_with_parent
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix=f"prefect{version}-home-"))
        self.log_path = self.home / "server.log"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "prefect"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far: every process of its session (the server and the
        webserver it starts), user and system time, with what their waited-for children used.

        Read from /proc, so a benchmark can tell what a tick cost the server, not only the client.
        """
        if self._proc is None:
            return 0.0
        return session_cpu_seconds(self._proc.pid)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": basic_auth_header(self.auth_string)} if self.auth_string else {}

    def read_log(self) -> str:
        return read_log(self.log_path)

    # -- lifecycle ---------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [str(self.executable), "server", "start", "--host", HOST, "--port", str(self.port)]
        if not self.late_marking:
            cmd.append("--no-late-runs")  # both 2.18 and 3.x know this flag
        return cmd

    def environment(self) -> dict[str, str]:
        env = prefect_environment(
            self.venv, self.home,
            PREFECT_UI_ENABLED="false",  # 2.x (3.x still reads it)
            PREFECT_SERVER_UI_ENABLED="false",  # 3.x
            PREFECT_SERVER_ANALYTICS_ENABLED="false",  # no telemetry calls to the internet
            PREFECT_API_URL=self.api_url,
        )
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
            env["PREFECT_API_AUTH_STRING"] = self.auth_string  # the server's own client
        env.update(self.extra_env)
        return env

    def start(self) -> PrefectServer:
        if self.running:
            return self
        if not self.executable.exists():
            raise PrefectServerError(f"no prefect executable at {self.executable}")
        began = time.monotonic()
        # Its own process group (spawn_logged): stop() kills the uvicorn children too. The log closes in stop().
        self._proc, self._log = spawn_logged(self.command(), cwd=self.home, env=self.environment(),
                                             log_path=self.log_path,
                                             death_signal=signal.SIGTERM if self.die_with_parent else None)
        _LIVE.add(self)
        try:
            self._wait_healthy(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_healthy(self, began: float) -> None:
        deadline = began + self.startup_timeout
        url = f"{self.api_url}/health"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PrefectServerError(
                    f"Prefect {self.version} server exited with {self._proc.returncode} "
                    f"before answering /health; log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise PrefectServerError(
            f"Prefect {self.version} server did not answer {url} within "
            f"{self.startup_timeout:.0f}s; log {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, chars: int = 6000) -> str:
        return self.read_log()[-chars:]

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # == the group id (start_new_session)
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
            # Children (2.x runs uvicorn in a subprocess) may outlive the parent.
            end = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.2)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)

    def restart(self) -> PrefectServer:
        """Stop and start again with the same home (database) and port."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its temporary home."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PrefectServer {self.version} {self.api_url} {state}>"


def session_cpu_seconds(session_id: int) -> float:
    """utime + stime + cutime + cstime of every live process in session ``session_id``, in seconds."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().decode(errors="replace").rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # after the command: state ppid pgrp session ... utime(12) stime(13) cutime(14) cstime(15)
        if int(fields[3]) == session_id:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.cleanup()
