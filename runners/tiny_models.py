"""Tiny random-weight models with the real architectures, generated locally so that tests and the
default `warmfleet up` need no network.

``make_tiny_llama`` writes a Llama 3 lookalike: ``LlamaForCausalLM`` (GQA, RoPE, untied head) a few
hundred thousand parameters big, a byte-level BPE tokenizer trained here on a corpus built here, with
Llama 3's special tokens and chat template, and a ``generation_config.json`` whose ``eos_token_id`` is
a list (``<|end_of_text|>`` and ``<|eot_id|>``), the trap real Llama 3 checkpoints set for runners.

The output loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``
offline.

``make_tiny_esrgan`` writes an ESRGAN upscaler (spandrel's RRDBNet, 16 filters, 2 blocks) as one
``model.safetensors`` that ``spandrel.ModelLoader`` detects as ESRGAN with its scale.

``make_tiny_sd_bundle`` writes a Stable Diffusion 1.5 lookalike in diffusers' layout (CLIP tokenizer
trained here, CLIP text encoder, UNet, a VAE with SD's 8x latent scale, SD 1.5's PNDM scheduler) and
one ControlNet per ``CONTROLNET_TYPES`` shaped for its UNet; they load with diffusers'
``from_pretrained`` offline.

Every maker writes a folder: to a temporary sibling first, renamed into place with a ``.complete``
marker, so a reader never sees half a model; a folder that already holds the same generator's output
for the same arguments is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runners.diffusion.controlnet import CONTROLNET_TYPES

# Bump when the output changes, so that folders written by an older generator are rewritten.
GENERATOR_VERSION = 1
MARKER_NAME = ".complete"

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"  # Llama 3.1's padding token; Llama 3.0 has none
# In Llama 3's order; they are added after the trained vocabulary, so they take the last ids as there.
SPECIAL_TOKENS = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT, PAD]

TRAINED_VOCAB_SIZE = 1000  # byte alphabet (256) plus merges; the special tokens come on top
CORPUS_SENTENCES = 4000

# Llama 3's pre-tokenizer split (tiktoken's cl100k pattern), as in its tokenizer.json.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3.1 Instruct's chat template, its system/user/assistant part and its JSON tool calling: each
# message is a header, two newlines, the trimmed content and <|eot_id|>; the prompt opens with
# <|begin_of_text|>. With ``tools``, the first user message begins with Llama 3.1's instruction to answer
# a call as {"name": ..., "parameters": {...}} and the tools as JSON; a tool's result is an "ipython"
# message. Bump CHAT_TEMPLATE_VERSION when it changes, so the tiny Llama is written again.
CHAT_TEMPLATE_VERSION = 2
TOOLS_INSTRUCTION = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, "
    "\"parameters\": dictionary of argument name and its value}. Do not use variables.\n\n"
)
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set state = namespace(tools_shown=false) %}"
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message['role'] in ['tool', 'ipython'] else message['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}"
    "{%- if tools and message['role'] == 'user' and not state.tools_shown %}"
    "{%- set state.tools_shown = true %}"
    "{{- '" + TOOLS_INSTRUCTION.replace("'", "\\'") + "' }}"
    "{%- for tool in tools %}{{- (tool['function'] if 'function' in tool else tool) | tojson }}"
    "{{- '\\n\\n' }}{%- endfor %}"
    "{%- endif %}"
    "{{- message['content'] | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# The architecture: Llama 3's shape (GQA: 4 query heads share 2 key/value heads), shrunk.
LLAMA_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}

# Sampling defaults as real instruct checkpoints ship them.
SAMPLING_DEFAULTS: dict[str, Any] = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}


# The corpus

_SUBJECTS = ["the model", "a small cat", "my friend", "the old server", "every request", "the gateway",
             "our team", "this node", "a tired engineer", "the scheduler", "she", "he", "they", "we",
             "the river", "a quiet village", "the red fox", "your question", "the answer", "a user"]
_VERBS = ["runs", "waits for", "answers", "sends", "reads", "writes", "loads", "keeps", "finds",
          "sees", "likes", "builds", "streams", "returns", "remembers", "asks about", "tells", "moves"]
_OBJECTS = ["the weights", "a long story", "the warm cache", "three tokens", "every message",
            "the morning news", "a cup of tea", "the green hills", "some numbers", "the last batch",
            "a simple question", "the whole cluster", "its own name", "the blue sky", "a new plan"]
_TAILS = ["today", "again", "very quickly", "after lunch", "in the evening", "without a sound",
          "at 10:30", "for 42 seconds", "on Monday", "before the rain", "with care", "once more"]
_OPENERS = ["Hello!", "Thanks.", "Sure,", "Well,", "Yes:", "No;", "Why?", "Okay -", "Note:", "I think"]
# Multi-byte text. It is rare in the corpus, so BPE learns few merges for it and most of these
# characters stay split across several byte tokens, as in real tokenizers' long tail.
_NON_ASCII = ["café", "naïve", "über", "señor", "façade", "résumé", "Ångström", "déjà vu", "crème brûlée",
              "Straße", "你好，世界", "日本語のテキスト", "東京", "안녕하세요", "Привет", "Ελληνικά", "🙂", "🚀",
              "✓", "€5", "→"]


def build_corpus(n_sentences: int = CORPUS_SENTENCES) -> list[str]:
    """English-like sentences from the word lists above, some with non-ASCII words; the same every call."""
    rng = random.Random(0)
    lines = []
    for i in range(n_sentences):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?"])
        if rng.random() < 0.3:
            sentence = f"{rng.choice(_OPENERS)} {sentence}"
        if rng.random() < 0.08:
            sentence = f"{sentence} {rng.choice(_NON_ASCII)}"
        if i % 7 == 0:
            sentence = f'"{sentence}" ({i})\n'
        lines.append(sentence)
    return lines


# The tokenizer


def train_tokenizer() -> Any:
    """A Llama-3-style byte-level BPE (``tokenizers.Tokenizer``) trained on ``build_corpus()``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))  # Llama 3 sets ignore_merges too
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=TRAINED_VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(build_corpus(), trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tokenizer.token_to_id(BOS)
    # As Llama 3: encode() with add_special_tokens=True puts <|begin_of_text|> first.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)])
    return tokenizer


def _fast_tokenizer(tokenizer: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOT, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=LLAMA_SHAPE["max_position_embeddings"])


# The model


def _write_model(out_dir: Path, tokenizer: Any, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    bos_id = tokenizer.token_to_id(BOS)
    # A list, as Llama 3 ships it: a base model ends with <|end_of_text|>, a chat turn with <|eot_id|>.
    eos_ids = [tokenizer.token_to_id(END_OF_TEXT), tokenizer.token_to_id(EOT)]
    config = LlamaConfig(**LLAMA_SHAPE, vocab_size=tokenizer.get_vocab_size(), bos_token_id=bos_id,
                         eos_token_id=eos_ids, pad_token_id=tokenizer.token_to_id(PAD))
    with _seeded(seed):
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids,
                                               pad_token_id=config.pad_token_id, **SAMPLING_DEFAULTS)
    model.save_pretrained(out_dir, safe_serialization=True)


# Writing the Llama


def make_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny Llama (model, tokenizer, generation config) to ``out_dir`` and return it.

    The same ``seed`` gives the same weights and tokenizer. A folder this generator already completed
    for the same seed is returned as it is. A folder with other content is refused (FileExistsError)
    rather than replaced, since ``out_dir`` may be a path the user typed.
    """
    def write(staging: Path) -> None:
        tokenizer = train_tokenizer()
        _fast_tokenizer(tokenizer).save_pretrained(staging)
        _write_model(staging, tokenizer, seed)

    marker = {"generator": "tiny-llama", "version": GENERATOR_VERSION, "seed": seed,
              "chat_template": CHAT_TEMPLATE_VERSION}
    return _write_once(out_dir, marker, write)


# The ESRGAN upscaler

ESRGAN_WEIGHTS_NAME = "model.safetensors"
ESRGAN_SCALES = (1, 2, 4, 8)  # spandrel reads the scale from the number of 2x upsampling stages
ESRGAN_SHAPE: dict[str, Any] = {"num_filters": 16, "num_blocks": 2}  # real models: 64 and 23
# The residual-in-residual trunk is scaled down at init as ESRGAN's own training does (x0.1); the
# main path is a 1x1 identity on the RGB channels plus small noise (x0.05), so that the random model
# returns a nearest-neighbour upscale of its input with a little noise: an image, not garbage.
_ESRGAN_TRUNK_SCALE = 0.1
_ESRGAN_NOISE_SCALE = 0.05


def make_tiny_esrgan(out_dir: Path, seed: int = 0, scale: int = 4) -> Path:
    """Write a tiny random ESRGAN (spandrel's RRDBNet, old-arch keys) to ``out_dir`` and return it.

    The folder holds ``model.safetensors`` (the file to give ``spandrel.ModelLoader().load_from_file``)
    and the marker; it is written once and atomically as ``make_tiny_llama``'s folder is.
    """
    if scale not in ESRGAN_SCALES:
        raise ValueError(f"scale must be one of {ESRGAN_SCALES}, got {scale}")
    marker = {"generator": "tiny-esrgan", "version": GENERATOR_VERSION, "seed": seed, "scale": scale}
    return _write_once(out_dir, marker, lambda staging: _write_esrgan(staging, seed, scale))


def _write_esrgan(out_dir: Path, seed: int, scale: int) -> None:
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    with _seeded(seed), torch.no_grad():
        model = ESRGAN(in_nc=3, out_nc=3, scale=scale, **ESRGAN_SHAPE)
        state = model.state_dict()
        for name, tensor in state.items():
            if ".sub." in name:
                tensor.mul_(_ESRGAN_TRUNK_SCALE)
            elif name.endswith(".bias"):
                tensor.zero_()
            else:
                _near_identity_(tensor)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, out_dir / ESRGAN_WEIGHTS_NAME)


def _near_identity_(weight: Any) -> None:
    """Make a 3x3 convolution's weight pass its first three channels through, plus small noise."""
    weight.mul_(_ESRGAN_NOISE_SCALE)
    for channel in range(min(3, weight.shape[0], weight.shape[1])):
        weight[channel, channel, 1, 1] += 1.0


# Stable Diffusion 1.5 and its ControlNets

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"  # also CLIP's padding and unknown token, as in SD 1.5
CLIP_VOCAB_SIZE = 1000  # 256 byte symbols, the same 256 ending a word, merges, the two specials
CLIP_MAX_LENGTH = 77
CLIP_END_OF_WORD = "</w>"
PROMPT_CORPUS_SIZE = 2000


# SD 1.5's shapes, shrunk: the UNet keeps its cross-attention down/up blocks over 2 levels (4 there)
# and its "attention_head_dim" of 8 (a head count, in diffusers' legacy naming); the VAE keeps four
# levels, so that latents are 1/8 of the image as in SD; sample_size 8 makes the default image 64x64.
SD_TEXT_ENCODER_SHAPE: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "projection_dim": 32, "max_position_embeddings": CLIP_MAX_LENGTH, "hidden_act": "quick_gelu",
}
SD_UNET_SHAPE: dict[str, Any] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
    "layers_per_block": 1, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
SD_VAE_SHAPE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 64,
    "block_out_channels": (16, 16, 32, 32), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "layers_per_block": 1, "norm_num_groups": 8,
}
# SD 1.5's scheduler_config.json.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False,
}
# Four stages, as SD's (16, 32, 96, 256): three stride-2 convolutions take the control image down to
# the latent size. Two stages would leave it 4x too big for the UNet.
CONTROLNET_EMBEDDING_CHANNELS = (16, 16, 32, 32)
CONTROLNET_MAP_GAIN = 4.0  # the conditioning embedding's last convolution, times this (see _write_controlnet)
CONTROLNET_EMBEDDING_VERSION = 2  # bump when the embedding's init changes, to write the ControlNets again

