"""The README's first command, as a user runs it: `warmfleet up`, predictions from the CLI, `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
