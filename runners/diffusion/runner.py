"""The ``diffusion`` runner: Stable Diffusion (1.x/2.x architecture) text-to-image and image-to-image,
with any number of ControlNets, dynamically batched.

``predict`` is an async generator on the agent's loop: it decodes and preprocesses the input images
on a worker thread, hands the job to the ``BatchWorker`` (which owns the pipelines on its own thread
and runs compatible jobs together), relays one progress event per denoising step, and encodes the
images on a worker thread once its batch is done. This module imports no torch at import time.

Options (``RouteSpec.options``):

- ``controlnets``: {type: weights folder} for the ControlNets this version carries (types in
  ``controlnet.CONTROLNET_TYPES``).
- ``max_batch_size``: images per pipeline call (default 4); ``max_batch_wait_ms``: how long the first
  job of a batch waits for company (default 10); ``max_concurrency``: predictions the router sends at
  once (default twice ``max_batch_size``, so the next batch gathers while one runs).
- ``steps``, ``guidance_scale``, ``scheduler``: the input defaults (25, 7.5, "DPM++ 2M").
- ``max_side`` (default 2048), ``max_outputs`` (default 4), ``max_input_pixels``: input bounds.
- ``dtype``: "auto" (float32 on CPU, float16 on a GPU), "float32", "float16" or "bfloat16".
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from runners.base import AsyncPredictGenerator, NodeResources, PredictContext, Runner, RunnerPolicy
from runners.devices import free_memory, resolve_dtype
from runners.diffusion.batching import BatchKey
from runners.diffusion.controlnet import (
    CONTROLNET_TYPES, PREPROCESSORS, UNIT_DEFAULTS, conditioning_image, default_preprocessor,
)
from runners.diffusion.schedulers import SCHEDULER_NAMES, canonical_name
from runners.images import (
    DEFAULT_MAX_PIXELS, OUTPUT_FORMAT_SCHEMA, decode_image, encode_image, image_file_schema,
)
from warmfleet.domain import LogLine, MetricsUpdate, RouteSpec, Output, ProgressUpdate
from warmfleet.errors import InvalidInput

DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_MAX_BATCH_WAIT_MS = 10.0
MAX_SEED = 2**32 - 1
MAX_STEPS = 500


def _option(spec: RouteSpec, name: str, default: Any) -> Any:
    return spec.options.get(name, default)


def input_schema(spec: RouteSpec) -> dict[str, Any]:
    """The input schema of a version: its ControlNet types and its defaults and bounds."""
    max_side = int(_option(spec, "max_side", 2048))
    types = sorted(_option(spec, "controlnets", {}))
    side = {"type": "integer", "minimum": 64, "maximum": max_side, "multipleOf": 8}
    needs_map = [t for t in types if default_preprocessor(t) == "none"]
    unit = {
        "type": "object", "additionalProperties": False, "required": ["image", "type"],
        "properties": {
            "image": image_file_schema(
                "The conditioning image. For canny, a photo (edges are detected here) or an edge map with "
                f"preprocessor none. For {', '.join(needs_map) or 'the other types'}: a map already made by "
                "that type's annotator, as no annotator weights run here."),
            "type": {"enum": types, "description": "Which ControlNet: one this version carries."},
            "preprocessor": {"enum": list(PREPROCESSORS),
                             "description": "canny: detect edges here; none: the image is already a map. "
                                            "Default: canny for the canny type, none for the others."},
            "conditioning_scale": {"type": "number", "minimum": 0, "maximum": 2,
                                   "default": UNIT_DEFAULTS["conditioning_scale"],
                                   "description": "How strongly this unit steers the image, 0 to 2."},
            "guidance_start": {"type": "number", "minimum": 0, "maximum": 1,
                               "default": UNIT_DEFAULTS["guidance_start"],
                               "description": "Fraction of the steps at which the unit starts, 0 to 1."},
            "guidance_end": {"type": "number", "minimum": 0, "maximum": 1,
                             "default": UNIT_DEFAULTS["guidance_end"],
                             "description": "Fraction of the steps after which it stops, 0 to 1, "
                                            "at least guidance_start."},
            "canny_low_threshold": {"type": "integer", "minimum": 0, "maximum": 255,
                                    "default": UNIT_DEFAULTS["canny_low_threshold"],
                                    "description": "Canny's lower hysteresis threshold, 0 to 255."},
            "canny_high_threshold": {"type": "integer", "minimum": 0, "maximum": 255,
                                     "default": UNIT_DEFAULTS["canny_high_threshold"],
                                     "description": "Canny's upper hysteresis threshold, 0 to 255."},
        },
    }
    return {
        "type": "object", "additionalProperties": False, "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "maxLength": 10_000, "description": "What to draw."},
            "negative_prompt": {"type": "string", "maxLength": 10_000, "default": "",
                                "description": "What not to draw."},
            "width": {**side, "description": f"Width in pixels, a multiple of 8 from 64 to {max_side}. "
                                             "Default: the init image's (img2img), else the model's."},
            "height": {**side, "description": f"Height in pixels, a multiple of 8 from 64 to {max_side}. "
                                              "Default: the init image's (img2img), else the model's."},
            "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS,
                                    "default": int(_option(spec, "steps", 25)),
                                    "description": f"Denoising steps, 1 to {MAX_STEPS}."},
            "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50,
                               "default": float(_option(spec, "guidance_scale", 7.5)),
                               "description": "Classifier-free guidance scale, 0 to 50; 1 or less is off."},
            "scheduler": {"enum": SCHEDULER_NAMES, "default": _option(spec, "scheduler", "DPM++ 2M"),
                          "description": "Sampler, by AUTOMATIC1111's name (or Replicate's)."},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                     "description": f"Random seed, 0 to {MAX_SEED}; output k uses seed + k. Unset: "
                                    "random (it is logged)."},
            "num_outputs": {"type": "integer", "minimum": 1, "maximum": int(_option(spec, "max_outputs", 4)),
                            "default": 1, "description": "Images to generate."},
            "output_format": OUTPUT_FORMAT_SCHEMA,
            "image": image_file_schema("Init image for img2img; resized to width x height."),
            "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.8,
                         "description": "img2img: how much to change the init image, (0, 1]; 1 ignores it."},
            "controlnets": {"type": "array", "items": unit, "maxItems": 4 if types else 0,
                            "description": f"ControlNet units (at most 4): types {', '.join(types) or 'none'}."},
            "guess_mode": {"type": "boolean", "default": False,
                           "description": "ControlNet guess mode: the units see no prompt."},
        },
    }


class DiffusionRunner(Runner):
    family = "diffusion"

    def __init__(self, spec: RouteSpec, device: str = "cpu", node: NodeResources | None = None) -> None:
        super().__init__(spec, device, node)
        self.pipelines: Any = None
        self.worker: Any = None

    @classmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        unknown = set(_option(spec, "controlnets", {})) - set(CONTROLNET_TYPES)
        if unknown:
            raise InvalidInput("options.controlnets", f"unknown ControlNet types {sorted(unknown)}; "
                                                      f"known: {', '.join(CONTROLNET_TYPES)}")
        return input_schema(spec)

    @classmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {"type": "null", "description": "Nothing: the images are the prediction's output files."}

    @classmethod
    def check_input(cls, spec: RouteSpec, input: dict[str, Any]) -> None:
        if input.get("image"):
            steps, strength = input["num_inference_steps"], input["strength"]
            if int(steps * strength) < 1:
                raise InvalidInput("input.strength", f"strength {strength} of {steps} steps leaves no step "
                                                     f"to run; raise strength or num_inference_steps")
        for i, unit in enumerate(input.get("controlnets") or []):
            start = unit.get("guidance_start", UNIT_DEFAULTS["guidance_start"])
            if unit.get("guidance_end", UNIT_DEFAULTS["guidance_end"]) < start:
                raise InvalidInput(f"input.controlnets[{i}].guidance_end", f"must be at least guidance_start "
                                                                           f"({start})")

    @classmethod
    def policy(cls, spec: RouteSpec) -> RunnerPolicy:
        batch = int(_option(spec, "max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        return RunnerPolicy(max_concurrency=int(_option(spec, "max_concurrency", 2 * batch)))

    def load(self) -> None:
        from runners.diffusion.pipelines import Pipelines
        from runners.diffusion.worker import BatchWorker

        dtype = resolve_dtype(_option(self.spec, "dtype", "auto"), self.device, gpu_auto="float16")
        self.pipelines = Pipelines(self.spec.weights, dict(_option(self.spec, "controlnets", {})),
                                   self.device, dtype)
        self.pipelines.load()
        self.worker = BatchWorker(
            self.pipelines.run,
            max_images=int(_option(self.spec, "max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            max_wait_s=float(_option(self.spec, "max_batch_wait_ms", DEFAULT_MAX_BATCH_WAIT_MS)) / 1000)
        self.worker.start()

    def unload(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.pipelines is not None:
            self.pipelines.unload()
        self.worker = self.pipelines = None
        free_memory(self.device)

    async def predict(self, input: dict[str, Any], ctx: PredictContext) -> AsyncPredictGenerator:
        from runners.diffusion.worker import Done, Failed, Progress

        worker = self.worker
        if worker is None:
            raise RuntimeError("the diffusion runner is not loaded")
        if input.get("seed") is None:
            input = {**input, "seed": secrets.randbelow(MAX_SEED + 1)}
            yield LogLine(f"Using seed: {input['seed']}")
        key, request = await asyncio.to_thread(self.prepare, input)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = worker.submit(key, len(request.seeds), request,
                            lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        ended = False
        try:
            while True:
                event = await events.get()
                if isinstance(event, Progress):
                    yield ProgressUpdate(event.step, event.total, round(event.eta_s, 3))
                elif isinstance(event, Done):
                    ended = True
                    files = await asyncio.to_thread(self.encode, event.images, input["output_format"])
                    yield MetricsUpdate({"image_count": len(files), "batch_size": event.batch_size})
                    yield Output(value=None, files=files)
                    return
                elif isinstance(event, Failed):
                    ended = True
                    raise RuntimeError(f"image generation failed: {event.error}") from event.error
        finally:
            if not ended:  # cancelled or abandoned: leave the queue, or let the batch drop this job
                worker.cancel(job)

    def prepare(self, input: dict[str, Any]) -> tuple[BatchKey, Any]:
        """The job's batch key and request: images decoded, resized and preprocessed, seeds expanded."""
        from runners.diffusion.pipelines import ImageRequest

        self.check_input(self.spec, input)  # the gateway checked too; a direct caller may not have

        max_pixels = int(_option(self.spec, "max_input_pixels", DEFAULT_MAX_PIXELS))
        init = decode_image(input["image"], "input.image", max_pixels) if input.get("image") else None
        width, height = self._size(input, init)
        steps, strength = input["num_inference_steps"], float(input["strength"]) if init else 0.0
        if init is not None:
            from PIL import Image

            init = init.resize((width, height), Image.Resampling.LANCZOS)
        units, controls = [], []
        for i, raw in enumerate(input.get("controlnets") or []):
            unit = {**UNIT_DEFAULTS, **raw}
            field = f"input.controlnets[{i}]"
            if unit["type"] not in self.pipelines.controlnets:
                raise InvalidInput(f"{field}.type", f"this version carries no {unit['type']!r} ControlNet")
            image = decode_image(unit["image"], f"{field}.image", max_pixels)
            controls.append(conditioning_image(unit, image, width, height))
            units.append((unit["type"], float(unit["conditioning_scale"]), float(unit["guidance_start"]),
                          float(unit["guidance_end"])))
        key = BatchKey(
            mode="img2img" if init is not None else "txt2img", width=width, height=height, steps=steps,
            scheduler=canonical_name(input["scheduler"]), guidance_scale=float(input["guidance_scale"]),
            strength=strength, controlnets=tuple(units), guess_mode=bool(input.get("guess_mode")) and bool(units),
        )
        seeds = [(input["seed"] + k) % (MAX_SEED + 1) for k in range(input["num_outputs"])]
        return key, ImageRequest(input["prompt"], input["negative_prompt"], seeds, init, controls)

    def _size(self, input: dict[str, Any], init: Any) -> tuple[int, int]:
        if init is not None:
            max_side = int(_option(self.spec, "max_side", 2048))
            default = tuple(max(64, min(max_side, side // 8 * 8)) for side in init.size)
        else:
            default = self.pipelines.default_size
        return int(input.get("width") or default[0]), int(input.get("height") or default[1])

    @staticmethod
    def encode(images: list[Any], output_format: str) -> list[Any]:
        return [encode_image(image, output_format, f"output-{k}") for k, image in enumerate(images)]
