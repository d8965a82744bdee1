"""Stable Diffusion pipelines over one set of weights: text-to-image, image-to-image and inpainting,
each with or without ControlNets, sharing the same UNet, VAE and text encoders in memory, and the LoRA
adapters loaded into them (``loras.LoraAdapters``: each call sets its key's adapters, or none). Two
families (``families``): SD 1.x/2.x and SDXL, whose diffusers classes differ but take the same call.

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

SDXL's refiner (``refine``) runs as diffusers' ensemble of experts: the base call stops at
``denoising_end = high_noise_frac`` of the schedule and returns latents; the refiner (an img2img
pipeline, or inpaint for inpainting, loaded sharing the base's second text encoder and VAE) continues
them from ``denoising_start = high_noise_frac``, with the same generators. SDXL's micro-conditioning
(original and target size, crop) stays at diffusers' defaults: the output size, no crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from runners.diffusion.batching import BatchKey
from runners.diffusion.families import FAMILIES, SD
from runners.diffusion.loras import LoraAdapters, LoraCache, LoraSource
from runners.diffusion.schedulers import make_scheduler
from warmfleet.errors import InvalidInput

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
    prompt_2: str = ""  # SDXL's second text encoder's prompt; empty: the prompt
    negative_prompt_2: str = ""  # and its negative prompt; empty: the negative prompt


# SD 1.x's classes, as before the SDXL family (``families.SD.classes``).
PIPELINE_CLASSES = SD.classes


StepCallback = Callable[[int, int], None]  # (step done, total steps); may raise to abort the call


class Pipelines:
    """The model's components, loaded once, and the pipelines built over them on demand."""

    def __init__(self, weights: str, controlnets: dict[str, str], device: str, dtype: Any,
                 lora_cache: LoraCache | None = None, family: str = "sd", refiner: str | None = None) -> None:
        self.weights = weights
        self.controlnet_paths = controlnets
        self.device = device
        self.dtype = dtype
        self.family = FAMILIES[family]
        self.refiner_path = refiner
        self.base: Any = None
        self.refiner: Any = None
        self.scheduler_config: Any = None
        self.controlnets: dict[str, Any] = {}
        self.lora_cache = lora_cache or LoraCache()
        self.adapters: LoraAdapters | None = None
        self._pipelines: dict[tuple[str, ...], Any] = {}

    def load(self) -> None:
        import diffusers
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # progress goes to the prediction's events instead
        diffusers_logging.set_verbosity_error()  # from_pipe's dtype notes would fill the node's log

        base_class = getattr(diffusers, self.family.base_class)
        self.base = base_class.from_pretrained(self.weights, dtype=self.dtype,
                                               **self.family.load_arguments).to(self.device)
        # The model's own scheduler config: each call's scheduler is built on it (never on the last
        # call's, whose class-specific settings would leak into the next).
        self.scheduler_config = self.base.scheduler.config
        self.controlnets = {
            kind: diffusers.ControlNetModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
            for kind, path in self.controlnet_paths.items()
        }
        if self.refiner_path:
            # The refiner's own UNet; the base's second text encoder and VAE, as SDXL's refiner shares them.
            self.refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
                self.refiner_path, dtype=self.dtype, text_encoder_2=self.base.text_encoder_2,
                vae=self.base.vae).to(self.device)
            self.refiner.set_progress_bar_config(disable=True)
        self.adapters = LoraAdapters(self.base, self.lora_cache)

    def unload(self) -> None:
        self.base = self.refiner = self.adapters = None
        self.controlnets = {}
        self._pipelines = {}

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at: its sample size times the VAE's scale factor."""
        side = self.base.unet.config.sample_size * self.base.vae_scale_factor
        return side, side

    def _pipeline(self, mode: str, controlnet_types: tuple[str, ...]) -> Any:
        key = (mode, *controlnet_types)
        if key not in self._pipelines:
            import diffusers

            name = self.family.classes[(mode, bool(controlnet_types))]
            extra = {}
            if controlnet_types:
                nets = [self.controlnets[t] for t in controlnet_types]
                extra = {"controlnet": nets[0] if len(nets) == 1 else nets}
            pipe = self.base if name is None else getattr(diffusers, name).from_pipe(self.base, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[key] = pipe
        return self._pipelines[key]

    def _refiner(self, mode: str) -> Any:
        """The refiner's pipeline for ``mode``: img2img (the base's latents as its image), or inpaint."""
        if self.refiner is None:
            raise InvalidInput("input.refine", "this version has no refiner (options.refiner)")
        if mode != "inpaint":
            return self.refiner
        if ("refiner", mode) not in self._pipelines:
            import diffusers

            pipe = diffusers.StableDiffusionXLInpaintPipeline.from_pipe(self.refiner)
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[("refiner", mode)] = pipe
        return self._pipelines[("refiner", mode)]

    def run(self, key: BatchKey, requests: list[ImageRequest],
            on_step: StepCallback) -> list[list["Image.Image"]]:
        """One pipeline call (two, refining) for ``requests``; their images, per request, in order."""
        import torch

        types = tuple(unit[0] for unit in key.controlnets)
        pipe = self._pipeline(key.mode, types)
        pipe.scheduler = make_scheduler(key.scheduler, self.scheduler_config)
        self.adapters.apply(key.loras, {source.id: source for r in requests for source in r.loras})
        per_image = [r for r in requests for _ in r.seeds]
        generators = [torch.Generator("cpu").manual_seed(seed) for r in requests for seed in r.seeds]
        progress = _Progress(on_step, self._planned_steps(key) if key.refine else None)
        kwargs: dict[str, Any] = {
            **self._prompt_arguments(per_image),
            "generator": generators,
            "num_inference_steps": key.steps,
            "guidance_scale": key.guidance_scale,
            "callback_on_step_end": progress.step_end,
            "output_type": "pil",
            **_mode_arguments(key, per_image),
        }
        if types:
            kwargs.update(_controlnet_arguments(key, per_image))
        with torch.inference_mode():
            if key.refine:
                kwargs.update(denoising_end=key.high_noise_frac, output_type="latent")
                images = self._refine(key, per_image, generators, pipe(**kwargs).images, progress)
            else:
                images = pipe(**kwargs).images
        out, at = [], 0
        for r in requests:
            out.append(images[at:at + len(r.seeds)])
            at += len(r.seeds)
        return out

    def _prompt_arguments(self, per_image: list[ImageRequest]) -> dict[str, Any]:
        arguments = {"prompt": [r.prompt for r in per_image],
                     "negative_prompt": [r.negative_prompt for r in per_image]}
        if self.family.name == "sdxl":
            arguments.update(prompt_2=[r.prompt_2 or r.prompt for r in per_image],
                             negative_prompt_2=[r.negative_prompt_2 or r.negative_prompt for r in per_image])
        return arguments

    def _refine(self, key: BatchKey, per_image: list[ImageRequest], generators: list[Any], latents: Any,
                progress: "_Progress") -> list["Image.Image"]:
        """The refiner's call over the base's latents, from ``high_noise_frac`` of the schedule on. Its one
        text encoder is the base's second, so it reads each image's ``prompt_2`` (else its prompt)."""
        refiner = self._refiner(key.mode)
        refiner.scheduler = make_scheduler(key.scheduler, self.refiner.scheduler.config)
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt_2 or r.prompt for r in per_image],
            "negative_prompt": [r.negative_prompt_2 or r.negative_prompt for r in per_image],
            "image": latents, "generator": generators, "num_inference_steps": key.steps,
            "guidance_scale": key.guidance_scale, "denoising_start": key.high_noise_frac,
            "callback_on_step_end": progress.step_end, "output_type": "pil",
        }
        if key.mode == "inpaint":
            kwargs.update(mask_image=[r.mask_image for r in per_image], width=key.width, height=key.height)
        return refiner(**kwargs).images

    def _planned_steps(self, key: BatchKey) -> int:
        """The steps a refined call runs, base and refiner together; ``InvalidInput`` when
        ``high_noise_frac`` leaves either of them none (diffusers' split: the base runs the timesteps
        at or above ``(1 - high_noise_frac)`` of the training schedule, the refiner those below)."""
        scheduler = make_scheduler(key.scheduler, self.scheduler_config)
        scheduler.set_timesteps(key.steps)
        timesteps = scheduler.timesteps
        if key.mode != "txt2img":  # the init image's strength skips the first steps
            timesteps = timesteps[(key.steps - min(int(key.steps * key.strength), key.steps)) * scheduler.order:]
        cutoff = round(scheduler.config.num_train_timesteps * (1 - key.high_noise_frac))
        base = int((timesteps >= cutoff).sum())
        if base == 0 or base == len(timesteps):
            raise InvalidInput("input.high_noise_frac", f"{key.high_noise_frac} leaves the "
                                                        f"{'base' if base == 0 else 'refiner'} no step of the "
                                                        f"{len(timesteps)}; move it toward 0.5 or add steps")
        return len(timesteps)


class _Progress:
    """One count of steps over the base's call and the refiner's: (steps done, total)."""

    def __init__(self, on_step: StepCallback, planned: int | None) -> None:
        self.on_step = on_step
        self.planned = planned
        self.done = 0

    def step_end(self, pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.done += 1
        if self.planned is None:
            self.on_step(i + 1, pipeline.num_timesteps)
        else:
            self.on_step(self.done, max(self.planned, self.done))
        return {}
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
