"""The fairness scenario: one account floods a deployment while another sends one prediction a second.

A private cluster (``warmfleet up`` on a temporary home, its own local Ray, no built-in models) serves
one deployment of the echo runner with 2 instances of ``--slots`` each (``max_concurrency``: 16, so that
a queue forms in the router behind 32 slots; the built-in ``warmfleet/echo`` takes 64 at once per
instance), each prediction sleeping ``--delay-ms`` (600: long enough that the slots, not the gateway's
CPU, bound A's throughput). The router keeps headroom on instances of 16 slots or more: one slot in 16
(``scheduler.policies.Headroom``) goes only to an account under its share, so A alone runs on 30 of the
32, and B's prediction finds a free slot at once. ``--slots 1 --delay-ms 50`` is the second scenario:
one slot per instance, no headroom, where B must wait for one of A's running predictions to end (nothing
is preempted). Two user accounts, A and B, each with a token of its own. Phases, in one run, on the same
cluster:

1. **idle**: B alone sends one prediction every ``--interval-s`` (``--idle-samples`` of them): its queue
   time (the prediction's ``metrics.queue_time_s``: started minus created) on an idle cluster.
2. **A alone**: A sends ``--predictions`` at once (``wait_s=0``, ``--flood-concurrency`` creates in flight,
   as fast as the gateway accepts them), and every one is followed to its end: A's throughput.
3. **A and B**: the same flood, and B's prediction a second until A's last has ended.
4. **one account** (the control; ``--no-control`` skips it): the same again, but B's predictions carry
   A's token, so the router sees one account and serves them in arrival order, behind A's backlog: what
   B would wait without fair share.

Goals, from the issue: B's p50 queue time in phase 3 at most 2x its idle p50, and A's throughput in
phase 3 (completions/s between its 10th and 90th percentile completion) at least 0.9x phase 2's. The
report also has what B would wait in phase 3 however fair the queue were no slot kept free
(``slot_wait``): no prediction is preempted, so B would wait for a busy slot to free; and the slots A's
predictions held on average (``mean_running``: 30 of 32 with the headroom).
Per-account limits are off for the bench (``rate_limit_per_minute`` 0, and the cap on predictions
active per account raised), so that A's flood is accepted whole. Writes ``fairness.json`` and
``fairness.png`` under ``--out``.

    python -m bench.fairness --out bench/results
    python -m bench.fairness --slots 1 --delay-ms 50 --out bench/results/fairness-1slot
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import Report, private_home, running_cluster
from scheduler.policies import Headroom
from warmfleet.client import Client
from warmfleet.settings import Settings
from warmfleet.v1 import predictions_pb2, predictions_pb2_grpc, types_pb2

MODEL = "bench/echo-slots"
DEPLOYMENT = "bench/fair"
INSTANCES = 2
GOAL_B_P50_RATIO = 2.0
GOAL_A_THROUGHPUT_RATIO = 0.9
# The gateway's per-account limits, off (or out of reach) for the bench: A's flood must be accepted whole.
LIMITS_OFF = {"rate_limit_per_minute": 0, "max_active_per_account": 1_000_000, "max_queue_per_model": 4096}
TERMINAL = {types_pb2.STATUS_SUCCEEDED, types_pb2.STATUS_FAILED, types_pb2.STATUS_CANCELED,
            types_pb2.STATUS_ABORTED}


def account_tokens(client: Client, names: tuple[str, ...]) -> dict[str, str]:
    """A user token for each of ``names``, each of its own account: the owner whose share the router
    keeps. (Where tokens carry no account, a token's name is the owner: one token per name.)"""
    tokens = {}
    for name in names:
        if hasattr(client, "accounts"):
            client.accounts.create(name)
            tokens[name] = client.accounts.create_token(f"{name}-bench", account=name).text
        else:
            tokens[name] = client.cluster.create_token(name).token
    return tokens


# The cluster


def bench_settings(settings: Settings, home: Path) -> Settings:
    """The private cluster's settings: no built-in models (nothing else loads the machine) and the
    per-account limits off (``LIMITS_OFF``, those this version of the settings has)."""
    config = home / "fairness-cluster.toml"
    config.write_text("[cluster]\nbuiltin_models = false\n")
    names = {f.name for f in dataclasses.fields(settings)}
    return dataclasses.replace(settings, cluster_config=str(config),
                               **{k: v for k, v in LIMITS_OFF.items() if k in names})


def deploy(client: Client, slots: int, timeout_s: float = 120.0) -> None:
    """The echo model with ``slots`` per instance, and its deployment of ``INSTANCES``, all serving."""
    client.models.create(MODEL, "echo", options={"max_concurrency": slots})
    client.deployments.create(DEPLOYMENT, MODEL, min_instances=INSTANCES, max_instances=INSTANCES)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        serving = [i for i in client.cluster.instances()
                   if i.model == DEPLOYMENT and i.state in ("idle", "processing")]
        if len(serving) >= INSTANCES:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{DEPLOYMENT} has not {INSTANCES} instances serving after {timeout_s:.0f} s")


# Load


class Caller:
    """One account's calls on a channel of its own."""

    def __init__(self, address: str, token: str, delay_ms: int) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = predictions_pb2_grpc.PredictionsStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.delay_ms = delay_ms

    async def create(self, text: str, wait_s: float = 0.0) -> types_pb2.Prediction:
        request = predictions_pb2.CreatePredictionRequest(
            deployment=DEPLOYMENT, wait_s=wait_s,
            input=types_pb2.PredictionInput(echo=types_pb2.EchoInput(text=text, delay_ms=self.delay_ms)))
        return await self.stub.CreatePrediction(request, metadata=self.metadata, timeout=wait_s + 30)

    async def get(self, prediction_id: str) -> types_pb2.Prediction:
        request = predictions_pb2.GetPredictionRequest(id=prediction_id)
        return await self.stub.GetPrediction(request, metadata=self.metadata, timeout=30)

    async def ended(self, ids: list[str], poll_s: float = 0.25, timeout_s: float = 300.0
                    ) -> list[types_pb2.Prediction]:
        """Each prediction once it has ended. Only the newest is polled while they run (one account's
        predictions end in about the order they came): polling all would load the gateway measured."""
        deadline = time.monotonic() + timeout_s
        pending, done = list(ids), {}
        while pending:
            if (await self.get(pending[-1])).status in TERMINAL:
                for pb in await _gather_bounded([self.get(pid) for pid in pending], 32):
                    if pb.status in TERMINAL:
                        done[pb.id] = pb
                pending = [pid for pid in pending if pid not in done]
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} predictions had not ended after {timeout_s:.0f} s")
                await asyncio.sleep(poll_s)
        return [done[pid] for pid in ids]