_PROMPT_STYLES = ["a photo of", "a painting of", "an oil painting of", "a watercolor of",
                  "a pencil sketch of", "a 3d render of", "a close-up photo of", "a cartoon of"]
_PROMPT_THINGS = ["a cat", "a dog", "a red fox", "an astronaut", "a lighthouse", "a mountain lake",
                  "an old castle", "a bowl of fruit", "a city street", "a small boat", "a horse",
                  "a robot", "a forest path", "a cup of coffee", "a sports car", "a woman", "an old man"]
_PROMPT_SETTINGS = ["at sunset", "in the snow", "on a beach", "in a forest", "under the stars",
                    "in the rain", "at night", "in a garden"]
_PROMPT_QUALITIES = ["highly detailed", "4k", "sharp focus", "soft light", "trending on artstation",
                     "cinematic", "studio lighting", "bokeh"]


def build_prompt_corpus(n_prompts: int = PROMPT_CORPUS_SIZE) -> list[str]:
    """Image prompts ("a photo of a cat at sunset, 4k, bokeh") from the lists above; the same every call."""
    rng = random.Random(0)
    return [f"{rng.choice(_PROMPT_STYLES)} {rng.choice(_PROMPT_THINGS)} {rng.choice(_PROMPT_SETTINGS)}, "
            f"{', '.join(rng.sample(_PROMPT_QUALITIES, 2))}" for _ in range(n_prompts)]


