"""The cog scenario: a user's Cog model served by warmfleet, against the same model on coglet alone.

In one run:

1. Warm path. A no-op async Cog model (``concurrency: {max: 8}``, written by this module into a temporary
   folder) is started twice: on coglet's own HTTP server (``python -m cog.server.http``, **direct**) and
   pushed to a private cluster (``Client.models.push``, **cluster**, loaded through ``CreatePrediction``
   with the JSON input form). Each load point is a separate ``bench.http_load`` process; points are
   interleaved (for each concurrency and repeat, every target in turn, alternating the order). Two
   reference targets say where the cluster's time goes: **direct+webhook** (coglet alone, asked for the
   output and log webhooks the node agent asks for) and **cluster-echo** (the built-in echo model through
   the same cluster, at concurrency 1: the gateway, router and Ray hops without a Cog process). Each point
   also records the CPU seconds each process group spent (gateway, node agent, controller, coglet, the
   rest of Ray, the load process).
2. Cold boot. ``examples/text-stream`` pushed ``--cold-repeats`` times, each a distinct copy under its own
   name (a new bundle, no instance), then one prediction timed from ``CreatePrediction`` to its answer,
   with its ``boot_time_s``; and the same copy booted on coglet alone (spawn to ``READY``, then one
   prediction) for reference.

Goals, from the issue: cluster p50 at concurrency 1 less than 2 ms above direct; cluster throughput at
concurrency 8 at least 0.8x direct; a cold boot under 5 s.

    python -m bench.cog --duration 3 --repeats 3 --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import CLUSTER, Report, Target, _git, _version, private_home, running_cluster
from bench.echo import summarise
from warmfleet.client import Client, Prediction

DIRECT = "direct"
DIRECT_WEBHOOK = "direct+webhook"
CLUSTER_ECHO = "cluster-echo"
NOOP_MODEL = "bench/noop"
NOOP_INPUT = {"text": "hi"}
MAX_CONCURRENCY = 8
COLD_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "text-stream"
COLD_INPUT = {"prompt": "hello from a cold boot", "max_words": 4}
GOAL_P50_OVERHEAD_MS_C1 = 2.0
GOAL_THROUGHPUT_RATIO_C8 = 0.8
GOAL_COLD_BOOT_S = 5.0

NOOP_COG_YAML = f"""build:
  python_version: "3.11"
predict: "predict.py:Predictor"
concurrency:
  max: {MAX_CONCURRENCY}
"""
# coglet runs more than one prediction at a time only for an async predict.
NOOP_PREDICT = '''from cog import BasePredictor


class Predictor(BasePredictor):
    async def predict(self, text: str = "hi") -> str:
        return text
'''


def write_noop_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cog.yaml").write_text(NOOP_COG_YAML)
    (folder / "predict.py").write_text(NOOP_PREDICT)
    return folder


# coglet alone


@dataclass
class DirectServer:
    """``python -m cog.server.http`` on a model folder, in a session of its own (it and its worker)."""

    proc: subprocess.Popen
    port: int
    started: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://{self.address}/health-check", timeout=2.0) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds from spawn to coglet's ``READY``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coglet exited with code {self.proc.returncode} before it was ready")
            if self.health().get("status") == "READY":
                return time.monotonic() - self.started
            time.sleep(0.01)
        raise RuntimeError(f"coglet on {self.address} not ready after {timeout_s:g} s: {self.health()}")

    def predict(self, input: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"http://{self.address}/predictions", method="POST",
                                         data=json.dumps({"input": input}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60.0) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_direct(model_dir: Path, max_concurrency: int, log_path: Path) -> DirectServer:
    """coglet's server as the node agent starts it, less the webhooks: the venv's ``python`` first on
    PATH (coglet starts its worker with it), the model folder as the working directory."""
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
           "COG_MAX_CONCURRENCY": str(max_concurrency), "COG_THROTTLE_RESPONSE_INTERVAL": "0",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=model_dir,
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return DirectServer(proc, port, time.monotonic())


@contextlib.contextmanager
def direct_server(model_dir: Path, max_concurrency: int, log_path: Path) -> Iterator[DirectServer]:
    server = start_direct(model_dir, max_concurrency, log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# Where the CPU goes


def _group_of(proc: psutil.Process, gateway_pid: int | None) -> str:
    """The process group a process's CPU is counted in."""
    if proc.pid == gateway_pid:
        return "gateway"
    text = " ".join(proc.cmdline()) or proc.name()
    if "cog.server.http" in text or "coglet.server" in text:
        return "coglet"
    for marker, group in (("_RayNodeAgent", "node agent"), ("_RayController", "controller")):
        if marker in text:
            return group
    return "ray (other)"


