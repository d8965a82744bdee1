"""The pipeline families the diffusion runner serves, and which one a version's weights are.

- ``sd``: Stable Diffusion 1.x/2.x (one CLIP text encoder), diffusers' ``StableDiffusion*`` pipelines.
- ``sdxl``: Stable Diffusion XL (two text encoders, micro-conditioning on size and crop), diffusers'
  ``StableDiffusionXL*`` pipelines, with an optional refiner run as an ensemble of experts.

Each family names, per (mode, with ControlNets), the diffusers class built over its base pipeline with
``from_pipe`` (None: the base, text-to-image pipeline itself). Pure: no torch, no diffusers import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from warmfleet.errors import InvalidInput


@dataclass(frozen=True)
class Family:
    name: str
    base_class: str  # the diffusers class the weights load with
    classes: Mapping[tuple[str, bool], str | None]
    # extra from_pretrained arguments of the base
    load_arguments: Mapping[str, Any] = field(default_factory=dict)


SD = Family("sd", "StableDiffusionPipeline", {
    ("txt2img", False): None,
    ("img2img", False): "StableDiffusionImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionInpaintPipeline",
    ("txt2img", True): "StableDiffusionControlNetPipeline",
    ("img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionControlNetInpaintPipeline",
}, {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False})

SDXL = Family("sdxl", "StableDiffusionXLPipeline", {
    ("txt2img", False): None,
    ("img2img", False): "StableDiffusionXLImg2ImgPipeline",
    ("inpaint", False): "StableDiffusionXLInpaintPipeline",
    ("txt2img", True): "StableDiffusionXLControlNetPipeline",
    ("img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("inpaint", True): "StableDiffusionXLControlNetInpaintPipeline",
})

FAMILIES: dict[str, Family] = {family.name: family for family in (SD, SDXL)}

# model_index.json's ``_class_name`` of each family's checkpoints (the refiner's is an img2img one).
_CLASS_NAMES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
}

# The refiner runs as diffusers' ensemble of experts: the base stops at ``denoising_end`` and hands its
# latents over. diffusers' img2img ControlNet pipeline for SDXL has no ``denoising_end``, so those calls
# cannot be refined.
REFINABLE = {("txt2img", False), ("txt2img", True), ("img2img", False), ("inpaint", False), ("inpaint", True)}


def detect_family(weights: str, option: str | None = None, refiner: str | None = None) -> str:
    """The family of a version: ``options.family`` when given, else the one its weights folder's
    ``model_index.json`` names, else ``sdxl`` when it has a refiner, else ``sd``."""
    if option is not None:
        if option not in FAMILIES:
            raise InvalidInput("options.family", f"unknown family {option!r}; known: {', '.join(FAMILIES)}")
        return option
    try:
        class_name = json.loads((Path(weights) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        class_name = None
    if class_name in _CLASS_NAMES:
        return _CLASS_NAMES[class_name]
    return "sdxl" if refiner else "sd"
