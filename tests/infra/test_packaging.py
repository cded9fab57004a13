"""The Lambda package build is safe when several synths run at once (a fresh clone, parallel stacks)."""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from infra import packaging
from prefect_backlog.config import parse_config

CONFIG = parse_config({"prefectApiUrl": "https://prefect.internal/api",
                       "queues": [{"workPool": "p", "workQueue": "q", "cluster": "c", "service": "s",
                                   "maxCapacity": 2}]})


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty build cache, and a stand-in for pip that takes a while, as pip does, before it writes."""
    monkeypatch.setattr(packaging, "BUILD_DIR", tmp_path / ".build")
    all_started = threading.Barrier(4, timeout=10)

    def slow_pip(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        all_started.wait()  # every synth has begun its own install before any finishes
        target = Path(command[command.index("--target") + 1])
        (target / "requests").mkdir(parents=True)
        (target / "requests" / "__init__.py").write_text("")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(packaging.subprocess, "run", slow_pip)
    return tmp_path / ".build"


def test_concurrent_builds_end_with_one_complete_package_and_no_leftovers(build_dir: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        packages = list(pool.map(lambda _: packaging.build_package(CONFIG), range(4)))
    assert len(set(packages)) == 1
    (package,) = set(packages)
    assert (package / "requests" / "__init__.py").exists()
    assert (package / "prefect_backlog" / packaging.CONFIG_FILE_NAME).exists()
    assert sorted(p.name.split("-")[0] for p in build_dir.iterdir()) == ["deps", "package"]  # no staging left


def test_a_failed_install_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaging, "BUILD_DIR", tmp_path / ".build")
    monkeypatch.setattr(packaging.subprocess, "run",
                        lambda command, **_: subprocess.CompletedProcess(command, 1, "", "no matching wheel"))
    with pytest.raises(RuntimeError, match="no matching wheel"):
        packaging.install_dependencies()
    assert list((tmp_path / ".build").iterdir()) == []
