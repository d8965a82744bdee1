"""The soak scenario: a steady, bounded, mixed load on a private cluster for ``--minutes``, with the RSS of
every process of the cluster sampled throughout; after a warm-up, memory must be flat.

Starts a private cluster (``warmfleet up`` on a temporary home, its own local Ray, the built-in tiny models)
and runs a fixed set of closed-loop worker threads in this process until the time is up: echo with small
delays (most of the predictions), echo streamed in chunks, tiny-llama streams of a few dozen tokens,
tiny-sd images at 64x64 and one step, echo with webhooks to a receiver in this process, and a worker that
cancels predictions (queued or running echo and LLM generations) and abandons streams half-read. Each
worker pauses between calls, so the load is bounded whatever the machine's speed; every call has a
timeout, so the run stops by itself. Every prediction is followed until it reaches a terminal status.

Every ``--interval-s`` a sampler thread reads ``/proc`` for the gateway process (the pid in the home's
``cluster.json``) and every process under it (Ray's ``gcs_server`` and ``raylet``, the ``ray::`` workers:
``_RayController``, ``_RayNodeAgent``...; Ray's dashboard and monitors): RSS, anonymous RSS and CPU time.
After the warm-up (20% of the run, 2 minutes once the run is 5 minutes or more) it fits a least-squares
slope of RSS over time per process, in MiB per hour. A process is flat when that slope, extrapolated over
one hour, is under ``GOAL_GROWTH_PCT_PER_H`` percent of its RSS.

Writes ``soak.json`` and ``soak.png`` under ``--out``; the cluster is always brought down.

    python -m bench.soak --minutes 20 --out bench/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from bench.common import Report, Target, private_home, start_cluster
from warmfleet.cli import launch
from warmfleet.cli.defaults import TINY_LLAMA, TINY_SD
from warmfleet.v1 import predictions_pb2 as P, predictions_pb2_grpc, types_pb2 as T

ECHO = "warmfleet/echo"
GOAL_GROWTH_PCT_PER_H = 5.0  # flat: the fitted slope over one hour is under this share of the RSS
WARMUP_FRACTION = 0.2
WARMUP_FLOOR_S = 120.0  # at least this long, once that is under WARMUP_CEILING_FRACTION of the run
WARMUP_CEILING_FRACTION = 0.4
FOLLOW_TIMEOUT_S = 120.0  # a prediction not terminal this long after its call returned counts as stuck
CALL_TIMEOUT_S = 75.0
TERMINAL = frozenset({T.STATUS_SUCCEEDED, T.STATUS_FAILED, T.STATUS_CANCELED, T.STATUS_ABORTED})
WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees".split()
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# The cluster's processes, from /proc


@dataclass
class ProcessSeries:
    """What the sampler saw of one process: its title (the latest seen) and a sample per interval."""

    pid: int
    title: str
    role: str
    t_s: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    anon_mib: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)


def _stat(pid: int) -> tuple[int, int, float]:
    """(ppid, session id, CPU seconds) from /proc/PID/stat; the fields after the command in parentheses."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def _memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, anonymous RSS) in MiB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("RssAnon", 0.0)


def process_title(argv: list[str]) -> str:
    """A short name for a process: its ``ray::`` title, the program, or the Python module or script."""
    if not argv or not argv[0]:
        return "?"
    head = argv[0]
    if head.startswith("ray::"):  # "ray::Class", or "ray::Class.method" while an actor runs a method
        return head.split(".", 1)[0].strip()
    if " (" in head:  # setproctitle's "name (command)", as Ray's dashboard modules are titled
        return head.split(" (")[0].strip()
    name = os.path.basename(head)
    if not name.startswith("python"):
        return name
    rest = argv[1:]
    for i, arg in enumerate(rest):
        if arg == "-m":
            return " ".join(rest[i + 1:i + 3])
        if arg == "-c":
            return "python -c"
        if not arg.startswith("-"):
            return os.path.basename(arg)
    return name


