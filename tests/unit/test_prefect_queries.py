"""Resolving configured queues against the fake API: names shared across pools, missing and ambiguous queues, pauses."""

from __future__ import annotations

import pytest

from prefect_backlog.prefect_api import PrefectError, QueueNotFound, ResolvedQueue
from tests.support.clients import client, queue, resolved
from tests.support.fake_prefect import FakePrefect


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-a", "gpu")


def test_resolves_queues_sharing_a_name_across_pools_in_two_requests(prefect: FakePrefect) -> None:
    c = client()
    found = c.resolve_queues([queue(0, "default", "pool-a"), queue(1, "default", "pool-b"), queue(2, "gpu", None)])
    assert {i: (r.pool, r.name) for i, r in found.items() if isinstance(r, ResolvedQueue)} == {
        0: ("pool-a", "default"), 1: ("pool-b", "default"), 2: ("pool-a", "gpu")}
    assert c.requests_sent == 2


def test_unknown_and_ambiguous_queues_are_errors_for_that_entry_only(prefect: FakePrefect) -> None:
    found = client().resolve_queues([queue(0, "nope", "pool-a"), queue(1, "default", None), queue(2, "gpu", "pool-a")])
    assert isinstance(found[0], QueueNotFound) and "no work queue 'nope' in pool 'pool-a'" in str(found[0])
    assert isinstance(found[1], PrefectError) and "several pools (pool-a, pool-b)" in str(found[1])
    assert isinstance(found[2], ResolvedQueue)


def test_paused_pool_or_queue_is_reported(prefect: FakePrefect) -> None:
    prefect.pools["pool-b"]["is_paused"] = True
    prefect.queues[0]["is_paused"] = True  # pool-a/default
    a, b, gpu = resolved(client(), queue(0, "default", "pool-a"), queue(1, "default", "pool-b"),
                         queue(2, "gpu", "pool-a"))
    assert (a.queue_paused, a.pool_paused, a.paused) == (True, False, True)
    assert (b.queue_paused, b.pool_paused, b.paused) == (False, True, True)
    assert gpu.paused is False
