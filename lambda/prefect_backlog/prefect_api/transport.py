"""HTTP to the Prefect API: authentication, bounded retries, the caller's deadline, decoding, and errors.

Every request is retried with backoff on connection errors, timeouts, 5xx and
429 (honouring Retry-After), never past the deadline the caller gives, and at
most ``max_concurrency`` are in flight at once however the reads above nest.
Errors say which request failed, against which host, and why; they never carry
the credential. TLS verification is requests' default and is never turned off.
"""

from __future__ import annotations

import base64
import email.utils
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from prefect_backlog.config import AuthScheme

PAGE_SIZE = 200  # the API's maximum
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 4.0
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")
R = TypeVar("R")


class PrefectError(Exception):
    """A request to the Prefect API failed; the message says which and why, never with credentials."""


class PrefectAuthError(PrefectError):
    """The API rejected our credentials: every queue is unreadable, so the whole run fails."""


def authorization_header(scheme: AuthScheme, secret: str) -> str:
    """Prefect Cloud API keys go as Bearer; a 3.x server's ``user:pass`` auth string as Basic."""
    if scheme == "basic":
        return "Basic " + base64.b64encode(secret.encode()).decode()
    return "Bearer " + secret


def settled(fn: Callable[[T], R]) -> Callable[[T], R | PrefectError]:
    """``fn``, returning a PrefectError instead of raising it, so one failed read leaves the others standing.

    Rejected credentials are still raised: they mean every other call fails too.
    """
    def call(item: T) -> R | PrefectError:
        try:
            return fn(item)
        except PrefectAuthError:
            raise
        except PrefectError as exc:
            return exc
        except (ValueError, KeyError, TypeError) as exc:  # a body of the wrong shape
            return PrefectError(f"unexpected response: {type(exc).__name__}: {exc}")

    return call


class PrefectHttp:
    """One sample's connection to the API: a session, a deadline, a bound on requests in flight."""

    def __init__(self, api_url: str, *, authorization: str | None = None, deadline: float | None = None,
                 max_concurrency: int = 8, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``deadline`` is a ``time.monotonic()`` value no request or retry may run past."""
        self.api_url = api_url.rstrip("/")
        # Named in errors; never the user-info part of the URL, should one carry credentials.
        self.host = urlsplit(self.api_url).hostname or self.api_url
        if port := urlsplit(self.api_url).port:
            self.host += f":{port}"
        self.deadline = deadline if deadline is not None else time.monotonic() + 60
        self.max_concurrency = max_concurrency
        self._in_flight = threading.BoundedSemaphore(max_concurrency)
        self._counter_lock = threading.Lock()
        self.requests_sent = 0
        self._sleep = sleep
        self._session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max_concurrency, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["Accept"] = "application/json"
        if authorization:
            self._session.headers["Authorization"] = authorization

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call with bounded retries; returns the decoded JSON body."""
        where = f"{method} {path}"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            retry_after: float | None = None
            try:
                with self._in_flight:
                    remaining = self.deadline - time.monotonic()  # after any wait for a free slot
                    if remaining <= 0:
                        raise PrefectError(f"{where}: out of time before the request could be sent")
                    with self._counter_lock:
                        self.requests_sent += 1
                    response = self._session.request(
                        method, self.api_url + path, json=body,
                        timeout=(min(CONNECT_TIMEOUT_SECONDS, remaining), min(READ_TIMEOUT_SECONDS, remaining)))
            except requests.Timeout:
                problem = f"timed out waiting for {self.host}"
            except requests.ConnectionError as exc:
                problem = f"connection failed ({type(exc).__name__} from {self.host})"
            else:
                if response.status_code in (401, 403):
                    raise PrefectAuthError(f"{where}: HTTP {response.status_code} from {self.host}, " + (
                        "the API rejected the credentials (check the prefectAuth secret and its scheme)"
                        if "Authorization" in self._session.headers else
                        "the API wants credentials and none were sent (configure prefectAuth; the dry run "
                        "also takes PREFECT_API_KEY)"))
                if response.status_code not in RETRYABLE_STATUS:
                    return self._decode(where, response)
                problem = f"HTTP {response.status_code} from {self.host}"
                if response.status_code == 429:
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt == MAX_ATTEMPTS:
                raise PrefectError(f"{where}: {problem}, gave up after {attempt} attempts")
            wait = retry_after if retry_after is not None else min(
                BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if time.monotonic() + wait >= self.deadline:
                raise PrefectError(f"{where}: {problem}, and no time is left to retry after {wait:.1f}s")
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _decode(self, where: str, response: requests.Response) -> Any:
        if response.status_code == 404:
            raise PrefectError(f"{where}: HTTP 404 not found on {self.host} (is prefectApiUrl the API root, "
                               "ending in /api?)")
        if response.status_code >= 400:
            raise PrefectError(f"{where}: HTTP {response.status_code} from {self.host}: {response.text[:200]!r}")
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown content type")
            raise PrefectError(f"{where}: HTTP {response.status_code} from {self.host} with a body that is not "
                               f"JSON ({kind})") from None

    def items(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        page = self.request("POST", path, body)
        if not isinstance(page, list):
            raise PrefectError(f"POST {path}: expected a JSON list, got {type(page).__name__}")
        return page

    def paged(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a filter endpoint, one page of PAGE_SIZE after another."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.items(path, {**body, "limit": PAGE_SIZE, "offset": len(items)})
            items.extend(page)
            if len(page) < PAGE_SIZE:
                return items

    def count(self, body: dict[str, Any]) -> int:
        value = self.request("POST", "/flow_runs/count", body)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PrefectError(f"POST /flow_runs/count: expected an integer, got {type(value).__name__}")
        return value


def parse_time(value: Any) -> datetime | None:
    """An API timestamp (3.x ends in ``Z``, 2.x in ``+00:00``), always timezone-aware; None when absent."""
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds to wait, from a number or an HTTP date; None when the header says nothing usable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:  # "-0000" means UTC without saying so
        parsed = parsed.replace(tzinfo=UTC)
    return max(0.0, (parsed - datetime.now(UTC)).total_seconds())