def process_role(pid: int, title: str, gateway_pid: int) -> str:
    """gateway, ray worker (``ray::``), ray core (gcs_server, raylet) or ray service (the rest: Ray's
    dashboard, monitors and log monitor); the flatness goal covers the first three."""
    if pid == gateway_pid:
        return "gateway"
    if title.startswith("ray::"):
        return "ray worker"
    if title in ("gcs_server", "raylet"):
        return "ray core"
    return "ray service"


def cluster_pids(gateway_pid: int, head_pid: int = 0) -> list[int]:
    """The gateway and the Ray head `up` started for the home (``head_pid``; 0: none), and every process
    under them or in their sessions (`up` starts each in a session of its own, so a Ray process that was
    re-parented still counts)."""
    roots = {gateway_pid, head_pid} - {0}
    parents: dict[int, int] = {}
    in_session: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, sid, _ = _stat(int(entry))
            except (OSError, ValueError):
                continue
            parents[int(entry)] = ppid
            if sid in roots:
                in_session.add(int(entry))
    found, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return sorted((found | in_session) & parents.keys())


class Sampler(threading.Thread):
    """Samples every process of the cluster, and this (the load) process, every ``interval_s``."""

    def __init__(self, gateway_pid: int, t0: float, interval_s: float, head_pid: int = 0) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.gateway_pid, self.head_pid, self.t0, self.interval_s = gateway_pid, head_pid, t0, interval_s
        self.series: dict[int, ProcessSeries] = {}
        self.loadavg: list[tuple[float, float]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self.interval_s):
                self.sample()
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        self.loadavg.append((now, os.getloadavg()[0]))
        for pid in [*cluster_pids(self.gateway_pid, self.head_pid), os.getpid()]:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                rss, anon = _memory_mib(pid)
                cpu = _stat(pid)[2]
            except (OSError, ValueError):
                continue  # it exited between the listing and the read
            title = "bench (load client)" if pid == os.getpid() else process_title(argv)
            series = self.series.get(pid)
            if series is None:
                role = "load" if pid == os.getpid() else process_role(pid, title, self.gateway_pid)
                series = self.series[pid] = ProcessSeries(pid, title, role)
            if title != "ray::IDLE":  # a pooled worker keeps the name of what it became
                series.title = title
            series.t_s.append(round(now, 2))
            series.rss_mib.append(round(rss, 2))
            series.anon_mib.append(round(anon, 2))
            series.cpu_s.append(round(cpu, 2))


# The load


@dataclass(frozen=True)
class Outcome:
    """One prediction (or a create that failed before it had an id): how it ended, and when."""

    kind: str
    id: str
    start_s: float
    end_s: float
    status: str  # "succeeded", "failed", "canceled", "aborted"; "stuck" (no terminal status); "rpc: CODE"
    error: str = ""
    tokens: int = 0


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that takes the cluster's webhooks and counts them per prediction."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: Counter[str] = Counter()
        self.terminal: Counter[str] = Counter()  # prediction id -> completed webhooks received
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with receiver.lock:
                    receiver.events[str(body.get("status"))] += 1
                    if body.get("status") in ("succeeded", "failed", "canceled", "aborted"):
                        receiver.terminal[str(body.get("id"))] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhooks", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _status(status: int) -> str:
    return T.Status.Name(status).removeprefix("STATUS_").lower()


