"""`warmfleet up`, `down` and `status`: run the gateway process in the background and find it again."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from warmfleet.cluster_state import ClusterState, read_state
from warmfleet.settings import Settings


class LaunchError(Exception):
    """`up` or `down` could not do what was asked; the message says why, in one line."""


def log_path(settings: Settings) -> Path:
    return settings.home / "logs" / "gateway.log"


def healthy(target: str, timeout_s: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _alive(pid: int) -> bool:
    try:  # reap it first if it is our own exited child, so a zombie does not count as alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def running(settings: Settings) -> ClusterState | None:
    """The cluster `up` started from this home, if its process is alive."""
    state = read_state(settings)
    if state is None or not _alive(state.pid):
        return None
    return state


def settings_environ(settings: Settings) -> dict[str, str]:
    """Every setting as a ``WARMFLEET_*`` variable, so the background process gets all of them."""
    return {f"WARMFLEET_{f.name.upper()}": str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def up(settings: Settings, timeout_s: float = 180.0) -> ClusterState:
    """Start the gateway process in the background and wait until it serves. Idempotent."""
    state = running(settings)
    if state is not None and healthy(state.grpc_target):
        return state
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.state_path.unlink(missing_ok=True)
    log = log_path(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **settings_environ(settings))
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "warmfleet.cli", "serve"], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"the gateway exited with code {proc.returncode}; see {log}")
        state = read_state(settings)
        if state is not None and state.pid == proc.pid and healthy(state.grpc_target):
            return state
        time.sleep(0.25)
    proc.terminate()
    raise LaunchError(f"the gateway did not become healthy within {timeout_s:.0f} s; see {log}")


def down(settings: Settings, timeout_s: float = 60.0) -> bool:
    """Stop the cluster `up` started; False if none was running."""
    state = running(settings)
    if state is None:
        settings.state_path.unlink(missing_ok=True)
        return False
    os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(state.pid):
            return True
        time.sleep(0.2)
    os.kill(state.pid, signal.SIGKILL)
    return True
