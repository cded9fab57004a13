"""Run a REAL Prefect 3 Process worker against a local server, for tests.

No prefect import here: the worker runs from its own virtualenv
(``<venv>/bin/prefect worker start --type process ...``), talks to the server
given by ``api_url`` (loopback), and the flows it runs come from local files
(``write_flows`` + ``create_local_deployment``), so nothing needs network
access beyond 127.0.0.1.

Process model (Prefect 3.8.8, checked on Linux): the worker is started in its
own session / process group (``start_new_session``). Every flow run it
submits is a child process of the worker, but Prefect puts that child in a NEW
session (``prefect/runner/_workspace_starter.py`` passes
``isolate_process_group=True`` to ``EngineCommandStarter``, which sets
``start_new_session=True``, ``prefect/runner/_starter_engine.py:86-88``).
So ``killpg(worker_pgid, SIGKILL)`` does NOT kill flow runs. ``kill()``
therefore kills the whole process *tree* (every process that carries this
worker's private ``PROCESS_WORKER_TAG`` environment variable, which every
descendant inherits, orphaned or not), the way an ECS task stop does when the
container's PID namespace goes away.

Typical use::

    with PrefectServer("3", venv) as srv:
        c = BacklogClient(srv.api_url)
        c.create_pool("pool")
        flows_dir = write_flows(tmp_path / "flows")
        dep = create_local_deployment(c, "pool", "default", flows_dir, "sleepy")
        with ProcessWorker(venv, srv.api_url, "pool", ecs_worker_name()) as w:
            run = c.create_run(dep, scheduled_now(), parameters={"seconds": 30})
            wait_for_state(c, run["id"], "RUNNING")
            w.kill()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from harness.backlog import parse_time
from harness.processes import prefect_environment, read_log, spawn_logged

_LIVE: set[ProcessWorker] = set()
TAG_VAR = "PROCESS_WORKER_TAG"


class ProcessWorkerError(RuntimeError):
    """The worker did not start / did not come online (the message carries its log)."""


class RestClient(Protocol):
    """What the helpers need from a REST client: harness.backlog.BacklogClient fits."""

    def get(self, path: str) -> Any: ...

    def post(self, path: str, json: Any = None) -> Any: ...


# --- names ----------------------------------------------------------------------------------


def fake_task_id() -> str:
    """A fake ECS task id: 32 lowercase hex chars, like the last part of a task ARN."""
    return uuid.uuid4().hex


def ecs_worker_name(task_id: str | None = None) -> str:
    """``ecs-<task id>``: a worker name that carries the ECS task id."""
    return f"ecs-{task_id or fake_task_id()}"


def scheduled_now(offset_seconds: float = 0.0) -> dict[str, Any]:
    """A SCHEDULED/"Scheduled" state due now (+ offset), for ``create_flow_run``."""
    from datetime import timedelta

    when = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return {"type": "SCHEDULED", "state_details": {"scheduled_time": when.isoformat()}}


# --- processes (Linux /proc, no psutil) -----------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # R, S, Z, ...
    cmdline: str



def _read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces/parens: split after the last ')'
    rest = stat[stat.rindex(")") + 2 :].split()
    return Proc(pid=pid, ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]), state=rest[0], cmdline=cmd)


def _has_tag(pid: int, tag: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{TAG_VAR}={tag}".encode() in env.split(b"\0")


def tagged_processes(tag: str) -> list[Proc]:
    """Every live (non-zombie) process whose environment carries ``PROCESS_WORKER_TAG=tag``."""
    found: list[Proc] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _has_tag(pid, tag):
            proc = _read_proc(pid)
            if proc is not None and proc.state != "Z":
                found.append(proc)
    return sorted(found, key=lambda p: p.pid)


# --- the worker -----------------------------------------------------------------------------


class ProcessWorker:
    """``prefect worker start --pool P --type process --name N [--limit L]`` as a context manager.

    ``__enter__`` starts it and waits until it has sent a heartbeat (it is then
    listed by ``POST /work_pools/{pool}/workers/filter``); ``__exit__`` stops it
    (SIGTERM, then SIGKILL of the whole tree) and removes its temp home.

    Settings passed to the worker (None = Prefect's default):
    ``query_seconds`` (PREFECT_WORKER_QUERY_SECONDS, default 10),
    ``prefetch_seconds`` (PREFECT_WORKER_PREFETCH_SECONDS, default 10),
    ``heartbeat_seconds`` (PREFECT_WORKER_HEARTBEAT_SECONDS, default 30).
    """

    def __init__(
        self,
        venv: str | os.PathLike[str],
        api_url: str,
        pool: str,
        name: str | None = None,
        *,
        limit: int | None = None,
        work_queues: Iterable[str] = (),
        auth_string: str | None = None,
        query_seconds: float | None = None,
        prefetch_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
        extra_env: dict[str, str] | None = None,
        extra_args: Iterable[str] = (),
        ready_timeout: float = 90.0,
        die_with_parent: bool = True,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.venv = Path(venv).resolve()
        self.api_url = api_url.rstrip("/")
        self.pool = pool
        self.name = name or ecs_worker_name()
        self.limit = limit
        self.work_queues = list(work_queues)
        self.auth_string = auth_string
        self.query_seconds = query_seconds
        self.prefetch_seconds = prefetch_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.die_with_parent = die_with_parent
        self.tag = uuid.uuid4().hex
        self.home = Path(tempfile.mkdtemp(prefix="prefect-worker-home-"))
        # The log lives in the temp home unless given; cleanup() deletes the home, not an explicit log_path.
        self.log_path = Path(log_path) if log_path else self.home / "worker.log"
        self.started_at: datetime | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- command and environment --------------------------------------------------------
    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "prefect"

    def command(self) -> list[str]:
        cmd = [str(self.executable), "worker", "start", "--pool", self.pool, "--type", "process", "--name", self.name]
        if self.limit is not None:
            cmd += ["--limit", str(self.limit)]
        for queue in self.work_queues:
            cmd += ["--work-queue", queue]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        env = prefect_environment(self.venv, self.home, PREFECT_API_URL=self.api_url,
                                  COLUMNS="250",  # rich wraps worker log lines at 80 otherwise
                                  **{TAG_VAR: self.tag})
        env.pop("PYTHONPATH", None)  # the caller's (pytest's) path must not leak into flow runs
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        for var, value in (
            ("PREFECT_WORKER_QUERY_SECONDS", self.query_seconds),
            ("PREFECT_WORKER_PREFETCH_SECONDS", self.prefetch_seconds),
            ("PREFECT_WORKER_HEARTBEAT_SECONDS", self.heartbeat_seconds),
        ):
            if value is not None:
                env[var] = str(value)
        env.update(self.extra_env)
        return env

    # -- state ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    def read_log(self) -> str:
        return read_log(self.log_path)

    def processes(self) -> list[Proc]:
        """Live processes of this worker: the worker itself and every descendant, orphaned or not."""
        return tagged_processes(self.tag)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, wait: bool = True) -> ProcessWorker:
        if self.running:
            return self
        if not self.executable.exists():
            raise ProcessWorkerError(f"no prefect executable at {self.executable}")
        self.started_at = datetime.now(UTC)
        # The log closes in _close().
        self._proc, self._log = spawn_logged(self.command(), cwd=self.home, env=self.environment(),
                                             log_path=self.log_path,
                                             death_signal=signal.SIGKILL if self.die_with_parent else None)
        _LIVE.add(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.kill()
                self._close()
                raise
        return self

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        import requests  # the harness's client venv has it

        headers = {"Content-Type": "application/json"}
        if self.auth_string:
            import base64

            headers["Authorization"] = "Basic " + base64.b64encode(self.auth_string.encode()).decode()
        resp = requests.request(method, self.api_url + path, json=body, headers=headers, timeout=15)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def server_record(self) -> dict[str, Any] | None:
        """This worker as the server lists it (``POST /work_pools/{pool}/workers/filter``), or None."""
        try:
            # WorkerFilter has no name field (only last_heartbeat_time, status; an unknown key is a 422):
            # read the pool's workers and match the name here.
            workers = self._request("POST", f"/work_pools/{self.pool}/workers/filter", {"limit": 200})
        except Exception:  # 404 before the pool exists, 503 on a busy SQLite
            return None
        for worker in workers or []:
            if worker.get("name") == self.name:
                return dict(worker)
        return None

    def wait_ready(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the server has a heartbeat from this worker newer than our start; returns the record.

        The first heartbeat (sync_with_backend, prefect/workers/base.py:1399) is sent right after the
        worker starts, together with its first poll of the pool.
        """
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        assert self.started_at is not None
        while time.monotonic() < deadline:
            if not self.running:
                raise ProcessWorkerError(
                    f"worker exited with {self.returncode} before coming online; log {self.log_path}:\n"
                    + self.read_log()[-6000:]
                )
            rec = self.server_record()
            beat = rec.get("last_heartbeat_time") if rec else None
            if rec and beat and parse_time(beat) >= self.started_at.replace(microsecond=0):
                return rec
            time.sleep(0.5)
        raise ProcessWorkerError(
            f"worker {self.name!r} sent no heartbeat within {timeout or self.ready_timeout:.0f}s; "
            f"log {self.log_path}:\n" + self.read_log()[-6000:]
        )


    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop: SIGTERM to the worker process only (what ``docker stop`` / ECS sends to PID 1).

        Prefect's CLI handler turns the first SIGTERM into SIGINT to itself
        (prefect/utilities/processutils/__init__.py:595-596). Returns the worker's exit code, or None if
        it had to be killed after ``timeout``. Flow-run processes still alive afterwards are left alone
        (see ``processes()``); ``close()`` kills them.
        """
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self._proc.returncode

    def kill(self) -> list[Proc]:
        """Kill like an ECS task dying: SIGKILL to the worker and EVERY descendant (own sessions too).

        All tagged processes are SIGSTOPped first (so none can spawn or report anything), then SIGKILLed.
        Returns the processes that were killed.
        """
        victims = self.processes()
        for p in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGSTOP)
        known = {p.pid for p in victims}
        for p in self.processes():  # anything spawned meanwhile
            if p.pid not in known:
                victims.append(p)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p.pid, signal.SIGSTOP)
        for p in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self._wait_gone(5.0)
        return victims

    def _wait_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)

    def close(self, graceful: bool = True) -> None:
        """Stop (SIGTERM, if ``graceful``), then kill whatever is left of the tree."""
        if graceful and self.running:
            self.stop(timeout=20)
        if self.processes():
            self.kill()
        self._close()

    def cleanup(self, graceful: bool = True) -> None:
        self.close(graceful)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> ProcessWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Keep the log on failure: only delete the home when the block succeeded.
        if exc_type is None:
            self.cleanup()
        else:
            self.close()

    def __repr__(self) -> str:
        return f"<ProcessWorker {self.name} pool={self.pool} pid={self.pid} {'running' if self.running else 'stopped'}>"


@atexit.register
def _stop_all() -> None:
    for worker in list(_LIVE):
        with contextlib.suppress(Exception):
            worker.kill()
            worker._close()


# --- waiting on runs --------------------------------------------------------------------------


def wait_for_run(
    client: RestClient,
    run_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 60.0,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Poll ``GET /flow_runs/{id}`` until ``predicate(run)``; returns the run (raises TimeoutError)."""
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            run = dict(client.get(f"/flow_runs/{run_id}"))
        except OSError:  # requests' ConnectionError is an OSError: a reused keep-alive socket the server closed
            time.sleep(interval)
            continue
        if predicate(run):
            return run
        time.sleep(interval)
    state = run.get("state") or {}
    raise TimeoutError(f"run {run_id} still {state.get('type')}/{state.get('name')} after {timeout:.0f}s")


def state_is(type_: str, name: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(run: dict[str, Any]) -> bool:
        st = run.get("state") or {}
        return st.get("type") == type_ and (name is None or st.get("name") == name)

    return check


def wait_for_state(
    client: RestClient, run_id: str, type_: str, name: str | None = None, timeout: float = 60.0
) -> dict[str, Any]:
    return wait_for_run(client, run_id, state_is(type_, name), timeout=timeout)


# --- flows and deployments from local source ----------------------------------------------------

FLOWS_PY = textwrap.dedent(
    '''\
    """Flows for the ProcessWorker harness: no network, no storage, stdlib + prefect only."""
    import os
    import time

    from prefect import flow
    from prefect.flow_runs import pause_flow_run, suspend_flow_run


    def _note(what: str) -> None:
        print(f"[harness] {what} pid={os.getpid()} pgid={os.getpgid(0)} sid={os.getsid(0)}", flush=True)


    @flow(name="sleepy", log_prints=True)
    def sleepy(seconds: float = 5.0) -> float:
        _note(f"sleepy start seconds={seconds}")
        time.sleep(seconds)
        _note("sleepy done")
        return seconds


    @flow(name="pausy", log_prints=True)
    def pausy(timeout: int = 60, before: float = 0.0, after: float = 0.0) -> str:
        """Pauses in process (state PAUSED/"Paused"); the process blocks, polling for a resume."""
        _note("pausy start")
        time.sleep(before)
        pause_flow_run(timeout=timeout, poll_interval=2)
        _note("pausy resumed")
        time.sleep(after)
        return "resumed"


    @flow(name="suspendy", log_prints=True, persist_result=True)
    def suspendy(timeout: int = 60, before: float = 0.0) -> str:
        """Suspends (state PAUSED/"Suspended", reschedule): the process exits; resume reschedules the run."""
        _note("suspendy start")
        time.sleep(before)
        suspend_flow_run(timeout=timeout)
        _note("suspendy resumed")
        return "resumed"
    '''
)

FLOW_PARAMETERS: dict[str, dict[str, Any]] = {
    "sleepy": {"seconds": {"type": "number", "default": 5.0}},
    "pausy": {
        "timeout": {"type": "integer", "default": 60},
        "before": {"type": "number", "default": 0.0},
        "after": {"type": "number", "default": 0.0},
    },
    "suspendy": {"timeout": {"type": "integer", "default": 60}, "before": {"type": "number", "default": 0.0}},
}


def write_flows(directory: str | os.PathLike[str], filename: str = "flows.py") -> Path:
    """Write the harness flows (``sleepy``, ``pausy``, ``suspendy``) to ``directory/filename``.

    Keep ``directory`` (and its parents) free of ``pyproject.toml``: Prefect 3.8 runs a flow whose
    working directory belongs to a project through ``uv run`` (prefect/runner/_workspace_resolver.py
    ``_find_project_root``, prefect/runner/_workspace_starter.py ``_uv_run_command``).
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_text(FLOWS_PY)
    return directory


def create_local_deployment(
    client: RestClient,
    pool: str,
    queue: str,
    flows_dir: str | os.PathLike[str],
    flow: str = "sleepy",
    *,
    name: str | None = None,
    filename: str = "flows.py",
    **fields: Any,
) -> str:
    """``POST /deployments/`` for ``<filename>:<flow>`` run from ``flows_dir``; returns the deployment id.

    What a 3.8 Process worker needs: ``entrypoint`` and ``pull_steps`` with
    ``prefect.deployments.steps.set_working_directory`` pointing at the absolute folder that holds
    the file (no storage block, no ``path``). The flow (``POST /flows/``) must carry the name of the
    ``@flow``.
    """
    flow_id = client.post("/flows/", {"name": flow})["id"]
    props = {k: {"title": k, "position": i, **v} for i, (k, v) in enumerate(FLOW_PARAMETERS.get(flow, {}).items())}
    body: dict[str, Any] = {
        "name": name or f"{flow}-{pool}-{queue}",
        "flow_id": flow_id,
        "work_pool_name": pool,
        "work_queue_name": queue,
        "entrypoint": f"{filename}:{flow}",
        "pull_steps": [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(Path(flows_dir).resolve())}}
        ],
        "parameter_openapi_schema": {"title": "Parameters", "type": "object", "properties": props},
        "enforce_parameter_schema": False,
        **fields,
    }
    return str(client.post("/deployments/", body)["id"])