class Load:
    """The worker threads' shared state: one channel, the clock, and every outcome."""

    def __init__(self, target: Target, t0: float, end_s: float, webhook_url: str) -> None:
        self.channel = grpc.insecure_channel(target.address, options=[
            ("grpc.max_receive_message_length", 64 * MIB)])
        self.stub = predictions_pb2_grpc.PredictionsStub(self.channel)
        self.md = target.metadata()
        self.t0, self.end_s, self.webhook_url = t0, end_s, webhook_url
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, kind: str, pred_id: str, start_s: float, final: T.Prediction | None, tokens: int = 0,
               error: str = "") -> None:
        """Keep one outcome; ``final`` None means it never reached a terminal status (or had no id)."""
        if final is not None:
            status, error = _status(final.status), final.error
        else:
            status = error.split(":", 1)[0] if not pred_id else "stuck"
        with self.lock:
            self.outcomes.append(Outcome(kind, pred_id, start_s, self.now(), status, error, tokens))

    def follow(self, pred_id: str) -> T.Prediction | None:
        """The prediction once terminal (following its events), or None if it is not within the timeout."""
        deadline = time.monotonic() + FOLLOW_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                events = self.stub.StreamPrediction(P.StreamPredictionRequest(id=pred_id), metadata=self.md,
                                                    timeout=max(1.0, deadline - time.monotonic()))
                for event in events:
                    if event.WhichOneof("kind") == "completed":
                        return event.completed
                reply = self.stub.GetPrediction(P.GetPredictionRequest(id=pred_id), metadata=self.md,
                                                timeout=10)
                if reply.status in TERMINAL:
                    return reply
            except grpc.RpcError:
                pass
            time.sleep(1.0)
        return None

    def create(self, kind: str, request: P.CreatePredictionRequest) -> None:
        """A unary create; followed to its end when the reply is not terminal."""
        start = self.now()
        try:
            reply = self.stub.CreatePrediction(request, metadata=self.md, timeout=request.wait_s + 15)
        except grpc.RpcError as err:
            self.record(kind, "", start, None, error=f"rpc {err.code().name}: {err.details()}")
            return
        self.record(kind, reply.id, start, reply if reply.status in TERMINAL else self.follow(reply.id))

    def stream(self, kind: str, request: P.CreatePredictionRequest, abandon_after: int = 0) -> None:
        """``CreateAndStreamPrediction``, read to its completed event, or dropped after ``abandon_after``
        output events (0: never) and then followed with ``StreamPrediction`` to its end."""
        start, pred_id, outputs = self.now(), "", 0
        call = self.stub.CreateAndStreamPrediction(request, metadata=self.md, timeout=CALL_TIMEOUT_S)
        try:
            for event in call:
                pred_id = pred_id or event.prediction_id
                which = event.WhichOneof("kind")
                outputs += which == "output"
                if which == "completed":
                    tokens = event.completed.metrics.output_token_count
                    return self.record(kind, pred_id, start, event.completed, tokens)
                if abandon_after and outputs >= abandon_after:
                    call.cancel()
                    break
        except grpc.RpcError as err:
            if not pred_id:
                return self.record(kind, "", start, None, error=f"rpc {err.code().name}: {err.details()}")
        why = "abandoned, then not terminal" if abandon_after else "the stream ended with no completed event"
        self.record(kind, pred_id, start, self.follow(pred_id) if pred_id else None, error=why)

    def cancel_after(self, kind: str, request: P.CreatePredictionRequest, delay_s: float) -> None:
        """Create without waiting, cancel ``delay_s`` later, and follow it to its end."""
        start = self.now()
        try:
            pred_id = self.stub.CreatePrediction(request, metadata=self.md, timeout=15).id
        except grpc.RpcError as err:
            self.record(kind, "", start, None, error=f"rpc {err.code().name}: {err.details()}")
            return
        time.sleep(delay_s)
        try:
            self.stub.CancelPrediction(P.CancelPredictionRequest(id=pred_id), metadata=self.md, timeout=15)
        except grpc.RpcError:
            pass  # whatever the cancel answered, the prediction must still end: follow it
        self.record(kind, pred_id, start, self.follow(pred_id))


def _echo(text: str, delay_ms: int, chunks: int = 1, wait_s: float = 10.0, webhook: str = ""
          ) -> P.CreatePredictionRequest:
    echo = T.EchoInput(text=text, delay_ms=delay_ms, chunks=chunks)
    return P.CreatePredictionRequest(model=ECHO, input=T.PredictionInput(echo=echo), wait_s=wait_s,
                                     webhook=webhook)


