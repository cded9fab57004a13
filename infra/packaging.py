"""Builds the Lambda package at synth time, without Docker.

Dependencies are installed with pip for the Lambda's platform (arm64,
manylinux wheels only) into a cache keyed by the requirements file, so only the
first synth on a machine pays for pip. The package directory is keyed by the
hash of everything in it, so CDK's asset hash changes exactly when the code,
the dependencies or the configuration change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import prefect_backlog
from prefect_backlog.config import Config

# Where the runtime code is: lambda/ in this repository, site-packages once the library is installed.
SOURCE_PACKAGE = Path(prefect_backlog.__file__).resolve().parent
LAMBDA_DIR = SOURCE_PACKAGE.parent
REQUIREMENTS = SOURCE_PACKAGE / "requirements.txt"  # package data: it travels with the code it serves
# The CDK app's directory (cdk runs the app there), like cdk.out: never inside an installed package.
BUILD_DIR = Path(os.environ.get("PREFECT_ECS_AUTOSCALER_BUILD_DIR") or Path.cwd() / ".build")
CONFIG_FILE_NAME = "publisher_config.json"
PYTHON_VERSION = "3.13"
PLATFORM = "manylinux2014_aarch64"


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _source_files() -> list[Path]:
    return sorted(p for p in SOURCE_PACKAGE.rglob("*.py"))


def install_dependencies() -> Path:
    """pip-install the package's requirements.txt for the Lambda platform, once per requirements content."""
    target = BUILD_DIR / f"deps-{_digest(REQUIREMENTS.read_bytes(), PLATFORM.encode(), PYTHON_VERSION.encode())}"
    if (target / ".complete").exists():
        return target
    staging = _staging_dir(target)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(staging), "--platform", PLATFORM, "--implementation", "cp",
               "--python-version", PYTHON_VERSION, "--only-binary=:all:", "-r", str(REQUIREMENTS)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"installing the Lambda's dependencies failed:\n{result.stderr.strip()}")
    (staging / ".complete").touch()
    if target.exists() and not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)  # left half-built by an interrupted run of an older version
    return _publish(staging, target)


def build_package(config: Config) -> Path:
    """A directory holding the handler package, its dependencies and the canonical configuration."""
    dependencies = install_dependencies()
    config_json = json.dumps(config.to_context(), indent=1, sort_keys=True).encode()
    sources = _source_files()
    key = _digest(dependencies.name.encode(), config_json,
                  *[str(p.relative_to(LAMBDA_DIR)).encode() + p.read_bytes() for p in sources])
    package = BUILD_DIR / f"package-{key}"
    if package.exists():
        return package
    staging = _staging_dir(package)
    shutil.copytree(dependencies, staging, ignore=shutil.ignore_patterns(".complete", "bin", "__pycache__"),
                    dirs_exist_ok=True)
    for source in sources:
        destination = staging / source.relative_to(LAMBDA_DIR)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    (staging / "prefect_backlog" / CONFIG_FILE_NAME).write_bytes(config_json)
    return _publish(staging, package)


def _staging_dir(final: Path) -> Path:
    """A fresh directory beside ``final``, this process's own: several synths may build at once."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=final.name + ".partial-", dir=BUILD_DIR))


def _publish(staging: Path, final: Path) -> Path:
    """Move a finished build into place in one rename; if another synth got there first, use its copy."""
    try:
        staging.rename(final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # same inputs, same content: theirs will do
    return final