def cpu_snapshot(roots: list[int], gateway_pid: int | None) -> dict[int, tuple[str, float]]:
    """Every process under ``roots``: its group and the CPU seconds (user + system) it has used."""
    found: dict[int, tuple[str, float]] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                found[proc.pid] = (_group_of(proc, gateway_pid), times.user + times.system)
    return found


def cpu_by_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a process that started in between counts from 0)."""
    used: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        used[group] = used.get(group, 0.0) + cpu - before.get(pid, (group, 0.0))[1]
    return {group: round(seconds, 3) for group, seconds in sorted(used.items())}


# Load points


@dataclass(frozen=True)
class LoadTarget:
    """A target of the warm path: how ``bench.http_load`` reaches it, and whose CPU to count."""

    name: str
    args: tuple[str, ...]
    cpu_roots: tuple[int, ...]
    gateway_pid: int | None = None


def run_point(target: LoadTarget, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """One load point in a process of its own, with the CPU every process group spent on it."""
    cmd = [sys.executable, "-m", *target.args, "--concurrency", str(concurrency), "--duration", str(args.duration),
           "--warmup", str(args.warmup), "--max-requests", str(args.max_requests)]
    before = cpu_snapshot(list(target.cpu_roots), target.gateway_pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall_s = time.monotonic() - started
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_by_group(before, cpu_snapshot(list(target.cpu_roots), target.gateway_pid))
    cpu["load process"] = round(client_after.ru_utime + client_after.ru_stime
                                - client_before.ru_utime - client_before.ru_stime, 3)
    result = json.loads(out.strip().splitlines()[-1])
    # Requests over warm-up and window together, at the window's rate: what the servers' CPU went to.
    served = result["throughput_rps"] * (args.warmup + args.duration)
    result.update(target=target.name, point_wall_s=round(wall_s, 3), cpu_s=cpu,
                  cpu_ms_per_request={g: round(1000 * s / served, 3) for g, s in cpu.items()} if served else {},
                  loadavg_1m_after=os.getloadavg()[0])
    return result


def run_all(targets: list[LoadTarget], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every point, interleaved, alternating which target goes first. cluster-echo runs at c=1 only."""
    runs = []
    for concurrency in args.concurrency:
        for repeat in range(args.repeats):
            order = targets if repeat % 2 == 0 else targets[::-1]
            for target in order:
                if target.name == CLUSTER_ECHO and concurrency != 1:
                    continue
                result = run_point(target, concurrency, args)
                result["repeat"] = repeat
                runs.append(result)
                print(f"  c={concurrency:<2} {target.name:<15} #{repeat}: {result['throughput_rps']:7.0f} req/s "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                      f"errors {result['errors']}", flush=True)
    return runs


# Cold boots


def instances_of(client: Client, model: str) -> int:
    return sum(1 for i in client.cluster.instances() if i.model == model and i.state != "failed")


def distinct_copy(source: Path, folder: Path, tag: str) -> Path:
    """A copy of ``source`` whose bundle differs (one comment line), so that it is a version of its own."""
    shutil.copytree(source, folder)
    with (folder / "predict.py").open("a") as f:
        f.write(f"# bench.cog cold boot {tag}\n")
    return folder


def cold_boot(client: Client, folder: Path, name: str) -> dict[str, Any]:
    """Push ``folder`` as ``name``, then time its first prediction from zero instances."""
    started = time.monotonic()
    pushed = client.models.push(folder, name)
    push_s = time.monotonic() - started
    before = instances_of(client, name)
    started = time.monotonic()
    first: Prediction = client.predictions.create(name, COLD_INPUT, wait_s=60)
    first_s = time.monotonic() - started
    if not first.succeeded:
        raise RuntimeError(f"cold boot of {name}: {first.status}: {first.error}")
    started = time.monotonic()
    client.predictions.create(name, COLD_INPUT, wait_s=60)
    return {"model": name, "version": pushed.version.id, "push_s": round(push_s, 3), "instances_before": before,
            "first_prediction_s": round(first_s, 3), "metrics": first.metrics,
            "second_prediction_s": round(time.monotonic() - started, 4), "output": "".join(first.output)}


