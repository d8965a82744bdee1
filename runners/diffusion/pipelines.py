"""Stable Diffusion pipelines over one set of weights: text-to-image, image-to-image, each with or
without ControlNets, sharing the same UNet, VAE and text encoder in memory.

``Pipelines.run`` makes one diffusers call for a batch of requests with the same ``BatchKey``. Every
image has its own ``torch.Generator``, seeded from its request (``seed``, ``seed + 1``... for a
request's several outputs), and diffusers draws each image's initial noise, and each stochastic
sampler step's noise, from that image's own generator; so an image does not depend on which other
images share its call (up to float rounding, which batch size can change in the last bit).
Generators live on the CPU, so a seed draws the same noise on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from runners.diffusion.batching import BatchKey
from runners.diffusion.schedulers import make_scheduler

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class ImageRequest:
    """What one prediction brings to a batch: everything per image, already decoded and preprocessed."""

    prompt: str
    negative_prompt: str
    seeds: list[int]  # one per output image
    init_image: "Image.Image | None" = None
    control_images: list["Image.Image"] = field(default_factory=list)  # one per ControlNet unit


StepCallback = Callable[[int, int], None]  # (step done, total steps); may raise to abort the call


class Pipelines:
    """The model's components, loaded once, and the pipelines built over them on demand."""

    def __init__(self, weights: str, controlnets: dict[str, str], device: str, dtype: Any) -> None:
        self.weights = weights
        self.controlnet_paths = controlnets
        self.device = device
        self.dtype = dtype
        self.base: Any = None
        self.scheduler_config: Any = None
        self.controlnets: dict[str, Any] = {}
        self._pipelines: dict[tuple[str, tuple[str, ...]], Any] = {}

    def load(self) -> None:
        from diffusers import ControlNetModel, StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # progress goes to the prediction's events instead
        diffusers_logging.set_verbosity_error()  # from_pipe's dtype notes would fill the node's log

        self.base = StableDiffusionPipeline.from_pretrained(
            self.weights, dtype=self.dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        ).to(self.device)
        # The model's own scheduler config: each call's scheduler is built on it (never on the last
        # call's, whose class-specific settings would leak into the next).
        self.scheduler_config = self.base.scheduler.config
        self.controlnets = {
            kind: ControlNetModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
            for kind, path in self.controlnet_paths.items()
        }

    def unload(self) -> None:
        self.base = None
        self.controlnets = {}
        self._pipelines = {}

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at: its sample size times the VAE's scale factor."""
        side = self.base.unet.config.sample_size * self.base.vae_scale_factor
        return side, side

    def _pipeline(self, mode: str, controlnet_types: tuple[str, ...]) -> Any:
        key = (mode, controlnet_types)
        if key not in self._pipelines:
            from diffusers import (
                StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetPipeline,
                StableDiffusionImg2ImgPipeline,
            )

            if not controlnet_types:
                cls, extra = (StableDiffusionImg2ImgPipeline if mode == "img2img" else None), {}
            else:
                cls = (StableDiffusionControlNetImg2ImgPipeline if mode == "img2img"
                       else StableDiffusionControlNetPipeline)
                nets = [self.controlnets[t] for t in controlnet_types]
                extra = {"controlnet": nets[0] if len(nets) == 1 else nets}
            pipe = self.base if cls is None else cls.from_pipe(self.base, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[key] = pipe
        return self._pipelines[key]

    def run(self, key: BatchKey, requests: list[ImageRequest], on_step: StepCallback) -> list[list["Image.Image"]]:
        """One pipeline call for ``requests``; their images, per request, in order."""
        import torch

        types = tuple(unit[0] for unit in key.controlnets)
        pipe = self._pipeline(key.mode, types)
        pipe.scheduler = make_scheduler(key.scheduler, self.scheduler_config)
        per_image = [(r, seed) for r in requests for seed in r.seeds]

        def step_end(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(i + 1, pipeline.num_timesteps)
            return {}

        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r, _ in per_image],
            "negative_prompt": [r.negative_prompt for r, _ in per_image],
            "generator": [torch.Generator("cpu").manual_seed(seed) for _, seed in per_image],
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance_scale,
            "callback_on_step_end": step_end,
            "output_type": "pil",
        }
        if key.mode == "img2img":
            kwargs["image"] = [r.init_image for r, _ in per_image]
            kwargs["strength"] = key.strength
        else:
            kwargs["width"], kwargs["height"] = key.width, key.height
        if types:
            control = ([r.control_images[0] for r, _ in per_image] if len(types) == 1
                       else [list(r.control_images) for r, _ in per_image])  # per image, per unit
            kwargs["control_image" if key.mode == "img2img" else "image"] = control
            scales, starts, ends = ([unit[i] for unit in key.controlnets] for i in (1, 2, 3))
            single = len(types) == 1
            kwargs["controlnet_conditioning_scale"] = scales[0] if single else scales
            kwargs["control_guidance_start"] = starts[0] if single else starts
            kwargs["control_guidance_end"] = ends[0] if single else ends
            kwargs["guess_mode"] = key.guess_mode
        with torch.inference_mode():
            images = pipe(**kwargs).images
        out, at = [], 0
        for r in requests:
            out.append(images[at:at + len(r.seeds)])
            at += len(r.seeds)
        return out
