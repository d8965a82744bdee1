"""A tiny random LoRA for the tiny Stable Diffusion (``runners.tiny_models.make_tiny_sd``), so that the
diffusion runner's per-request adapters are tested, and served by default, with no network.

``make_tiny_sd_lora`` adds a peft ``LoraConfig`` to the UNet's attention projections (``to_q``,
``to_k``, ``to_v``, ``to_out.0``) and to the text encoder's (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``), draws every A and B matrix at random (a trained LoRA's B is not zero, and a zero B would
change nothing), and saves them with ``StableDiffusionPipeline.save_lora_weights``: one
``pytorch_lora_weights.safetensors`` in diffusers' format, which ``load_lora_weights`` reads. The
folder is written once, like the tiny models (``_write_once``), and the marker records a fingerprint
of the UNet it was shaped for.

The text encoder's adapter is injected with peft's ``inject_adapter_in_model``: transformers 5's own
``add_adapter`` wants peft 0.22, newer than PyPI has (its ``load_adapter``, which diffusers loads
with, does not ask).
"""

from __future__ import annotations

from pathlib import Path

from runners.tiny_models import GENERATOR_VERSION, _fingerprint, _seeded, _write_once

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' own name for a pipeline's LoRA file
# The spread of the B matrices: enough that scale 1 visibly changes a 64x64 image, small enough that
# scales up to 4 stay finite.
B_STD = 0.5


def make_tiny_sd_lora(out_dir: Path, sd_dir: Path, seed: int = 0, rank: int = 4) -> Path:
    """Write a random rank-``rank`` LoRA for the tiny SD in ``sd_dir`` to ``out_dir`` and return it."""
    from diffusers import UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(Path(sd_dir) / "unet")
    marker = {"generator": "tiny-sd-lora", "version": GENERATOR_VERSION, "seed": seed, "rank": rank,
              "unet": _fingerprint(unet_config)}
    return _write_once(out_dir, marker, lambda staging: write_lora(staging, Path(sd_dir), seed, rank))


def write_lora(out_dir: Path, sd_dir: Path, seed: int, rank: int, sdxl: bool = False) -> None:
    """A random LoRA of the UNet's attention and the (first) text encoder's, saved with the pipeline's
    own ``save_lora_weights`` (SD's, or SDXL's with ``sdxl``)."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    text_encoder = CLIPTextModel.from_pretrained(sd_dir / "text_encoder")
    with _seeded(seed):
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_TARGETS),
                                    init_lora_weights=False))
        text_encoder = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TEXT_ENCODER_TARGETS),
                       init_lora_weights=False), text_encoder)
        for model in (unet, text_encoder):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=B_STD)
    (StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline).save_lora_weights(
        out_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder)),
        weight_name=LORA_WEIGHT_NAME, safe_serialization=True)
