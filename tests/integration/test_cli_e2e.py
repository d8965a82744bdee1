"""The README's first command, as a user runs it: `warmfleet up`, predictions from the CLI, `down`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    env.update(WARMFLEET_HOME=str(home), WARMFLEET_GRPC_PORT="0", WARMFLEET_HTTP_PORT="0")

    def run(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "warmfleet.cli", *args], env=env, capture_output=True,
                              text=True, timeout=timeout_s)

    up = run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield run, home, up.stdout
    finally:
        down = run("down", timeout_s=120)
        assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr


def test_up_prints_the_endpoint_and_the_token_file(cli):
    _, home, out = cli
    state = json.loads((home / "cluster.json").read_text())
    assert state["grpc_target"] in out
    assert str(home / "admin_token") in out
    assert oct((home / "admin_token").stat().st_mode & 0o777) == "0o600"


def test_the_home_is_readable_by_the_operator_only_after_predictions_and_accounts(cli):
    run, home, _ = cli
    assert run("predict", "warmfleet/echo", "-i", "text=kept private").returncode == 0
    made = run("accounts", "create", "dora")
    assert made.returncode == 0 and made.stdout.startswith("wf_"), made.stderr
    modes = {p.relative_to(home).as_posix(): p.stat().st_mode & 0o777 for p in home.rglob("*")}
    assert {"accounts.sqlite3", "predictions.sqlite3", "admin_token", "cluster.json"} <= set(modes)
    loose = {path: oct(mode) for path, mode in modes.items()
             if mode != (0o700 if (home / path).is_dir() else 0o600)}
    assert loose == {} and home.stat().st_mode & 0o777 == 0o700


def test_accounts_and_tokens_from_the_cli(cli):
    run, _, _ = cli
    made = run("accounts", "create", "erin")
    assert made.returncode == 0, made.stderr
    erin = made.stdout.strip()
    who = run("--token", erin, "whoami")
    assert who.returncode == 0 and who.stdout.startswith("erin (user, acct_") and "token role user" in who.stdout
    second = run("--token", erin, "tokens", "create", "--name", "ci")  # a user makes its own
    assert second.returncode == 0, second.stderr
    listed = json.loads(run("--token", erin, "tokens", "list", "--json").stdout)
    assert [(t["name"], t["account"], t["revoked_at"]) for t in listed] == [("default", "erin", None),
                                                                             ("ci", "erin", None)]
    revoked = run("--token", erin, "tokens", "revoke", listed[1]["id"])
    assert revoked.returncode == 0 and listed[1]["id"] in revoked.stdout
    refused = run("--token", second.stdout.strip(), "whoami")
    assert refused.returncode == 1 and "was revoked" in refused.stderr
    assert run("--token", erin, "accounts", "create", "mallory").returncode == 1  # admin only


def test_predict_prints_the_output(cli):
    run, _, _ = cli
    result = run("predict", "warmfleet/echo", "-i", "text=hello from the cli")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from the cli"


def test_predict_streams_chunks_and_async_then_get(cli):
    run, _, _ = cli
    streamed = run("predict", "warmfleet/echo", "-i", "text=abcdef", "-i", "chunks=3", "--stream")
    assert streamed.returncode == 0 and streamed.stdout.strip() == "abcdef", streamed.stderr
    created = run("predict", "warmfleet/echo", "-i", "text=later", "--async")
    assert created.returncode == 0, created.stderr
    prediction_id = created.stdout.split()[0]
    got = run("predictions", "get", prediction_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["id"] == prediction_id


@pytest.mark.parametrize("args, message", [
    (["predict", "nobody/nothing", "-i", "text=x"], "nobody/nothing"),
    (["predict", "warmfleet/echo", "-i", "delay_ms=-1", "-i", "text=x"], "input.delay_ms"),
    (["--token", "wf_wrong", "predict", "warmfleet/echo", "-i", "text=x"], "unknown token"),
])
def test_errors_are_one_line_naming_the_problem(cli, args, message):
    run, _, _ = cli
    result = run(*args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_cluster_streams_from_the_tiny_llama(cli):
    run, home, _ = cli
    assert (home / "models" / "tiny-llama" / "config.json").exists(), "up generates the tiny model"
    streamed = run("predict", "warmfleet/tiny-llama", "-i", "prompt=the quick brown fox", "-i", "max_new_tokens=16",
                   "-i", "min_new_tokens=16", "-i", "temperature=0", "--stream")
    assert streamed.returncode == 0, streamed.stderr
    again = run("predict", "warmfleet/tiny-llama", "-i", "prompt=the quick brown fox", "-i", "max_new_tokens=16",
                "-i", "min_new_tokens=16", "-i", "temperature=0")
    assert again.returncode == 0 and again.stdout.strip() == streamed.stdout.strip() != ""


def test_the_default_cluster_draws_with_a_controlnet_then_upscales_from_the_cli(cli, tmp_path):
    import numpy as np
    from PIL import Image

    run, _, _ = cli
    photo = tmp_path / "photo.png"
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((16, 16), np.uint8))).save(photo)
    drawn = run("predict", "warmfleet/tiny-sd", "-i", "prompt=a lighthouse", "-i", "seed=1",
                "-i", 'controlnets=[{"type": "canny"}]', "-i", f"controlnets[0].image=@{photo}",
                "-o", str(tmp_path / "drawn"), "--stream")
    assert drawn.returncode == 0, drawn.stderr
    assert "progress 10/10" in drawn.stderr  # the default version's 10 steps, one event each
    [image] = sorted((tmp_path / "drawn").iterdir())
    assert Image.open(image).size == (64, 64)
    upscaled = run("predict", "warmfleet/tiny-esrgan", "-i", f"image=@{image}", "-i", "scale=2",
                   "-o", str(tmp_path / "big"))
    assert upscaled.returncode == 0, upscaled.stderr
    [big] = sorted((tmp_path / "big").iterdir())
    assert Image.open(big).size == (128, 128)


DEFAULT_MODELS = {"warmfleet/echo", "warmfleet/tiny-llama", "warmfleet/tiny-sd", "warmfleet/tiny-esrgan"}


def test_nodes_and_instances_list_the_fleet_serving_the_default_models(cli):
    run, _, _ = cli
    listed = run("instances", "--json")
    assert listed.returncode == 0, listed.stderr
    instances = json.loads(listed.stdout)
    assert {i["model"] for i in instances} >= DEFAULT_MODELS  # each keeps min_instances=1 warm
    assert all(i["max_concurrency"] >= 1 and 0 <= i["in_flight"] <= i["max_concurrency"] for i in instances)
    nodes = json.loads(run("nodes", "--json").stdout)
    assert {i["node_id"] for i in instances} <= {n["id"] for n in nodes}
    assert sum(n["instance_count"] for n in nodes) == len(instances)
    table = run("nodes")
    assert table.returncode == 0, table.stderr
    assert all(n["id"] in table.stdout and n["accelerator"] in table.stdout for n in nodes)
    rows = run("instances").stdout
    echo = next(i for i in instances if i["model"] == "warmfleet/echo")
    assert f"│ {echo['id']} " in rows and echo["version"][:12] in rows


def test_top_once_prints_one_frame_of_nodes_instances_and_queues(cli):
    run, _, _ = cli
    assert run("predict", "warmfleet/echo", "-i", "text=for top").returncode == 0
    frame = run("top", "--once")
    assert frame.returncode == 0, frame.stderr
    out = frame.stdout
    assert "warmfleet top  gateway 127.0.0.1:" in out and "error:" not in out
    nodes = json.loads(run("nodes", "--json").stdout)
    assert all(n["id"] in out for n in nodes)
    by_model = out[out.index("instances by model"):out.index("\nqueues")]
    assert all(model in by_model for model in DEFAULT_MODELS)
    queues = out[out.index("\nqueues"):]
    echo_row = next(line for line in queues.splitlines() if "│ warmfleet/echo " in line)
    succeeded = int(echo_row.strip("│ ").split("│")[3])
    assert succeeded >= 1, echo_row  # the gateway's metrics were read, not "metrics not available"


def _tmux_capture(tmux, session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session).stdout


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="tmux is not installed, so `top` cannot be shown in a terminal")
def test_top_refreshes_in_a_terminal_and_quits_on_ctrl_c(cli, tmp_path):
    run, home, _ = cli
    socket, session = f"warmfleet-test-{os.getpid()}", "top"

    def tmux(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=10)

    command = (f"env WARMFLEET_HOME={shlex.quote(str(home))} {shlex.quote(sys.executable)} -m warmfleet.cli "
               "top --interval 0.5; echo top exited $?; sleep 60")
    started = tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "45", "-c", os.getcwd(), command)
    assert started.returncode == 0, started.stderr
    try:
        first = _wait_for(lambda: _tmux_capture(tmux, session), "warmfleet/tiny-esrgan", timeout_s=30)
        time.sleep(1.5)
        second = _tmux_capture(tmux, session)
        (tmp_path / "top_capture.txt").write_text(second)
        nodes = json.loads(run("nodes", "--json").stdout)
        assert all(n["id"] in second for n in nodes), second
        assert all(model in second for model in DEFAULT_MODELS), second
        assert _clock(second) > _clock(first), f"no refresh in 1.5 s:\n{first}\n{second}"
        tmux("send-keys", "-t", session, "C-c")
        _wait_for(lambda: _tmux_capture(tmux, session), "top exited 0", timeout_s=10)
    finally:
        tmux("kill-server")


def _clock(capture: str) -> str:
    match = re.search(r"warmfleet top  gateway \S+  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", capture)
    assert match, f"no header line in:\n{capture}"
    return match.group(1)


def _wait_for(read, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = read()
        if text in seen:
            return seen
        assert time.monotonic() < deadline, f"{text!r} not shown in {timeout_s} s:\n{seen}"
        time.sleep(0.2)


def test_models_and_deployments_from_the_cli(cli):
    run, _, _ = cli
    created = run("models", "create", "acme/cli-echo", "--runner", "echo", "-O", "max_concurrency=2")
    assert created.returncode == 0 and created.stdout.startswith("acme/cli-echo version "), created.stderr
    version = created.stdout.split()[-1]
    dep = run("deployments", "create", "acme/cli-prod", "--model", "acme/cli-echo", "--min", "0", "--max", "2",
              "--target", "3", "--scale-to-zero-delay", "30")
    assert dep.returncode == 0 and "acme/cli-prod" in dep.stdout, dep.stderr
    scaled = run("scale", "acme/cli-prod", "--min", "1")
    assert scaled.returncode == 0, scaled.stderr
    got = json.loads(run("deployments", "get", "acme/cli-prod", "--json").stdout)
    assert (got["model"], got["version"][:12], got["current_release"], got["min_instances"]) == (
        "acme/cli-echo", version[:12], 2, 1)
    assert got["autoscaling"] == {"target_ongoing_requests": 3.0, "scale_to_zero_delay_s": 30.0}
    assert "acme/cli-prod" in run("deployments", "list").stdout
    hardware = run("hardware")
    assert hardware.returncode == 0 and "cpu" in hardware.stdout
    warm = run("deployments", "create", "acme/cli-warm", "--model", "acme/cli-echo", "--min", "1", "--wait")
    assert warm.returncode == 0, warm.stderr
    states = [i["state"] for i in json.loads(run("instances", "--json").stdout) if i["model"] == "acme/cli-warm"]
    assert states in (["idle"], ["processing"])  # --wait returned once its one instance was warm
    said = run("predict", "acme/cli-warm", "--deployment", "-i", "text=by deployment")
    assert said.returncode == 0 and said.stdout.strip() == "by deployment", said.stderr
    assert run("deployments", "delete", "acme/cli-warm").returncode == 0
    refused = run("models", "delete", "acme/cli-echo")
    assert refused.returncode != 0 and "acme/cli-prod" in refused.stderr  # a deployment still serves it
    assert run("deployments", "delete", "acme/cli-prod").returncode == 0
    assert run("models", "delete", "acme/cli-echo").returncode == 0


def test_drain_refuses_the_only_node_and_names_unknown_ones(cli):
    run, _, _ = cli
    [node] = json.loads(run("nodes", "--json").stdout)
    only = run("drain", node["id"])
    assert only.returncode != 0 and "error:" in only.stderr and "last" in only.stderr.lower(), only.stderr
    unknown = run("drain", "no-such-node")
    assert unknown.returncode != 0 and "no-such-node" in unknown.stderr
