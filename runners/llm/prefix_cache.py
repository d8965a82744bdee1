"""Prefix caching: the keys and values of prompt prefixes that earlier requests computed, kept per instance
and reused by a request whose prompt begins with the same tokens, so its prefill computes only the rest.

Chat and RAG traffic repeats long prefixes (a system prompt, the conversation so far); recomputing them is
most of a long prompt's time to first token.

- Blocks of ``block_tokens`` tokens (16, as vLLM's), each holding every layer's keys and values for its
  tokens ``[kv_heads, block_tokens, head_dim]``, after RoPE, at their absolute positions: a block is only
  ever reused at the same positions, behind the same tokens, so it is exactly what the prefill would
  compute (up to the float rounding of other batch shapes).
- A block is found by a hash of its parent's key and its own tokens, then checked: its tokens must be
  the prompt's and its parent the block found just before it, from the first block on. So a hit is an
  exact token match of the whole prefix, never a hash's word.
- A lookup leaves at least one prompt token to prefill (the next token's logits come from it).
- Bounded: at most ``max_tokens`` tokens of blocks; the least recently used block goes first (a block
  whose parent went is unreachable and ages out with no use).
- Hit rate: ``stats`` counts prompt tokens looked up and tokens found; each request's count is its
  ``cached_input_token_count`` metric.

Only the engine's thread calls it; it holds no lock.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

BLOCK_TOKENS = 16
DEFAULT_MAX_TOKENS = 32_768


@dataclass(eq=False)
class _Block:
    tokens: tuple[int, ...]
    parent: "_Block | None"
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [kv_heads, block, head_dim]


@dataclass(frozen=True)
class PrefixStats:
    looked_up_tokens: int
    hit_tokens: int
    cached_tokens: int

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.looked_up_tokens if self.looked_up_tokens else 0.0


class PrefixCache:
    def __init__(self, block_tokens: int = BLOCK_TOKENS, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.block_tokens = block_tokens
        self.max_blocks = max(0, max_tokens // block_tokens)
        self._blocks: collections.OrderedDict[tuple[Any, ...], _Block] = collections.OrderedDict()
        self._looked_up = self._hit = 0

    def _keys(self, prompt: Sequence[int], blocks: int) -> list[tuple[Any, ...]]:
        keys, parent = [], None
        for i in range(blocks):
            parent = (hash(parent), tuple(prompt[i * self.block_tokens:(i + 1) * self.block_tokens]))
            keys.append(parent)
        return keys

    def lookup(self, prompt: Sequence[int]) -> list[_Block]:
        """The cached blocks of the longest prefix of ``prompt`` (whole blocks, leaving a token)."""
        usable = (len(prompt) - 1) // self.block_tokens if self.max_blocks else 0
        found: list[_Block] = []
        for key in self._keys(prompt, usable):
            block = self._blocks.get(key)
            if block is None or block.tokens != key[1] or block.parent is not (found[-1] if found else None):
                break
            self._blocks.move_to_end(key)
            found.append(block)
        self._looked_up += len(prompt)
        self._hit += len(found) * self.block_tokens
        return found

    def store(self, prompt: Sequence[int], layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the whole blocks of ``prompt`` from its row's keys and values (per layer ``[kv_heads,
        len(prompt), head_dim]``, no padding); blocks already held are only marked as used."""
        if not self.max_blocks:
            return
        size, parent = self.block_tokens, None
        for i, key in enumerate(self._keys(prompt, len(prompt) // size)):
            held = self._blocks.get(key)
            if held is not None and held.tokens == key[1] and held.parent is parent:
                self._blocks.move_to_end(key)
                parent = held
                continue
            span = slice(i * size, (i + 1) * size)
            parent = self._blocks[key] = _Block(key[1], parent, [(k[:, span].clone(), v[:, span].clone())
                                                                 for k, v in layers])
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)

    def stats(self) -> PrefixStats:
        return PrefixStats(self._looked_up, self._hit, len(self._blocks) * self.block_tokens)


def cache_from_blocks(rows: Sequence[Sequence[_Block]], width: int, config: Any) -> Any:
    """A ``DynamicCache`` of ``len(rows)`` rows, row i holding ``rows[i]``'s keys and values in order,
    right-aligned in ``width`` columns (zeros before them); empty when ``width`` is 0."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    if not width:
        return cache
    template = next(blocks for blocks in rows if blocks)[0].layers
    for layer, (k, _) in enumerate(template):
        keys = k.new_zeros(len(rows), k.shape[0], width, k.shape[2])
        values = torch.zeros_like(keys)
        for row, blocks in enumerate(rows):
            if blocks:
                span = slice(width - len(blocks) * len(blocks[0].tokens), width)
                keys[row, :, span] = torch.cat([b.layers[layer][0] for b in blocks], dim=1)
                values[row, :, span] = torch.cat([b.layers[layer][1] for b in blocks], dim=1)
        cache.update(keys, values, layer)
    return cache
