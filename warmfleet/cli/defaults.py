"""What `warmfleet up` serves with no configuration: built-in models that need no network."""

from __future__ import annotations

from runners.diffusion.annotators import WEIGHTS_KEYS
from runners.diffusion.controlnet import CONTROLNET_TYPES
from warmfleet.domain import RouteSpec
from warmfleet.settings import Settings

TINY_LLAMA = "warmfleet/tiny-llama"
TINY_SD = "warmfleet/tiny-sd"
TINY_SDXL = "warmfleet/tiny-sdxl"
TINY_ESRGAN = "warmfleet/tiny-esrgan"
TINY_SD_LORA = "tiny-style"  # the tiny SD's LoRA adapter, by the name requests give in loras[].weights


def default_models(settings: Settings) -> list[RouteSpec]:
    """The built-in models: echo, and tiny random-weight models with the real architectures."""
    models = settings.models_path
    return [
        RouteSpec(
            name="warmfleet/echo", runner="echo",
            description="Returns its input text, optionally after a delay and in streamed chunks.",
        ),
        RouteSpec(
            name=TINY_LLAMA, runner="llm", weights=str(models / "tiny-llama"),
            description="A tiny random-weight Llama (real architecture, made locally): gibberish, fast.",
        ),
        RouteSpec(
            name=TINY_SD, runner="diffusion", weights=str(models / "tiny-sd"),
            options={"controlnets": {t: str(models / f"tiny-controlnet-{t}") for t in CONTROLNET_TYPES},
                     "steps": 10, "max_batch_size": 8,
                     "loras": {TINY_SD_LORA: str(models / "tiny-sd-lora-style")},
                     "annotators": {key: str(models / f"tiny-annotator-{key}") for key in WEIGHTS_KEYS}},
            description="A tiny random-weight Stable Diffusion 1.5 with a ControlNet of each type, the "
                        f"annotators that make their maps from a photo, and a LoRA adapter, {TINY_SD_LORA!r} "
                        "(real architectures, made locally): 64x64 noise, fast.",
        ),
        RouteSpec(
            name=TINY_SDXL, runner="diffusion", weights=str(models / "tiny-sdxl"),
            options={"family": "sdxl", "refiner": str(models / "tiny-sdxl-refiner"),
                     "controlnets": {"canny": str(models / "tiny-sdxl-controlnet")},
                     "steps": 10, "max_batch_size": 8, "loras": {TINY_SD_LORA: str(models / "tiny-sdxl-lora")}},
            description="A tiny random-weight Stable Diffusion XL with its refiner (refine: true), a canny "
                        f"ControlNet and a LoRA adapter, {TINY_SD_LORA!r} (real architectures, made locally): "
                        "64x64 noise, fast.",
        ),
        RouteSpec(
            name=TINY_ESRGAN, runner="upscale", weights=str(models / "tiny-esrgan"),
            description="A tiny random-weight ESRGAN x4 (real architecture, made locally).",
        ),
    ]


def prepare_default_weights(settings: Settings) -> None:
    """Generate the built-in tiny models under ``$WARMFLEET_HOME/models`` unless they are there already."""
    from runners.tiny_annotators import make_tiny_annotators
    from runners.tiny_loras import make_tiny_sd_lora  # imports torch
    from runners.tiny_models import make_tiny_esrgan, make_tiny_llama, make_tiny_sd_bundle
    from runners.tiny_sdxl import make_tiny_sdxl_bundle

    make_tiny_llama(settings.models_path / "tiny-llama")
    folders = make_tiny_sd_bundle(settings.models_path)
    make_tiny_sd_lora(settings.models_path / "tiny-sd-lora-style", folders["sd"], seed=1)
    make_tiny_sdxl_bundle(settings.models_path)  # with its refiner, ControlNet and LoRA
    make_tiny_esrgan(settings.models_path / "tiny-esrgan")
    make_tiny_annotators(settings.models_path)
