"""Fixtures that run real Prefect servers (2.18.x and 3.x) on 127.0.0.1.

Servers come from virtualenvs made by ``scripts/install-prefect.sh``:
``$PREFECT2_VENV`` / ``$PREFECT3_VENV``, by default ``<repo>/.venvs/prefect2``
and ``<repo>/.venvs/prefect3``. A missing venv skips the tests that need it.

The session servers run with the Late marker service OFF so that counts stay
deterministic (an overdue "Scheduled" run stays "Scheduled"); start your own
``PrefectServer(..., late_marking=True)`` to test the marker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helpers import as top-level modules in any import mode
    sys.path.insert(0, str(HERE))

from backlog import BacklogClient  # noqa: E402
from prefect_server import PrefectServer  # noqa: E402

REPO_ROOT = HERE.parents[1]
AUTH_STRING = "prefect-admin:integration-secret"
_VENV_ENV = {"2": "PREFECT2_VENV", "3": "PREFECT3_VENV"}


def prefect_venv(version: str) -> Path:
    """Where the Prefect ``version`` ("2" or "3") server venv is expected."""
    env = _VENV_ENV[version]
    return Path(os.environ.get(env) or REPO_ROOT / ".venvs" / f"prefect{version}")


def require_venv(version: str) -> Path:
    venv = prefect_venv(version)
    if not (venv / "bin" / "prefect").exists():
        pytest.skip(
            f"Prefect {version} server venv not found at {venv}: run "
            f"`scripts/install-prefect.sh {version} {venv}` or set {_VENV_ENV[version]}"
        )
    return venv


def _serve(version: str, late_marking: bool = False, auth_string: str | None = None) -> Iterator[PrefectServer]:
    server = PrefectServer(version, require_venv(version), late_marking=late_marking, auth_string=auth_string)
    with server:
        yield server


@pytest.fixture(scope="session")
def prefect2_server() -> Iterator[PrefectServer]:
    yield from _serve("2", late_marking=False)


@pytest.fixture(scope="session")
def prefect3_server() -> Iterator[PrefectServer]:
    yield from _serve("3", late_marking=False)


@pytest.fixture(scope="session")
def prefect3_auth_server() -> Iterator[PrefectServer]:
    """3.x with ``PREFECT_SERVER_API_AUTH_STRING`` = ``AUTH_STRING`` (basic auth)."""
    yield from _serve("3", late_marking=False, auth_string=AUTH_STRING)


@pytest.fixture(params=["2", "3"], ids=["prefect2", "prefect3"])
def prefect_server(request: pytest.FixtureRequest) -> PrefectServer:
    """Each session server in turn (tests using it run once per version)."""
    server: PrefectServer = request.getfixturevalue(f"prefect{request.param}_server")
    return server


@pytest.fixture
def prefect_venv_for() -> Callable[[str], Path]:
    """``prefect_venv_for("3")``: the venv path, or skip the test if it is missing."""
    return require_venv


@pytest.fixture
def client_for() -> Callable[[PrefectServer], BacklogClient]:
    """``client_for(server)``: a BacklogClient with the server's credentials."""
    return lambda server: BacklogClient(server.api_url, auth_string=server.auth_string)