async def _gather_bounded(calls: list, limit: int) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(call):
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def flood(caller: Caller, n: int, concurrency: int) -> tuple[list[str], float]:
    """``n`` creates as fast as the gateway accepts them; their ids, and how long accepting took."""
    started = time.monotonic()
    replies = await _gather_bounded([caller.create(f"a{i}") for i in range(n)], concurrency)
    return [r.id for r in replies], time.monotonic() - started


async def every(caller: Caller, interval_s: float, stop: asyncio.Event | None, count: int | None,
                ) -> list[types_pb2.Prediction]:
    """One prediction each ``interval_s``, on a fixed schedule, until ``stop`` is set or ``count`` were
    sent; each waits for its end (what an interactive client does)."""
    sent: list[asyncio.Task] = []
    start = time.monotonic()
    k = 0
    while (count is None or k < count) and not (stop is not None and stop.is_set()):
        # The first one interval in: during a flood, after A's first creates, not ahead of them.
        await asyncio.sleep(max(0.0, start + (k + 1) * interval_s - time.monotonic()))
        if stop is not None and stop.is_set():
            break
        sent.append(asyncio.create_task(caller.create(f"b{k}", wait_s=60.0)))
        k += 1
    replies = await asyncio.gather(*sent)
    return await caller.ended([r.id for r in replies])


