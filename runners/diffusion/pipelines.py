"""Stable Diffusion pipelines over one set of weights: text-to-image, image-to-image and inpainting,
each with or without ControlNets, sharing the same UNet, VAE and text encoder in memory, and the LoRA
adapters loaded into them (``loras.LoraAdapters``: each call sets its key's adapters, or none).

``Pipelines.run`` makes one diffusers call for a batch of requests with the same ``BatchKey``. Every
image has its own ``torch.Generator``, seeded from its request (``seed``, ``seed + 1``... for a
request's several outputs), and diffusers draws each image's initial noise, and each stochastic
sampler step's noise, from that image's own generator; so an image does not depend on which other
images share its call (up to float rounding, which batch size can change in the last bit).
Generators live on the CPU, so a seed draws the same noise on any device.

Inpainting runs diffusers' inpaint pipelines on the model's own 4-channel UNet (not a 9-channel
inpainting UNet, which sees the mask as input): after every denoising step they blend the init image's
latents, noised to the next step's level with the image's own noise, back where the mask (thresholded
at 0.5, then taken to the latent grid by nearest neighbour) is black; the last step blends them in
unnoised. The runner then pastes the init image back outside the mask (``inpaint.apply_overlay``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from runners.diffusion.batching import BatchKey
from runners.diffusion.loras import LoraAdapters, LoraCache, LoraSource
from runners.diffusion.schedulers import make_scheduler

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class ImageRequest:
    """What one prediction brings to a batch: everything per image, already decoded and preprocessed."""

    prompt: str
    negative_prompt: str
    seeds: list[int]  # one per output image
    init_image: "Image.Image | None" = None  # img2img and inpainting (the enlarged canvas, outpainting)
    control_images: list["Image.Image"] = field(default_factory=list)  # one per ControlNet unit
    mask_image: "Image.Image | None" = None  # inpainting: binary, white repaints, at the output size
    overlay_mask: "Image.Image | None" = None  # inpainting: the mask (feathered) the init is pasted back by
    loras: tuple[LoraSource, ...] = ()  # where the adapters of this request's key come from


# The diffusers class for each (mode, with ControlNets), built over the base pipeline with from_pipe;
# None: the base (text-to-image) pipeline itself.
PIPELINE_CLASSES: dict[tuple[str, bool], str | None] = {
    ("txt2img", False): None,
    ("img2img", False): "StableDiffusionImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionInpaintPipeline",
    ("txt2img", True): "StableDiffusionControlNetPipeline",
    ("img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionControlNetInpaintPipeline",
}


StepCallback = Callable[[int, int], None]  # (step done, total steps); may raise to abort the call


class Pipelines:
    """The model's components, loaded once, and the pipelines built over them on demand."""

    def __init__(self, weights: str, controlnets: dict[str, str], device: str, dtype: Any,
                 lora_cache: LoraCache | None = None) -> None:
        self.weights = weights
        self.controlnet_paths = controlnets
        self.device = device
        self.dtype = dtype
        self.base: Any = None
        self.scheduler_config: Any = None
        self.controlnets: dict[str, Any] = {}
        self.lora_cache = lora_cache or LoraCache()
        self.adapters: LoraAdapters | None = None
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
        self.adapters = LoraAdapters(self.base, self.lora_cache)

    def unload(self) -> None:
        self.base = self.adapters = None
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
            import diffusers

            name = PIPELINE_CLASSES[(mode, bool(controlnet_types))]
            extra = {}
            if controlnet_types:
                nets = [self.controlnets[t] for t in controlnet_types]
                extra = {"controlnet": nets[0] if len(nets) == 1 else nets}
            pipe = self.base if name is None else getattr(diffusers, name).from_pipe(self.base, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[key] = pipe
        return self._pipelines[key]

    def run(self, key: BatchKey, requests: list[ImageRequest],
            on_step: StepCallback) -> list[list["Image.Image"]]:
        """One pipeline call for ``requests``; their images, per request, in order."""
        import torch

        types = tuple(unit[0] for unit in key.controlnets)
        pipe = self._pipeline(key.mode, types)
        pipe.scheduler = make_scheduler(key.scheduler, self.scheduler_config)
        self.adapters.apply(key.loras, {source.id: source for r in requests for source in r.loras})
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
            **_mode_arguments(key, [r for r, _ in per_image]),
        }
        if types:
            kwargs.update(_controlnet_arguments(key, [r for r, _ in per_image]))
        with torch.inference_mode():
            images = pipe(**kwargs).images
        out, at = [], 0
        for r in requests:
            out.append(images[at:at + len(r.seeds)])
            at += len(r.seeds)
        return out


def _mode_arguments(key: BatchKey, per_image: list[ImageRequest]) -> dict[str, Any]:
    """The call's arguments of its mode: the size, and the init images (and masks) per image."""
    if key.mode == "txt2img":
        return {"width": key.width, "height": key.height}
    arguments = {"image": [r.init_image for r in per_image], "strength": key.strength}
    if key.mode == "inpaint":
        arguments.update(mask_image=[r.mask_image for r in per_image], width=key.width, height=key.height)
    return arguments


def _controlnet_arguments(key: BatchKey, per_image: list[ImageRequest]) -> dict[str, Any]:
    """The ControlNet units' arguments: a map per image (per unit), and each unit's scale and window."""
    single = len(key.controlnets) == 1
    control = ([r.control_images[0] for r in per_image] if single
               else [list(r.control_images) for r in per_image])  # per image, per unit
    scales, starts, ends = ([unit[i] for unit in key.controlnets] for i in (1, 2, 3))
    return {
        # the text-to-image ControlNet pipeline takes the maps as its `image`; the others, `control_image`
        "image" if key.mode == "txt2img" else "control_image": control,
        "controlnet_conditioning_scale": scales[0] if single else scales,
        "control_guidance_start": starts[0] if single else starts,
        "control_guidance_end": ends[0] if single else ends,
        "guess_mode": key.guess_mode,
    }
