"""The continuous-batching engine: one thread owns the model and runs every request's tokens through it.

Iteration-level batching, as vLLM and TGI do it. Each turn of the engine's loop:

1. takes new requests and cancellations from its inbox (any thread may ``submit`` or ``cancel``);
2. drops cancelled sequences at once, freeing their rows;
3. admits waiting requests while the capacity allows: each is *prefilled alone* (its prompt through
   the model with a fresh KV cache, batch of one), its first token is sampled, and its cache is merged
   into the running batch;
4. runs one *decode step* for the whole batch: one token per sequence, each sequence with its own
   sampling parameters and ``torch.Generator``; finished sequences leave the batch at once.

The batch is one padded ``DynamicCache``: key/value tensors ``[batch, kv_heads, length, head_dim]``
per layer, *left*-padded, with a 2-D attention mask (0 on padding) and explicit position ids, so every
row sees exactly its own tokens at their own positions. Joining pads the shorter side on the left and
concatenates on the batch axis; leaving selects the remaining rows and trims columns that have become
padding in every row. Why this and not the alternatives:

- ``transformers``' own ``ContinuousBatchingManager`` (5.x) samples with one ``do_sample`` for the
  whole manager and the global RNG (no per-request seed), has no stop strings and no per-request
  repetition/frequency/presence penalties or min_new_tokens; it does not meet the contract.
- per-sequence caches stacked into a batch every step would add a full copy of every cache per
  token; the padded cache is re-laid out only when membership changes. (``DynamicLayer`` still
  appends by concatenation each step, as in ``generate``; a preallocated or paged cache would save
  that copy and is the next step for long outputs on GPU.)
- one decode forward for the whole batch is what makes batching pay on CPU as on GPU: the per-step
  cost of a small model is mostly fixed overhead, shared by every row.

Prefill stays per sequence (a batch of one, no padding): a request's prompt is processed identically
whatever else is waiting, and its first token matches ``generate``. Decode steps are batched; the
padding is masked out exactly, so a row can differ from its lone run only by floating-point rounding
in kernels whose blocking depends on the batch shape. On CPU in float32 none was seen: greedy and
seeded requests give the same tokens alone and in mixed batches (the batch-invariance test).

Capacity: at most ``max_sequences`` rows, and the padded cache at most ``max_tokens_in_flight``
tokens: a request is admitted when ``rows x longest reservation`` stays within it, where a row's
reservation is its prompt plus its ``max_new_tokens``. Requests that do not fit wait, first come first
served.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from runners.llm.detokenize import IncrementalDetokenizer, StopMatcher
from runners.llm.sampling import BatchSampler, SamplingParams
from warmfleet.errors import InvalidInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """How much work the engine holds at once."""

    max_sequences: int = 32
    max_tokens_in_flight: int = 65_536


# What the engine tells a request's ``emit`` callback, on the engine thread.


@dataclass(frozen=True)
class TextDelta:
    """New output text (possibly "", while held back) and the token that produced it (None for the
    text released at the end)."""

    text: str
    token_id: int | None = None


@dataclass(frozen=True)
class Finished:
    """The request ended; ``text`` is the concatenation of all its deltas. ``finish_reason``: "eos",
    "length", "stop" or "cancelled". ``time_to_first_token_s`` counts from when the request reached
    the engine (``submit``); ``tokens_per_second`` is output tokens over the time from then to the end.
    ``token_ids`` are the output tokens, without the EOS token that ended them."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    input_token_count: int
    output_token_count: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None


@dataclass(frozen=True)
class Failed:
    """The request could not be completed (the model raised, or the engine stopped)."""

    error: BaseException


