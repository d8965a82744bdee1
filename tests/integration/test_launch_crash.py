"""`warmfleet up` is crash-safe: Ray runs in a head process of its own, so a gateway killed by `kill -9`
takes no Ray process with it. The next `up` starts only a gateway, on the same warm controller and
agents; after the head is killed too, `up` removes what the crash left and starts afresh; and `down`
leaves no process behind (checked by pid, by session and through every command line in /proc)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.integration.test_crash import home_cli, ray_processes, until
from warmfleet.cli.launch import ray_temp_dir
from warmfleet.client import Client
from warmfleet.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path):
    """``run(*args)``: the CLI on a home of its own, with the echo-only cluster config; ``down`` at the end."""
    run = home_cli(tmp_path)
    try:
        yield run, tmp_path / "home"
    finally:
        run("down")
        shutil.rmtree(ray_temp_dir(Settings(home=tmp_path / "home")), ignore_errors=True)  # Ray's logs


def up(run, home: Path) -> dict:
    started = run("up")
    assert started.returncode == 0, started.stdout + started.stderr
    return json.loads((home / "cluster.json").read_text())


def down(run) -> None:
    stopped = run("down")
    assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped", stopped.stdout + stopped.stderr


def client(home: Path, state: dict) -> Client:
    return Client(state["grpc_target"], (home / "admin_token").read_text().strip())


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that init has not reaped yet has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def processes_of(state: dict) -> set[int]:
    """Every running process of the cluster ``state`` records: its gateway, its Ray head, every process
    in the head's session (``up`` starts the head in a session of its own), and any whose command line
    names the head's temporary folder (its session folders are in it) or its GCS address."""
    head = state["ray_head"]
    found = {state["pid"], head["pid"]}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            session_id = int((proc / "stat").read_text().rpartition(")")[2].split()[3])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session_id == head["pid"] or head["temp_dir"] in cmdline or head["address"] in cmdline:
            found.add(int(proc.name))
    return {pid for pid in found if running(pid)}


def test_a_killed_gateway_comes_back_on_the_same_warm_agents_and_down_leaves_nothing(cli):
    run, home = cli
    first = up(run, home)
    head = first["ray_head"]["pid"]
    [controller] = ray_processes("_RayController", head)  # Ray's processes are the head's, not the gateway's
    [agent] = ray_processes("_RayNodeAgent", head)
    warm = {(i.id, i.node_id) for i in client(home, first).cluster.instances()}
    assert len(warm) == 1
    assert client(home, first).run("acme/echo", {"text": "before"}) == "before"
    cluster = processes_of(first)

    os.kill(first["pid"], signal.SIGKILL)
    until(lambda: not running(first["pid"]), 10, "the gateway to die")
    assert running(head) and ray_processes("_RayController", head) == {controller}
    assert ray_processes("_RayNodeAgent", head) == {agent}, "the agent died with the gateway"

    second = up(run, home)
    assert second["pid"] != first["pid"] and second["ray_head"] == first["ray_head"]
    # The new gateway joined the same Ray and found the same controller, agent and warm instance.
    assert ray_processes("_RayController", head) == {controller}
    assert ray_processes("_RayNodeAgent", head) == {agent}
    assert {(i.id, i.node_id) for i in client(home, second).cluster.instances()} == warm
    assert client(home, second).run("acme/echo", {"text": "after"}) == "after"
    cluster |= processes_of(second)
    assert {controller, agent, head, second["pid"]} <= cluster

    down(run)
    until(lambda: not any(running(pid) for pid in cluster), 30, "every process of the cluster to exit")
    assert processes_of(second) == set()
    assert not (home / "cluster.json").exists()


def test_up_after_the_gateway_and_the_ray_head_were_killed_cleans_up_and_starts_afresh(cli):
    run, home = cli
    first = up(run, home)
    crashed = processes_of(first)
    [agent] = ray_processes("_RayNodeAgent", first["ray_head"]["pid"])
    os.kill(first["pid"], signal.SIGKILL)
    os.kill(first["ray_head"]["pid"], signal.SIGKILL)
    until(lambda: not running(first["ray_head"]["pid"]), 10, "the Ray head to die")

    second = up(run, home)
    assert second["ray_head"]["pid"] != first["ray_head"]["pid"]
    assert second["ray_head"]["address"] != first["ray_head"]["address"]
    # What the crash left (Ray's dashboard and runtime-env agents outlive their raylet) is gone: `up` ended it.
    until(lambda: not any(running(pid) for pid in crashed), 10, "what the crashed cluster left to be gone")
    [new_agent] = ray_processes("_RayNodeAgent", second["ray_head"]["pid"])
    assert new_agent != agent
    assert client(home, second).run("acme/echo", {"text": "afresh"}) == "afresh"
    cluster = processes_of(second)

    down(run)
    until(lambda: not any(running(pid) for pid in cluster), 30, "every process of the cluster to exit")
    assert processes_of(first) | processes_of(second) == set()
