"""`warmfleet --config cluster.toml up` serves the models and deployments the file names, and a bad file
is refused before anything starts, naming its place."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

CONFIG = """
[settings]
grpc_port = 0
http_port = 0

[cluster]
builtin_models = false

[[models]]
name = "acme/echo"
runner = "echo"
options = { max_concurrency = 8 }

[[deployments]]
name = "acme/echo-prod"
model = "acme/echo"
min_instances = 1
max_instances = 2
autoscaling = { target_ongoing_requests = 4 }
"""


def run_cli(home, config, *args, timeout_s: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    env["WARMFLEET_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "warmfleet.cli", "--config", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def test_up_serves_what_the_file_names(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    up = run_cli(tmp_path / "home", config, "up")
    assert up.returncode == 0, up.stderr
    try:
        models = run_cli(tmp_path / "home", config, "models", "list").stdout
        assert "acme/echo" in models and "warmfleet/tiny-llama" not in models  # built-ins left out
        dep = json.loads(run_cli(tmp_path / "home", config, "deployments", "get", "acme/echo-prod", "--json").stdout)
        assert (dep["model"], dep["min_instances"], dep["max_instances"], dep["current_release"]) == (
            "acme/echo", 1, 2, 1)
        assert dep["autoscaling"] == {"target_ongoing_requests": 4.0}
        said = run_cli(tmp_path / "home", config, "predict", "acme/echo", "-i", "text=from the file")
        assert said.returncode == 0 and said.stdout.strip() == "from the file", said.stderr
        # A change made through the API survives down and up.
        assert run_cli(tmp_path / "home", config, "scale", "acme/echo-prod", "--max", "3").returncode == 0
        assert run_cli(tmp_path / "home", config, "down", timeout_s=120).returncode == 0
        again = run_cli(tmp_path / "home", config, "up")
        assert again.returncode == 0, again.stderr
        dep = json.loads(run_cli(tmp_path / "home", config, "deployments", "get", "acme/echo-prod", "--json").stdout)
        assert (dep["max_instances"], dep["current_release"]) == (3, 2)
    finally:
        assert run_cli(tmp_path / "home", config, "down", timeout_s=120).returncode == 0


def test_a_bad_file_is_refused_before_anything_starts(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG.replace('runner = "echo"', 'runner = "ech0"'))
    up = run_cli(tmp_path / "home", config, "up", timeout_s=60)
    assert up.returncode != 0 and "models[0].runner" in up.stderr and "ech0" in up.stderr, up.stderr
    assert not (tmp_path / "home" / "cluster.json").exists()
