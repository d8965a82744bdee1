"""The images scenario: images/s of concurrent Stable Diffusion predictions through the cluster (dynamic
batching) against sequential direct diffusers calls in the same run; and upscaled megapixels/s.

Starts a private cluster (``warmfleet up`` on a temporary home: it generates and serves the tiny SD as
``warmfleet/tiny-sd`` and the tiny ESRGAN as ``warmfleet/tiny-esrgan``), sends ``--images`` predictions
with ``--concurrency`` in flight (each its own prompt and seed; the same size, steps and scheduler, so
they may share pipeline calls), then loads the same weights in this process and calls the diffusers
pipeline once per image, in turn, with the same settings. The baseline does no PNG encoding and no
network hop; the cluster does both. The predictions go through ``warmfleet.loadgen``, the load generator
of `warmfleet bench` (closed loop); images/s counts the image files that came back. Then upscales: one
image through the cluster at a time (a sequential timing, not load: raw gRPC as before), and the same
model called directly (spandrel, no tiling) as a reference.

    python -m bench.images --concurrency 8 --images 48 --repeats 3 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import Report, Target, private_home, running_cluster
from warmfleet import loadgen
from warmfleet.cli.defaults import TINY_ESRGAN, TINY_SD
from warmfleet.v1 import predictions_pb2 as P, predictions_pb2_grpc, types_pb2 as T

GOAL_SPEEDUP = 1.8
SCHEDULER = "DPM++ 2M"


def prompt(i: int) -> str:
    return f"a watercolour of a lighthouse, variation {i}"


def generation(i: int, steps: int, size: int) -> dict[str, Any]:
    """Image ``i``: its own prompt and seed; the same size, steps and scheduler as every other."""
    return {"prompt": prompt(i), "seed": i, "num_inference_steps": steps, "width": size, "height": size,
            "scheduler": SCHEDULER}


def generate_through_cluster(target: Target, count: int, concurrency: int, steps: int, size: int,
                             repeats: int) -> dict[str, Any]:
    """``count`` predictions, ``concurrency`` in flight (``warmfleet.loadgen``'s closed loop, each a
    ``CreatePrediction`` held open until it ends), ``repeats`` rounds; the median round counts."""
    inputs = [generation(i, steps, size) for i in range(count)]
    with target.client() as client:
        send = loadgen.ClientSender(client, loadgen.Target(TINY_SD), stream=False, timeout_s=120.0)
        send(0, inputs[0])  # warm-up
        rounds = []
        for _ in range(repeats):
            records = loadgen.run_closed_loop(send, inputs, concurrency, requests=count)
            stats = loadgen.summarize(records)
            if stats.errors or stats.images != count:
                raise RuntimeError(f"{count} images asked for, {stats.images} made; errors: {stats.errors}")
            rounds.append({"images_per_s": stats.images_per_s, "wall_s": stats.wall_s,
                           "mean_batch_size": statistics.mean(int(r.metrics["batch_size"]) for r in records)})
    rounds.sort(key=lambda r: r["images_per_s"])
    return {"rounds": rounds, **rounds[len(rounds) // 2]}


def generate_directly(weights: Path, count: int, steps: int, size: int, repeats: int) -> dict[str, Any]:
    """The baseline: the same weights in this process, one diffusers call per image, in turn."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from runners.diffusion.schedulers import make_scheduler

    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(weights, dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = make_scheduler(SCHEDULER, pipe.scheduler.config)

    def one(i: int) -> None:
        with torch.inference_mode():
            pipe(prompt(i), num_inference_steps=steps, width=size, height=size,
                 generator=torch.Generator("cpu").manual_seed(i))

    one(0)  # warm-up
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            one(i)
        wall = time.perf_counter() - start
        rounds.append({"images_per_s": count / wall, "wall_s": wall})
    rounds.sort(key=lambda r: r["images_per_s"])
    return {"rounds": rounds, **rounds[len(rounds) // 2]}


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="images: dynamic batching against sequential diffusers")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images", type=int, default=48, help="images per round")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median counts")
    parser.add_argument("--upscale-size", type=int, default=256, help="input side of the upscale test")
    parser.add_argument("--upscale-tile", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("images", argv)
    with private_home() as settings:
        with running_cluster(settings) as target:
            cluster = generate_through_cluster(target, args.images, args.concurrency, args.steps, args.size,
                                               args.repeats)
            upscale = asyncio.run(upscale_through_cluster(target, args.upscale_size, args.upscale_tile,
                                                          args.repeats))
        direct = generate_directly(settings.models_path / "tiny-sd", args.images, args.steps, args.size,
                                   args.repeats)
        upscale_direct = upscale_directly(settings.models_path / "tiny-esrgan", args.upscale_size, args.repeats)
    speedup = cluster["images_per_s"] / direct["images_per_s"]
    goals = {"throughput": {"goal": f">= {GOAL_SPEEDUP}x sequential diffusers at concurrency {args.concurrency}",
                            "value": speedup, "met": speedup >= GOAL_SPEEDUP}}
    written = report.write(
        args.out, settings={**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                            "scheduler": SCHEDULER, "model": TINY_SD},
        cluster=cluster, sequential_diffusers=direct,
        upscale={"cluster": upscale, "direct_untiled": upscale_direct}, goals=goals)
    print(json.dumps({k: written[k] for k in ("cluster", "sequential_diffusers", "upscale", "goals")}, indent=2))


if __name__ == "__main__":
    main()
