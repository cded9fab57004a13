"""The hook into Prefect's worker: protect the task once a run is claimed, before its code starts.

Every worker type (Process, ECS, Docker, Kubernetes, ...) submits a run through ``BaseWorker._submit_run``
(prefect/workers/base.py; the same shape in 2.18, 3.1.9 and 3.9.1)::

    _submit_run(flow_run)
        ready = await self._propose_pending_state(flow_run)   # the claim: the server accepts Pending (or not)
        if ready:
            await self._runs_task_group.start(self._submit_run_and_capture_errors, flow_run)
                # labels the run (prefect.worker.name), proposes Submitting, then self.run(...) starts
                # the run's infrastructure; for a Process worker, it returns when the run's process exits

The narrowest point after the claim and before the run's code is the return of ``_propose_pending_state``
with True: the hook awaits one protection PUT there (in a thread; bounded by the agent client's timeout),
so nothing of the run starts before the agent answered (or failed: the run proceeds either way). The run is
held from then until ``_submit_run_and_capture_errors`` returns (the run's process ended, or, for workers
that submit each run as its own infrastructure, the submission and its watch ended), which is when the
protector stops refreshing for it. Nothing here ever releases protection.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from prefect_ecs_worker.protector import Protector

LOGGER = logging.getLogger("prefect.ecs_worker")
HOOKED = ("_propose_pending_state", "_submit_run", "_submit_run_and_capture_errors")
_MARK = "__prefect_ecs_worker_hook__"


class HookError(RuntimeError):
    """This Prefect's worker does not have the shape the hook relies on."""


def _check(base: type) -> None:
    for name in HOOKED:
        method = getattr(base, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise HookError(f"prefect.workers.base.BaseWorker.{name} is missing or not a coroutine function")
        params = list(inspect.signature(method).parameters)
        if params[:2] != ["self", "flow_run"]:
            raise HookError(f"prefect.workers.base.BaseWorker.{name} takes {params}, not (self, flow_run, ...)")


def install(protector: Protector) -> None:
    """Wrap the three methods on ``BaseWorker`` (so every worker type gets them). Idempotent per process."""
    from prefect.workers.base import BaseWorker

    if getattr(BaseWorker, _MARK, None) is not None:
        return
    _check(BaseWorker)
    import anyio.to_thread

    propose_pending = BaseWorker._propose_pending_state
    submit_run = BaseWorker._submit_run
    submit_and_capture = BaseWorker._submit_run_and_capture_errors
    claimed: set[str] = set()  # runs claimed (and held) whose _submit_run has not finished

    async def _propose_pending_state(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        accepted = await propose_pending(self, flow_run, *args, **kwargs)
        if accepted is True:
            run_id = str(flow_run.id)
            claimed.add(run_id)
            try:
                await anyio.to_thread.run_sync(protector.claim, run_id)
            except Exception:  # the run proceeds: the protector retries on its schedule
                LOGGER.exception("Task scale-in protection at the claim of flow run %s raised", run_id)
        return accepted

    async def _submit_run(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        run_id = str(flow_run.id)
        try:
            return await submit_run(self, flow_run, *args, **kwargs)
        finally:
            if run_id in claimed:  # the claim's hold; the run's own hold is in _submit_run_and_capture_errors
                claimed.discard(run_id)
                protector.release(run_id)

    async def _submit_run_and_capture_errors(self: Any, flow_run: Any, *args: Any, **kwargs: Any) -> Any:
        run_id = str(flow_run.id)
        protector.hold(run_id)
        try:
            return await submit_and_capture(self, flow_run, *args, **kwargs)
        finally:
            protector.release(run_id)

    for name, wrapper, original in (("_propose_pending_state", _propose_pending_state, propose_pending),
                                    ("_submit_run", _submit_run, submit_run),
                                    ("_submit_run_and_capture_errors", _submit_run_and_capture_errors,
                                     submit_and_capture)):
        wrapper.__name__ = wrapper.__qualname__ = name
        wrapper.__doc__ = original.__doc__
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(BaseWorker, name, wrapper)
    setattr(BaseWorker, _MARK, protector)


def run_prefect(args: list[str]) -> int:
    """``prefect <args>`` in this process (so the hook is in the worker), as the ``prefect`` script runs it."""
    import sys

    from prefect.cli import app

    sys.argv = ["prefect", *args]
    result = app()
    return result if isinstance(result, int) else 0
