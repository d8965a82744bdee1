"""The images scenario: images/s of Stable Diffusion predictions through the cluster (dynamic batching)
against diffusers called directly in this process, for three loads; and upscaled megapixels/s.

Starts a private cluster (``warmfleet up`` on a temporary home: it generates and serves the tiny SD as
``warmfleet/tiny-sd``, with its LoRA adapter ``defaults.TINY_SD_LORA``, and the tiny ESRGAN as
``warmfleet/tiny-esrgan``), and measures, all through ``warmfleet.loadgen`` (the load generator of
`warmfleet bench`, closed loop, each prediction a ``CreatePrediction`` held open until it ends; images/s
counts the image files that came back):

- **plain**: ``--images`` txt2img predictions, ``--concurrency`` in flight (each its own prompt and seed;
  the same size, steps and scheduler, so they may share pipeline calls);
- **one batch**: ``--batch`` txt2img predictions sent at once, against one diffusers call of that batch
  (the same prompts and seeds); the predictions' timestamps and metrics (``queue_time_s``,
  ``predict_time_s``, ``batch_size``) say where the cluster's time goes;
- **mixed**: ``--mixed-images`` predictions, ``--mixed-concurrency`` in flight, that cycle through plain
  txt2img, the LoRA adapter at scale 1.0, the adapter at scale 0.5, and inpainting (an init image and a
  mask). Requests of different kinds differ in their batch key, so they never share a call: the report
  counts the calls the cluster made (from each prediction's ``batch_size``) and what one diffusers call
  of each of those sizes takes here: the ratio those calls allow, back to back with no overhead, and the
  ratio if every call of a kind were full.

The baseline is the same weights loaded in this process: diffusers' ``StableDiffusionPipeline``, the
adapter through diffusers' own ``load_lora_weights`` and ``set_adapters`` (``disable_lora`` for the
requests without it), and ``StableDiffusionInpaintPipeline.from_pipe``; sequential means each request
called alone, in turn, with the same settings (it does no PNG encoding and no network hop; the cluster
does both). Its torch runs ``--direct-threads`` threads (1): what the cluster's runner gets, since Ray
sets ``OMP_NUM_THREADS=1`` in the node agent's actor (``num_cpus=0``), where runners run. The cluster's
rounds and the baseline's take turns (which goes first alternates), so that both meet the same minutes
of a shared machine; the median round of each counts, and every round records the cluster's CPU, this
process's and the load average. Two diagnostics for the one batch: the same rounds through a second
model made for them with a longer batch wait, and the runner's own ``Pipelines.run`` called here. Then
upscales: one image through the cluster at a time (a sequential timing, not load: raw gRPC as before),
and the same model called directly (spandrel, no tiling) as a reference, after the cluster stops.

    python -m bench.images --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc

from bench.common import Report, Target, private_home, running_cluster
from warmfleet import loadgen
from warmfleet.cli.defaults import TINY_ESRGAN, TINY_SD, TINY_SD_LORA
from warmfleet.client import Client, File
from warmfleet.cluster_state import read_state
from warmfleet.v1 import predictions_pb2 as P, predictions_pb2_grpc, types_pb2 as T

GOAL_SPEEDUP = 1.8  # the cluster against sequential diffusers calls (plain and mixed loads)
GOAL_ONE_BATCH = 0.9  # the cluster's batch sent at once against one diffusers call of that batch
SCHEDULER = "DPM++ 2M"
MIXED_KINDS = ("txt2img", "lora x1.0", "lora x0.5", "inpaint")  # request i is MIXED_KINDS[i % 4]
LORA_SCALES = {"lora x1.0": 1.0, "lora x0.5": 0.5}
INPAINT_STRENGTH = 0.8  # the runner's default: 10 steps run 8
DIRECT_ADAPTER = "tiny-style"  # the adapter's name in the baseline's pipeline
LORA_FOLDER = "tiny-sd-lora-style"  # under the home's models, as defaults.prepare_default_weights writes it
WAIT_PROBE_MODEL = "bench/tiny-sd-wait"  # the one-batch diagnostic's model: tiny-sd with a longer batch wait
CALL_REPEATS = 5  # timings of each diffusers call size for the mixed load's bound; the median counts


def prompt(i: int) -> str:
    return f"a watercolour of a lighthouse, variation {i}"


def generation(i: int, steps: int, size: int) -> dict[str, Any]:
    """Image ``i``: its own prompt and seed; the same size, steps and scheduler as every other."""
    return {"prompt": prompt(i), "seed": i, "num_inference_steps": steps, "width": size, "height": size,
            "scheduler": SCHEDULER}


def mixed_kind(i: int) -> str:
    return MIXED_KINDS[i % len(MIXED_KINDS)]


@dataclass(frozen=True)
class Pictures:
    """The inpainting requests' init image and mask (the right half white: repainted), as PNG."""

    init_png: bytes
    mask_png: bytes

    @classmethod
    def make(cls, size: int) -> Pictures:
        from PIL import Image

        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (size // 2, 0, size, size))
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        return cls(test_image(size), buffer.getvalue())

    def images(self) -> tuple[Any, Any]:
        """The init image and the mask as the runner decodes them (RGB; greyscale, already binary)."""
        from PIL import Image

        return (Image.open(io.BytesIO(self.init_png)).convert("RGB"),
                Image.open(io.BytesIO(self.mask_png)).convert("L"))


def mixed_input(i: int, steps: int, size: int, pictures: Pictures) -> dict[str, Any]:
    """Request ``i`` of the mixed load: ``generation(i)`` with its kind's adapter or init image and mask."""
    fields = generation(i, steps, size)
    kind = mixed_kind(i)
    if kind in LORA_SCALES:
        fields["loras"] = [{"weights": TINY_SD_LORA, "scale": LORA_SCALES[kind]}]
    elif kind == "inpaint":
        fields.update(image=File(pictures.init_png, "image/png", "init.png"),
                      mask=File(pictures.mask_png, "image/png", "mask.png"), strength=INPAINT_STRENGTH)
    return fields


# Rounds: the cluster's and the baseline's, taking turns


class ClusterCpu:
    """CPU seconds used so far by every process of the cluster: those in the gateway's session and in
    its Ray head's (``warmfleet up`` starts each in a session of its own)."""

    def __init__(self, settings: Any) -> None:
        state = read_state(settings)
        if state is None:
            raise RuntimeError("no cluster recorded in the bench's home")
        self.sessions = {state.pid} | ({state.ray_head.pid} if state.ray_head else set())
        self.tick_s = 1 / os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            if int(fields[3]) in self.sessions:  # field 6, the session; 14 and 15, user and system time
                total += int(fields[11]) + int(fields[12])
        return total * self.tick_s


def measured(run: Callable[[], dict[str, Any]], cpu: ClusterCpu) -> dict[str, Any]:
    """One round, with what the machine did meanwhile: the cluster's CPU and this process's (cores'
    worth: 1.0 is one core busy throughout), and the load average at its end."""
    cluster_s, own_s, start = cpu.seconds(), time.process_time(), time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    return {**result, "cluster_cpu_cores": (cpu.seconds() - cluster_s) / wall,
            "bench_cpu_cores": (time.process_time() - own_s) / wall, "loadavg_1m": os.getloadavg()[0]}


def alternate(cluster: Callable[[], dict[str, Any]], direct: Callable[[], dict[str, Any]], repeats: int,
              cpu: ClusterCpu) -> tuple[dict[str, Any], dict[str, Any]]:
    """``repeats`` rounds of each, taking turns (which goes first alternates), so that both see the
    same minutes of the shared machine; the median round of each."""
    rounds: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for k in range(repeats):
        order = (0, 1) if k % 2 == 0 else (1, 0)
        for side in order:
            rounds[side].append({"turn": k, **measured((cluster, direct)[side], cpu)})
    return median_round(rounds[0]), median_round(rounds[1])


def turn_ratios(cluster: dict[str, Any], direct: dict[str, Any]) -> list[float]:
    """The cluster's images/s over the baseline's, turn by turn (each pair ran in the same minute)."""
    by_turn = {r["turn"]: r["images_per_s"] for r in direct["rounds"]}
    in_turns = sorted(cluster["rounds"], key=lambda r: r["turn"])
    return [r["images_per_s"] / by_turn[r["turn"]] for r in in_turns]


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds by images/s, and the median one's numbers beside them."""
    rounds = sorted(rounds, key=lambda r: r["images_per_s"])
    return {"rounds": rounds, **rounds[len(rounds) // 2]}


# Through the cluster


class EpochClock:
    """``time.time`` for the load generator, so that its records line up with the predictions' timestamps."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def sender(client: Client, clock: loadgen.Clock | None = None, model: str = TINY_SD) -> loadgen.ClientSender:
    return loadgen.ClientSender(client, loadgen.Target(model), stream=False, timeout_s=120.0, clock=clock)


def load_round(send: loadgen.Sender, inputs: Sequence[dict[str, Any]], concurrency: int,
               clock: loadgen.Clock | None = None) -> list[loadgen.RequestRecord]:
    """One closed-loop round of ``inputs``, every prediction checked to have made its image."""
    records = loadgen.run_closed_loop(send, inputs, concurrency, requests=len(inputs), clock=clock)
    stats = loadgen.summarize(records)
    if stats.errors or stats.images != len(inputs):
        raise RuntimeError(f"{len(inputs)} images asked for, {stats.images} made; errors: {stats.errors}; "
                           f"{[r.message for r in records if r.message][:1]}")
    return records


def plain_round(records: list[loadgen.RequestRecord]) -> dict[str, Any]:
    stats = loadgen.summarize(records)
    return {"images_per_s": stats.images_per_s, "wall_s": stats.wall_s,
            "mean_batch_size": statistics.mean(int(r.metrics["batch_size"]) for r in records)}


def calls_made(records: Sequence[loadgen.RequestRecord], kind_of: Callable[[int], str]
               ) -> dict[str, dict[str, float]]:
    """The pipeline calls behind ``records``, per kind and size: a call of b images gives b predictions
    (one image each) whose ``batch_size`` is b, and holds one kind only (the kinds' batch keys differ)."""
    counts = Counter((kind_of(r.index), int(r.metrics["batch_size"])) for r in records)
    calls: dict[str, dict[str, float]] = {}
    for (kind, size), predictions in sorted(counts.items()):
        calls.setdefault(kind, {})[str(size)] = predictions / size
    return calls


def metric_p50(records: Sequence[loadgen.RequestRecord], name: str) -> float | None:
    return loadgen.percentile([r.metrics[name] for r in records if name in r.metrics], 50)


def mixed_round(records: list[loadgen.RequestRecord]) -> dict[str, Any]:
    stats = loadgen.summarize(records)
    calls = calls_made(records, mixed_kind)
    per_kind = {}
    for kind in MIXED_KINDS:
        mine = [r for r in records if mixed_kind(r.index) == kind]
        per_kind[kind] = {
            "predictions": len(mine), "calls": sum(calls.get(kind, {}).values()),
            "mean_batch_size": statistics.mean(r.metrics["batch_size"] for r in mine),
            "latency_s_p50": loadgen.percentile([r.latency_s for r in mine], 50),
            "queue_time_s_p50": metric_p50(mine, "queue_time_s"),
            "predict_time_s_p50": metric_p50(mine, "predict_time_s")}
    return {"images_per_s": stats.images_per_s, "wall_s": stats.wall_s,
            "calls": sum(n for sizes in calls.values() for n in sizes.values()),
            "calls_by_kind_and_size": calls, "per_kind": per_kind}


def one_batch_round(client: Client, send: loadgen.Sender, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """``inputs`` sent at once; each prediction's timeline (seconds from the round's start: sent,
    created at the gateway, started and completed at the node, answered) read back from the gateway."""
    began = time.time()  # the load generator's own start, microseconds later, is its records' zero
    records = load_round(send, inputs, len(inputs), send.clock)
    stats = loadgen.summarize(records)
    timeline = []
    for r in records:
        pred = client.predictions.get(r.prediction_id)
        timeline.append({
            "index": r.index, "sent_s": r.start_s, "created_s": pred.created_at.timestamp() - began,
            "started_s": pred.started_at.timestamp() - began,
            "completed_s": pred.completed_at.timestamp() - began, "answered_s": r.end_s,
            "batch_size": int(r.metrics["batch_size"]), "queue_time_s": r.metrics["queue_time_s"],
            "predict_time_s": r.metrics["predict_time_s"]})
    sizes = Counter(t["batch_size"] for t in timeline)
    return {"images_per_s": stats.images_per_s, "wall_s": stats.wall_s,
            "calls": {str(b): n / b for b, n in sorted(sizes.items())},
            "phases": phases(timeline), "timeline": timeline}


def phases(timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a round's wall time goes. The critical path (its three parts add up to the wall): until
    the first prediction starts at the node; from there until the last one completes there; from
    there until the last answer reaches the client. Per prediction (p50 and max): the create call
    (sent to created), the queue (``queue_time_s``), the node's time (``predict_time_s``: the runner's
    prepare, batch wait, pipeline call, PNG encoding) and the way back (completed to answered)."""
    first_start = min(t["started_s"] for t in timeline)
    last_done = max(t["completed_s"] for t in timeline)
    wall = max(t["answered_s"] for t in timeline)
    spans = {"create_s": [t["created_s"] - t["sent_s"] for t in timeline],
             "queue_time_s": [t["queue_time_s"] for t in timeline],
             "predict_time_s": [t["predict_time_s"] for t in timeline],
             "return_s": [t["answered_s"] - t["completed_s"] for t in timeline]}
    return {
        "critical_path_s": {"to_first_start": first_start,
                            "first_start_to_last_completed": last_done - first_start,
                            "last_completed_to_last_answer": wall - last_done},
        "started_spread_s": max(t["started_s"] for t in timeline) - first_start,
        "per_prediction_s": {name: {"p50": loadgen.percentile(v, 50), "max": max(v)}
                             for name, v in spans.items()},
    }


# Directly, in this process


class Direct:
    """The baseline: the same weights in this process, with diffusers' own classes and LoRA loading."""

    def __init__(self, models: Path, steps: int, size: int, pictures: Pictures) -> None:
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        self.models, self.steps, self.size = models, steps, size
        self.pipe = StableDiffusionPipeline.from_pretrained(
            models / "tiny-sd", dtype=torch.float32, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.scheduler_config = self.pipe.scheduler.config
        self.inpaint: Any = None
        self.init_image, self.mask_image = pictures.images()

    def add_lora_and_inpaint(self) -> None:
        """The adapter, loaded once (``load_lora_weights``), and the inpainting pipeline over the same
        components (``from_pipe``): what the mixed load needs."""
        from diffusers import StableDiffusionInpaintPipeline

        from runners.tiny_loras import LORA_WEIGHT_NAME

        self.pipe.load_lora_weights(str(self.models / LORA_FOLDER), weight_name=LORA_WEIGHT_NAME,
                                    adapter_name=DIRECT_ADAPTER)
        self.inpaint = StableDiffusionInpaintPipeline.from_pipe(self.pipe)
        self.inpaint.set_progress_bar_config(disable=True)

    def call(self, kind: str, indices: Sequence[int]) -> None:
        """One diffusers call of ``kind`` for images ``indices`` (their prompts and seeds), the adapter
        set (or disabled) for it first, a fresh scheduler, as the runner does."""
        import torch

        if kind in LORA_SCALES:
            self.pipe.enable_lora()
            self.pipe.set_adapters([DIRECT_ADAPTER], [LORA_SCALES[kind]])
        elif self.inpaint is not None:
            self.pipe.disable_lora()
        pipe = self.inpaint if kind == "inpaint" else self.pipe
        pipe.scheduler = self._scheduler()
        kwargs: dict[str, Any] = {
            "prompt": [prompt(i) for i in indices], "num_inference_steps": self.steps,
            "generator": [torch.Generator("cpu").manual_seed(i) for i in indices],
            "width": self.size, "height": self.size}
        if kind == "inpaint":
            kwargs.update(image=[self.init_image] * len(indices), mask_image=[self.mask_image] * len(indices),
                          strength=INPAINT_STRENGTH)
        with torch.inference_mode():
            pipe(**kwargs)

    def _scheduler(self) -> Any:
        from runners.diffusion.schedulers import make_scheduler

        return make_scheduler(SCHEDULER, self.scheduler_config)


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def sequential_round(direct: Direct, kinds: Sequence[str]) -> dict[str, Any]:
    """Request ``i`` (of kind ``kinds[i]``) called alone, each after the last."""
    wall = timed(lambda: [direct.call(kind, [i]) for i, kind in enumerate(kinds)])
    return {"images_per_s": len(kinds) / wall, "wall_s": wall}


def one_call_round(direct: Direct, count: int) -> dict[str, Any]:
    """One diffusers call of ``count`` images (the cluster's prompts and seeds)."""
    wall = timed(lambda: direct.call("txt2img", range(count)))
    return {"images_per_s": count / wall, "wall_s": wall}


def call_times(direct: Direct, sizes: dict[str, set[int]]) -> dict[str, dict[str, float]]:
    """The median time of one diffusers call of each kind and size asked for."""
    times: dict[str, dict[str, float]] = {}
    for kind, wanted in sizes.items():
        direct.call(kind, range(max(wanted)))  # warm-up at the largest size
        for size in sorted(wanted):
            times.setdefault(kind, {})[str(size)] = statistics.median(
                timed(lambda k=kind, b=size: direct.call(k, range(b))) for _ in range(CALL_REPEATS))
    return times


def encode_time(count: int, size: int) -> float:
    """What encoding ``count`` images of the size as PNG takes here (the runner's ``encode_image``)."""
    import numpy as np
    from PIL import Image

    from runners.images import encode_image

    pixels = np.random.default_rng(0).integers(0, 255, (count, size, size, 3), dtype=np.uint8)
    images = [Image.fromarray(p) for p in pixels]
    return statistics.median(timed(lambda: [encode_image(im, "png", "x") for im in images]) for _ in range(5))


# The three loads


def plain_load(client: Client, direct: Direct, args: argparse.Namespace, cpu: ClusterCpu
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--images`` txt2img predictions, ``--concurrency`` in flight, against each called alone."""
    inputs = [generation(i, args.steps, args.size) for i in range(args.images)]
    send = sender(client)
    send(0, inputs[0])  # warm-ups
    direct.call("txt2img", [0])
    return alternate(lambda: plain_round(load_round(send, inputs, args.concurrency)),
                     lambda: sequential_round(direct, ["txt2img"] * args.images), args.repeats, cpu)


def one_batch_load(client: Client, direct: Direct, args: argparse.Namespace, cpu: ClusterCpu
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--batch`` txt2img predictions sent at once, against one diffusers call of them all."""
    inputs = [generation(i, args.steps, args.size) for i in range(args.batch)]
    send = sender(client, EpochClock())
    load_round(send, inputs, args.batch, send.clock)  # warm-ups
    direct.call("txt2img", range(args.batch))
    return alternate(lambda: one_batch_round(client, send, inputs),
                     lambda: one_call_round(direct, args.batch),
                     args.batch_repeats, cpu)


def runner_code_probe(direct: Direct, args: argparse.Namespace, cpu: ClusterCpu, models: Path
                      ) -> dict[str, Any]:
    """A diagnostic, not a goal: the runner's own ``Pipelines.run`` (its scheduler, generators and step
    callback; here a no-op) called in this process for the one batch, against diffusers' call, in turns:
    what the runner's code costs apart from the cluster's processes around it."""
    import torch

    from runners.diffusion.batching import BatchKey
    from runners.diffusion.pipelines import ImageRequest, Pipelines

    pipelines = Pipelines(str(models / "tiny-sd"), {}, "cpu", torch.float32)
    pipelines.load()
    key = BatchKey("txt2img", args.size, args.size, args.steps, SCHEDULER, guidance_scale=7.5, strength=0.0,
                   controlnets=(), guess_mode=False)
    requests = [ImageRequest(prompt(i), "", [i]) for i in range(args.batch)]

    def runner_round() -> dict[str, Any]:
        wall = timed(lambda: pipelines.run(key, requests, lambda step, total: None))
        return {"images_per_s": args.batch / wall, "wall_s": wall}

    runner_round()  # warm-up
    runner, direct_call = alternate(runner_round, lambda: one_call_round(direct, args.batch),
                                    args.batch_repeats, cpu)
    pipelines.unload()
    return {"runner_pipelines_run": runner, "diffusers_one_call": direct_call,
            "ratio": runner["images_per_s"] / direct_call["images_per_s"]}


def wait_probe(client: Client, direct: Direct, args: argparse.Namespace, cpu: ClusterCpu, settings: Any
               ) -> dict[str, Any]:
    """A diagnostic, not a goal: the one-batch rounds again through a second model made for it, the
    default tiny SD's weights and options but ``--wait-probe-ms`` of batch wait, against the same call."""
    spec = _tiny_sd_spec(settings)
    options = {**spec.options, "max_batch_wait_ms": args.wait_probe_ms}
    client.models.create(WAIT_PROBE_MODEL, spec.runner, spec.weights, options,
                         description="bench.images: tiny-sd with a longer batch wait")
    inputs = [generation(i, args.steps, args.size) for i in range(args.batch)]
    send = sender(client, EpochClock(), WAIT_PROBE_MODEL)
    load_round(send, inputs, args.batch, send.clock)  # warm-up: the instance starts
    cluster, direct_call = alternate(lambda: one_batch_round(client, send, inputs),
                                     lambda: one_call_round(direct, args.batch), args.batch_repeats, cpu)
    return {"model": WAIT_PROBE_MODEL, "max_batch_wait_ms": args.wait_probe_ms, "cluster": cluster,
            "diffusers_one_call": direct_call, "ratio": cluster["images_per_s"] / direct_call["images_per_s"]}


def mixed_load(client: Client, direct: Direct, args: argparse.Namespace, cpu: ClusterCpu,
               pictures: Pictures) -> tuple[dict[str, Any], dict[str, Any]]:
    """The mixed load through the cluster, against each of its requests called alone."""
    inputs = [mixed_input(i, args.steps, args.size, pictures) for i in range(args.mixed_images)]
    kinds = [mixed_kind(i) for i in range(args.mixed_images)]
    send = sender(client)
    for i, kind in enumerate(MIXED_KINDS):  # warm-ups: a kind's first use loads the adapter or builds
        send(i, inputs[i])                 # the inpainting pipeline
        direct.call(kind, [i])
    return alternate(lambda: mixed_round(load_round(send, inputs, args.mixed_concurrency)),
                     lambda: sequential_round(direct, kinds), args.repeats, cpu)


# The mixed load's bound, and the verdicts


def mixed_bound(mixed: dict[str, Any], sequential: dict[str, Any], per_call: dict[str, dict[str, float]],
                count: int, max_batch: int) -> dict[str, Any]:
    """What the cluster's own calls (the median round's, by kind and size) would take as bare diffusers
    calls back to back, and the ratio to sequential that this allows; and the same if every call of a
    kind were full (``max_batch``)."""
    calls = mixed["calls_by_kind_and_size"]
    ideal_s = sum(n * per_call[kind][b] for kind, sizes in calls.items() for b, n in sizes.items())
    full_s = sum(count / len(MIXED_KINDS) / max_batch * per_call[kind][str(max_batch)]
                 for kind in MIXED_KINDS)
    return {"diffusers_calls_s": ideal_s, "images_per_s": count / ideal_s,
            "ratio_to_sequential": sequential["wall_s"] / ideal_s,
            "cluster_share_of_bound": ideal_s / mixed["wall_s"],
            "full_calls": {"diffusers_calls_s": full_s, "ratio_to_sequential": sequential["wall_s"] / full_s}}


def one_batch_reading(cluster: dict[str, Any], direct: dict[str, Any], per_call: dict[str, dict[str, float]],
                      encode_s: float, batch: int) -> dict[str, Any]:
    """The median cluster round's wall against one diffusers call: the critical path's parts, and the
    node's span against the diffusers calls it made (their sizes, timed here) and the PNG encoding."""
    path = cluster["phases"]["critical_path_s"]
    # A call of the whole batch: the baseline's own rounds (taken in turns with the cluster's); other sizes,
    # per_call's timings.
    call_s = {**per_call["txt2img"], str(batch): direct["wall_s"]}
    calls_s = sum(n * call_s[b] for b, n in cluster["calls"].items())
    node_s = path["first_start_to_last_completed"]
    return {
        "cluster_wall_s": cluster["wall_s"], "diffusers_one_call_s": direct["wall_s"],
        "extra_s": cluster["wall_s"] - direct["wall_s"],
        "to_first_start_s": path["to_first_start"], "node_span_s": node_s,
        "node_calls_as_diffusers_s": calls_s, "png_encoding_s": encode_s,
        "node_other_s": node_s - calls_s - encode_s,
        "return_s": path["last_completed_to_last_answer"],
        "started_spread_s": cluster["phases"]["started_spread_s"],
        "batch": batch, "calls": cluster["calls"],
    }


def goal(text: str, value: float, target: float) -> dict[str, Any]:
    return {"goal": text, "value": value, "met": value >= target}


# Upscaling


def test_image(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


async def upscale_through_cluster(target: Target, size: int, tile: int, runs: int) -> dict[str, Any]:
    image = T.File(data=test_image(size), content_type="image/png")
    request = P.CreatePredictionRequest(model=TINY_ESRGAN, wait_s=60, input=T.PredictionInput(
        upscale=T.UpscaleInput(image=image, tile=tile)))
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target.address, options=options) as channel:
        stub = predictions_pb2_grpc.PredictionsStub(channel)
        walls, out = [], None
        for _ in range(runs):
            start = time.perf_counter()
            pred = await stub.CreatePrediction(request, metadata=target.metadata())
            walls.append(time.perf_counter() - start)
            if pred.status != T.STATUS_SUCCEEDED:
                raise RuntimeError(f"upscale did not succeed: {pred.error}")
            out = pred.output.files[0]
    wall = statistics.median(walls)
    megapixels = out.width * out.height / 1e6
    return {"input": f"{size}x{size}", "output": f"{out.width}x{out.height}", "tile": tile,
            "wall_s": wall, "output_megapixels_per_s": megapixels / wall}


def upscale_directly(weights_dir: Path, size: int, runs: int) -> dict[str, Any]:
    """The same model called once on the whole image (no tiling, no encoding): the reference."""
    import numpy as np
    import torch
    from PIL import Image
    from spandrel import ModelLoader

    from runners.upscale import weights_file

    model = ModelLoader().load_from_file(weights_file(str(weights_dir))).eval()
    pixels = np.asarray(Image.open(io.BytesIO(test_image(size))).convert("RGB"), dtype=np.float32) / 255
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(tensor)
        walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    return {"wall_s": wall, "output_megapixels_per_s": out.shape[-1] * out.shape[-2] / 1e6 / wall}


# The plot


def plot(report: dict[str, Any], path: Path) -> None:
    """Images/s of each load, the cluster beside its baseline (and the mixed load's bound); and the
    median 8-at-once round's predictions, each from sent to answered, against one diffusers call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(13, 4.8))
    groups = [("plain", report["sequential_diffusers"], report["cluster"], None),
              ("mixed", report["mixed"]["sequential_diffusers"], report["mixed"]["cluster"],
               report["mixed"]["bound"]),
              ("one batch", report["one_batch"]["diffusers_one_call"], report["one_batch"]["cluster"], None)]
    colours = ("tab:grey", "tab:blue", "tab:green")
    for x, (_, base, cluster, bound) in enumerate(groups):
        values = [base["images_per_s"], cluster["images_per_s"]] + ([bound["images_per_s"]] if bound else [])
        for k, value in enumerate(values):
            at = x + (k - (len(values) - 1) / 2) * 0.28
            bars.bar(at, value, 0.26, color=colours[k])
            bars.text(at, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ratios = [report["goals"][name]["value"] for name in ("throughput", "mixed_throughput", "one_batch")]
    bars.set_xticks(range(len(groups)),
                    [f"{g[0]}\ncluster {r:.2f}x" for g, r in zip(groups, ratios, strict=True)])
    bars.set_ylabel("images/s (median round)")
    bars.set_title("the cluster against diffusers in the bench process", fontsize=10)
    labels = ["diffusers here (sequential; one batch: one call)", "cluster",
              "mixed: the cluster's calls as bare diffusers"]
    bars.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours], labels=labels, fontsize=8)
    _plot_timeline(lines, report["one_batch"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_timeline(axis: Any, one_batch: dict[str, Any]) -> None:
    parts = (("sent_s", "created_s", "tab:grey", "create"), ("created_s", "started_s", "tab:orange", "queue"),
             ("started_s", "completed_s", "tab:blue", "node (predict_time)"),
             ("completed_s", "answered_s", "tab:green", "back to the client"))
    for row, t in enumerate(one_batch["cluster"]["timeline"]):
        for start, end, colour, label in parts:
            axis.barh(row, (t[end] - t[start]) * 1000, left=t[start] * 1000, color=colour,
                      label=label if row == 0 else None)
    axis.axvline(one_batch["diffusers_one_call"]["wall_s"] * 1000, color="black", linestyle="--",
                 label="one diffusers call of the batch (median)")
    axis.set_title("one batch: each prediction of the cluster's median round, sent to answered", fontsize=10)
    axis.set_xlabel("ms from the round's start (the median round)")
    axis.set_ylabel("prediction")
    axis.legend(fontsize=8, loc="lower right")


# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="images: dynamic batching against diffusers called directly")
    parser.add_argument("--concurrency", type=int, default=8, help="plain load: predictions in flight")
    parser.add_argument("--images", type=int, default=48, help="plain load: images per round")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the plain and mixed loads; the "
                                                               "median counts")
    parser.add_argument("--mixed-images", type=int, default=48, help="mixed load: images per round")
    parser.add_argument("--mixed-concurrency", type=int, default=16, help="mixed load: predictions in flight")
    parser.add_argument("--batch", type=int, default=8, help="one batch: predictions sent at once")
    parser.add_argument("--batch-repeats", type=int, default=5, help="one batch: rounds; the median counts")
    parser.add_argument("--upscale-size", type=int, default=256, help="input side of the upscale test")
    parser.add_argument("--upscale-tile", type=int, default=128)
    parser.add_argument("--wait-probe-ms", type=float, default=50.0,
                        help="one batch, a diagnostic: the same rounds through a second tiny SD with this "
                             "batch wait (0: skip it)")
    parser.add_argument("--direct-threads", type=int, default=1,
                        help="torch threads of the baseline: 1, what the cluster's runners get (Ray sets "
                             "OMP_NUM_THREADS=1 in the node agent's actor, num_cpus=0, where they run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-plot", action="store_true", help="skip images.png (it needs matplotlib)")
    return parser.parse_args(argv)


def measure(target: Target, settings: Any, args: argparse.Namespace, pictures: Pictures) -> dict[str, Any]:
    """The three loads, the cluster's rounds and the baseline's taking turns: plain and one batch before
    any adapter is loaded (on either side), then the mixed load; then one diffusers call of each size
    (of each kind) the cluster's calls had, for the bounds; and the upscale through the cluster."""
    import torch

    torch.set_num_threads(args.direct_threads)
    cpu = ClusterCpu(settings)
    direct = Direct(settings.models_path, args.steps, args.size, pictures)
    with target.client() as client:
        plain = plain_load(client, direct, args, cpu)
        one_batch = one_batch_load(client, direct, args, cpu)
        probe = wait_probe(client, direct, args, cpu, settings) if args.wait_probe_ms else None
        runner_code = runner_code_probe(direct, args, cpu, settings.models_path)
        split_sizes = {int(b) for r in one_batch[0]["rounds"] for b in r["calls"]}
        per_call_plain = call_times(direct, {"txt2img": split_sizes | {args.batch}})
        direct.add_lora_and_inpaint()
        mixed = mixed_load(client, direct, args, cpu, pictures)
    calls = mixed[0]["calls_by_kind_and_size"]
    per_call = call_times(direct, {kind: {int(b) for b in calls.get(kind, {})} | {1, args.batch}
                                   for kind in MIXED_KINDS})
    upscale = asyncio.run(upscale_through_cluster(target, args.upscale_size, args.upscale_tile, args.repeats))
    return {"plain": plain, "one_batch": one_batch, "probe": probe, "runner_code": runner_code,
            "mixed": mixed,
            "per_call_plain": per_call_plain,
            "per_call": per_call, "encode_s": encode_time(args.batch, args.size), "upscale": upscale,
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("images", argv)
    pictures = Pictures.make(args.size)
    with private_home() as settings:
        with running_cluster(settings) as target:
            measurements = measure(target, settings, args, pictures)
        upscale_direct = upscale_directly(settings.models_path / "tiny-esrgan", args.upscale_size,
                                          args.repeats)
        options = _tiny_sd_options(settings)
    settings_json = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "scheduler": SCHEDULER, "model": TINY_SD, "lora": TINY_SD_LORA,
                     "mixed_kinds": list(MIXED_KINDS), "lora_scales": LORA_SCALES,
                     "inpaint_strength": INPAINT_STRENGTH,
                     "baseline_torch_threads": measurements["torch_threads"],
                     "cluster_options": options}
    sections = results(args, measurements, upscale_direct, options)
    written = report.write(args.out, settings=settings_json, **sections)
    if not args.no_plot:
        plot(written, args.out / "images.png")
    print(json.dumps({k: written[k] for k in ("goals", "where_the_time_goes")}, indent=2))


def _tiny_sd_spec(settings: Any) -> Any:
    from warmfleet.cli.defaults import default_models

    return next(spec for spec in default_models(settings) if spec.name == TINY_SD)


def _tiny_sd_options(settings: Any) -> dict[str, Any]:
    """The batching options the default cluster serves tiny-sd with (the runner's defaults filled in)."""
    from runners.diffusion.runner import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_WAIT_MS

    options = _tiny_sd_spec(settings).options
    batch = int(options.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
    return {"max_batch_size": batch,
            "max_batch_wait_ms": float(options.get("max_batch_wait_ms", DEFAULT_MAX_BATCH_WAIT_MS)),
            "max_concurrency": int(options.get("max_concurrency", 2 * batch))}


def results(args: argparse.Namespace, m: dict[str, Any], upscale_direct: dict[str, Any],
            options: dict[str, Any]) -> dict[str, Any]:
    """The report's sections: the loads, the goals and where the time goes."""
    (plain, sequential), (batch_cluster, one_call), (mixed_cluster, mixed_sequential) = (
        m["plain"], m["one_batch"], m["mixed"])
    bound = mixed_bound(mixed_cluster, mixed_sequential, m["per_call"], args.mixed_images, args.batch)
    goals = {
        "throughput": goal(f">= {GOAL_SPEEDUP}x sequential diffusers at concurrency {args.concurrency}",
                           plain["images_per_s"] / sequential["images_per_s"], GOAL_SPEEDUP),
        "mixed_throughput": goal(
            f">= {GOAL_SPEEDUP}x sequential diffusers, mixed load ({', '.join(MIXED_KINDS)}) at concurrency "
            f"{args.mixed_concurrency}", mixed_cluster["images_per_s"] / mixed_sequential["images_per_s"],
            GOAL_SPEEDUP),
        "one_batch": goal(f">= {GOAL_ONE_BATCH}x one diffusers call of batch {args.batch}, the {args.batch} "
                          "sent at once", batch_cluster["images_per_s"] / one_call["images_per_s"],
                          GOAL_ONE_BATCH),
    }
    where = {"one_batch": one_batch_reading(batch_cluster, one_call, m["per_call_plain"], m["encode_s"],
                                            args.batch),
             "mixed": {"calls": mixed_cluster["calls"], "bound": bound, "cluster_options": options}}
    if m["probe"]:
        probe = m["probe"]["cluster"]
        where["one_batch"]["with_longer_batch_wait"] = {
            "max_batch_wait_ms": m["probe"]["max_batch_wait_ms"], "ratio": m["probe"]["ratio"],
            "calls": probe["calls"], "calls_per_round": [r["calls"] for r in probe["rounds"]],
            "cluster_wall_s": probe["wall_s"], "started_spread_s": probe["phases"]["started_spread_s"]}
    where["one_batch"]["calls_per_round"] = [r["calls"] for r in batch_cluster["rounds"]]
    where["one_batch"]["runner_code_in_process_ratio"] = m["runner_code"]["ratio"]
    where["turn_ratios"] = {"plain": turn_ratios(plain, sequential),
                            "one_batch": turn_ratios(batch_cluster, one_call),
                            "mixed": turn_ratios(mixed_cluster, mixed_sequential)}
    return {"cluster": plain, "sequential_diffusers": sequential,
            "mixed": {"cluster": mixed_cluster, "sequential_diffusers": mixed_sequential, "bound": bound,
                      "diffusers_call_s": m["per_call"]},
            "one_batch": {"cluster": batch_cluster, "diffusers_one_call": one_call,
                          "diffusers_call_s": m["per_call_plain"], "longer_batch_wait": m["probe"],
                          "runner_code_in_process": m["runner_code"]},
            "upscale": {"cluster": m["upscale"], "direct_untiled": upscale_direct},
            "goals": goals, "where_the_time_goes": where}


if __name__ == "__main__":
    main()
