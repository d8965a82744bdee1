"""The continuous-batching engine: one thread owns the model and runs every request's tokens through it.

Iteration-level batching, as vLLM and TGI do it. Each turn of the engine's loop:

1. takes new requests and cancellations from its inbox (any thread may ``submit`` or ``cancel``);
2. drops cancelled sequences at once, freeing their rows;
3. admits waiting requests while the capacity allows, first come first served, and *prefills them
   together*: one forward over their prompts (left-padded, laid out as the decode batch is), with a
   fresh KV cache; each one's first token is sampled with its own parameters and generator, and their
   caches join the running batch in one re-layout;
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

Prefill is batched per turn, not per request: requests that arrive together (a burst of streams) are
prefilled in one forward, so the last of 32 waits for one prefill, not 31, and the running batch's
decode steps wait for one prefill per turn rather than one per newcomer (two when some of the turn's
prompts begin with a cached prefix: those hits go together in a forward of their uncached rests, behind
their cached keys and values, ``_prefill``). The prefill batch uses the
decode batch's layout: prompts left-padded to the longest, a 2-D attention mask (0 on padding) and
explicit position ids counting from 0 at each row's first real token, so every row sees exactly its
own prompt at its own positions; its logits are kept for the last column only, which is every row's
last prompt token. The padding columns of the new cache are then zeroed (they are masked out anyway;
zeros keep them finite whatever the padded rows computed, as ``_pad_left`` pads). A request alone is a
batch of one with no padding: its first token, and all that follow, match ``generate``.

A row can differ from its lone run only by floating-point rounding in kernels whose blocking depends on
the batch shape or the padding (the masked columns themselves weigh exactly 0). That rounding is real:
on CPU in float32 a row's prefill logits differ from its lone run's by up to ~2e-7 (1 ulp or so), from
the row count alone (the matrix products) as from the padding alone (SDPA with a mask rather than
``is_causal``), with SDPA as with eager attention. It is far below the gaps between a random or trained
model's top logits, and no token was seen to change: greedy and seeded requests give the same tokens
alone and in mixed batches, whether prefilled together or not (the batch-invariance tests). An exact
tie broken by 1 ulp would be the exception; only batch-invariant kernels would rule it out.

Capacity: at most ``max_sequences`` rows, and the padded cache at most ``max_tokens_in_flight``
tokens: a request is admitted when ``rows x longest reservation`` stays within it, counting the rows
admitted in the same turn, where a row's reservation is its prompt plus its ``max_new_tokens``. Requests
that do not fit wait, first come first served. ``max_prefill_tokens`` bounds one turn's prefill, in
padded tokens (``requests x longest prompt``): a turn admits requests until the next would pass it,
and the rest wait for the next turn, so a burst of long prompts is spread over several turns with a
decode step of the running batch between them rather than stalling it in one long forward. The first
request of a turn is always taken (if the capacity allows), so a prompt longer than the bound still
runs, prefilled alone; chunked prefill would be the next step to bound that one too. The default,
2048, is what measured best for 32 streams arriving at once on the tiny Llama on a 2-core CPU: the
burst (about 3600 padded tokens) is prefilled in two turns, which halves the median time to first token
against one 4096-token turn (the first half starts decoding while the second is prefilled) for ~2% of
throughput; on a CPU a prefill of 2048 tokens of that model holds the decode batch ~15 ms. Larger
models and GPUs move the balance: it is a ``Capacity`` field.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from runners.llm import constraints
from runners.llm.detokenize import StopMatcher, make_detokenizer
from runners.llm.prefix_cache import PrefixCache, cache_from_blocks
from runners.llm.sampling import BatchSampler, SamplingParams
from warmfleet.errors import InvalidInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """How much work the engine holds at once."""

    max_sequences: int = 32
    max_tokens_in_flight: int = 65_536
    # One turn's prefill, in padded tokens (requests x longest prompt); the first request of a turn is
    # taken whatever its length. See the module docstring.
    max_prefill_tokens: int = 2048


# What the engine tells a request's ``emit`` callback, on the engine thread.


@dataclass(frozen=True)
class TokenLogprob:
    """An output token's log-probability under the model, and the ``top`` most likely tokens at its
    step with theirs (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New output text (possibly "", while held back) and the token that produced it (None for the
    text released at the end). ``index``: which of the request's ``n`` samples; ``logprob`` when the
    request asked for them."""

    text: str
    token_id: int | None = None
    index: int = 0
    logprob: TokenLogprob | None = None


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
    index: int = 0  # which of the request's n samples (each ends with its own Finished)
    logprobs: tuple[TokenLogprob, ...] = ()
    cached_input_token_count: int = 0  # prompt tokens the prefix cache held


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
    """One sample of a request in the engine: its tokens, its sampling state, its streaming state.

    A request of ``n`` samples is ``n`` sequences with one id; the first, the leader, waits in the queue
    with the others in its ``family`` (itself first), and one prefill of its prompt serves them all."""

    def __init__(self, request_id: str, prompt_ids: list[int], params: SamplingParams, max_new: int,
                 emit: Emit, tokenizer: Any, device: torch.device, index: int = 0, matcher: Any = None) -> None:
        self.id = request_id
        self.index = index
        self.matcher = matcher  # llguidance's, for a constrained request (``constraints``)
        self.family: list[_Sequence] = [self]
        self.logprobs: list[TokenLogprob] = []
        self.pending_logprob: TokenLogprob | None = None
        self.cached_tokens = 0  # prompt tokens whose keys and values came from the prefix cache
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_new = max_new
        self.emit = emit
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(params.seed)
        self.detokenizer = make_detokenizer(tokenizer, prompt_ids) if tokenizer is not None else None
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

    def join(self, seqs: list[_Sequence], cache: DynamicCache, mask: torch.Tensor,
             last: torch.Tensor) -> None:
        """Merge prefilled sequences (their own left-padded cache and mask, row i is ``seqs[i]``, with
        no column that is padding in every row) into the batch: one re-layout, left-padding the
        narrower side."""
        positions = mask.sum(dim=1)  # each row's next position: its prompt's length
        if not self.seqs:
            self.cache, self.mask, self.positions, self.last = cache, mask, positions, last
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
                mine.values = torch.cat([_pad_left(mine.values, width, 2),
                                         _pad_left(theirs.values, width, 2)])
            self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])
            self.positions = torch.cat([self.positions, positions])
            self.last = torch.cat([self.last, last])
        self.seqs.extend(seqs)
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
        self.mask = _select_rows(self.cache, self.mask, index)
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)


def _select_rows(cache: DynamicCache, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Keep the rows ``index`` of a left-padded cache (in place) and of its mask, and drop the columns
    that are padding in every row kept; returns the new mask."""
    mask = mask.index_select(0, index)
    start = int(mask.any(dim=0).nonzero()[0])
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)[:, :, start:]
        layer.values = layer.values.index_select(0, index)[:, :, start:]
    return mask[:, start:]


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
                 capacity: Capacity = Capacity(), on_step: Callable[[int], None] | None = None,
                 prefix: PrefixCache | None = None, threads: int | None = None) -> None:
        """``tokenizer`` None: the engine streams token ids only (text stays ""; no stop sequences).
        ``on_step`` is called on the engine thread with the batch size of every decode step. ``prefix``:
        the instance's prefix cache (None: every prompt is prefilled whole). ``threads``: torch's
        intra-op threads on the engine's thread (None: the process's setting)."""
        self.model = model
        self.threads = threads
        self.prefix = prefix
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
               request_id: str | None = None, n: int = 1, matchers: Sequence[Any] = ()) -> str:
        """Queue a request of ``n`` samples (sample k seeded ``params.seed + k``; ``matchers``: one per
        sample for a constrained request); it joins the batch at the engine's next step. Returns its id.

        Raises ``InvalidInput`` for a request the engine could never run."""
        prompt = [int(i) for i in prompt_ids]
        max_new = _checked_length(prompt, params.max_new_tokens, n, self.max_positions, self.capacity)
        rid = request_id or uuid.uuid4().hex
        family = [_Sequence(rid, prompt, replace(params, seed=(params.seed + k) % 2**63), max_new, emit,
                            self.tokenizer, self.device, k, matchers[k] if matchers else None)
                  for k in range(n)]
        seq = family[0]
        seq.family = family
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
        if self.threads:
            torch.set_num_threads(self.threads)  # OpenMP's count is the calling thread's: this one only
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
            # Requests already waiting count as work: when the last rows finish together, the loop
            # must go on to admit them rather than sleep until the next submit.
            while not (self._stopping or self._incoming or self._cancels or self._batch.seqs
                       or self._waiting):
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
            for sample in seq.family:
                self._finish(sample, "cancelled")
        rows = [i for i, s in enumerate(self._batch.seqs) if s.id in ids]
        for i in rows:
            self._finish(self._batch.seqs[i], "cancelled")
        if rows:
            self._batch.keep([i for i in range(len(self._batch)) if i not in rows])

    def _admissible(self) -> list[_Sequence]:
        """Take from the head of the queue the requests this turn admits: while each fits the capacity
        beside the running batch and those taken before it, and the turn's prefill stays within
        ``max_prefill_tokens`` (the first is taken whatever its length)."""
        capacity = self.capacity
        rows = len(self._batch)
        longest = max((s.reservation for s in self._batch.seqs), default=0)
        group: list[_Sequence] = []
        widest = 0
        while self._waiting:
            seq = self._waiting[0]
            samples = len(seq.family)
            reservation = max(longest, seq.reservation)
            if rows and (rows + samples > capacity.max_sequences
                         or (rows + samples) * reservation > capacity.max_tokens_in_flight):
                break
            width = max(widest, len(seq.prompt_ids))
            if group and (len(group) + 1) * width > capacity.max_prefill_tokens:
                break
            group.append(self._waiting.popleft())
            rows, longest, widest = rows + samples, reservation, width
        return group

    def _admit(self) -> None:
        """Prefill this turn's requests and let them join the batch: those whose prompt begins with a
        cached prefix together in one forward from their cached blocks, the others in another."""
        group = self._admissible()
        hits, misses = [], []
        for seq in group:
            blocks = self.prefix.lookup(seq.prompt_ids) if self.prefix is not None else []
            for sample in seq.family:
                sample.cached_tokens = len(blocks) * (self.prefix.block_tokens if blocks else 0)
            (hits if blocks else misses).append((seq, blocks))
        for part in (misses, hits):  # apart: a miss's whole prompt would pad every hit's short rest
            if part:
                leaders, blocks = [seq for seq, _ in part], [b for _, b in part]
                self._start(leaders, lambda: _prefill(self.model, self.device, leaders, blocks, self.prefix))

    def _start(self, group: list[_Sequence], prefill: Callable[[], tuple[DynamicCache, torch.Tensor,
                                                                          torch.Tensor]]) -> None:
        """Prefill ``group`` (``prefill``), take each sample's first token, and join the batch."""
        samples = [sample for seq in group for sample in seq.family]
        try:
            cache, mask, logits = prefill()
            if len(samples) > len(group):  # a request's n samples: its prefilled row, n times
                index = torch.tensor([row for row, seq in enumerate(group) for _ in seq.family],
                                     device=self.device)
                mask, logits = _select_rows(cache, mask, index), logits.index_select(0, index)
            sampler = BatchSampler([s.params for s in samples], [s.generator for s in samples],
                                   self.eos_token_ids, self.device)
            tokens = self._choose(sampler, logits, samples)
        except Exception as err:
            log.exception("llm prefill failed")
            for seq in samples:
                self._emit(seq, Failed(err))
            return
        staying = [row for row, (seq, token) in enumerate(zip(samples, tokens.tolist()))
                   if not self._accept(seq, token)]
        if not staying:
            return
        if len(staying) < len(samples):
            index = torch.tensor(staying, device=self.device)
            mask, tokens = _select_rows(cache, mask, index), tokens.index_select(0, index)
        try:
            self._batch.join([samples[row] for row in staying], cache, mask, tokens)
        except Exception as err:  # the batch fails too (in _run); these are not in it yet
            for row in staying:
                self._emit(samples[row], Failed(err))
            raise

    def _decode_step(self) -> None:
        batch = self._batch
        if batch.sampler is None:
            batch.sampler = BatchSampler([s.params for s in batch.seqs], [s.generator for s in batch.seqs],
                                         self.eos_token_ids, self.device)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        masks = _start_masks(batch.seqs, self.model)  # computed while the forward runs
        attention = _attention_mask(mask, 1, self.model)
        out = self.model(input_ids=batch.last.unsqueeze(1), attention_mask=attention,
                         position_ids=batch.positions.unsqueeze(1), cache=batch.cache, use_cache=True)
        batch.mask = mask
        batch.positions = batch.positions + 1
        batch.last = self._choose(batch.sampler, out.logits[:, -1, :], batch.seqs, masks)
        self._steps += 1
        if self._on_step is not None:
            self._on_step(len(batch))
        done = [self._accept(seq, token) for seq, token in zip(batch.seqs, batch.last.tolist())]
        if any(done):
            batch.keep([i for i, d in enumerate(done) if not d])

    def _choose(self, sampler: BatchSampler, logits: torch.Tensor, seqs: list[_Sequence],
                masks: constraints.PendingMasks | None = None) -> torch.Tensor:
        logits = logits.float()
        wanting = [row for row, s in enumerate(seqs) if s.params.logprobs]
        raw = logits[wanting].log_softmax(dim=-1) if wanting else None  # the model's own distribution
        if sampler.uses_repetition or sampler.uses_openai:
            seen, counts = _token_stats(seqs, logits.shape[-1], self.device)
        else:
            seen = counts = None
        generated = torch.tensor([len(s.output_ids) for s in seqs], device=self.device)
        logits = sampler.process(logits, seen, counts, generated)
        if masks := masks or _start_masks(seqs, self.model):
            masks.apply(logits)
        tokens = sampler.choose(logits)
        if raw is not None:
            _note_logprobs(raw, tokens, [seqs[row] for row in wanting], wanting)
        return tokens

    def _accept(self, seq: _Sequence, token: int) -> bool:
        """Take a sequence's new token: stream it, and finish the sequence if it is done."""
        self._tokens += 1
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
        logprob, seq.pending_logprob = seq.pending_logprob, None
        if token in self.eos_token_ids:
            self._finish(seq, "eos")
            return True
        if token in seq.params.stop_token_ids:
            self._finish(seq, "stop")
            return True
        if seq.matcher is not None:
            constraints.advance(seq.matcher, token)
        seq.output_ids.append(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        text = seq.stop.push(seq.detokenizer.push(token)) if seq.detokenizer else ""
        seq.text.append(text)
        self._emit(seq, TextDelta(text, token, seq.index, logprob))
        if seq.stop.stopped:
            self._finish(seq, "stop")
        elif seq.matcher is not None and constraints.finished(seq.matcher):
            self._finish(seq, "eos")  # the grammar is complete: the output ends as at EOS
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
            self._emit(seq, TextDelta(tail, index=seq.index))
        now = time.perf_counter()
        count = len(seq.output_ids)
        self._emit(seq, Finished(
            text="".join(seq.text), token_ids=tuple(seq.output_ids), finish_reason=reason,
            input_token_count=len(seq.prompt_ids), output_token_count=count,
            time_to_first_token_s=None if seq.first_token_at is None else seq.first_token_at - seq.joined_at,
            tokens_per_second=count / (now - seq.joined_at) if now > seq.joined_at else None,
            index=seq.index, logprobs=tuple(seq.logprobs), cached_input_token_count=seq.cached_tokens,
        ))

    def _emit(self, seq: _Sequence, event: EngineEvent) -> None:
        try:
            seq.emit(event)
        except Exception:  # the listener is gone (its loop closed): drop the request
            log.warning("llm request %s: its listener failed; dropping it", seq.id, exc_info=True)
            with self._cond:
                self._cancels.add(seq.id)


def _start_masks(seqs: list[_Sequence], model: Any) -> constraints.PendingMasks | None:
    """The grammar masks of the rows that have a matcher, begun (``constraints.PendingMasks``); None if none."""
    if not any(s.matcher is not None for s in seqs):
        return None
    return constraints.PendingMasks([s.matcher for s in seqs], model.get_output_embeddings().weight.shape[0])


def _attention_mask(mask: torch.Tensor, queries: int, model: Any) -> torch.Tensor:
    """The forward's attention mask, ready for the model's attention: ``[rows, 1, queries, length]``, the
    query in column c (the last ``queries`` columns) sees each real column up to c. transformers takes a
    4-D mask as it is; building it from the 2-D one took ~12% of the engine's time in decode steps (one
    query a row: no causal part at all) and 1.2 of 9.5 ms in the prefill of 32 padded prompts. SDPA takes
    it as booleans, eager attention as an additive float mask; any other attention gets the 2-D mask,
    and builds its own."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager") or (queries == mask.shape[1] and bool(mask.all())):
        # Causal alone (prompts with no padding and nothing cached): from the 2-D mask transformers lets
        # the attention apply causality itself, with no mask (1,000 tokens: 10 ms against 17 with one).
        return mask
    allowed = mask.bool()[:, None, None, :]
    if queries > 1:
        columns = torch.arange(mask.shape[1], device=mask.device)
        allowed = allowed & (columns <= columns[-queries:, None])[None, None]
    if implementation == "sdpa":
        return allowed
    dtype = model.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)


def _token_stats(seqs: list[_Sequence], vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``seen`` (prompt or output) and output ``counts`` per row, ``[rows, vocab]``."""
    seen = torch.zeros(len(seqs), vocab, dtype=torch.bool, device=device)
    counts = torch.zeros(len(seqs), vocab, dtype=torch.float32, device=device)
    for row, seq in enumerate(seqs):
        prompt = torch.tensor(seq.prompt_ids, device=device)
        seen[row].index_fill_(0, prompt, True)
        if seq.output_ids:
            output = torch.tensor(seq.output_ids, device=device)
            seen[row].index_fill_(0, output, True)
            counts[row].index_add_(0, output, torch.ones_like(output, dtype=torch.float32))
    return seen, counts


def _note_logprobs(raw: torch.Tensor, tokens: torch.Tensor, seqs: list[_Sequence], rows: list[int]) -> None:
    """Each asking row's chosen token's log-probability and its top alternatives, for ``_accept``."""
    chosen = raw.gather(1, tokens[rows].unsqueeze(1)).squeeze(1).tolist()
    most = max(s.params.top_logprobs for s in seqs)
    top_values, top_ids = raw.topk(most, dim=-1) if most else (None, None)
    for j, seq in enumerate(seqs):
        k = seq.params.top_logprobs
        top = tuple(zip(top_ids[j, :k].tolist(), top_values[j, :k].tolist())) if k else ()
        seq.pending_logprob = TokenLogprob(int(tokens[rows[j]]), chosen[j], top)


def _checked_length(prompt: list[int], max_new_tokens: int, n: int, max_positions: int, capacity: Capacity) -> int:
    """The tokens a request may generate (its max_new_tokens, within the model's context); InvalidInput
    for a request the engine could never run."""
    if not prompt:
        raise InvalidInput("input.prompt", "the prompt encodes to no tokens")
    if len(prompt) >= max_positions:
        raise InvalidInput("input.prompt", f"the prompt is {len(prompt)} tokens; this model takes "
                                           f"at most {max_positions - 1}")
    max_new = min(max_new_tokens, max_positions - len(prompt))
    if len(prompt) + max_new > capacity.max_tokens_in_flight:
        raise InvalidInput("input.max_new_tokens", f"prompt ({len(prompt)} tokens) + max_new_tokens "
                                                   f"({max_new}) exceeds this instance's "
                                                   f"{capacity.max_tokens_in_flight} tokens")
    if not 1 <= n <= capacity.max_sequences:
        raise InvalidInput("input.n", f"must be 1 to {capacity.max_sequences} (this instance's batch)")
    if n * (len(prompt) + max_new) > capacity.max_tokens_in_flight:
        raise InvalidInput("input.n", f"{n} samples of prompt + max_new_tokens ({len(prompt) + max_new}) "
                                      f"exceed this instance's {capacity.max_tokens_in_flight} tokens")
    return max_new


def _prefill(model: Any, device: torch.device, group: list[_Sequence], blocks: Sequence[Sequence[Any]],
             prefix: PrefixCache | None) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """One forward over ``group``'s prompts, each behind its cached ``blocks`` (maybe none): only the rest
    of each prompt is computed, at its own positions. Laid out as the decode batch is, left-padded: row i
    is ``[padding][its cached tokens][padding][the rest of its prompt]``, the cached part right-aligned to
    the longest cached part and the rest to the longest rest, with a 2-D mask (0 on padding). The new
    whole blocks go to ``prefix``. Returns the cache (its padding columns zeroed), the mask and each row's
    last logits."""
    block = prefix.block_tokens if prefix is not None else 0
    cached = [len(b) * block for b in blocks]
    rests = [seq.prompt_ids[c:] for seq, c in zip(group, cached)]
    before, after = max(cached), max(len(rest) for rest in rests)
    ids = torch.zeros(len(group), after, dtype=torch.long)
    positions = torch.zeros(len(group), after, dtype=torch.long)
    mask = torch.zeros(len(group), before + after, dtype=torch.long)
    for row, (c, rest) in enumerate(zip(cached, rests)):
        ids[row, after - len(rest):] = torch.tensor(rest)
        positions[row, after - len(rest):] = torch.arange(c, c + len(rest))
        mask[row, before - c:before] = 1
        mask[row, before + after - len(rest):] = 1
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    cache = cache_from_blocks(blocks, before, model.config)
    out = model(input_ids=ids, attention_mask=_attention_mask(mask, after, model), position_ids=positions,
                cache=cache, use_cache=True, logits_to_keep=1)
    if not bool(mask.all()):
        padding = (mask == 0)[:, None, :, None]
        for layer in cache.layers:
            layer.keys.masked_fill_(padding, 0)
            layer.values.masked_fill_(padding, 0)
    if prefix is not None:
        for row, seq in enumerate(group):
            real = mask[row].bool()
            prefix.store(seq.prompt_ids, [(layer.keys[row][:, real], layer.values[row][:, real])
                                          for layer in cache.layers])
    return cache, mask, out.logits[:, -1, :]
