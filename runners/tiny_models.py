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

Every maker writes a folder: to a temporary sibling first, renamed into place with a ``.complete``
marker, so a reader never sees half a model; a folder that already holds the same generator's output
for the same arguments is reused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

# Llama 3 Instruct's chat template (the system/user/assistant part): each message is a header, two
# newlines, the trimmed content and <|eot_id|>; the prompt opens with <|begin_of_text|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
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


# Writing it in place


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

    return _write_once(out_dir, {"generator": "tiny-llama", "version": GENERATOR_VERSION, "seed": seed}, write)


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
