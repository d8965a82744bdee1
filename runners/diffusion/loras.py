"""LoRA adapters per request: where each one's weights come from, which stay loaded (an LRU bounded by
count and bytes), and switching a pipeline's adapters between calls.

An adapter is known by an id: ``name:<name>`` for one of the version's own (``options.loras``: {name:
a folder holding one .safetensors file, or the file}), ``sha256:<hex>`` for an uploaded .safetensors
file, so the same bytes uploaded twice load once. The set of (id, scale) a request asks for is part of
its ``BatchKey``: only requests with the same set share a pipeline call, and each call sets exactly its
key's adapters at their scales, or disables LoRA altogether when its key has none. An adapter
therefore never reaches another request's images.

Weights load with diffusers' own ``load_lora_weights`` (peft underneath), so diffusers', peft's and
kohya's (A1111's) key formats are read, into the UNet and, when the file has one, the text encoder.
This module imports no torch at import time; ``LoraCache`` and ``probe_lora`` are pure.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput

MAX_LORAS_PER_REQUEST = 4
SCALE_BOUND = 4.0  # a scale is in [-SCALE_BOUND, SCALE_BOUND]
DEFAULT_MAX_LORAS_CACHED = 8
DEFAULT_MAX_LORA_CACHE_BYTES = 2 * 1024**3
DEFAULT_MAX_LORA_FILE_BYTES = 1024**3  # an uploaded file's bound (SD 1.5 LoRAs are 10-300 MB)
MAX_DETAIL_CHARS = 300  # of a loader's refusal, in the error: its messages list every mismatched tensor
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own bound on its JSON header


@dataclass(frozen=True)
class LoraSource:
    """Where one adapter's weights come from: a file of the version's (``path``) or an upload (``data``)."""

    id: str
    size_bytes: int
    field: str  # the input field that named it, for errors
    path: str | None = None
    data: bytes | None = None


def named_source(name: str, location: str, field: str) -> LoraSource:
    """The source of the version's adapter ``name`` at ``location``: a .safetensors file, or a folder
    holding one (diffusers' ``pytorch_lora_weights.safetensors`` first)."""
    path = Path(location)
    if path.is_dir():
        preferred = path / "pytorch_lora_weights.safetensors"
        found = [preferred] if preferred.is_file() else sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise InvalidInput(field, f"adapter {name!r}: {path} holds {len(found)} .safetensors files, "
                                      f"not one")
        path = found[0]
    if not path.is_file():
        raise InvalidInput(field, f"adapter {name!r}: no such file or folder {location}")
    return LoraSource(f"name:{name}", path.stat().st_size, field, path=str(path))


def uploaded_source(file: FileData, field: str, max_bytes: int = DEFAULT_MAX_LORA_FILE_BYTES) -> LoraSource:
    """The source of an uploaded LoRA, keyed by its sha256, after ``probe_lora``'s header check."""
    probe_lora(file, field, max_bytes)
    digest = hashlib.sha256(file.data).hexdigest()
    return LoraSource(f"sha256:{digest}", len(file.data), field, data=file.data)


def probe_lora(file: FileData, field: str, max_bytes: int = DEFAULT_MAX_LORA_FILE_BYTES) -> None:
    """``InvalidInput`` naming ``field`` unless ``file`` is a .safetensors file whose tensors all have LoRA
    names (diffusers' rule: each name contains "lora"). Reads only the JSON header; no tensor is loaded."""
    data = file.data if isinstance(file, FileData) else b""
    if not data:
        raise InvalidInput(field, "expected a .safetensors LoRA file, got no data")
    if len(data) > max_bytes:
        raise InvalidInput(field, f"is {len(data)} bytes; at most {max_bytes} are accepted")
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if not 2 <= length <= min(_MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError("bad header length")
        header = json.loads(data[8:8 + length])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (struct.error, ValueError, UnicodeDecodeError):
        raise InvalidInput(field, "is not a .safetensors file") from None
    names = [name for name in header if name != "__metadata__"]
    if not names:
        raise InvalidInput(field, "is a .safetensors file with no tensors")
    strangers = [name for name in names if "lora" not in name]
    if strangers:
        raise InvalidInput(field, f"is not a LoRA: tensor {strangers[0]!r} is not a LoRA weight")


class LoraCache:
    """Which adapters stay loaded: least recently used first out, bounded by count and total bytes.

    A pure policy over ids and sizes. ``make_room`` is asked before a call with the call's adapters; it
    never evicts one of those, so one call's own set may exceed the bounds (the next call shrinks it).
    """

    def __init__(self, max_count: int = DEFAULT_MAX_LORAS_CACHED,
                 max_bytes: int = DEFAULT_MAX_LORA_CACHE_BYTES) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_loras_cached and max_lora_cache_bytes must be at least 1")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recently used first

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def ids(self) -> list[str]:
        """The loaded adapters, least recently used first."""
        return list(self._sizes)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def make_room(self, wanted: Mapping[str, int]) -> list[str]:
        """Mark ``wanted`` (id -> bytes) most recently used and return the ids to unload (forgotten here
        already) so that they and the loaded rest fit the bounds once the missing ones are ``add``-ed."""
        for adapter_id in wanted:
            if adapter_id in self._sizes:
                self._sizes.move_to_end(adapter_id)
        count = len(self._sizes) + sum(1 for a in wanted if a not in self._sizes)
        size = self.total_bytes + sum(n for a, n in wanted.items() if a not in self._sizes)
        evicted = []
        for adapter_id in list(self._sizes):
            if count <= self.max_count and size <= self.max_bytes:
                break
            if adapter_id in wanted:
                continue
            count, size = count - 1, size - self._sizes.pop(adapter_id)
            evicted.append(adapter_id)
        return evicted

    def add(self, adapter_id: str, size_bytes: int) -> None:
        self._sizes[adapter_id] = size_bytes
        self._sizes.move_to_end(adapter_id)

    def discard(self, adapter_id: str) -> None:
        self._sizes.pop(adapter_id, None)


def adapter_name(adapter_id: str) -> str:
    """The name peft knows an adapter by: a module-name-safe digest of its id."""
    return "lora_" + hashlib.sha256(adapter_id.encode()).hexdigest()[:16]


class LoraAdapters:
    """The adapters loaded into one pipeline's UNet and text encoder (shared by every pipeline built on
    it with ``from_pipe``), switched per call. Used only from the thread that runs the pipelines."""

    def __init__(self, pipeline: Any, cache: LoraCache) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self._enabled = False

    def apply(self, loras: Sequence[tuple[str, float]], sources: Mapping[str, LoraSource]) -> None:
        """Make exactly ``loras`` ((id, scale)...) active for the next call, loading the missing ones
        from ``sources`` and unloading what the cache evicts; none: LoRA disabled."""
        if not loras:
            if self._enabled:
                self.pipeline.disable_lora()
                self._enabled = False
            return
        wanted = {adapter_id: sources[adapter_id].size_bytes for adapter_id, _ in loras}
        evicted = self.cache.make_room(wanted)
        if evicted:
            self.pipeline.delete_adapters([adapter_name(a) for a in evicted])
        for adapter_id in wanted:
            if adapter_id not in self.cache:
                self._load(sources[adapter_id])
        self.pipeline.enable_lora()
        self.pipeline.set_adapters([adapter_name(a) for a, _ in loras], [float(s) for _, s in loras])
        self._enabled = True

    def _load(self, source: LoraSource) -> None:
        from safetensors.torch import load, load_file

        name = adapter_name(source.id)
        try:
            state = load(source.data) if source.data is not None else load_file(source.path)
            with _quiet_loading():
                self.pipeline.load_lora_weights(state, adapter_name=name)
        except Exception as err:  # noqa: BLE001 - any refusal of the weights is the input's fault
            if name in {n for names in self.pipeline.get_list_adapters().values() for n in names}:
                self.pipeline.delete_adapters([name])  # the UNet half may have loaded before the refusal
            detail = " ".join(line.strip() for line in str(err).splitlines()[:2])
            if len(detail) > MAX_DETAIL_CHARS:
                detail = detail[:MAX_DETAIL_CHARS] + "..."
            raise InvalidInput(source.field, f"is not a LoRA this model can load: {detail}") from err
        self.cache.add(source.id, source.size_bytes)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Loading an adapter without the notes that would fill the node's log at every load: transformers'
    report of the text encoder's base weights as "missing" from the adapter's file and its progress bar,
    and peft's warning that a model now holds several adapters (it is meant to)."""
    from transformers.utils import logging as transformers_logging

    verbosity, bars_on = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars_on:
            transformers_logging.enable_progress_bar()
