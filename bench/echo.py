"""The echo scenario: predictions/s and latency through the cluster, against a bare grpc.aio baseline.

Starts ``bench.baseline_server`` and a private cluster (``warmfleet.cli.launch.up`` on a temporary home, its
own local Ray), then runs ``bench.load`` in a separate process for every (concurrency, repeat, target),
interleaving the two targets so that they share the machine's noise. Writes ``echo.json`` and
``echo.png`` under ``--out`` and prints a table. The cluster is always stopped with ``launch.down``.

    python -m bench.echo --duration 5 --repeats 3 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import CLUSTER, Target, cluster_settings, machine_info, start_cluster
from bench.load import WAIT_S, echo_request
from warmfleet.cli import launch
from warmfleet.v1 import predictions_pb2_grpc, types_pb2

BASELINE = "baseline"
GOAL_THROUGHPUT_RATIO_C64 = 0.5
GOAL_P50_OVERHEAD_MS_C1 = 1.5


# Servers


def start_baseline() -> tuple[subprocess.Popen, Target]:
    """Start ``bench.baseline_server`` in its own process on a free port."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.baseline_server", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, Target(BASELINE, f"127.0.0.1:{port}")


def wait_until_it_echoes(target: Target, timeout_s: float = 60.0) -> None:
    """Block until one echo prediction succeeds (the echo instance may still be loading)."""
    token = target.token_file.read_text().strip() if target.token_file else ""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    deadline = time.monotonic() + timeout_s
    last = "no reply yet"
    with grpc.insecure_channel(target.address) as channel:
        stub = predictions_pb2_grpc.PredictionsStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.CreatePrediction(echo_request("ready?"), metadata=metadata, timeout=15)
                if reply.status == types_pb2.STATUS_SUCCEEDED:
                    return
                last = f"status {types_pb2.Status.Name(reply.status)}: {reply.error}"
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            time.sleep(0.5)
    raise RuntimeError(f"{target.name} at {target.address} does not echo after {timeout_s:.0f} s: {last}")


# Load points


