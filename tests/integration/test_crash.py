"""Processes die and nothing accepted is lost: `kill -9` of real processes of a `warmfleet up` cluster
(its own Ray, its own home) under load, then every prediction's final status and output is checked."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable
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
    """The processes below ``under`` (the Ray head `up` started: Ray's processes are its children) that
    Ray titles ``ray::<title>`` (an actor's process); other clusters on the machine are not counted."""
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


@dataclass
class Cluster:
    """A `warmfleet up` cluster of its own: its client, its Ray head's pid, its gateway's pid and its CLI."""

    client: Client
    head: int
    gateway: int
    cli: Callable[..., subprocess.CompletedProcess]
    home: Path

    def up_again(self) -> None:
        """`up` (after a crash): the state file then names the new gateway, which the client follows."""
        up = self.cli("up")
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((self.home / "cluster.json").read_text())
        self.gateway = state["pid"]
        self.client = Client(state["grpc_target"], (self.home / "admin_token").read_text().strip())


def home_cli(tmp_path: Path, config_text: str = CONFIG) -> Callable[..., subprocess.CompletedProcess]:
    """The CLI on a home of its own (``tmp_path/home``) and a cluster config (this module's echo-only one)."""
    config = tmp_path / "cluster.toml"
    config.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    env["WARMFLEET_HOME"] = str(tmp_path / "home")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "warmfleet.cli", "--config", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=180)

    return cli


@pytest.fixture
def cluster(tmp_path):
    cli = home_cli(tmp_path)
    up = cli("up")
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "home" / "cluster.json").read_text())
    client = Client(state["grpc_target"], (tmp_path / "home" / "admin_token").read_text().strip())
    try:
        yield Cluster(client, state["ray_head"]["pid"], state["pid"], cli, tmp_path / "home")
    finally:
        down = cli("down")
        assert down.returncode == 0, down.stdout + down.stderr


def processing(client: Client, predictions: list) -> bool:
    return all(client.predictions.get(p.id).status == "processing" for p in predictions)


def test_a_killed_controller_restarts_and_nothing_is_lost_and_warm_instances_stay_warm(cluster):
    client, head = cluster.client, cluster.head
    [controller_pid] = ray_processes("_RayController", head)
    [agent_pid] = ray_processes("_RayNodeAgent", head)
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
    restarted = until(lambda: ray_processes("_RayController", head) - {controller_pid}, 60,
                      "Ray to restart the controller")
    assert len(restarted) == 1
    # The new controller took in what the agent runs: the same instance, on the same agent process.
    until(lambda: _instances_or_none(client) == warm, 60, "the restarted controller to list the instance")
    assert ray_processes("_RayNodeAgent", head) == {agent_pid}
    # The gateway follows the new life's routing table: the instance it took in takes work.
    for n in range(5):
        assert client.run("acme/echo", {"text": f"a{n}"}, wait_s=20) == f"a{n}"
    # And it governs again: a model created now gets an instance and answers.
    client.models.create("acme/echo-two", "echo")
    assert client.run("acme/echo-two", {"text": "after"}) == "after"


def test_a_killed_agent_is_replaced_and_what_ran_on_it_runs_once_more_with_the_same_output(cluster):
    client = cluster.client
    [agent_pid] = ray_processes("_RayNodeAgent", cluster.head)
    running = [client.predictions.create("acme/echo", {"text": f"r{n}", "delay_ms": 3000}) for n in range(6)]
    until(lambda: processing(client, running), 30, "the predictions to run")

    os.kill(agent_pid, signal.SIGKILL)
    queued = [client.predictions.create("acme/echo", {"text": f"q{n}"}) for n in range(6)]

    for n, created in enumerate(running):
        done = client.predictions.wait(created, timeout_s=90)
        assert (done.status, done.output, done.attempt) == ("succeeded", f"r{n}", 2), done.error
        assert "was lost while it ran: running it again (attempt 2)" in done.logs
    for n, created in enumerate(queued):  # sent to the dead agent before its stream broke: re-runs, or not
        done = client.predictions.wait(created, timeout_s=90)
        assert (done.status, done.output) == ("succeeded", f"q{n}") and done.attempt in (1, 2), done.error
    [replacement] = until(lambda: ray_processes("_RayNodeAgent", cluster.head) - {agent_pid}, 60,
                          "a new agent on the node")
    assert not Path(f"/proc/{agent_pid}").exists()


def test_a_killed_gateway_loses_no_accepted_prediction_and_up_takes_them_all_up(cluster):
    client = cluster.client
    [agent_pid] = ray_processes("_RayNodeAgent", cluster.head)
    # 15 run (the instance's 16 slots but the one kept as headroom for other accounts), 8 wait in the
    # queue: both kinds are in flight when the gateway dies.
    running = [client.predictions.create("acme/echo", {"text": f"r{n}", "delay_ms": 4000}) for n in range(15)]
    queued = [client.predictions.create("acme/echo", {"text": f"q{n}", "delay_ms": 200}) for n in range(8)]
    until(lambda: processing(client, running), 30, "the first 15 to run")

    os.kill(cluster.gateway, signal.SIGKILL)
    until(lambda: not Path(f"/proc/{cluster.gateway}").exists(), 10, "the gateway to exit")
    cluster.up_again()

    client = cluster.client
    expected = [(f"r{n}", p) for n, p in enumerate(running)] + [(f"q{n}", p) for n, p in enumerate(queued)]
    for name, created in expected:
        done = client.predictions.wait(created, timeout_s=90)
        assert (done.status, done.output) == ("succeeded", name), done.error
        # What still ran on the agent was followed there, not run again; the queued ones ran once.
        assert done.attempt == 1, done.logs
    assert ray_processes("_RayNodeAgent", cluster.head) == {agent_pid}  # the agent, warm, outlived it
    again = client.predictions.create("acme/echo", {"text": "r0", "delay_ms": 4000}, id=running[0].id)
    assert again.id == running[0].id and again.output == "r0"  # the client id still names the same one
    assert client.run("acme/echo", {"text": "after"}) == "after"


def _instances_or_none(client: Client) -> set[str] | None:
    try:
        return {i.id for i in client.cluster.instances() if i.model == "acme/echo"}
    except Exception:  # noqa: BLE001 - the controller is still restarting: UNAVAILABLE, asked again
        return None


def test_down_leaves_no_agent_or_controller_behind(tmp_path):
    cli = home_cli(tmp_path)
    assert cli("up").returncode == 0
    try:
        head = json.loads((tmp_path / "home" / "cluster.json").read_text())["ray_head"]["pid"]
        ours = ray_processes("_RayNodeAgent", head) | ray_processes("_RayController", head)
        assert len(ours) == 2
    finally:
        assert cli("down").returncode == 0
    until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ours), 30, "the cluster's actors to exit")
