"""The hook into Prefect's worker: protect the task once a run is claimed, before its code starts.

Every worker type (Process, ECS, Docker, Kubernetes, ...) submits a run through ``BaseWorker._submit_run``
(prefect/workers/base.py; read in 3.8.8 and 3.9.1, and 2.18.3's workers have the same three methods; a
Prefect with another shape is refused at start by ``check_shape``, never run unprotected silently)::

    _submit_run(flow_run)
        ready = await self._propose_pending_state(flow_run)   # the claim: the server accepts Pending (or not)
        if ready:
            await self._runs_task_group.start(self._submit_run_and_capture_errors, flow_run)
                # resolves the job configuration, labels the run (prefect.worker.name), proposes
                # Submitting, then self.run(...) starts the run's infrastructure. start() returns once
                # run() reported it started (task_status.started); for a Process worker run() itself
                # returns only when the run's process exits.

The point after the claim and before anything of the run starts is the return of ``_propose_pending_state``
with True: the hook awaits the protection PUT there (in a thread, bounded by the agent client's timeout and
one retry), so the run's infrastructure is not even configured before the agent has answered (or failed:
the run proceeds either way, see ``Protector.claim``). Before the claim there is nothing to protect: a run
the server did not move to Pending is not this worker's.

How long a run is *held* (refreshed by the protector):

- from the claim until ``_submit_run`` returns: the claim-to-submission window, for every worker type
  (a worker that submits each run as its own task holds it only while submitting, as the publisher's
  ``holds_task`` rule says: Pending only);
- for a Process worker (``type == "process"``), also from ``_submit_run_and_capture_errors``' start until it
  returns, which is when the run's process has exited: the run lives in this task the whole time
  (including a retry waiting in AwaitingRetry inside its process).

Nothing here ever releases protection: the publisher does, by the rule in docs/task-protection.md.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from typing import Any, Callable

from prefect_ecs_worker.protector import Protector

LOGGER = logging.getLogger("prefect.ecs_worker")
HOOKED = ("_propose_pending_state", "_submit_run", "_submit_run_and_capture_errors")
# Worker types whose runs execute inside the worker's own task (their process is the worker's child).
RUNS_IN_TASK_TYPES = frozenset({"process"})
_MARK = "__prefect_ecs_worker_hook__"


class HookError(RuntimeError):
    """This Prefect's worker does not have the shape the hook relies on."""


def check_shape(base: type) -> None:
    """Refuse a ``BaseWorker`` whose submission path is not the one the hook wraps (a Prefect that moved it)."""
    for name in HOOKED:
        method = getattr(base, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise HookError(f"prefect.workers.base.BaseWorker.{name} is missing or not a coroutine function")
        params = list(inspect.signature(method).parameters)
        if params[:2] != ["self", "flow_run"]:
            raise HookError(f"prefect.workers.base.BaseWorker.{name} takes {params}, not (self, flow_run, ...)")
    worker_class: Any = base
    try:
        submit_source = inspect.getsource(worker_class._submit_run)
    except (OSError, TypeError):  # no source shipped: the signatures above are all that can be checked
        return
    if "_propose_pending_state" not in submit_source or "_submit_run_and_capture_errors" not in submit_source:
        raise HookError("prefect.workers.base.BaseWorker._submit_run no longer claims through "
                        "_propose_pending_state and submits through _submit_run_and_capture_errors")


def runs_in_task(worker: Any) -> bool:
    return str(getattr(worker, "type", "")) in RUNS_IN_TASK_TYPES


RunSync = Callable[[Callable[[str], Any], str], Awaitable[Any]]


def install(protector: Protector, base: type | None = None, run_sync: RunSync | None = None) -> None:
    """Wrap the three methods on ``BaseWorker`` (so every worker type gets them). Idempotent per class.

    ``base`` and ``run_sync`` are for tests (a stand-in class with the same three coroutines; how the
    blocking claim PUT is awaited); by default Prefect's ``BaseWorker`` and ``anyio.to_thread.run_sync``.
    """
    if base is None:
        from prefect.workers.base import BaseWorker

        base = BaseWorker
    if getattr(base, _MARK, None) is not None:
        return
    check_shape(base)
    if run_sync is None:
        import anyio.to_thread

        run_sync = anyio.to_thread.run_sync
    to_thread: RunSync = run_sync

    worker_class: Any = base
    propose_pending = worker_class._propose_pending_state
    submit_run = worker_class._submit_run
    submit_and_capture = worker_class._submit_run_and_capture_errors
    claimed: set[tuple[int, str]] = set()  # (worker, run) claimed whose _submit_run has not finished

    async def _propose_pending_state(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        accepted = await propose_pending(self, flow_run, *args, **kwargs)
        if accepted is True:
            run_id = str(flow_run.id)
            claimed.add((id(self), run_id))
            try:
                await to_thread(protector.claim, run_id)
            except Exception:  # the run proceeds: the protector retries on its schedule
                LOGGER.exception("Task scale-in protection at the claim of flow run %s raised", run_id)
        return accepted

    async def _submit_run(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        key = (id(self), str(flow_run.id))
        try:
            return await submit_run(self, flow_run, *args, **kwargs)
        finally:
            if key in claimed:  # the claim's hold ends once the run is submitted (or was not)
                claimed.discard(key)
                protector.release(key[1])

    async def _submit_run_and_capture_errors(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        if not runs_in_task(self):
            return await submit_and_capture(self, flow_run, *args, **kwargs)
        run_id = str(flow_run.id)
        protector.hold(run_id)  # starts before _submit_run returns, so the run is never unheld in between
        try:
            return await submit_and_capture(self, flow_run, *args, **kwargs)
        finally:
            protector.release(run_id)

    for name, wrapper, original in (("_propose_pending_state", _propose_pending_state, propose_pending),
                                    ("_submit_run", _submit_run, submit_run),
                                    ("_submit_run_and_capture_errors", _submit_run_and_capture_errors,
                                     submit_and_capture)):
        wrapper.__name__ = name
        wrapper.__qualname__ = f"{base.__name__}.{name}"
        wrapper.__doc__ = original.__doc__
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(base, name, wrapper)
    setattr(base, _MARK, protector)


def run_prefect(args: list[str]) -> int:
    """``prefect <args>`` in this process (so the hook is in the worker), as the ``prefect`` script runs it."""
    import sys

    from prefect.cli import app

    sys.argv = ["prefect", *args]
    try:
        result = app()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return result if isinstance(result, int) else 0