async def idle_phase(b: Caller, args: argparse.Namespace) -> dict[str, Any]:
    return {"b": [_record(p) for p in await every(b, args.interval_s, None, args.idle_samples)]}


async def flood_phase(a: Caller, b: Caller | None, args: argparse.Namespace) -> dict[str, Any]:
    """A's flood, followed to its end; with ``b``, one prediction a second meanwhile."""
    stop = asyncio.Event()
    b_task = asyncio.create_task(every(b, args.interval_s, stop, None)) if b is not None else None
    ids, accept_s = await flood(a, args.predictions, args.flood_concurrency)
    a_done = await a.ended(ids)
    stop.set()
    out: dict[str, Any] = {"a": [_record(p) for p in a_done], "a_accept_s": accept_s}
    if b_task is not None:
        out["b"] = [_record(p) for p in await b_task]
    return out


def _record(pb: types_pb2.Prediction) -> dict[str, Any]:
    def at(name: str) -> float | None:
        return getattr(pb, name).ToNanoseconds() / 1e9 if pb.HasField(name) else None

    queue = pb.metrics.queue_time_s if pb.metrics.HasField("queue_time_s") else None
    return {"id": pb.id, "status": types_pb2.Status.Name(pb.status), "created_at": at("created_at"),
            "started_at": at("started_at"), "completed_at": at("completed_at"), "queue_time_s": queue}


# Results


def b_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    queue_ms = [r["queue_time_s"] * 1000 for r in records if r["queue_time_s"] is not None]
    return {"samples": len(records), "not_succeeded": sum(r["status"] != "STATUS_SUCCEEDED" for r in records),
            "p50_queue_ms": statistics.median(queue_ms) if queue_ms else None,
            "p90_queue_ms": _quantile(queue_ms, 0.9), "max_queue_ms": max(queue_ms, default=None)}


def a_summary(records: list[dict[str, Any]], accept_s: float) -> dict[str, Any]:
    """A's throughput: completions/s between its 10th and 90th percentile completion (the steady part
    of the flood), and over its whole makespan (first create to last completion); and the slots its
    predictions held on average over the steady part (``mean_running``)."""
    ok = [r for r in records if r["status"] == "STATUS_SUCCEEDED"]
    done = sorted(r["completed_at"] for r in ok)
    lo, hi = int(0.1 * (len(done) - 1)), int(0.9 * (len(done) - 1))
    steady = (hi - lo) / (done[hi] - done[lo]) if hi > lo and done[hi] > done[lo] else None
    makespan = done[-1] - min(r["created_at"] for r in records) if done else None
    return {"predictions": len(records), "succeeded": len(ok), "accept_s": accept_s,
            "steady_throughput_per_s": steady, "makespan_s": makespan,
            "makespan_throughput_per_s": len(ok) / makespan if makespan else None,
            "mean_running": mean_running(ok, done[lo], done[hi]) if steady else None,
            "p50_queue_ms": statistics.median(r["queue_time_s"] * 1000 for r in ok) if ok else None}


def mean_running(records: list[dict[str, Any]], start: float, end: float) -> float:
    """How many of ``records`` ran at once on average between ``start`` and ``end`` (their started and
    completed times, as the gateway recorded them): the slots they held."""
    held = sum(max(0.0, min(r["completed_at"], end) - max(r["started_at"], start))
               for r in records if r["started_at"] is not None)
    return held / (end - start)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slot_wait(summary: dict[str, Any], slots: int) -> dict[str, Any]:
    """What B would wait under A's flood however fair the queue, were no slot kept free (no headroom),
    since a running prediction is never preempted: the time until the first of A's busy slots frees. A
    slot's cycle (a prediction and the dispatch after it) is measured from A's throughput alone on the
    slots A holds; with the slots' cycles spread at random the mean wait is cycle / (slots + 1); with them
    in step (the flood starts them together, and equal predictions keep them so) it is cycle / 2."""
    held = INSTANCES * (slots - Headroom().of(slots))
    cycle_ms = held * 1000 / summary["a_alone"]["a"]["steady_throughput_per_s"]
    return {"a_slots": held, "slot_cycle_ms": cycle_ms, "mean_wait_ms_slots_spread": cycle_ms / (held + 1),
            "mean_wait_ms_slots_in_step": cycle_ms / 2}


