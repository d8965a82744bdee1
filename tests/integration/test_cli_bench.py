"""`warmfleet bench` against a running gateway, as a user runs it (a process of its own, with --url and
--token), its report checked against the predictions the gateway holds for that token afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ECHO, LLM, Api, user
from warmfleet.v1 import predictions_pb2 as P

pytestmark = pytest.mark.integration


async def bench(running, token: str, *args: str, timeout_s: float = 180) -> tuple[int, str, str]:
    """``python -m warmfleet.cli --url ... --token ... bench ARGS``: exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    env["WARMFLEET_HOME"] = str(running.settings.home / "bench-cli")  # no cluster.json: the URL given counts
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmfleet.cli", "--url", f"127.0.0.1:{running.gateway.port}", "--token", token,
        "bench", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode, out.decode(), err.decode()


async def listed(api: Api) -> list[Any]:
    """Every prediction the gateway lists for ``api``'s token, all pages."""
    found, cursor = [], ""
    while True:
        page = await api.predictions.ListPredictions(P.ListPredictionsRequest(page_size=100, cursor=cursor),
                                                     metadata=api.md)
        found += page.predictions
        if not page.next_cursor:
            return found
        cursor = page.next_cursor


def made_ids(report: dict[str, Any]) -> list[str]:
    return [r["prediction_id"] for lv in report["levels"] for r in lv["records"]] + [
        i for lv in report["levels"] for i in lv["warmup_prediction_ids"]]


def check_latencies(level: dict[str, Any]) -> None:
    """The latency percentiles ordered and within the per-request latencies' extremes; the mean theirs."""
    latencies = [r["end_s"] - r["start_s"] for r in level["records"] if r["status"] == "succeeded"]
    d = level["summary"]["latency_s"]
    assert min(latencies) == pytest.approx(d["min"]) and max(latencies) == pytest.approx(d["max"])
    assert d["min"] <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"]
    assert d["mean"] == pytest.approx(sum(latencies) / len(latencies))


async def test_an_echo_sweep_counts_every_prediction_it_made(running, api, tmp_path: Path):
    alice = await user(api, f"bench-{uuid.uuid4().hex[:8]}")
    out = tmp_path / "echo.json"
    code, stdout, stderr = await bench(running, alice.token, ECHO, "-i", "text=hi", "-c", "1,3", "-n", "6",
                                       "--warmup", "2", "--json", str(out))
    assert code == 0, stderr
    assert "c=1" in stdout and "c=3" in stdout and "latency ms p50/p90/p99" in stdout
    report = json.loads(out.read_text())
    assert report["target"] == ECHO and report["settings"]["stream"] is False  # echo: not a text model
    assert "--token '***'" in report["command"] and alice.token not in report["command"]
    made = made_ids(report)
    predictions = await listed(alice)
    assert len(predictions) == len(made) == 2 * (6 + 2)
    assert {p.id for p in predictions} == set(made)
    for level in report["levels"]:
        summary = level["summary"]
        assert (summary["requests"], summary["succeeded"], summary["errors"]) == (6, 6, {})
        assert summary["throughput_rps"] == pytest.approx(6 / summary["wall_s"])
        check_latencies(level)


async def test_an_open_loop_rate_sends_the_requests_asked_for(running, api, tmp_path: Path):
    bob = await user(api, f"bench-{uuid.uuid4().hex[:8]}")
    out = tmp_path / "rate.json"
    code, _, stderr = await bench(running, bob.token, ECHO, "--input", '{"text": "at a rate"}',
                                  "--rate", "40", "-n", "8", "--warmup", "0", "--json", str(out))
    assert code == 0, stderr
    report = json.loads(out.read_text())
    [level] = report["levels"]
    assert (level["load"], level["value"], level["summary"]["requests"], level["summary"]["errors"]) == (
        "rate", 40, 8, {})
    scheduled = [r["scheduled_s"] for r in level["records"]]
    assert scheduled == sorted(scheduled) and scheduled[0] == 0.0
    assert all(r["start_s"] >= r["scheduled_s"] - 1e-3 for r in level["records"])
    assert {p.id for p in await listed(bob)} == set(made_ids(report))


async def test_the_tiny_llama_streams_and_its_tokens_are_the_predictions_own(running, api, tmp_path: Path):
    carol = await user(api, f"bench-{uuid.uuid4().hex[:8]}")
    out = tmp_path / "llm.json"
    generation = {"prompt": "the quick brown fox", "max_new_tokens": 8, "min_new_tokens": 8, "temperature": 0}
    code, stdout, stderr = await bench(running, carol.token, LLM, "--input", json.dumps(generation),
                                       "-c", "2", "-n", "4", "--warmup", "1", "--json", str(out))
    assert code == 0, stderr
    assert "TTFT ms p50/p90/p99" in stdout and "output tok/s" in stdout
    report = json.loads(out.read_text())
    assert report["settings"]["stream"] is True  # the llm runner streams by default
    [level] = report["levels"]
    summary, records = level["summary"], level["records"]
    assert (summary["requests"], summary["errors"]) == (4, {})
    predictions = {p.id: p for p in await listed(carol)}
    assert set(predictions) == set(made_ids(report))
    assert summary["output_tokens"] == sum(predictions[r["prediction_id"]].metrics.output_token_count
                                           for r in records) == 4 * 8
    assert summary["output_tokens_per_s"] == pytest.approx(summary["output_tokens"] / summary["wall_s"])
    assert all(0 < r["ttft_s"] <= r["latency_s"] for r in records)
    assert summary["itl_s"]["count"] == sum(len(r["itl_s"]) for r in records) > 0
    check_latencies(level)
    ttft = summary["ttft_s"]
    assert ttft["min"] <= ttft["p50"] <= ttft["p90"] <= ttft["p99"] <= ttft["max"]


@pytest.mark.parametrize("args, code, message", [
    (["-c", "0"], 2, "Invalid value for '-c' / '--concurrency': every level must be above 0"),
    (["--duration", "soon"], 2, "Invalid value for '--duration'"),
    (["-c", "2", "--rate", "3"], 2, "--concurrency and --rate do not go together"),
    (["-i", "text=x", "-i", "delay_ms=-1", "-n", "2"], 1,
     "error: every request failed: INVALID_ARGUMENT: input.delay_ms"),
])
async def test_a_bad_flag_or_input_is_one_clear_error(running, args: list[str], code: int, message: str):
    got, stdout, stderr = await bench(running, running.api.token, ECHO, *args, timeout_s=60)
    assert got == code, stdout + stderr
    assert message in stderr and "Traceback" not in stderr
