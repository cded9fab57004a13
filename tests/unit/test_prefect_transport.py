"""The HTTP transport: retries, Retry-After, the deadline, credentials, and errors that say what failed where."""

from __future__ import annotations

import time

import pytest
import requests
import responses

from prefect_backlog.prefect_api import PrefectAuthError, PrefectClient, PrefectError, authorization_header
from tests.support.clients import client, queue, resolved
from tests.support.fake_prefect import API, FakePrefect, failing


def test_retries_5xx_then_succeeds(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(503, times=2)
    c = client()
    resolved(c, queue(0, "default", "pool-a"))
    assert prefect.requests_to("/work_queues/filter") == 3
    assert len(c.sleeps) == 2  # type: ignore[attr-defined]


def test_honours_retry_after_on_429(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(429, {"Retry-After": "3"}, times=1)
    c = client()
    resolved(c, queue(0, "default", "pool-a"))
    assert c.sleeps == [3.0]  # type: ignore[attr-defined]


def test_gives_up_when_retry_after_exceeds_the_deadline(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(429, {"Retry-After": "120"})
    with pytest.raises(PrefectError, match=r"HTTP 429 from prefect\.test, and no time is left to retry after 120\.0s"):
        client().resolve_queues([queue(0, "default", "pool-a")])


def test_persistent_500_gives_up_after_bounded_attempts(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(500)
    c = client()
    with pytest.raises(PrefectError, match=r"HTTP 500 from prefect\.test, gave up after 4 attempts"):
        c.resolve_queues([queue(0, "default", "pool-a")])
    assert c.requests_sent == 4


def test_rejected_credentials_are_not_retried(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = failing(401)
    c = client(authorization="Bearer wrong")
    with pytest.raises(PrefectAuthError, match=r"HTTP 401 from prefect\.test, the API rejected the credentials"):
        c.resolve_queues([queue(0, "default", "pool-a")])
    assert c.requests_sent == 1
    with pytest.raises(PrefectAuthError, match="wants credentials and none were sent"):
        client().resolve_queues([queue(0, "default", "pool-a")])


def test_html_instead_of_json_is_a_clear_error(prefect: FakePrefect) -> None:
    prefect.faults["/work_queues/filter"] = lambda _: (200, {"Content-Type": "text/html"}, "<html>login</html>")
    with pytest.raises(PrefectError, match="body that is not JSON \\(text/html\\)"):
        client().resolve_queues([queue(0, "default", "pool-a")])


def test_timeouts_are_retried_and_bounded() -> None:
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/work_queues/filter", body=requests.ReadTimeout("slow"))
        c = client()
        with pytest.raises(PrefectError, match=r"timed out waiting for prefect\.test, gave up after 4 attempts"):
            c.resolve_queues([queue(0, "default", "pool-a")])
        assert c.requests_sent == 4


def test_connection_errors_are_retried() -> None:
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, f"{API}/work_queues/filter", body=requests.ConnectionError("refused"))
        with pytest.raises(PrefectError, match=r"connection failed \(ConnectionError from prefect.test\)"):
            client().resolve_queues([queue(0, "default", "pool-a")])


def test_an_expired_deadline_sends_nothing() -> None:
    c = PrefectClient(API, deadline=time.monotonic() - 1)
    with pytest.raises(PrefectError, match="out of time"):
        c.resolve_queues([queue(0, "default", "pool-a")])
    assert c.requests_sent == 0


def test_authorization_headers_and_no_secret_in_errors(prefect: FakePrefect) -> None:
    assert authorization_header("bearer", "pnu_key") == "Bearer pnu_key"
    assert authorization_header("basic", "admin:pass") == "Basic YWRtaW46cGFzcw=="
    prefect.faults["/work_queues/filter"] = failing(401)
    with pytest.raises(PrefectAuthError) as caught:
        PrefectClient(API, authorization="Bearer pnu_key", sleep=lambda _: None).resolve_queues(
            [queue(0, "default", "pool-a")])
    assert "pnu_key" not in str(caught.value)
