"""Processes die and nothing accepted is lost: `kill -9` of real processes of a `warmfleet up` cluster
(its own Ray, its own home) under load, then every prediction's final status and output is checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warmfleet.client import Client

pytestmark = pytest.mark.integration

CONFIG = """
[settings]
grpc_port = 0
http_port = 0
ray_address = "local"  # a Ray of its own: never join another cluster running on this machine

[cluster]
builtin_models = false

[[models]]
name = "acme/echo"
runner = "echo"
options = { max_concurrency = 16 }
"""


def ray_processes(title: str, under: int) -> set[int]:
    """The processes below ``under`` (a gateway: its local Ray's processes are its children) that Ray
    titles ``ray::<title>`` (an actor's process); other clusters on the machine are not counted."""
    parents, titles = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                titles[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == under:
                return True
        return False

    return {pid for pid, cmdline in titles.items() if f"ray::{title}" in cmdline and below(pid)}


def until(condition, timeout_s: float, what: str):
    """Poll ``condition`` (a real process elsewhere changes: there is no event to wait on) until true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def cluster(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    env["WARMFLEET_HOME"] = str(tmp_path / "home")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "warmfleet.cli", "--config", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=180)

    up = cli("up")
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "home" / "cluster.json").read_text())
    client = Client(state["grpc_target"], (tmp_path / "home" / "admin_token").read_text().strip())
    try:
        yield client, state["pid"]
    finally:
        down = cli("down")
        assert down.returncode == 0, down.stdout + down.stderr


def test_a_killed_controller_restarts_and_nothing_is_lost_and_warm_instances_stay_warm(cluster):
    client, gateway = cluster
    [controller_pid] = ray_processes("_RayController", gateway)
    [agent_pid] = ray_processes("_RayNodeAgent", gateway)
    warm = {i.id for i in client.cluster.instances()}
    assert len(warm) == 1
    running = [client.predictions.create("acme/echo", {"text": f"r{n}", "delay_ms": 1500}) for n in range(8)]

    os.kill(controller_pid, signal.SIGKILL)
    # While it is away (and after), predictions are accepted and run on the instance their router knows.
    during = [client.predictions.create("acme/echo", {"text": f"d{n}"}) for n in range(8)]

    for n, created in enumerate(running):
        done = client.predictions.wait(created, timeout_s=60)
        assert (done.status, done.output) == ("succeeded", f"r{n}"), done.error
    for n, created in enumerate(during):
        done = client.predictions.wait(created, timeout_s=60)
        assert (done.status, done.output) == ("succeeded", f"d{n}"), done.error
    restarted = until(lambda: ray_processes("_RayController", gateway) - {controller_pid}, 60,
                      "Ray to restart the controller")
    assert len(restarted) == 1
    # The new controller took in what the agent runs: the same instance, on the same agent process.
    until(lambda: _instances_or_none(client) == warm, 60, "the restarted controller to list the instance")
    assert ray_processes("_RayNodeAgent", gateway) == {agent_pid}
    # The gateway follows the new life's routing table: the instance it took in takes work.
    for n in range(5):
        assert client.run("acme/echo", {"text": f"a{n}"}, wait_s=20) == f"a{n}"
    # And it governs again: a model created now gets an instance and answers.
    client.models.create("acme/echo-two", "echo")
    assert client.run("acme/echo-two", {"text": "after"}) == "after"


def _instances_or_none(client: Client) -> set[str] | None:
    try:
        return {i.id for i in client.cluster.instances() if i.model == "acme/echo"}
    except Exception:  # noqa: BLE001 - the controller is still restarting: UNAVAILABLE, asked again
        return None


def test_down_leaves_no_agent_or_controller_behind(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    env["WARMFLEET_HOME"] = str(tmp_path / "home")
    run = [sys.executable, "-m", "warmfleet.cli", "--config", str(config)]
    assert subprocess.run([*run, "up"], env=env, capture_output=True, timeout=180).returncode == 0
    try:
        gateway = json.loads((tmp_path / "home" / "cluster.json").read_text())["pid"]
        ours = ray_processes("_RayNodeAgent", gateway) | ray_processes("_RayController", gateway)
        assert len(ours) == 2
    finally:
        assert subprocess.run([*run, "down"], env=env, capture_output=True, timeout=180).returncode == 0
    until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ours), 30, "the cluster's actors to exit")