def _llm(rng: random.Random, tokens: int) -> P.CreatePredictionRequest:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
    gen = T.TextGenerationInput(prompt=prompt, max_new_tokens=tokens, min_new_tokens=tokens, temperature=0.8,
                                seed=rng.randrange(1 << 31))
    return P.CreatePredictionRequest(model=TINY_LLAMA, input=T.PredictionInput(text_generation=gen))


def _image(rng: random.Random, wait_s: float = 60.0) -> P.CreatePredictionRequest:
    gen = T.ImageGenerationInput(prompt=f"a lighthouse, variation {rng.randrange(1000)}", width=64, height=64,
                                 num_inference_steps=1, seed=rng.randrange(1 << 31))
    return P.CreatePredictionRequest(model=TINY_SD, input=T.PredictionInput(image_generation=gen),
                                     wait_s=wait_s)


def _text(rng: random.Random) -> str:
    return "x" * rng.randint(5, 400)


# Each worker kind: (one call of it, the pause after each call in seconds). A call picks its own inputs.
Op = Callable[[Load, random.Random], None]
OPS: dict[str, tuple[Op, float]] = {
    "echo": (lambda load, rng: load.create("echo", _echo(_text(rng), rng.randint(5, 50))), 0.02),
    "echo-stream": (lambda load, rng: load.stream("echo-stream", _echo(_text(rng), 60, chunks=6)), 0.05),
    "llm": (lambda load, rng: load.stream("llm", _llm(rng, rng.randint(24, 48))), 0.2),
    "image": (lambda load, rng: load.create("image", _image(rng)), 0.5),
    "webhook": (lambda load, rng: load.create("webhook", _echo(_text(rng), 30, 3, webhook=load.webhook_url)),
                0.1),
}


def cancel_op(load: Load, rng: random.Random) -> None:
    """One of: cancel an echo early (often still queued) or running, cancel an LLM generation running, or
    drop an LLM stream half-read (the prediction goes on and must still end)."""
    choice = rng.randrange(4)
    if choice == 0:
        load.cancel_after("cancel-echo", _echo("soon canceled", 2000, wait_s=0), 0.0)
    elif choice == 1:
        load.cancel_after("cancel-echo", _echo("soon canceled", 2000, wait_s=0), rng.uniform(0.05, 0.5))
    elif choice == 2:
        load.cancel_after("cancel-llm", _llm(rng, 400), rng.uniform(0.1, 0.4))
    else:
        load.stream("abandoned-stream", _llm(rng, 48), abandon_after=3)


OPS["cancel"] = (cancel_op, 0.3)


def worker(load: Load, kind: str, seed: int) -> None:
    """Call ``kind`` back to back, pausing after each call, until the run's end."""
    op, pause_s = OPS[kind]
    rng = random.Random(seed)
    while load.now() < load.end_s:
        try:
            op(load, rng)
        except Exception as err:  # noqa: BLE001 (a bug here must not stop the soak silently: count it)
            load.record(kind, "", load.now(), None, error=f"bench {type(err).__name__}: {err}")
        time.sleep(pause_s)


def run_load(load: Load, workers: dict[str, int], seed: int) -> list[str]:
    """Run every worker until the end; the names of any that did not stop within the grace time."""
    threads = [threading.Thread(target=worker, args=(load, kind, seed * 1000 + i * 100 + n),
                                name=f"{kind}-{n}", daemon=True)
               for i, (kind, count) in enumerate(workers.items()) for n in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, load.end_s - load.now()))  # also with no workers at all: an idle baseline
    grace_end = time.monotonic() + max(0.0, load.end_s - load.now()) + FOLLOW_TIMEOUT_S + CALL_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, grace_end - time.monotonic()))
    return [thread.name for thread in threads if thread.is_alive()]


