"""The hook's place in the worker: the PUT after the claim and before anything of the run starts; how long
a run is held for a Process worker and for a worker that submits each run as its own task.

The stand-in worker has the shape of ``prefect.workers.base.BaseWorker._submit_run`` (3.1.9 to 3.9.1):
propose Pending; if accepted, start ``_submit_run_and_capture_errors`` (which reports "started" and, for a
Process worker, returns when the run's process exits); then return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from prefect_ecs_worker.ecs import ProtectionResult
from prefect_ecs_worker.hook import HookError, check_shape, install
from prefect_ecs_worker.protector import Protector, RefreshSchedule


class Run:
    def __init__(self, run_id: str) -> None:
        self.id = run_id


def make_worker_class(events: list[str], accept: bool = True) -> type:
    class StandInWorker:
        type = "process"

        async def _submit_run(self, flow_run: Any) -> None:
            ready = await self._propose_pending_state(flow_run)
            if ready:
                started = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(self._submit_run_and_capture_errors(flow_run, started))
                await started  # what _runs_task_group.start(...) waits for
                self.background = task
            events.append("submit_run returns")

        async def _propose_pending_state(self, flow_run: Any) -> bool:
            events.append("Pending proposed" + (" and accepted" if accept else ", refused"))
            return accept

        async def _submit_run_and_capture_errors(self, flow_run: Any, task_status: Any = None) -> int:
            events.append("configure, label, Submitting")
            events.append("run's code starts")
            task_status.set_result(1234)
            await asyncio.sleep(0.01)
            events.append("run's process exits")
            return 0

    return StandInWorker


class RecordingProtector(Protector):
    def __init__(self, events: list[str]) -> None:
        super().__init__(agent=None, schedule=RefreshSchedule())  # type: ignore[arg-type]
        self.events = events

    def claim(self, run_id: str) -> ProtectionResult:
        self.schedule.claim(run_id, 0)
        self.events.append(f"PUT protection for {run_id}")
        return ProtectionResult(True)

    def hold(self, run_id: str) -> None:
        super().hold(run_id)
        self.events.append(f"held {sorted(self.schedule.held)}")

    def release(self, run_id: str) -> None:
        super().release(run_id)
        self.events.append(f"held {sorted(self.schedule.held)}")


async def inline(fn: Callable[[str], Any], arg: str) -> Any:
    return fn(arg)


def submit(worker_class: type, worker_type: str = "process") -> Any:
    worker = worker_class()
    worker.type = worker_type

    async def go() -> None:
        await worker._submit_run(Run("r1"))
        if hasattr(worker, "background"):
            await worker.background

    asyncio.run(go())
    return worker


def test_a_process_worker_protects_after_the_claim_before_the_code_and_holds_until_the_process_exits() -> None:
    events: list[str] = []
    cls = make_worker_class(events)
    protector = RecordingProtector(events)
    install(protector, base=cls, run_sync=inline)
    submit(cls)
    assert events == [
        "Pending proposed and accepted",
        "PUT protection for r1",
        "held ['r1']",  # the run's own hold, from the start of _submit_run_and_capture_errors
        "configure, label, Submitting",
        "run's code starts",
        "submit_run returns",
        "held ['r1']",  # the claim's hold ends; the run's holds on
        "run's process exits",
        "held []",
    ]


def test_a_worker_that_submits_each_run_as_its_own_task_holds_it_only_until_submitted() -> None:
    events: list[str] = []
    cls = make_worker_class(events)
    install(RecordingProtector(events), base=cls, run_sync=inline)
    submit(cls, worker_type="ecs")
    assert events.index("PUT protection for r1") < events.index("run's code starts")
    assert events[events.index("submit_run returns") + 1] == "held []"  # before the remote run is over
    assert events[-1] == "run's process exits"


def test_a_refused_claim_is_not_protected() -> None:
    events: list[str] = []
    cls = make_worker_class(events, accept=False)
    install(RecordingProtector(events), base=cls, run_sync=inline)
    submit(cls)
    assert events == ["Pending proposed, refused", "submit_run returns"]


def test_installing_twice_wraps_once() -> None:
    events: list[str] = []
    cls = make_worker_class(events)
    protector = RecordingProtector(events)
    install(protector, base=cls, run_sync=inline)
    install(protector, base=cls, run_sync=inline)
    submit(cls)
    assert events.count("PUT protection for r1") == 1


def test_a_worker_of_another_shape_is_refused() -> None:
    class Moved:
        async def _submit_run(self, flow_run: Any) -> None: ...

        async def _propose_pending_state(self, run: Any) -> bool:  # renamed parameter
            return True

        async def _submit_run_and_capture_errors(self, flow_run: Any) -> None: ...

    with pytest.raises(HookError, match="_propose_pending_state"):
        check_shape(Moved)

    class NoLongerCalls:
        async def _submit_run(self, flow_run: Any) -> None:
            return None

        async def _propose_pending_state(self, flow_run: Any) -> bool:
            return True

        async def _submit_run_and_capture_errors(self, flow_run: Any) -> None: ...

    with pytest.raises(HookError, match="no longer claims"):
        check_shape(NoLongerCalls)
