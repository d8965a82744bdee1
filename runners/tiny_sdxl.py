"""A tiny random-weight Stable Diffusion XL in diffusers' layout, with its refiner, one SDXL ControlNet
and one LoRA, generated locally so that the diffusion runner's SDXL family is tested, and served by
default, with no network.

``make_tiny_sdxl_bundle`` writes:

- ``tiny-sdxl``: SDXL base. Two CLIP text encoders (``CLIPTextModel``, whose penultimate hidden states
  SDXL reads, and ``CLIPTextModelWithProjection``, whose projected pooled output it reads too), two
  tokenizers (the CLIP vocabulary trained by ``tiny_models``), a UNet with SDXL's micro-conditioning
  (``addition_embed_type`` "text_time": six time ids, original size, crop and target size, each embedded
  in ``addition_time_embed_dim`` channels, plus the pooled text embedding) and cross-attention over the
  two encoders' hidden states concatenated, SDXL's first level without attention as in SDXL, a VAE with
  the 8x latent scale and SDXL's scaling factor, and SDXL's Euler scheduler config.
- ``tiny-sdxl-refiner``: the refiner. Only the second text encoder (the base's, the same weights, as the
  real refiner shares OpenCLIP bigG with the base), a UNet conditioned on it alone and on five time ids
  (an aesthetic score instead of the target size: ``requires_aesthetics_score``).
- ``tiny-sdxl-controlnet``: ``ControlNetModel.from_unet`` of the base's UNet config, its output
  convolutions and conditioning embedding re-initialised by ``tiny_models._write_controlnet``,
  so that the map matters.
- ``tiny-sdxl-lora``: a random LoRA on the base UNet's attention and the first text encoder's, in
  diffusers' SDXL format (``StableDiffusionXLPipeline.save_lora_weights``).

Each folder is written once and atomically (``tiny_models._write_once``); they load with diffusers'
``from_pretrained`` offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runners.tiny_loras import write_lora
from runners.tiny_models import (
    CLIP_BOS, CLIP_EOS, CLIP_MAX_LENGTH, CONTROLNET_EMBEDDING_VERSION, GENERATOR_VERSION, SD_VAE_SHAPE,
    _derived_seed, _fingerprint, _save_clip_vocab, _seeded, _write_controlnet, _write_once, train_clip_vocab,
)

SDXL_GENERATOR_VERSION = 1  # bump when this module's output changes (GENERATOR_VERSION is tiny_models')

TEXT_ENCODER_SHAPE: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "projection_dim": 32, "max_position_embeddings": CLIP_MAX_LENGTH, "hidden_act": "quick_gelu",
}
TEXT_ENCODER_2_SHAPE: dict[str, Any] = {**TEXT_ENCODER_SHAPE, "hidden_act": "gelu"}  # OpenCLIP's GELU
TIME_EMBED_DIM = 8  # SDXL: 256 per time id
BASE_TIME_IDS = 6  # original size (2), crop top-left (2), target size (2)
REFINER_TIME_IDS = 5  # original size (2), crop top-left (2), aesthetic score (1)

# SDXL's UNet, shrunk: its first level has no attention, the deeper ones cross-attend with linear
# projections; head counts per level ("attention_head_dim" in diffusers' legacy naming).
_UNET_COMMON: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
    "layers_per_block": 1, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 2), "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 8,
    "addition_time_embed_dim": TIME_EMBED_DIM,
}
SDXL_UNET_SHAPE: dict[str, Any] = {
    **_UNET_COMMON,
    "cross_attention_dim": TEXT_ENCODER_SHAPE["hidden_size"] + TEXT_ENCODER_2_SHAPE["hidden_size"],
    "projection_class_embeddings_input_dim":
        TIME_EMBED_DIM * BASE_TIME_IDS + TEXT_ENCODER_2_SHAPE["projection_dim"],
}
REFINER_UNET_SHAPE: dict[str, Any] = {
    **_UNET_COMMON,
    "cross_attention_dim": TEXT_ENCODER_2_SHAPE["hidden_size"],
    "projection_class_embeddings_input_dim":
        TIME_EMBED_DIM * REFINER_TIME_IDS + TEXT_ENCODER_2_SHAPE["projection_dim"],
}
SDXL_VAE_SHAPE: dict[str, Any] = {**SD_VAE_SHAPE, "scaling_factor": 0.13025, "force_upcast": True}
# SDXL base 1.0's scheduler_config.json.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "interpolation_type": "linear", "steps_offset": 1,
    "timestep_spacing": "leading", "use_karras_sigmas": False, "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "clip_sample": False,
}


def _marker(name: str, seed: int, **more: Any) -> dict[str, Any]:
    return {"generator": name, "version": GENERATOR_VERSION, "sdxl_version": SDXL_GENERATOR_VERSION,
            "seed": seed, **more}


def make_tiny_sdxl_bundle(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``root/tiny-sdxl``, ``root/tiny-sdxl-refiner``, ``root/tiny-sdxl-controlnet`` and
    ``root/tiny-sdxl-lora``; return their folders as ``"sdxl"``, ``"refiner"``, ``"controlnet"`` and
    ``"lora"``. The refiner's UNet, the ControlNet and the LoRA draw their own seeds from ``seed``."""
    root = Path(root)
    base = _write_once(root / "tiny-sdxl", _marker("tiny-sdxl", seed),
                       lambda staging: _write_base(staging, seed))
    refiner_seed = _derived_seed(seed, "sdxl-refiner")
    refiner = _write_once(root / "tiny-sdxl-refiner", _marker("tiny-sdxl-refiner", refiner_seed, base=seed),
                          lambda staging: _write_refiner(staging, base, refiner_seed))
    return {
        "sdxl": base, "refiner": refiner,
        "controlnet": make_tiny_sdxl_controlnet(root / "tiny-sdxl-controlnet", base,
                                                _derived_seed(seed, "sdxl-controlnet")),
        "lora": make_tiny_sdxl_lora(root / "tiny-sdxl-lora", base, _derived_seed(seed, "sdxl-lora")),
    }


