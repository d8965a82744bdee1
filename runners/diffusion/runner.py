"""The ``diffusion`` runner: Stable Diffusion (1.x/2.x architecture, or SDXL with its optional refiner)
text-to-image, image-to-image, inpainting and outpainting, with any number of ControlNets and per-request
LoRA adapters, dynamically batched.

``predict`` is an async generator on the agent's loop: it decodes and preprocesses the input images
(masks, the outpainting canvas, ControlNet maps) and resolves its LoRA adapters on a worker thread,
hands the job to the ``BatchWorker`` (which owns the pipelines on its own thread and runs compatible
jobs together), relays one progress event per denoising step, and, once its batch is done, pastes the
init image back outside the mask (inpainting) and encodes the images, then the maps (``return_maps``),
on a worker thread. This module imports no torch at import time. Inpainting's rules are in
``inpaint``, the adapters' in ``loras``.

Options (``RouteSpec.options``):

- ``family``: "sd" or "sdxl" (``families``); default: what the weights folder's model_index.json names.
- ``refiner`` (SDXL): an SDXL refiner's weights folder; requests then may ask ``refine`` (with
  ``high_noise_frac``, the fraction of the schedule the base runs before the refiner takes over).
- ``controlnets``: {type: weights folder} for the ControlNets this version carries (types in
  ``controlnet.CONTROLNET_TYPES``).
- ``annotators``: {weights key: local folder or hub id} for the preprocessors that need weights
  (``annotators.WEIGHTS_KEYS``: hed, softedge, mlsd, lineart, openpose, depth, seg); the schema offers the
  preprocessors these can run.
- ``max_batch_size``: images per pipeline call (default 4); ``max_batch_wait_ms``: how long the first
  job of a batch waits for company (default 10); ``max_concurrency``: predictions the router sends at
  once (default twice ``max_batch_size``, so the next batch gathers while one runs).
- ``steps``, ``guidance_scale``, ``scheduler``: the input defaults (25, 7.5, "DPM++ 2M").
- ``max_side`` (default 2048), ``max_outputs`` (default 4), ``max_input_pixels``: input bounds.
- ``dtype``: "auto" (float32 on CPU, float16 on a GPU), "float32", "float16" or "bfloat16".
- ``loras``: {name: a .safetensors LoRA, or a folder holding one} that requests name in
  ``loras[].weights``; ``max_loras_cached`` (default 8) and ``max_lora_cache_bytes`` (default 2 GiB)
  bound the adapters kept loaded per instance (least recently used out); ``max_lora_file_bytes``
  (default 1 GiB) bounds an uploaded one.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from runners.base import AsyncPredictGenerator, NodeResources, PredictContext, Runner, RunnerPolicy
from runners.devices import free_memory, resolve_dtype
from runners.diffusion.batching import BatchKey, lora_set
from runners.diffusion.controlnet import CONTROLNET_TYPES, UNIT_DEFAULTS, conditioning_image, unit_schema
from runners.diffusion.families import REFINABLE, detect_family
from runners.diffusion.inpaint import (
    MAX_MASK_BLUR, OUTPAINT_FILLS, OUTPAINT_SIDES, apply_overlay, binary_mask, outpaint_canvas,
    outpaint_sides, overlay_mask,
)
from runners.diffusion.loras import (
    DEFAULT_MAX_LORA_CACHE_BYTES, DEFAULT_MAX_LORA_FILE_BYTES, DEFAULT_MAX_LORAS_CACHED,
    MAX_LORAS_PER_REQUEST, SCALE_BOUND, LoraCache, LoraSource, named_source, probe_lora, uploaded_source,
)
from runners.diffusion.schedulers import SCHEDULER_NAMES, canonical_name
from runners.images import (
    DEFAULT_MAX_PIXELS, OUTPUT_FORMAT_SCHEMA, decode_image, encode_image, image_file_schema, probe_image,
)
from warmfleet.domain import LogLine, MetricsUpdate, RouteSpec, Output, ProgressUpdate
from warmfleet.errors import InvalidInput

DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_MAX_BATCH_WAIT_MS = 10.0
DEFAULT_HIGH_NOISE_FRAC = 0.8  # diffusers' example split of SDXL's ensemble of experts
MAX_SEED = 2**32 - 1
MAX_STEPS = 500


def _option(spec: RouteSpec, name: str, default: Any) -> Any:
    return spec.options.get(name, default)


def family_of(spec: RouteSpec) -> str:
    """The version's pipeline family: ``options.family``, else detected from its weights folder."""
    return detect_family(spec.weights, _option(spec, "family", None), _option(spec, "refiner", None))