def train_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary and merge list trained on the prompts and ``build_corpus()``.

    Training runs through an empty ``CLIPTokenizer``'s own normalizer and pre-tokenizer, so that it
    splits text as loading will. The vocabulary is in CLIP's order: the 256 byte symbols, the same
    with ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last.
    """
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    # Trained past the size wanted, then cut: merges are learnt most frequent first.
    trainer = trainers.BpeTrainer(vocab_size=2 * CLIP_VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix=CLIP_END_OF_WORD)
    backend.train_from_iterator(build_prompt_corpus() + build_corpus(), trainer=trainer)
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2
    merges = [(left, right) for left, right in json.loads(backend.to_str())["model"]["merges"]][:n_merges]
    if len(merges) < n_merges:
        raise RuntimeError(f"the corpus yields {len(merges)} merges, fewer than the {n_merges} wanted")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # code point order is CLIP's byte order
    tokens = [*alphabet, *(symbol + CLIP_END_OF_WORD for symbol in alphabet),
              *(left + right for left, right in merges), CLIP_BOS, CLIP_EOS]
    return {token: token_id for token_id, token in enumerate(tokens)}, merges


def _save_clip_vocab(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Leave ``folder`` as SD 1.5's tokenizer folder is: vocab.json and merges.txt, no tokenizer.json,
    so that the tokenizer loads the way the real one does."""
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def make_tiny_sd(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny Stable Diffusion 1.5 lookalike in diffusers' folder layout and return it.

    ``StableDiffusionPipeline.from_pretrained(out_dir)`` loads it offline: CLIP tokenizer and text
    encoder, UNet, a VAE with SD's 8x latent scale, SD 1.5's PNDM scheduler, and no safety checker.
    """
    marker = {"generator": "tiny-sd", "version": GENERATOR_VERSION, "seed": seed}
    return _write_once(out_dir, marker, lambda staging: _write_sd(staging, seed))


def _write_sd(out_dir: Path, seed: int) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = train_clip_vocab()
    text_config = CLIPTextConfig(**SD_TEXT_ENCODER_SHAPE, vocab_size=len(vocab), bos_token_id=vocab[CLIP_BOS],
                                 eos_token_id=vocab[CLIP_EOS], pad_token_id=vocab[CLIP_EOS])
    with _seeded(seed):
        text_encoder = CLIPTextModel(text_config)
        unet = UNet2DConditionModel(**SD_UNET_SHAPE)
        vae = AutoencoderKL(**SD_VAE_SHAPE)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, unet=unet, scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    _save_clip_vocab(out_dir / "tokenizer", vocab, merges)


def make_tiny_controlnet(out_dir: Path, sd_dir: Path, seed: int) -> Path:
    """Write a random ControlNet shaped for the UNet in ``sd_dir`` (a diffusers SD folder) and return it.

    Only the UNet's config is used, not its weights; the marker records a fingerprint of it, so a
    ControlNet made for another UNet shape is rewritten.
    """
    from diffusers import UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(Path(sd_dir) / "unet")
    marker = {"generator": "tiny-controlnet", "version": GENERATOR_VERSION, "seed": seed,
              "embedding": CONTROLNET_EMBEDDING_VERSION,
              "unet": _fingerprint(unet_config)}
    return _write_once(out_dir, marker, lambda staging: _write_controlnet(staging, unet_config, seed))


def _write_controlnet(out_dir: Path, unet_config: dict[str, Any], seed: int) -> None:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel.from_config(unet_config)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False,
                                               conditioning_embedding_out_channels=CONTROLNET_EMBEDDING_CHANNELS)
        # A new ControlNet's output convolutions are zero, so it changes nothing; a trained one's are
        # not. Random ones make the control image matter, as a runner's tests need.
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.reset_parameters()
        # The map's way in: at PyTorch's default init each of the embedding's eight convolutions shrinks
        # it about 3x, and the map came out ~1e-4 of the features it is added to, so changing the map
        # changed at most one 8-bit level (a runner ignoring the map passed every test). He init keeps
        # its size through the SiLUs, and a gain on the last brings it to the latents' size.
        embedding = controlnet.controlnet_cond_embedding
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
        with torch.no_grad():
            embedding.conv_out.weight.mul_(CONTROLNET_MAP_GAIN)
    controlnet.save_pretrained(out_dir, safe_serialization=True)


def make_tiny_sd_bundle(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``root/tiny-sd`` and one ``root/tiny-controlnet-<type>`` per ``CONTROLNET_TYPES``.

    Returns their folders by name: ``"sd"`` and each type. Each ControlNet has its own seed, drawn
    from ``seed`` and its type, so no two types share weights.
    """
    root = Path(root)
    folders = {"sd": make_tiny_sd(root / "tiny-sd", seed)}
    for kind in CONTROLNET_TYPES:
        folders[kind] = make_tiny_controlnet(root / f"tiny-controlnet-{kind}", folders["sd"],
                                             _derived_seed(seed, kind))
    return folders


def _derived_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:4], "big")


