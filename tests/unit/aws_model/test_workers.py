"""Workers in the tasks: polls at random phases, claims between samples, orphans, protection at the claim."""

from __future__ import annotations

import random

from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService
from harness.aws_model.runs import Run, RunBook
from harness.aws_model.workers import Workers


def world(runs: list[Run], protect_at_claim: bool = False) -> tuple[EcsService, Workers]:
    clock = Clock()
    ecs = EcsService(clock, random.Random(5))
    return ecs, Workers(clock, ecs, RunBook(runs), slots=2, protect_at_claim=protect_at_claim)


def test_a_run_is_claimed_at_the_first_poll_after_it_is_due_at_the_workers_own_phase() -> None:
    ecs, workers = world([Run(due=300, seconds=30, announced=False)])
    ecs.set_desired(1)
    (task,) = ecs.live()
    ecs.clock.run_until(400)
    run = workers.book.runs[0]
    assert run.claimed is not None and 300 <= run.claimed < 310
    assert (run.claimed - task.ready_at) % 10 == 0  # on the worker's own 10 s grid, from its first poll
    assert run.claimed != 300 or task.ready_at % 10 == 0


def test_polls_of_two_workers_have_different_phases() -> None:
    ecs, _ = world([])
    ecs.set_desired(2)
    a, b = ecs.live()
    assert a.ready_at % 10 != b.ready_at % 10


def test_slots_limit_what_one_worker_holds() -> None:
    ecs, workers = world([Run(due=200, seconds=100, announced=False) for _ in range(5)])
    ecs.set_desired(1)
    ecs.clock.run_until(250)
    assert workers.book.in_flight == 2 and workers.book.due_waiting(250) == 3


def test_a_busy_task_stopped_orphans_its_runs() -> None:
    ecs, workers = world([Run(due=200, seconds=600, announced=False)])
    ecs.set_desired(1)
    ecs.clock.run_until(250)
    ecs.set_desired(0)  # unprotected: stopped at once, its run with it
    assert workers.busy_stopped == 1 and workers.book.runs[0].orphaned and workers.book.in_flight == 0
    ecs.clock.run_until(1000)
    assert not workers.book.runs[0].done


def test_the_launcher_protects_its_task_at_the_claim() -> None:
    ecs, workers = world([Run(due=200, seconds=600, announced=False)], protect_at_claim=True)
    ecs.set_desired(1)
    ecs.clock.run_until(250)
    (task,) = ecs.live()
    assert task.protected(250)
    ecs.set_desired(0)
    assert task.live and workers.busy_stopped == 0


def test_without_the_launcher_a_claim_is_unprotected_until_someone_protects_it() -> None:
    ecs, _ = world([Run(due=200, seconds=600, announced=False)])
    ecs.set_desired(1)
    ecs.clock.run_until(250)
    (task,) = ecs.live()
    assert not task.protected(250)


def test_the_models_launcher_is_prefect_ecs_workers_defaults() -> None:
    from harness.aws_model import workers as model
    from prefect_ecs_worker import options, protector

    assert model.LAUNCHER_MINUTES == options.DEFAULT_MINUTES
    assert model.LAUNCHER_CONFIRM_SECONDS == protector.CONFIRM_AFTER_SECONDS
    assert model.LAUNCHER_REFRESH_SECONDS == protector.REFRESH_EVERY_SECONDS


def test_the_launcher_refreshes_while_its_task_holds_a_run_and_never_releases() -> None:
    ecs, _ = world([Run(due=200, seconds=600, announced=False)], protect_at_claim=True)
    ecs.set_desired(1)
    ecs.clock.run_until(250)
    (task,) = ecs.live()
    claimed = task.protected_until
    ecs.clock.run_until(700)  # past the first 5 minutes: refreshed every minute since
    assert task.protected(700) and task.protected_until is not None and claimed is not None
    assert task.protected_until > claimed
    ecs.clock.run_until(1000)  # the run ended at ~800: no refresh since, still protected (never released)
    last = task.protected_until
    assert task.protected(1000) and last is not None
    ecs.clock.run_until(1300)
    assert task.protected_until == last  # it lapses on its own; the publisher releases it sooner
