"""What the harness's Prefect processes (servers, workers) share: a clean environment, and dying with the test run.

Each runs from its own virtualenv with its own ``PREFECT_HOME``; none inherits
the caller's ``PREFECT_*`` settings (an exported ``PREFECT_API_URL`` or profile
would leak into it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path


def prefect_environment(venv: Path, home: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without its PREFECT_* settings, on ``venv``, with ``home`` and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PREFECT_HOME=str(home),
        PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
        PYTHONUNBUFFERED="1",
        **settings,
    )
    return env


def die_with_parent(sig: signal.Signals) -> None:
    """In the child (``preexec_fn``): get ``sig`` when the starting thread dies (Linux), so a killed test run
    (SIGKILL, a CI timeout: atexit does not run then) leaves nothing behind. Start children from a long-lived
    thread."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