def run_point(target: Target, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One load point, by ``bench.load`` in a process of its own; its result with the target's name."""
    cmd = [sys.executable, "-m", "bench.load", "--target", target.address, "--concurrency", str(concurrency),
           "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--max-requests", str(args.max_requests)]
    if target.token_file:
        cmd += ["--token-file", str(target.token_file)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["target"] = target.name
    return result


def run_all(targets: list[Target], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every point, interleaved: for each concurrency and repeat, each target in turn (alternating who
    goes first, so that neither always runs on the warmer or the noisier slot)."""
    runs = []
    for concurrency in args.concurrency:
        for repeat in range(args.repeats):
            order = targets if repeat % 2 == 0 else targets[::-1]
            for target in order:
                result = run_point(target, concurrency, args)
                result["repeat"] = repeat
                result["loadavg_1m_after"] = os.getloadavg()[0]  # other work on the machine skews points
                runs.append(result)
                print(f"  c={concurrency:<3} {target.name:<8} #{repeat}: {result['throughput_rps']:8.0f} req/s "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                      f"errors {result['errors']}", flush=True)
    return runs


# Results


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """Per target and concurrency: the median over repeats of each measure, and the errors summed."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["concurrency"]), []).append(run)
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for (target, concurrency), group in sorted(groups.items()):
        point = {key: statistics.median(r[key] for r in group)
                 for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms")}
        point["errors"] = sum(r["errors"] for r in group)
        point["repeats"] = len(group)
        summary.setdefault(target, {})[concurrency] = point
    return summary


def compare(summary: dict[str, dict[int, dict[str, float]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cluster/baseline ratios, and whether each goal of the issue is met."""
    base, cluster = summary[BASELINE], summary[CLUSTER]
    ratios: dict[str, Any] = {
        "throughput_ratio": {c: cluster[c]["throughput_rps"] / base[c]["throughput_rps"] for c in base},
        "p50_overhead_ms": {c: cluster[c]["p50_ms"] - base[c]["p50_ms"] for c in base},
    }
    ratio64 = ratios["throughput_ratio"].get(64)
    overhead1 = ratios["p50_overhead_ms"].get(1)
    goals = {
        "throughput_c64": {"goal": f">= {GOAL_THROUGHPUT_RATIO_C64}x baseline", "value": ratio64,
                           "met": ratio64 is not None and ratio64 >= GOAL_THROUGHPUT_RATIO_C64},
        "p50_overhead_c1": {"goal": f"< {GOAL_P50_OVERHEAD_MS_C1} ms", "value": overhead1,
                            "met": overhead1 is not None and overhead1 < GOAL_P50_OVERHEAD_MS_C1},
    }
    return ratios, goals


def print_table(summary: dict[str, dict[int, dict[str, float]]], ratios: dict[str, Any],
                goals: dict[str, Any]) -> None:
    print(f"\n{'c':>3}  {'target':<8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>6}"
          f"  {'cluster/baseline':>16}")
    for c in sorted(summary[BASELINE]):
        for target in (BASELINE, CLUSTER):
            p = summary[target][c]
            ratio = f"{ratios['throughput_ratio'][c]:.2f}x" if target == CLUSTER else ""
            print(f"{c:>3}  {target:<8} {p['throughput_rps']:8.0f} {p['p50_ms']:8.2f} {p['p90_ms']:8.2f} "
                  f"{p['p99_ms']:8.2f} {p['errors']:6d}  {ratio:>16}")
    for name, goal in goals.items():
        value = "n/a" if goal["value"] is None else f"{goal['value']:.2f}"
        print(f"goal {name}: {goal['goal']}: {value} -> {'MET' if goal['met'] else 'NOT MET'}")


def plot(summary: dict[str, dict[int, dict[str, float]]], goals: dict[str, Any], path: Path) -> None:
    """Throughput against concurrency for both targets, and p50/p99 latency bars per concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = sorted(summary[BASELINE])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for target, colour in ((BASELINE, "tab:gray"), (CLUSTER, "tab:blue")):
        left.plot(conc, [summary[target][c]["throughput_rps"] for c in conc], "o-", color=colour, label=target)
    left.set(xscale="log", xlabel="concurrency (closed-loop workers)", ylabel="predictions/s",
             title="echo throughput", xticks=conc, xticklabels=[str(c) for c in conc], ylim=(0, None))
    left.legend()
    width = 0.2
    bars = [(BASELINE, "p50_ms", "tab:gray", None), (BASELINE, "p99_ms", "silver", "//"),
            (CLUSTER, "p50_ms", "tab:blue", None), (CLUSTER, "p99_ms", "lightsteelblue", "//")]
    for i, (target, key, colour, hatch) in enumerate(bars):
        xs = [j + (i - 1.5) * width for j in range(len(conc))]
        right.bar(xs, [summary[target][c][key] for c in conc], width, color=colour, hatch=hatch,
                  label=f"{target} {key[:3]}")
    right.set(yscale="log", xlabel="concurrency", ylabel="latency (ms, log scale)", title="echo latency",
              xticks=range(len(conc)), xticklabels=[str(c) for c in conc])
    right.legend(fontsize="small")
    verdict = "; ".join(f"{name}: {'met' if g['met'] else 'NOT met'}" for name, g in goals.items())
    fig.suptitle(f"warmfleet echo vs bare grpc.aio server ({verdict})", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The scenario


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="echo: the cluster against a bare grpc.aio echo server")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the median is reported")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 64],
                        help="comma-separated worker counts")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on measured requests per point")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, home: Path) -> list[dict[str, Any]]:
    """Start both servers, run every point, and stop both servers whatever happens."""
    settings = cluster_settings(home)
    baseline_proc, baseline = start_baseline()
    try:
        state, cluster = start_cluster(settings)
        print(f"baseline on {baseline.address} (pid {baseline_proc.pid}); "
              f"cluster on {cluster.address} (gateway pid {state.pid})", flush=True)
        for target in (baseline, cluster):
            wait_until_it_echoes(target)
        return run_all([baseline, cluster], args)
    finally:
        launch.down(settings)
        baseline_proc.terminate()
        baseline_proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, machine = time.time(), machine_info()
    with tempfile.TemporaryDirectory(prefix="warmfleet-bench-") as home:
        runs = measure(args, Path(home))
    summary = summarise(runs)
    ratios, goals = compare(summary)
    print_table(summary, ratios, goals)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "scenario": "echo", "command": "python -m bench.echo " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_at": started, "wall_s": time.time() - started, "machine": machine,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
                     "concurrency": args.concurrency, "model": "warmfleet/echo", "input_text": "hello",
                     "wait_s": WAIT_S},
        "summary": summary, "ratios": ratios, "goals": goals, "runs": runs,
    }
    (args.out / "echo.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(summary, goals, args.out / "echo.png")
    print(f"wrote {args.out / 'echo.json'} and {args.out / 'echo.png'}")


if __name__ == "__main__":
    main()