def prime(load: Load) -> dict[str, float]:
    """One prediction per model before the clock starts, so that every instance is booted; boot seconds."""
    boots = {}
    rng = random.Random(0)
    for model, request in ((ECHO, _echo("ready?", 0)), (TINY_LLAMA, _llm(rng, 4)), (TINY_SD, _image(rng))):
        request.wait_s = 60
        start = time.monotonic()
        reply = load.stub.CreatePrediction(request, metadata=load.md, timeout=90)
        if reply.status != T.STATUS_SUCCEEDED:
            raise RuntimeError(f"{model} did not succeed while priming: {_status(reply.status)} "
                               f"{reply.error}")
        boots[model] = round(time.monotonic() - start, 3)
    return boots


# Results


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope of the least-squares line through the points, and its standard error (0 when too few)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return 0.0, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if n < 3:
        return slope, 0.0
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(residual / (n - 2) / sxx)


def fit_process(series: ProcessSeries, warmup_s: float, run_s: float) -> dict[str, Any]:
    """Slope of RSS (and of anonymous RSS) after the warm-up, in MiB/h, and whether it is flat."""
    keep = [i for i, t in enumerate(series.t_s) if t >= warmup_s]
    out: dict[str, Any] = {"pid": series.pid, "title": series.title, "role": series.role,
                           "first_s": series.t_s[0], "last_s": series.t_s[-1],
                           "rss_start_mib": series.rss_mib[0], "rss_end_mib": series.rss_mib[-1]}
    window_s = series.t_s[keep[-1]] - series.t_s[keep[0]] if keep else 0.0
    if len(keep) < 3 or window_s < 0.5 * (run_s - warmup_s):
        return {**out, "fitted": False, "flat": None, "why": "too few samples after the warm-up"}
    hours = [series.t_s[i] / 3600.0 for i in keep]
    rss = [series.rss_mib[i] for i in keep]
    slope, stderr = least_squares(hours, rss)
    anon_slope, _ = least_squares(hours, [series.anon_mib[i] for i in keep])
    half = len(keep) // 2  # a slope that falls in the second half is settling; one that holds, a leak
    late_slope, _ = least_squares(hours[half:], rss[half:])
    level = statistics.median(rss)
    growth_pct = 100.0 * slope / level if level else 0.0
    return {**out, "fitted": True, "fit_samples": len(keep), "fit_window_s": round(window_s, 1),
            "rss_after_warmup_mib": rss[0], "rss_median_mib": level, "rss_min_mib": min(rss),
            "rss_max_mib": max(rss), "slope_mib_per_h": round(slope, 3),
            "slope_stderr_mib_per_h": round(stderr, 3),
            "anon_slope_mib_per_h": round(anon_slope, 3), "late_half_slope_mib_per_h": round(late_slope, 3),
            "growth_over_run_mib": round(slope * run_s / 3600.0, 3),
            "growth_pct_per_h": round(growth_pct, 3), "flat": growth_pct < GOAL_GROWTH_PCT_PER_H,
            "exited_before_end": series.t_s[-1] < run_s - 1.0}


def unique_labels(series: list[ProcessSeries]) -> dict[int, str]:
    """Each process's title, with its pid added where several processes share the title."""
    counts = Counter(s.title for s in series)
    return {s.pid: s.title if counts[s.title] == 1 else f"{s.title} [{s.pid}]" for s in series}