def direct_boot(folder: Path, log_path: Path) -> dict[str, Any]:
    """The same copy on coglet alone: spawn to READY, then one prediction."""
    server = start_direct(folder, 1, log_path)
    try:
        ready_s = server.wait_ready()
        started = time.monotonic()
        doc = server.predict(COLD_INPUT)
        return {"ready_s": round(ready_s, 3), "first_prediction_s": round(time.monotonic() - started, 4),
                "status": doc.get("status")}
    finally:
        server.stop()


def cold_boots(client: Client, work: Path, repeats: int) -> list[dict[str, Any]]:
    results = []
    for i in range(repeats):
        tag = f"{i}-{time.time_ns()}"
        folder = distinct_copy(COLD_EXAMPLE, work / f"cold-{i}", tag)
        result = cold_boot(client, folder, f"bench/text-stream-cold-{i}")
        result["direct"] = direct_boot(folder, work / f"direct-cold-{i}.log")
        results.append(result)
        print(f"  cold #{i}: first prediction {result['first_prediction_s']:.2f} s "
              f"(boot_time_s {result['metrics'].get('boot_time_s', float('nan')):.2f}); coglet alone ready in "
              f"{result['direct']['ready_s']:.2f} s", flush=True)
    return results


# Results


def compare(summary: dict[str, dict[int, dict[str, float]]], cold: list[dict[str, Any]]) -> dict[str, Any]:
    direct, cluster = summary[DIRECT], summary[CLUSTER]
    overhead = cluster[1]["p50_ms"] - direct[1]["p50_ms"] if 1 in direct else None
    ratio = cluster[8]["throughput_rps"] / direct[8]["throughput_rps"] if 8 in direct else None
    slowest = max(c["first_prediction_s"] for c in cold) if cold else None
    return {
        "p50_overhead_c1": {"goal": f"< {GOAL_P50_OVERHEAD_MS_C1} ms", "value": overhead,
                            "met": overhead is not None and overhead < GOAL_P50_OVERHEAD_MS_C1},
        "throughput_c8": {"goal": f">= {GOAL_THROUGHPUT_RATIO_C8}x direct", "value": ratio,
                          "met": ratio is not None and ratio >= GOAL_THROUGHPUT_RATIO_C8},
        "cold_boot": {"goal": f"< {GOAL_COLD_BOOT_S} s (slowest of the repeats)", "value": slowest,
                      "met": slowest is not None and slowest < GOAL_COLD_BOOT_S},
    }