def _sdxl_properties(spec: RouteSpec) -> dict[str, Any]:
    """SDXL's own inputs: the second text encoder's prompts, and the refiner's when the version has one."""
    if family_of(spec) != "sdxl":
        return {}
    properties: dict[str, Any] = {
        "prompt_2": {"type": "string", "maxLength": 10_000, "default": "",
                     "description": "SDXL: the prompt for the second text encoder (and the refiner); empty: "
                                    "the prompt."},
        "negative_prompt_2": {"type": "string", "maxLength": 10_000, "default": "",
                              "description": "SDXL: the negative prompt for the second text encoder (and the "
                                             "refiner); empty: the negative prompt."},
    }
    if _option(spec, "refiner", None):
        properties.update({
            "refine": {"type": "boolean", "default": False,
                       "description": "Finish with the refiner (SDXL's ensemble of experts): the base runs "
                                      "the first high_noise_frac of the schedule, the refiner the rest. Not "
                                      "with an init image and ControlNets together."},
            "high_noise_frac": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                                "default": DEFAULT_HIGH_NOISE_FRAC,
                                "description": "With refine: the fraction of the schedule (from pure noise) "
                                               "the base runs, (0, 1)."},
        })
    return properties


def input_schema(spec: RouteSpec) -> dict[str, Any]:
    """The input schema of a version: its ControlNet types and its defaults and bounds."""
    max_side = int(_option(spec, "max_side", 2048))
    types = sorted(_option(spec, "controlnets", {}))
    side = {"type": "integer", "minimum": 64, "maximum": max_side, "multipleOf": 8}
    lora_names = sorted(_option(spec, "loras", {}))
    unit = unit_schema(types, sorted(_option(spec, "annotators", {})), image_file_schema(
        "The conditioning image: a photo that the unit's preprocessor turns into its map here, or a map "
        "already made (preprocessor none)."))
    lora = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "weights": {"enum": lora_names,
                        "description": "One of this version's LoRA adapters, by name: "
                                       f"{', '.join(lora_names) or 'it has none'}. Give this or file."},
            "file": {"type": "string", "format": "uri",
                     "description": "A LoRA of your own instead of weights: a .safetensors file (diffusers', "
                                    "peft's or kohya's key format) made for this model's architecture."},
            "scale": {"type": "number", "minimum": -SCALE_BOUND, "maximum": SCALE_BOUND, "default": 1,
                      "description": f"How strongly it applies, -{SCALE_BOUND:g} to {SCALE_BOUND:g}: the "
                                     "LoRA's multiplier (0 changes nothing; negative inverts it)."},
        },
    }
    outpaint = {
        "type": "object", "additionalProperties": False,
        "description": "Outpainting: pixels to add on each side of image, which is then inpainted: the new "
                       "area is white in the mask (a mask given too marks what to repaint inside the image). "
                       "The output is the image's size (width x height, when given) plus these, at most "
                       f"{max_side} a side.",
        "properties": {
            **{side: {"type": "integer", "minimum": 0, "maximum": max_side, "multipleOf": 8, "default": 0,
                      "description": f"Pixels to add on the {side}, a multiple of 8."}
               for side in OUTPAINT_SIDES},
            "fill": {"enum": list(OUTPAINT_FILLS), "default": "edge",
                     "description": "What the new area starts from before it is repainted (it shows through "
                                    "at a strength below 1): edge, the image's border pixels stretched "
                                    "outward; blur, the same, blurred."},
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
            "image": image_file_schema("Init image for img2img and inpainting; resized to width x height."),
            "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.8,
                         "description": "img2img and inpainting: how much to change the init image (inside "
                                        "the mask), (0, 1]; 1 ignores it."},
            "mask": image_file_schema(
                "Inpainting mask for image: white pixels are repainted, black ones kept exactly. Any mode "
                "(transparent pixels count as white); resized to the image's size by nearest neighbour, then "
                "thresholded at 50%."),
            "mask_blur": {"type": "integer", "minimum": 0, "maximum": MAX_MASK_BLUR, "default": 0,
                          "description": "Inpainting: feathers the mask's edge by this many pixels (a "
                                         "Gaussian blur's radius) where the result is pasted over the image; "
                                         "0 keeps every black pixel exactly."},
            "outpaint": outpaint,
            "controlnets": {"type": "array", "items": unit, "maxItems": 4 if types else 0,
                            "description": f"ControlNet units (at most 4): types "
                                           f"{', '.join(types) or 'none'}."},
            "guess_mode": {"type": "boolean", "default": False,
                           "description": "ControlNet guess mode: the units see no prompt."},
            "return_maps": {"type": "boolean", "default": False,
                            "description": "Also return each ControlNet unit's conditioning map, after the "
                                           "images: map-<unit>-<type>.png, in unit order."},
            "loras": {"type": "array", "items": lora, "maxItems": MAX_LORAS_PER_REQUEST,
                      "description": f"LoRA adapters for this prediction only (at most "
                                     f"{MAX_LORAS_PER_REQUEST})."},
            **_sdxl_properties(spec),
        },
    }