def _fingerprint(config: dict[str, Any]) -> str:
    """A short hash of a diffusers config, leaving out its bookkeeping keys (``_diffusers_version``...)."""
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:16]


# Writing once, in place


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _write_once(out_dir: Path, marker: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a staging folder beside ``out_dir``, then mark it complete and rename it in.

    ``marker`` names the generator, its version and its arguments: a folder already holding the same
    marker is returned untouched, one holding another marker is replaced, and one without a marker
    is refused unless empty.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if _read_marker(out_dir) == marker:
        return out_dir
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex}")
    try:
        staging.mkdir()
        write(staging)
        # Written last: its presence says every other file is whole.
        (staging / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n")
        _move_into_place(staging, out_dir, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(out_dir: Path) -> None:
    """Only an empty folder, or one this generator wrote (another version or seed), may be replaced."""
    if out_dir.exists() and _read_marker(out_dir) is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and was not written by the tiny model generator; "
                              f"remove it or choose another folder")


def _move_into_place(staging: Path, out_dir: Path, marker: dict[str, Any]) -> None:
    """Rename ``staging`` to ``out_dir``. An older output there is moved aside first; if another
    process finished the same model meanwhile, its copy wins and ours is dropped."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex}")
        try:
            os.rename(out_dir, old)
        except FileNotFoundError:  # another process moved it meanwhile
            pass
        else:
            shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(staging, out_dir)
    except OSError:  # out_dir reappeared: a concurrent generator got there first
        if _read_marker(out_dir) != marker:
            raise