def cpu_medians(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """Per target and concurrency, the median CPU ms per request of each process group."""
    groups: dict[tuple[str, int], list[dict[str, float]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["concurrency"]), []).append(run["cpu_ms_per_request"])
    out: dict[str, dict[int, dict[str, float]]] = {}
    for (target, concurrency), points in sorted(groups.items()):
        names = sorted({name for point in points for name in point})
        out.setdefault(target, {})[concurrency] = {
            name: round(sorted(p.get(name, 0.0) for p in points)[len(points) // 2], 3) for name in names}
    return out


def print_table(summary: dict[str, dict[int, dict[str, float]]], goals: dict[str, Any],
                cold: list[dict[str, Any]]) -> None:
    print(f"\n{'c':>3}  {'target':<15} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for c in sorted(summary[DIRECT]):
        for target in (DIRECT, DIRECT_WEBHOOK, CLUSTER, CLUSTER_ECHO):
            p = summary.get(target, {}).get(c)
            if p is not None:
                print(f"{c:>3}  {target:<15} {p['throughput_rps']:8.0f} {p['p50_ms']:8.2f} {p['p90_ms']:8.2f} "
                      f"{p['p99_ms']:8.2f} {p['errors']:6d}")
    for c in cold:
        print(f"cold {c['model']}: {c['first_prediction_s']:.2f} s, boot_time_s "
              f"{c['metrics'].get('boot_time_s', float('nan')):.2f}, coglet alone ready {c['direct']['ready_s']:.2f} s")
    for name, goal in goals.items():
        value = "n/a" if goal["value"] is None else f"{goal['value']:.2f}"
        print(f"goal {name}: {goal['goal']}: {value} -> {'MET' if goal['met'] else 'NOT MET'}")


# The scenario


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="cog: a Cog model through the cluster against coglet alone")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the median is reported")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8],
                        help="comma-separated worker counts")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on measured requests per point")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold boots of examples/text-stream")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def warm_up(client: Client, model: str, timeout_s: float = 120.0) -> float:
    """Predict until one succeeds (the first cold-boots the model); seconds it took."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        prediction = client.predictions.create(model, NOOP_INPUT, wait_s=30)
        if prediction.succeeded:
            return time.monotonic() - started
        last = f"{prediction.status}: {prediction.error}"
        time.sleep(0.5)
    raise RuntimeError(f"{model} does not answer after {timeout_s:g} s: {last}")


def load_targets(direct: DirectServer, cluster: Target, gateway_pid: int) -> list[LoadTarget]:
    token = ("--token-file", str(cluster.token_file))
    return [
        LoadTarget(DIRECT, ("bench.http_load", "--protocol", "http", "--target", direct.address), (direct.proc.pid,)),
        LoadTarget(CLUSTER, ("bench.http_load", "--protocol", "grpc", "--target", cluster.address, "--model",
                             NOOP_MODEL, *token), (gateway_pid,), gateway_pid),
        LoadTarget(DIRECT_WEBHOOK, ("bench.http_load", "--protocol", "http", "--webhook", "--target",
                                    direct.address), (direct.proc.pid,)),
        LoadTarget(CLUSTER_ECHO, ("bench.load", "--target", cluster.address, *token), (gateway_pid,), gateway_pid),
    ]


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir = write_noop_model(work / "noop")
    with private_home() as settings, running_cluster(settings) as cluster:
        client = Client(cluster.address, cluster.token_file.read_text().strip(), settings=settings)
        pushed = client.models.push(model_dir, NOOP_MODEL)
        noop_boot_s = warm_up(client, NOOP_MODEL)
        gateway_pid = json.loads((settings.home / "cluster.json").read_text())["pid"]
        with direct_server(model_dir, MAX_CONCURRENCY, work / "direct.log") as direct:
            print(f"direct coglet on {direct.address}; cluster on {cluster.address} (gateway pid {gateway_pid}); "
                  f"{NOOP_MODEL} {pushed.version.id[:12]} warm after {noop_boot_s:.2f} s", flush=True)
            runs = run_all(load_targets(direct, cluster, gateway_pid), args)
        noop_instances = instances_of(client, NOOP_MODEL)
        cold = cold_boots(client, work, args.cold_repeats)
    return {"runs": runs, "cold": cold, "noop_version": pushed.version.id, "noop_first_boot_s": noop_boot_s,
            "noop_instances_after_load": noop_instances}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("cog", argv)
    with tempfile.TemporaryDirectory(prefix="warmfleet-bench-cog-") as work:
        measured = measure(args, Path(work))
    summary = summarise(measured["runs"])
    goals = compare(summary, measured["cold"])
    print_table(summary, goals, measured["cold"])
    report.write(
        args.out, commit=_git("rev-parse", "HEAD"),
        settings={"duration_s": args.duration, "warmup_s": args.warmup, "repeats": args.repeats,
                  "concurrency": args.concurrency, "cold_repeats": args.cold_repeats, "model": NOOP_MODEL,
                  "input": NOOP_INPUT, "max_concurrency": MAX_CONCURRENCY, "cold_input": COLD_INPUT,
                  "versions": {p: _version(p) for p in ("cog", "coglet", "aiohttp", "psutil")}},
        summary=summary, goals=goals, cpu_ms_per_request=cpu_medians(measured["runs"]), cold_boots=measured["cold"],
        noop={"version": measured["noop_version"], "first_boot_s": measured["noop_first_boot_s"],
              "instances_after_load": measured["noop_instances_after_load"]},
        runs=measured["runs"],
    )
    print(f"wrote {args.out / 'cog.json'}")


if __name__ == "__main__":
    main()