def status_summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Predictions per kind and status, the reasons of failures, latencies, and what did not end."""
    by_kind: dict[str, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.status] += 1
        if o.status not in ("succeeded", "canceled"):
            reasons[f"{o.kind} {o.status}: {o.error[:160]}"] += 1
    latency = {}
    for kind in by_kind:
        ms = sorted((o.end_s - o.start_s) * 1e3 for o in outcomes
                    if o.kind == kind and o.status == "succeeded")
        if ms:
            latency[kind] = {"p50_ms": round(ms[len(ms) // 2], 2),
                             "p99_ms": round(ms[int(len(ms) * 0.99)], 2)}
    totals = Counter(o.status for o in outcomes)
    return {"total": len(outcomes), "by_status": dict(totals),
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
            "not_ended": [o.id for o in outcomes if o.status == "stuck"][:50],
            "failure_reasons": dict(reasons.most_common(20)), "latency_succeeded": latency,
            "llm_tokens": sum(o.tokens for o in outcomes if o.kind == "llm")}


def throughput(outcomes: list[Outcome], run_s: float, bucket_s: float) -> dict[str, Any]:
    """Predictions ended per second in each bucket of ``bucket_s`` seconds, per kind."""
    buckets = max(1, math.ceil(run_s / bucket_s))
    per_kind: dict[str, list[int]] = {}
    for o in outcomes:
        index = min(buckets - 1, max(0, int(o.end_s // bucket_s)))
        per_kind.setdefault(o.kind, [0] * buckets)[index] += 1
    return {"bucket_s": bucket_s, "t_s": [round(i * bucket_s, 1) for i in range(buckets)],
            "per_s": {k: [round(c / bucket_s, 3) for c in v] for k, v in sorted(per_kind.items())}}


def store_tally(load: Load, time_cap_s: float = 120.0) -> dict[str, Any]:
    """Every prediction in the gateway's store, counted by status (ListPredictions, as the admin)."""
    counts: Counter[str] = Counter()
    not_terminal: list[str] = []
    cursor, deadline = "", time.monotonic() + time_cap_s
    while time.monotonic() < deadline:
        try:
            page = load.stub.ListPredictions(P.ListPredictionsRequest(page_size=1000, cursor=cursor),
                                             metadata=load.md, timeout=60)
        except grpc.RpcError as err:
            return {"error": f"{err.code().name}: {err.details()}", "by_status": dict(counts)}
        for pred in page.predictions:
            counts[_status(pred.status)] += 1
            if pred.status not in TERMINAL:
                not_terminal.append(pred.id)
        cursor = page.next_cursor
        if not cursor:
            return {"complete": True, "total": sum(counts.values()), "by_status": dict(counts),
                    "not_terminal": not_terminal[:50]}
    return {"complete": False, "total": sum(counts.values()), "by_status": dict(counts),
            "not_terminal": not_terminal[:50]}


def webhook_summary(receiver: WebhookReceiver, outcomes: list[Outcome]) -> dict[str, Any]:
    """Webhooks received, and the webhook predictions that ended without a terminal webhook."""
    ended = [o.id for o in outcomes if o.kind == "webhook" and o.id and o.status != "stuck"]
    with receiver.lock:
        missing = [i for i in ended if receiver.terminal[i] == 0]
        duplicated = sum(1 for i in ended if receiver.terminal[i] > 1)
        events = dict(receiver.events)
    return {"predictions": len(ended), "received_by_status": events, "missing_completed": len(missing),
            "missing_ids": missing[:20], "duplicated_completed": duplicated}


def cpu_share(series: list[ProcessSeries], start_s: float, end_s: float, nproc: int) -> dict[str, float]:
    """The share of the machine's CPUs the cluster and the load process used between two times."""
    used: Counter[str] = Counter()
    for s in series:
        cpu = [c for t, c in zip(s.t_s, s.cpu_s) if start_s <= t <= end_s]
        if len(cpu) >= 2:
            used["load" if s.role == "load" else "cluster"] += cpu[-1] - cpu[0]
    span = max(1e-9, end_s - start_s) * nproc
    return {k: round(v / span, 3) for k, v in used.items()}


