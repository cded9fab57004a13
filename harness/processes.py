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
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import IO


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


def spawn_logged(command: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                 death_signal: signal.Signals | None) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start ``command`` in a session of its own, stdout and stderr appended to ``log_path`` after a header line;
    with ``death_signal``, the child gets it when the starting thread dies. Returns the process and the open log,
    which the caller closes."""
    log = open(log_path, "ab")  # noqa: SIM115 - the caller closes it with the process
    log.write(f"\n--- start {time.strftime('%H:%M:%S')}: {' '.join(command)}\n".encode())
    log.flush()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=partial(die_with_parent, death_signal) if death_signal else None)
    return process, log


def read_log(log_path: Path) -> str:
    """A process's log so far ("" before it wrote one)."""
    try:
        return log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