class DiffusionRunner(Runner):
    family = "diffusion"

    def __init__(self, spec: RouteSpec, device: str = "cpu", node: NodeResources | None = None) -> None:
        super().__init__(spec, device, node)
        self.pipelines: Any = None
        self.annotators: Any = None
        self.worker: Any = None
        self.lora_sources: dict[str, LoraSource] = {}  # the version's adapters, by name

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
        else:
            if input.get("mask"):
                raise InvalidInput("input.mask", "needs an image: the mask marks which of its pixels to "
                                                 "repaint (white) and keep (black)")
            if input.get("outpaint") is not None:
                raise InvalidInput("input.outpaint", "needs an image to expand")
        if input.get("outpaint") is not None:
            _check_outpaint(spec, input)
        for i, unit in enumerate(input.get("controlnets") or []):
            start = unit.get("guidance_start", UNIT_DEFAULTS["guidance_start"])
            if unit.get("guidance_end", UNIT_DEFAULTS["guidance_end"]) < start:
                raise InvalidInput(f"input.controlnets[{i}].guidance_end", f"must be at least guidance_start "
                                                                           f"({start})")
        _check_loras(spec, input.get("loras") or [])
        if input.get("refine"):
            mode = "inpaint" if input.get("mask") or input.get("outpaint") is not None else (
                "img2img" if input.get("image") else "txt2img")
            if (mode, bool(input.get("controlnets"))) not in REFINABLE:
                raise InvalidInput("input.refine", "cannot refine image-to-image with ControlNets (diffusers' "
                                                   "SDXL ControlNet img2img pipeline cannot hand over latents)")

    @classmethod
    def policy(cls, spec: RouteSpec) -> RunnerPolicy:
        batch = int(_option(spec, "max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        return RunnerPolicy(max_concurrency=int(_option(spec, "max_concurrency", 2 * batch)))

    def load(self) -> None:
        from runners.diffusion.annotators import Annotators
        from runners.diffusion.pipelines import Pipelines
        from runners.diffusion.worker import BatchWorker

        # The version's adapters must all be there: a missing one fails the load, not a prediction.
        self.lora_sources = {name: named_source(name, path, f"options.loras.{name}")
                             for name, path in _option(self.spec, "loras", {}).items()}
        cache = LoraCache(int(_option(self.spec, "max_loras_cached", DEFAULT_MAX_LORAS_CACHED)),
                          int(_option(self.spec, "max_lora_cache_bytes", DEFAULT_MAX_LORA_CACHE_BYTES)))
        dtype = resolve_dtype(_option(self.spec, "dtype", "auto"), self.device, gpu_auto="float16")
        # The annotators load on a unit's first use of each (controlnet_aux's import alone takes seconds).
        self.annotators = Annotators(dict(_option(self.spec, "annotators", {})), self.device, dtype)
        self.pipelines = Pipelines(self.spec.weights, dict(_option(self.spec, "controlnets", {})),
                                   self.device, dtype, cache, family=family_of(self.spec),
                                   refiner=_option(self.spec, "refiner", None))
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
        if self.annotators is not None:
            self.annotators.unload()
        self.worker = self.pipelines = self.annotators = None
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
                    files = await asyncio.to_thread(self.finish, event.images, key, request, input)
                    yield MetricsUpdate({"image_count": len(event.images), "batch_size": event.batch_size})
                    yield Output(value=None, files=files)
                    return
                elif isinstance(event, Failed):
                    ended = True
                    if isinstance(event.error, InvalidInput):  # e.g. a LoRA file that does not fit the model
                        raise event.error
                    raise RuntimeError(f"image generation failed: {event.error}") from event.error
        finally:
            if not ended:  # cancelled or abandoned: leave the queue, or let the batch drop this job
                worker.cancel(job)

    def prepare(self, input: dict[str, Any]) -> tuple[BatchKey, Any]:
        """The job's batch key and request: images decoded, resized and preprocessed (the canvas and mask
        built, when outpainting), LoRA sources resolved, seeds expanded."""
        from runners.diffusion.pipelines import ImageRequest

        self.check_input(self.spec, input)  # the gateway checked too; a direct caller may not have

        max_pixels = int(_option(self.spec, "max_input_pixels", DEFAULT_MAX_PIXELS))
        init, mask, (width, height) = self._init_and_mask(input, max_pixels)
        units, controls = [], []
        for i, raw in enumerate(input.get("controlnets") or []):
            unit = {**UNIT_DEFAULTS, **raw}
            field = f"input.controlnets[{i}]"
            if unit["type"] not in self.pipelines.controlnets:
                raise InvalidInput(f"{field}.type", f"this version carries no {unit['type']!r} ControlNet")
            image = decode_image(unit["image"], f"{field}.image", max_pixels)
            if float(unit["guidance_end"]) <= float(unit["guidance_start"]):
                # A window with no step in it (end at its start): under diffusers' rule the unit never
                # applies, and diffusers refuses such a window, so it is left out (its image was checked).
                continue
            controls.append(conditioning_image(unit, image, width, height, self.annotators, field))
            units.append((unit["type"], float(unit["conditioning_scale"]), float(unit["guidance_start"]),
                          float(unit["guidance_end"])))
        loras = self._lora_sources(input.get("loras") or [])
        key = BatchKey(
            mode="inpaint" if mask is not None else "img2img" if init is not None else "txt2img",
            width=width, height=height, steps=input["num_inference_steps"],
            scheduler=canonical_name(input["scheduler"]), guidance_scale=float(input["guidance_scale"]),
            strength=float(input["strength"]) if init is not None else 0.0, controlnets=tuple(units),
            guess_mode=bool(input.get("guess_mode")) and bool(units),
            loras=lora_set((source.id, scale) for source, scale in loras),
            family=self.pipelines.family.name, refine=bool(input.get("refine")),
            high_noise_frac=(float(input.get("high_noise_frac", DEFAULT_HIGH_NOISE_FRAC))
                             if input.get("refine") else 0.0),
        )
        seeds = [(input["seed"] + k) % (MAX_SEED + 1) for k in range(input["num_outputs"])]
        blurred = overlay_mask(mask, int(input.get("mask_blur") or 0)) if mask is not None else None
        return key, ImageRequest(input["prompt"], input["negative_prompt"], seeds, init, controls, mask,
                                 blurred, tuple(source for source, _ in loras), input.get("prompt_2") or "",
                                 input.get("negative_prompt_2") or "")

    def _init_and_mask(self, input: dict[str, Any], max_pixels: int) -> tuple[Any, Any, tuple[int, int]]:
        """The init image at the output size, its binary mask (inpainting; outpainting: the enlarged
        canvas and its mask) and the output size."""
        if not input.get("image"):
            return None, None, self._size(input, None)
        from PIL import Image

        init = decode_image(input["image"], "input.image", max_pixels)
        width, height = self._size(input, init)
        init = init.resize((width, height), Image.Resampling.LANCZOS)
        mask = None
        if input.get("mask"):
            mask = binary_mask(decode_image(input["mask"], "input.mask", max_pixels), (width, height))
        if input.get("outpaint") is not None:  # check_input made sure the canvas is within max_side
            sides = outpaint_sides(input["outpaint"])
            width, height = width + sides["left"] + sides["right"], height + sides["top"] + sides["bottom"]
            init, mask = outpaint_canvas(init, sides, input["outpaint"].get("fill") or "edge", mask)
        return init, mask, (width, height)

    def _lora_sources(self, loras: list[dict[str, Any]]) -> list[tuple[LoraSource, float]]:
        """Each requested adapter's source (the version's, by name; an upload, by its sha256) and scale."""
        max_bytes = int(_option(self.spec, "max_lora_file_bytes", DEFAULT_MAX_LORA_FILE_BYTES))
        found: list[tuple[LoraSource, float]] = []
        for i, lora in enumerate(loras):
            if lora.get("file"):
                source = uploaded_source(lora["file"], f"input.loras[{i}].file", max_bytes)
            else:
                source = self.lora_sources[lora["weights"]]  # _check_loras made sure it is one
            if any(source.id == other.id for other, _ in found):
                raise InvalidInput(f"input.loras[{i}]", "is the same adapter as an earlier one; give each "
                                                        "once")
            found.append((source, float(lora.get("scale", 1))))
        return found

    def _size(self, input: dict[str, Any], init: Any) -> tuple[int, int]:
        if init is not None:
            return _init_size(self.spec, input, init.size)
        default = self.pipelines.default_size
        return int(input.get("width") or default[0]), int(input.get("height") or default[1])

    @staticmethod
    def finish(images: list[Any], key: BatchKey, request: Any, input: dict[str, Any]) -> list[Any]:
        """The prediction's files: its images (the init image pasted back outside the mask, when
        inpainting) in the output format, then, with ``return_maps``, each unit's map as PNG."""
        if request.mask_image is not None:
            images = [apply_overlay(image, request.init_image, request.overlay_mask) for image in images]
        files = [encode_image(image, input["output_format"], f"output-{k}") for k, image in enumerate(images)]
        if input.get("return_maps"):
            files += [encode_image(control, "png", f"map-{i}-{unit[0]}")
                      for i, (control, unit) in enumerate(zip(request.control_images, key.controlnets))]
        return files


def _init_size(spec: RouteSpec, input: dict[str, Any], image_size: tuple[int, int]) -> tuple[int, int]:
    """The size the init image is resized to: width x height when given, else its own, each side
    rounded down to a multiple of 8 within [64, max_side]."""
    max_side = int(_option(spec, "max_side", 2048))
    default = [max(64, min(max_side, side // 8 * 8)) for side in image_size]
    return int(input.get("width") or default[0]), int(input.get("height") or default[1])


def _check_outpaint(spec: RouteSpec, input: dict[str, Any]) -> None:
    """Outpainting adds pixels, and the enlarged canvas stays within max_side (the image's size read
    from its header, so this is checked before the prediction is queued)."""
    sides = outpaint_sides(input["outpaint"])
    if not any(sides.values()):
        raise InvalidInput("input.outpaint", "adds no pixels: set left, right, top or bottom")
    width, height = _init_size(spec, input, probe_image(input["image"], "input.image"))
    width, height = width + sides["left"] + sides["right"], height + sides["top"] + sides["bottom"]
    max_side = int(_option(spec, "max_side", 2048))
    if max(width, height) > max_side:
        raise InvalidInput("input.outpaint", f"makes the output {width}x{height}; at most {max_side} pixels "
                                             f"a side")


def _check_loras(spec: RouteSpec, loras: list[dict[str, Any]]) -> None:
    """Each adapter gives exactly one of weights (a name the version has) and file (a .safetensors
    LoRA, its header checked here), and no name twice."""
    names = _option(spec, "loras", {})
    max_bytes = int(_option(spec, "max_lora_file_bytes", DEFAULT_MAX_LORA_FILE_BYTES))
    if len(loras) > MAX_LORAS_PER_REQUEST:
        raise InvalidInput("input.loras", f"has {len(loras)} adapters; at most {MAX_LORAS_PER_REQUEST}")
    seen: set[str] = set()
    for i, lora in enumerate(loras):
        field = f"input.loras[{i}]"
        weights, file = lora.get("weights"), lora.get("file")
        if bool(weights) == bool(file):
            raise InvalidInput(f"{field}.weights", "give weights (one of this version's adapters, by name) "
                                                   "or file (a .safetensors LoRA), one of the two")
        if not -SCALE_BOUND <= lora.get("scale", 1) <= SCALE_BOUND:
            raise InvalidInput(f"{field}.scale", f"must be from -{SCALE_BOUND:g} to {SCALE_BOUND:g}")
        if file:
            probe_lora(file, f"{field}.file", max_bytes)
            continue
        if weights not in names:
            raise InvalidInput(f"{field}.weights", f"unknown adapter {weights!r}; this version has: "
                                                   f"{', '.join(sorted(names)) or 'none'}")
        if weights in seen:
            raise InvalidInput(f"{field}.weights", f"names {weights!r} again; give each adapter once")
        seen.add(weights)