# The plot


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS over time of the goal's processes (absolute, and change since the warm-up), and throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warmup_min, fits = report["settings"]["warmup_s"] / 60.0, report["processes"]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    for label, proc in fits.items():
        if proc["role"] in ("gateway", "ray worker", "ray core"):
            t = [x / 60.0 for x in proc["samples"]["t_s"]]
            rss = proc["samples"]["rss_mib"]
            slope = f" {proc['slope_mib_per_h']:+.1f} MiB/h" if proc.get("fitted") else ""
            line, = top.plot(t, rss, label=f"{label}{slope}")
            base = next((r for x, r in zip(t, rss) if x >= warmup_min), rss[0])
            middle.plot(t, [r - base for r in rss], color=line.get_color())
    service = report["ray_services_rss_sum"]
    top.plot([x / 60.0 for x in service["t_s"]], service["rss_mib"], "k:", label="Ray services (sum)")
    top.set(yscale="log", ylabel="RSS (MiB, log scale)", title="RSS per process")
    top.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    middle.set(ylabel="RSS change since warm-up (MiB)", title="RSS change after the warm-up")
    middle.axhline(0, color="grey", lw=0.5)
    tp = report["throughput"]
    for kind, rates in tp["per_s"].items():
        bottom.plot([(t + tp["bucket_s"] / 2) / 60.0 for t in tp["t_s"]], rates, label=kind)
    bottom.set(yscale="log", xlabel="minutes", ylabel="predictions ended/s (log scale)", title="throughput")
    if tp["per_s"]:
        bottom.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in (top, middle, bottom):
        ax.axvspan(0, warmup_min, color="grey", alpha=0.15, lw=0)
    goal = report["goal"]
    fig.suptitle(f"soak: {report['settings']['minutes']:g} min mixed load; warm-up shaded; flat (< "
                 f"{GOAL_GROWTH_PCT_PER_H:g}%/h) {'met' if goal['met'] else 'NOT met'}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The scenario


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="soak: steady mixed load; each process's RSS must stay flat")
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the load")
    parser.add_argument("--interval-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="unfitted minutes first (default: 20%% of the run, 2 min once the run is 5 min)")
    for kind, count in (("echo", 4), ("echo-stream", 1), ("llm", 2), ("image", 1), ("webhook", 1),
                        ("cancel", 1)):
        parser.add_argument(f"--{kind}-workers", type=int, default=count, help=f"{kind} worker threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def warmup_s(run_s: float) -> float:
    """20% of the run, raised to 2 minutes where that stays under 40% of the run."""
    return max(WARMUP_FRACTION * run_s, min(WARMUP_FLOOR_S, WARMUP_CEILING_FRACTION * run_s))


def workers_of(args: argparse.Namespace) -> dict[str, int]:
    return {kind: getattr(args, f"{kind.replace('-', '_')}_workers") for kind in OPS}


@dataclass
class Soak:
    """What one run measured, before it is summarised."""

    run_s: float
    boots_s: dict[str, float]
    load: Load
    sampler: Sampler
    receiver: WebhookReceiver
    hung_workers: list[str]
    store: dict[str, Any]


def soak(args: argparse.Namespace, target: Target, gateway_pid: int, receiver: WebhookReceiver,
         head_pid: int = 0) -> Soak:
    """Prime the models, then run the load and the sampler for the run's length; tally the store after."""
    run_s = args.minutes * 60.0
    load = Load(target, time.monotonic(), run_s, receiver.url)
    try:
        boots = prime(load)
        load.t0 = time.monotonic()
        sampler = Sampler(gateway_pid, load.t0, args.interval_s, head_pid)
        sampler.start()
        print(f"soak: {args.minutes:g} min, workers {workers_of(args)}, sampling every {args.interval_s:g} s",
              flush=True)
        hung = run_load(load, workers_of(args), args.seed)
        sampler.stop()
        time.sleep(5.0)  # the last webhooks
        return Soak(run_s, boots, load, sampler, receiver, hung, store_tally(load))
    finally:
        load.channel.close()


def summarise(args: argparse.Namespace, result: Soak, nproc: int) -> dict[str, Any]:
    """The report's sections: settings, per-process fits and samples, statuses, throughput, the goal."""
    warm = warmup_s(result.run_s) if args.warmup_minutes is None else args.warmup_minutes * 60.0
    series = sorted(result.sampler.series.values(), key=lambda s: (s.role, s.title, s.pid))
    labels = unique_labels(series)
    processes = {}
    for s in series:
        fit = fit_process(s, warm, result.run_s)
        fit["samples"] = {"t_s": s.t_s, "rss_mib": s.rss_mib, "anon_mib": s.anon_mib, "cpu_s": s.cpu_s}
        processes[labels[s.pid]] = fit
    outcomes = result.load.outcomes
    goal_procs = {k: v for k, v in processes.items() if v["role"] in ("gateway", "ray worker", "ray core")}
    not_flat = [k for k, v in goal_procs.items() if v["flat"] is False]
    statuses = status_summary(outcomes)
    stuck = statuses["by_status"].get("stuck", 0)
    return {
        "settings": {"minutes": args.minutes, "run_s": result.run_s, "warmup_s": warm,
                     "interval_s": args.interval_s, "workers": workers_of(args), "seed": args.seed,
                     "pauses_s": {k: v[1] for k, v in OPS.items()}, "boot_s": result.boots_s,
                     "goal": f"RSS slope after warm-up < {GOAL_GROWTH_PCT_PER_H:g}% of RSS per hour"},
        "goal": {"met": not not_flat and not stuck and not result.store.get("not_terminal"),
                 "not_flat": not_flat, "flat": [k for k, v in goal_procs.items() if v["flat"]],
                 "not_fitted": [k for k, v in goal_procs.items() if not v["fitted"]],
                 "stuck_predictions": stuck, "store_not_terminal": len(result.store.get("not_terminal", []))},
        "statuses": statuses, "store": result.store, "hung_workers": result.hung_workers,
        "webhooks": webhook_summary(result.receiver, outcomes),
        "throughput": throughput(outcomes, result.run_s, max(10.0, result.run_s / 120.0)),
        "cpu_share_after_warmup": cpu_share(series, warm, result.run_s, nproc),
        "loadavg_1m": [[round(t, 1), round(v, 2)] for t, v in result.sampler.loadavg],
        "ray_services_rss_sum": _sum_series([s for s in series if s.role == "ray service"]),
        "processes": processes,
    }


def _sum_series(series: list[ProcessSeries]) -> dict[str, list[float]]:
    """The summed RSS of several processes at each sample time (the sampler reads them together)."""
    totals: dict[float, float] = {}
    for s in series:
        for t, rss in zip(s.t_s, s.rss_mib):
            totals[t] = totals.get(t, 0.0) + rss
    times = sorted(totals)
    return {"t_s": times, "rss_mib": [round(totals[t], 2) for t in times]}


def print_summary(report: dict[str, Any]) -> None:
    print(f"\n{'process':<34} {'role':<12} {'start':>8} {'end':>8} {'MiB/h':>9} {'late':>9} {'%/h':>7}  flat")
    for label, p in report["processes"].items():
        slope = f"{'-':>9} {'-':>9} {'-':>7}"
        if p["fitted"]:
            slope = (f"{p['slope_mib_per_h']:9.2f} {p['late_half_slope_mib_per_h']:9.2f} "
                     f"{p['growth_pct_per_h']:7.2f}")
        print(f"{label[:34]:<34} {p['role']:<12} {p['rss_start_mib']:8.1f} {p['rss_end_mib']:8.1f} {slope}  "
              f"{'-' if p['flat'] is None else ('yes' if p['flat'] else 'NO')}")
    print("statuses:", json.dumps(report["statuses"]["by_kind"]))
    print("store:", json.dumps(report["store"].get("by_status")), "webhooks:", json.dumps(report["webhooks"]))
    goal = report["goal"]
    print(f"goal (flat after warm-up, nothing stuck): {'MET' if goal['met'] else 'NOT MET'} "
          f"not flat: {goal['not_flat']} stuck: {goal['stuck_predictions']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("soak", argv)
    receiver = WebhookReceiver()
    try:
        with private_home() as base:
            settings = dataclasses.replace(base, allow_private_urls=True)  # the webhook receiver is loopback
            try:
                state, target = start_cluster(settings)
                result = soak(args, target, state.pid, receiver, state.ray_head.pid if state.ray_head else 0)
            finally:
                launch.down(settings)
    finally:
        receiver.close()
    sections = summarise(args, result, report.machine["nproc"])
    written = report.write(args.out, **sections)
    plot(written, args.out / "soak.png")
    print_summary(written)
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")


if __name__ == "__main__":
    main()
