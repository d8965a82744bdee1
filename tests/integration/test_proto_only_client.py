"""Any language can use the cluster with the .proto files alone: shown here with a client that is given
nothing of the project but those files (run as a separate process, outside the source tree)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def test_reflection_health_and_a_prediction_from_protos_alone(running, tmp_path):
    proto_dir = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", proto_dir)
    script = tmp_path / "client.py"
    shutil.copy(ROOT / "tests/integration/proto_only_client.py", script)
    out = tmp_path / "gen"
    out.mkdir()
    target = f"127.0.0.1:{running.gateway.port}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", str(script), str(proto_dir), target, running.api.token, str(out),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = stdout.decode()
    assert proc.returncode == 0, text
    lines = dict(line.split(": ", 1) for line in text.strip().splitlines() if ": " in line)
    assert set(lines["services"].split(",")) >= {
        "warmfleet.v1.Predictions", "warmfleet.v1.Models", "warmfleet.v1.Cluster", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection"}
    assert lines["health"] == "SERVING"
    assert lines["status"] == "STATUS_SUCCEEDED"
    assert lines["output"] == "from protos"
    assert lines["project modules imported"] == "none"