def goals(summary: dict[str, Any]) -> dict[str, Any]:
    idle, fair = summary["idle"]["b"]["p50_queue_ms"], summary["fair"]["b"]["p50_queue_ms"]
    alone = summary["a_alone"]["a"]["steady_throughput_per_s"]
    shared = summary["fair"]["a"]["steady_throughput_per_s"]
    b_ratio = fair / idle if fair is not None and idle else None
    a_ratio = shared / alone if shared is not None and alone else None
    return {
        "b_p50_queue": {"goal": f"<= {GOAL_B_P50_RATIO}x B's idle p50", "value": b_ratio,
                        "met": b_ratio is not None and b_ratio <= GOAL_B_P50_RATIO},
        "a_throughput": {"goal": f">= {GOAL_A_THROUGHPUT_RATIO}x A alone", "value": a_ratio,
                         "met": a_ratio is not None and a_ratio >= GOAL_A_THROUGHPUT_RATIO},
    }


def plot(phases: dict[str, Any], summary: dict[str, Any], verdict: dict[str, Any], floor: dict[str, Any],
         args: argparse.Namespace, path: Path) -> None:
    """B's queue time per prediction in each phase; A's completions per second in each flood."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"idle": ("tab:gray", "B alone (idle)"), "fair": ("tab:blue", "B during A's flood"),
              "one_account": ("tab:red", "B on A's account (control: no fair share)")}
    for name, (colour, label) in styles.items():
        records = phases.get(name, {}).get("b", [])
        if not records:
            continue
        t0 = min(r["created_at"] for r in records)
        left.plot([r["created_at"] - t0 for r in records], [r["queue_time_s"] * 1000 for r in records], "o-",
                  color=colour, ms=3, label=f"{label}: p50 {summary[name]['b']['p50_queue_ms']:.1f} ms")
    idle_p50 = summary["idle"]["b"]["p50_queue_ms"]
    left.axhline(GOAL_B_P50_RATIO * idle_p50, color="tab:green", ls="--", label="goal: 2x idle p50")
    low, high = floor["mean_wait_ms_slots_spread"], floor["mean_wait_ms_slots_in_step"]
    left.axhspan(low, high, color="black", alpha=0.12,
                 label=f"mean wait for a busy slot to free, were none kept free: {low:.1f}-{high:.0f} ms")
    left.set(yscale="log", xlabel="seconds since B's first prediction of the phase", ylabel="queue time (ms)",
             title="B's queue time (one prediction a second)")
    left.legend(fontsize="small", loc="center left", bbox_to_anchor=(0.0, 0.6))  # where no phase's points are
    # Bins of five predictions' time at least: the slots finish in step, and 1 s bins of 0.6 s cycles beat.
    bin_s = max(1.0, 5 * args.delay_ms / 1000)
    for name, colour, label in (("a_alone", "tab:gray", "A alone"), ("fair", "tab:blue", "A with B"),
                                ("one_account", "tab:red", "A with B on A's account")):
        records = [r for r in phases.get(name, {}).get("a", []) if r["completed_at"] is not None]
        if not records:
            continue
        t0 = min(r["created_at"] for r in records)
        bins: dict[int, int] = {}
        for r in records:
            k = int((r["completed_at"] - t0) / bin_s)
            bins[k] = bins.get(k, 0) + 1
        ks = list(range(max(bins) + 1))
        right.step([k * bin_s for k in ks], [bins.get(k, 0) / bin_s for k in ks], where="post", color=colour,
                   label=f"{label}: {summary[name]['a']['steady_throughput_per_s']:.1f}/s steady")
    headroom = Headroom().of(args.slots)
    right.set(xlabel="seconds since A's first create",
              ylabel=f"A's predictions completed per second ({bin_s:g} s bins)",
              title=f"A's flood: {args.predictions} on {INSTANCES} x {args.slots} slots "
                    f"({headroom} headroom each), {args.delay_ms} ms each", ylim=(0, None))
    right.legend(fontsize="small")
    fig.suptitle("fair share in the router: " + "; ".join(
        f"{name} {g['value']:.2f} ({'met' if g['met'] else 'NOT met'})" if g["value"] is not None
        else f"{name} n/a" for name, g in verdict.items()), fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The scenario


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="fairness: one account's flood against another's trickle")
    parser.add_argument("--predictions", type=int, default=1000, help="A's flood")
    parser.add_argument("--slots", type=int, default=16, help="each instance's max_concurrency")
    parser.add_argument("--delay-ms", type=int, default=600, help="each prediction's time (echo delay_ms)")
    parser.add_argument("--interval-s", type=float, default=1.0, help="B's pace")
    parser.add_argument("--idle-samples", type=int, default=20, help="B's predictions on the idle cluster")
    parser.add_argument("--flood-concurrency", type=int, default=64, help="A's creates in flight at once")
    parser.add_argument("--no-control", action="store_true", help="skip the one-account control phase")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


async def run_phases(address: str, tokens: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    a, b = (Caller(address, tokens[name], args.delay_ms) for name in ("bench-a", "bench-b"))
    b_as_a = Caller(address, tokens["bench-a"], args.delay_ms)
    try:
        for caller in (a, b):  # the first call of each pays for its channel and token lookup: not measured
            await caller.ended([(await caller.create("warm-up", wait_s=10)).id])
        phases = {"idle": await idle_phase(b, args)}
        print(f"idle: B p50 {b_summary(phases['idle']['b'])['p50_queue_ms']:.2f} ms", flush=True)
        phases["a_alone"] = await flood_phase(a, None, args)
        print(f"A alone: {a_summary(phases['a_alone']['a'], 0)['steady_throughput_per_s']:.1f}/s", flush=True)
        phases["fair"] = await flood_phase(a, b, args)
        print(f"A and B: B p50 {b_summary(phases['fair']['b'])['p50_queue_ms']:.2f} ms", flush=True)
        if not args.no_control:
            phases["one_account"] = await flood_phase(a, b_as_a, args)
        return phases
    finally:
        for caller in (a, b, b_as_a):
            await caller.channel.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("fairness", argv)
    with private_home() as base:
        settings = bench_settings(base, base.home)
        with running_cluster(settings) as target:
            admin = Client(target.address, target.token_file.read_text().strip(), settings=settings)
            deploy(admin, args.slots)
            tokens = account_tokens(admin, ("bench-a", "bench-b"))
            phases = asyncio.run(run_phases(target.address, tokens, args))
            admin.close()
    summary = {name: {**({"b": b_summary(p["b"])} if "b" in p else {}),
                      **({"a": a_summary(p["a"], p["a_accept_s"])} if "a" in p else {})}
               for name, p in phases.items()}
    verdict, floor = goals(summary), slot_wait(summary, args.slots)
    report.write(
        args.out,
        settings={"predictions": args.predictions, "delay_ms": args.delay_ms, "interval_s": args.interval_s,
                  "idle_samples": args.idle_samples, "flood_concurrency": args.flood_concurrency,
                  "deployment": DEPLOYMENT, "runner": "echo", "instances": INSTANCES,
                  "max_concurrency_per_instance": args.slots,
                  "headroom_per_instance": Headroom().of(args.slots), "headroom_one_in": Headroom().one_in,
                  "gateway_limits": LIMITS_OFF},
        summary=summary, goals=verdict, slot_wait=floor, phases=phases)
    plot(phases, summary, verdict, floor, args, args.out / "fairness.png")
    print(json.dumps({"summary": summary, "goals": verdict, "slot_wait": floor}, indent=2))
    print(f"wrote {args.out / 'fairness.json'} and {args.out / 'fairness.png'}")


if __name__ == "__main__":
    main()