def _text_encoders(vocab: dict[str, int]) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ids = {"vocab_size": len(vocab), "bos_token_id": vocab[CLIP_BOS], "eos_token_id": vocab[CLIP_EOS],
           "pad_token_id": vocab[CLIP_EOS]}
    return (CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_SHAPE, **ids)),
            CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2_SHAPE, **ids)))


def _write_base(out_dir: Path, seed: int) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    vocab, merges = train_clip_vocab()
    with _seeded(seed):
        text_encoder, text_encoder_2 = _text_encoders(vocab)
        unet = UNet2DConditionModel(**SDXL_UNET_SHAPE)
        vae = AutoencoderKL(**SDXL_VAE_SHAPE)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG))
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    for folder in ("tokenizer", "tokenizer_2"):
        _save_clip_vocab(out_dir / folder, vocab, merges)


def _write_refiner(out_dir: Path, base_dir: Path, seed: int) -> None:
    """The refiner folder: the base's second text encoder, tokenizer and VAE (copied: the folder loads on
    its own too), a UNet of its own."""
    from diffusers import (
        AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel,
    )
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    with _seeded(seed):
        unet = UNet2DConditionModel(**REFINER_UNET_SHAPE)
    pipeline = StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL.from_pretrained(base_dir / "vae"), text_encoder=None, tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base_dir / "text_encoder_2"),
        tokenizer_2=CLIPTokenizer.from_pretrained(base_dir / "tokenizer_2"), unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False)
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    vocab, merges = train_clip_vocab()
    _save_clip_vocab(out_dir / "tokenizer_2", vocab, merges)


def make_tiny_sdxl_controlnet(out_dir: Path, sdxl_dir: Path, seed: int) -> Path:
    """Write a random SDXL ControlNet shaped for the UNet in ``sdxl_dir`` and return it."""
    from diffusers import UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(Path(sdxl_dir) / "unet")
    marker = _marker("tiny-sdxl-controlnet", seed, embedding=CONTROLNET_EMBEDDING_VERSION,
                     unet=_fingerprint(unet_config))
    return _write_once(out_dir, marker, lambda staging: _write_controlnet(staging, unet_config, seed))


def make_tiny_sdxl_lora(out_dir: Path, sdxl_dir: Path, seed: int = 0, rank: int = 4) -> Path:
    """Write a random rank-``rank`` LoRA for the tiny SDXL in ``sdxl_dir`` (its UNet's attention and its
    first text encoder's) to ``out_dir`` as ``pytorch_lora_weights.safetensors``, and return it."""
    from diffusers import UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(Path(sdxl_dir) / "unet")
    marker = _marker("tiny-sdxl-lora", seed, rank=rank, unet=_fingerprint(unet_config))
    return _write_once(out_dir, marker, lambda staging: write_lora(staging, Path(sdxl_dir), seed, rank, sdxl=True))
