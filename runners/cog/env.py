"""Python environments for Cog models' ``build.python_packages``: installed once per node, keyed by the
packages' digest, shared by every version that asks for the same ones.

An environment is a ``pip install --target`` folder laid on ``PYTHONPATH`` before the node's own packages
(so a model's pin wins), beside the node's interpreter, which already has cog and coglet. Installs are
serialised per environment by a file lock, so two agents on one machine install once; a folder is used
only once its install finished (a marker written last).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runners.cog.config import CogConfig

DONE_MARKER = ".installed"
INSTALL_TIMEOUT_S = 1800.0


class InstallFailed(Exception):
    """pip could not install a model's packages; the message carries pip's output."""


def ensure_environment(config: CogConfig, envs_dir: Path, bundle_dir: Path) -> Path | None:
    """The folder holding ``config``'s packages, installing them first if this node has not yet; None when
    the model asks for none. pip runs in ``bundle_dir`` (a requirement may be a wheel shipped in the model)
    with the node's own pip configuration (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``).
    Raises ``InstallFailed`` with pip's output."""
    digest = config.requirements_digest
    if not digest:
        return None
    target = envs_dir / digest
    if (target / DONE_MARKER).exists():
        return target
    envs_dir.mkdir(parents=True, exist_ok=True)
    with (envs_dir / f"{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / DONE_MARKER).exists():
            _install(config.python_packages, target, bundle_dir)
    return target


def _install(packages: tuple[str, ...], target: Path, cwd: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    requirements = target.with_suffix(".requirements.txt")
    requirements.write_text("\n".join(packages) + "\n")
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--target", str(target), "-r", str(requirements)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
                              cwd=cwd,
                              env={**os.environ, "PIP_NO_WARN_SCRIPT_LOCATION": "1"})
    except subprocess.TimeoutExpired as err:
        shutil.rmtree(target, ignore_errors=True)
        raise InstallFailed(f"pip install did not finish in {INSTALL_TIMEOUT_S:g} s") from err
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise InstallFailed(f"pip install of {', '.join(packages)} failed (exit {done.returncode}):\n"
                            f"{done.stdout[-4000:]}{done.stderr[-4000:]}")
    (target / DONE_MARKER).write_text("\n".join(packages) + "\n")


def python_path(bundle_dir: Path, env_dir: Path | None) -> str:
    """``PYTHONPATH`` for a model's processes: its own code, its packages, then what was there."""
    parts = [str(bundle_dir)] + ([str(env_dir)] if env_dir else [])
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