EngineEvent = TextDelta | Finished | Failed
Emit = Callable[[EngineEvent], None]


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine: sequences decoding and waiting, decode steps and tokens so far."""

    running: int
    waiting: int
    steps: int
    tokens: int


class _Sequence:
    """One request in the engine: its tokens, its sampling state, its streaming state."""

    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, max_new: int,
                 emit: Emit, tokenizer: Any, device: torch.device) -> None:
        self.id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new = max_new
        self.emit = emit
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(params.seed)
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids) if tokenizer is not None else None
        self.stop = StopMatcher(params.stop_sequences)
        self.output_ids: list[int] = []
        self.text: list[str] = []
        self.joined_at = time.perf_counter()
        self.first_token_at: float | None = None

    @property
    def reservation(self) -> int:
        return len(self.prompt_ids) + self.max_new


class _Batch:
    """The running sequences and their padded KV cache (row i of every tensor is ``seqs[i]``)."""

    def __init__(self) -> None:
        self.seqs: list[_Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask = self.positions = self.last = torch.empty(0, dtype=torch.long)
        self.sampler: BatchSampler | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: _Sequence, cache: DynamicCache, token: int, device: torch.device) -> None:
        """Merge a prefilled sequence (its own cache, batch of one) into the batch, left-padding."""
        length = len(seq.prompt_ids)
        mask = torch.ones(1, length, dtype=torch.long, device=device)
        position = torch.tensor([length], device=device)
        last = torch.tensor([token], device=device)
        if not self.seqs:
            self.cache, self.mask, self.positions, self.last = cache, mask, position, last
        else:
            width = max(self.mask.shape[1], length)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
                mine.values = torch.cat([_pad_left(mine.values, width, 2),
                                         _pad_left(theirs.values, width, 2)])
            self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
            self.positions = torch.cat([self.positions, position])
            self.last = torch.cat([self.last, last])
        self.seqs.append(seq)
        self.sampler = None

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows``; drop the columns that are padding in every remaining row."""
        self.seqs = [self.seqs[i] for i in rows]
        self.sampler = None
        if not rows:
            self.cache = None
            self.mask = self.positions = self.last = torch.empty(0, dtype=torch.long)
            return
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0])
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class LLMEngine:
    """Runs generation requests in one continuously batched loop on its own thread.

    ``submit`` and ``cancel`` may be called from any thread; a request's ``emit`` is called on the
    engine thread, so it must be quick and must not block (the runner hands events to its event loop).
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, eos_token_ids: Sequence[int] = (),
                 capacity: Capacity = Capacity(), on_step: Callable[[int], None] | None = None) -> None:
        """``tokenizer`` None: the engine streams token ids only (text stays ""; no stop sequences).
        ``on_step`` is called on the engine thread with the batch size of every decode step."""
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(dict.fromkeys(int(i) for i in eos_token_ids))
        self.capacity = capacity
        self.device = next(model.parameters()).device
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self._on_step = on_step
        self._check_cache_layout()
        self._cond = threading.Condition()
        self._incoming: collections.deque[_Sequence] = collections.deque()
        self._cancels: set[str] = set()
        self._stopping = False
        self._waiting: collections.deque[_Sequence] = collections.deque()  # engine thread only
        self._batch = _Batch()  # engine thread only
        self._thread: threading.Thread | None = None
        self._steps = self._tokens = 0

    def _check_cache_layout(self) -> None:
        layers = DynamicCache(config=self.model.config).layers
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            raise ValueError("the llm engine needs a model whose every layer has full attention "
                             f"(a plain DynamicLayer cache); {type(self.model).__name__} has "
                             f"{sorted({type(layer).__name__ for layer in layers})}")

    # Any thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wf-llm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the loop; requests still in the engine end with ``Failed``."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stats(self) -> EngineStats:
        """What the engine holds now (read without a lock: each figure is current, not all at one instant)."""
        return EngineStats(running=len(self._batch), waiting=len(self._waiting) + len(self._incoming),
                           steps=self._steps, tokens=self._tokens)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, emit: Emit,
               request_id: str | None = None) -> str:
        """Queue a request; it joins the batch at the engine's next step. Returns its id.

        Raises ``InvalidInput`` for a request the engine could never run."""
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise InvalidInput("input.prompt", "the prompt encodes to no tokens")
        if len(prompt) >= self.max_positions:
            raise InvalidInput("input.prompt", f"the prompt is {len(prompt)} tokens; this model takes "
                                               f"at most {self.max_positions - 1}")
        max_new = min(params.max_new_tokens, self.max_positions - len(prompt))
        if len(prompt) + max_new > self.capacity.max_tokens_in_flight:
            raise InvalidInput("input.max_new_tokens", f"prompt ({len(prompt)} tokens) + max_new_tokens "
                                                       f"({max_new}) exceeds this instance's "
                                                       f"{self.capacity.max_tokens_in_flight} tokens")
        seq = _Sequence(request_id or uuid.uuid4().hex, prompt, params, max_new, emit, self.tokenizer,
                        self.device)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            self._incoming.append(seq)
            self._cond.notify()
        return seq.id

    def cancel(self, request_id: str) -> None:
        """Drop a request at the next step (its row frees then); it ends with ``Finished("cancelled")``."""
        with self._cond:
            self._cancels.add(request_id)
            self._cond.notify()

    # The engine thread

    def _run(self) -> None:
        with torch.inference_mode():
            while self._take_work():
                try:
                    self._admit()
                    if self._batch.seqs:
                        self._decode_step()
                except Exception as err:  # the batch is in an unknown state: fail it, carry on
                    log.exception("llm engine step failed")
                    for seq in self._batch.seqs:
                        self._emit(seq, Failed(err))
                    self._batch = _Batch()
        for seq in [*self._batch.seqs, *self._waiting, *self._incoming]:
            self._emit(seq, Failed(RuntimeError("the model was unloaded")))
        self._batch, self._waiting = _Batch(), collections.deque()

    def _take_work(self) -> bool:
        """Move new requests and cancellations in, waiting while there is nothing to do."""
        with self._cond:
            while not (self._stopping or self._incoming or self._cancels or self._batch.seqs):
                self._cond.wait()
            if self._stopping:
                return False
            self._waiting.extend(self._incoming)
            self._incoming.clear()
            cancels, self._cancels = self._cancels, set()
        if cancels:
            self._drop(cancels)
        return True

    def _drop(self, ids: set[str]) -> None:
        for seq in [s for s in self._waiting if s.id in ids]:
            self._waiting.remove(seq)
            self._finish(seq, "cancelled")
        rows = [i for i, s in enumerate(self._batch.seqs) if s.id in ids]
        for i in rows:
            self._finish(self._batch.seqs[i], "cancelled")
        if rows:
            self._batch.keep([i for i in range(len(self._batch)) if i not in rows])

    def _fits(self, seq: _Sequence) -> bool:
        batch = self._batch
        if not batch.seqs:
            return True
        if len(batch) >= self.capacity.max_sequences:
            return False
        longest = max(seq.reservation, *(s.reservation for s in batch.seqs))
        return (len(batch) + 1) * longest <= self.capacity.max_tokens_in_flight

    def _admit(self) -> None:
        while self._waiting and self._fits(self._waiting[0]):
            seq = self._waiting.popleft()
            try:
                cache, token = self._prefill(seq)
            except Exception as err:
                log.exception("llm prefill failed")
                self._emit(seq, Failed(err))
                continue
            if not self._accept(seq, token):
                self._batch.add(seq, cache, token, self.device)

    def _prefill(self, seq: _Sequence) -> tuple[DynamicCache, int]:
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        sampler = BatchSampler([seq.params], [seq.generator], self.eos_token_ids, self.device)
        token = self._choose(sampler, out.logits[:, -1, :], [seq])
        return cache, int(token[0])

    def _decode_step(self) -> None:
        batch = self._batch
        if batch.sampler is None:
            batch.sampler = BatchSampler([s.params for s in batch.seqs], [s.generator for s in batch.seqs],
                                         self.eos_token_ids, self.device)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        out = self.model(input_ids=batch.last.unsqueeze(1), attention_mask=mask,
                         position_ids=batch.positions.unsqueeze(1), past_key_values=batch.cache,
                         use_cache=True)
        batch.mask = mask
        batch.positions = batch.positions + 1
        batch.last = self._choose(batch.sampler, out.logits[:, -1, :], batch.seqs)
        self._steps += 1
        if self._on_step is not None:
            self._on_step(len(batch))
        done = [self._accept(seq, token) for seq, token in zip(batch.seqs, batch.last.tolist())]
        if any(done):
            batch.keep([i for i, d in enumerate(done) if not d])

    def _choose(self, sampler: BatchSampler, logits: torch.Tensor, seqs: list[_Sequence]) -> torch.Tensor:
        logits = logits.float()
        if sampler.uses_repetition or sampler.uses_openai:
            seen, counts = self._token_stats(seqs, logits.shape[-1])
        else:
            seen = counts = None
        generated = torch.tensor([len(s.output_ids) for s in seqs], device=self.device)
        return sampler.choose(sampler.process(logits, seen, counts, generated))

    def _token_stats(self, seqs: list[_Sequence], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``seen`` (prompt or output) and output ``counts`` per row, ``[rows, vocab]``."""
        seen = torch.zeros(len(seqs), vocab, dtype=torch.bool, device=self.device)
        counts = torch.zeros(len(seqs), vocab, dtype=torch.float32, device=self.device)
        for row, seq in enumerate(seqs):
            prompt = torch.tensor(seq.prompt_ids, device=self.device)
            seen[row].index_fill_(0, prompt, True)
            if seq.output_ids:
                output = torch.tensor(seq.output_ids, device=self.device)
                seen[row].index_fill_(0, output, True)
                counts[row].index_add_(0, output, torch.ones_like(output, dtype=torch.float32))
        return seen, counts

    def _accept(self, seq: _Sequence, token: int) -> bool:
        """Take a sequence's new token: stream it, and finish the sequence if it is done."""
        self._tokens += 1
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        if token in self.eos_token_ids:
            self._finish(seq, "eos")
            return True
        seq.output_ids.append(token)
        text = seq.stop.push(seq.detokenizer.push(token)) if seq.detokenizer else ""
        seq.text.append(text)
        self._emit(seq, TextDelta(text, token))
        if seq.stop.stopped:
            self._finish(seq, "stop")
        elif len(seq.output_ids) >= seq.max_new:
            self._finish(seq, "length")
        else:
            return False
        return True

    def _finish(self, seq: _Sequence, reason: str) -> None:
        tail = ""
        if reason in ("eos", "length") and seq.detokenizer is not None:
            tail = seq.stop.push(seq.detokenizer.flush())
            reason = "stop" if seq.stop.stopped else reason
        tail += seq.stop.flush()
        if tail:
            seq.text.append(tail)
            self._emit(seq, TextDelta(tail))
        now = time.perf_counter()
        count = len(seq.output_ids)
        self._emit(seq, Finished(
            text="".join(seq.text), token_ids=tuple(seq.output_ids), finish_reason=reason,
            input_token_count=len(seq.prompt_ids), output_token_count=count,
            time_to_first_token_s=None if seq.first_token_at is None else seq.first_token_at - seq.joined_at,
            tokens_per_second=count / (now - seq.joined_at) if now > seq.joined_at else None,
        ))

    def _emit(self, seq: _Sequence, event: EngineEvent) -> None:
        try:
            seq.emit(event)
        except Exception:  # the listener is gone (its loop closed): drop the request
            log.warning("llm request %s: its listener failed; dropping it", seq.id, exc_info=True)
            with self._cond:
                self._cancels.add(seq.id)
