"""What every bench scenario shares: a private cluster, a client of it (for ``warmfleet.loadgen``), and a
record of the machine and code measured."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from warmfleet.cli import launch
from warmfleet.client import Client
from warmfleet.cluster_state import ClusterState
from warmfleet.settings import Settings

CLUSTER = "cluster"


@dataclass(frozen=True)
class Target:
    """A server under load: its name in the results, its address, and the token file it needs."""

    name: str
    address: str
    token_file: Path | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        token = self.token_file.read_text().strip() if self.token_file else ""
        return (("authorization", f"Bearer {token}"),) if token else ()

    def client(self) -> Client:
        """A :class:`warmfleet.Client` of this target, with its token: what ``warmfleet.loadgen`` uses."""
        token = self.token_file.read_text().strip() if self.token_file else ""
        return Client(self.address, token or None)


def cluster_settings(home: Path) -> Settings:
    """A cluster of its own: a fresh home, a free port, and a local Ray that no one else shares."""
    return Settings(home=home, grpc_port=0, http_port=0, ray_address="local")


def start_cluster(settings: Settings) -> tuple[ClusterState, Target]:
    """``warmfleet up`` in the background (``launch.up``); the target carries its admin token file."""
    state = launch.up(settings)
    return state, Target(CLUSTER, state.grpc_target, Path(state.admin_token_path))


@contextlib.contextmanager
def private_home() -> Iterator[Settings]:
    """Settings for a cluster of its own, in a temporary home removed afterwards (baselines that load
    the generated tiny models run inside it too, after the cluster stops)."""
    with tempfile.TemporaryDirectory(prefix="warmfleet-bench-") as home:
        yield cluster_settings(Path(home))


@contextlib.contextmanager
def running_cluster(settings: Settings) -> Iterator[Target]:
    """``warmfleet up`` on ``settings`` for the block, always brought down after it."""
    try:
        _, target = start_cluster(settings)
        yield target
    finally:
        launch.down(settings)


class Report:
    """A scenario's JSON report: the command, the machine, when it ran; ``write`` adds its sections."""

    def __init__(self, scenario: str, argv: list[str] | None) -> None:
        self.scenario = scenario
        self.command = f"python -m bench.{scenario} " + " ".join(sys.argv[1:] if argv is None else argv)
        self.started_at = time.time()
        self.machine = machine_info()

    def write(self, out: Path, **sections: Any) -> dict[str, Any]:
        report = {"scenario": self.scenario, "command": self.command, "started_at": self.started_at,
                  "wall_s": time.time() - self.started_at, "machine": self.machine, **sections}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{self.scenario}.json").write_text(json.dumps(report, indent=2) + "\n")
        return report


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: the machine, the versions, and the code measured."""
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu": _cpu_model(), "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("warmfleet", "grpcio", "protobuf", "ray")},
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # Tracked files changed since that commit: what is measured is the working tree.
        "git_modified": _git("diff", "--name-only", "HEAD").split(),
        "loadavg_1m_at_start": os.getloadavg()[0],
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


