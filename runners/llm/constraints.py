"""Constrained decoding: a request's output held to a JSON Schema, any JSON object, a regular expression,
a list of choices or a Lark grammar (what tool calls compile to), by masking each step's logits to the
tokens that keep the output in the language.

The grammar library is llguidance (guidance-ai; vLLM, SGLang and llama.cpp use it). Chosen over
xgrammar and outlines-core for three reasons, checked here before choosing:

- correctness: it implements the most of JSON Schema of the three (nested objects, arrays with bounds,
  enums, ``anyOf``/``oneOf``, ``$ref``, string formats and patterns; its authors' JSONSchemaBench
  measures it), and refuses what it does not implement with a message rather than ignoring it;
- speed: it computes a mask lazily per step from an Earley parser over a token trie, with no per-schema
  compilation of every token against every state (outlines-core builds such an index per schema, at
  seconds for a large one); a mask of the tiny Llama's vocabulary costs about 12 microseconds on this
  CPU, and constructing a matcher about 1 ms;
- one library for every form: JSON Schema, regex, choices and Lark, which tool calls need.

Only the constrained rows of a batch compute a mask (``PendingMasks``), so a free request in the same
batch pays nothing but a check; a decode step begins them before the model's forward and applies them
after it, so their computation overlaps the forward. A row's matcher consumes each token its row takes
(``advance``); when the grammar is complete and admits nothing more (``finished``), the row ends as if
it had met EOS. The mask is applied after the penalties and before temperature, top-k and top-p, as
vLLM does, so the output is always in the language however it is sampled.

This module imports llguidance and torch only inside its functions.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from warmfleet.errors import InvalidInput

KINDS = ("json_schema", "regex", "choice", "grammar")
# Compact JSON, as OpenAI's structured outputs write it; a JSON Schema's own "x-guidance" may override.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MATCHERS_CACHED = 64  # grammars whose matcher an instance keeps, to copy for the next request of one


@dataclass(frozen=True)
class Constraint:
    """What a request's output must match. ``kind``: "json_schema" (``value`` a schema as a dict; any
    JSON object is ``{"type": "object"}``), "regex" (a string), "choice" (a list of strings) or "grammar"
    (Lark, in llguidance's dialect). ``field`` names the input that asked for it, for errors."""

    kind: str
    value: Any
    field: str


def grammar_text(constraint: Constraint) -> str:
    """The llguidance grammar for a constraint."""
    from llguidance import LLMatcher, grammar_from

    kind, value = constraint.kind, constraint.value
    if kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(value, defaults=JSON_OPTIONS)
    if kind == "regex":
        return LLMatcher.grammar_from_regex(value)
    if kind == "choice":
        return grammar_from("choice", list(value))
    if kind == "grammar":
        return LLMatcher.grammar_from_lark(value)
    raise InvalidInput(constraint.field, f"unknown constraint kind {kind!r}; known: {', '.join(KINDS)}")


class Grammars:
    """One instance's grammar side: the tokenizer as llguidance sees it (built once, on first use) and a
    fresh matcher per constrained request.

    Agents send the same schemas and tool definitions request after request, so the matchers of the
    last ``cached`` grammars are kept, at their start and never advanced, and a request gets a copy of
    one: building a matcher (checking the grammar, then compiling it) takes ~2.4 ms of CPU, a copy ~2 us
    (the tiny Llama, a 400-character regex). A copy is independent of the kept one and of every other."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int],
                 cached: int = MATCHERS_CACHED) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._lock = threading.Lock()  # prepare runs on worker threads: the ll tokenizer, the kept matchers
        self._ll_tokenizer: Any = None
        self._cached = cached
        self._matchers: collections.OrderedDict[str, Any] = collections.OrderedDict()  # grammar -> at start

    def _ll(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                self._ll_tokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, n_vocab=self.vocab_size, eos_token=self._eos or None)
            return self._ll_tokenizer

    def matcher(self, constraint: Constraint) -> Any:
        """A matcher at the start of the constraint's language; ``InvalidInput`` naming its field when the
        schema, regex or grammar is not one llguidance can hold to."""
        try:
            text = grammar_text(constraint)
        except ValueError as err:
            raise InvalidInput(constraint.field, f"not a usable {constraint.kind}: {err}") from err
        with self._lock:
            kept = self._matchers.get(text)
            if kept is not None:
                self._matchers.move_to_end(text)
                return kept.deep_copy()
        matcher = self._build(constraint, text)
        if self._cached:
            with self._lock:
                self._matchers[text] = matcher.deep_copy()
                while len(self._matchers) > self._cached:
                    self._matchers.popitem(last=False)
        return matcher

    def _build(self, constraint: Constraint, text: str) -> Any:
        from llguidance import LLMatcher

        failed, messages = LLMatcher.validate_grammar_with_warnings(text, self._ll())
        if failed:
            raise InvalidInput(constraint.field, f"not a usable {constraint.kind}: {'; '.join(messages)}")
        matcher = LLMatcher(self._ll(), text, log_level=0)
        if matcher.is_error():
            raise InvalidInput(constraint.field, f"not a usable {constraint.kind}: {matcher.get_error()}")
        return matcher


def apply_masks(logits: Any, matchers: Sequence[Any]) -> None:
    """In place: -inf on every token that the row's matcher does not allow next (rows whose matcher is
    None are left as they are). ``logits`` is ``[rows, vocab]``."""
    PendingMasks(matchers, logits.shape[-1]).apply(logits)


class PendingMasks:
    """One step's masks of the rows that have a matcher, begun at construction on a worker thread (the fill
    by llguidance's own threads), so that they are computed while the model's forward runs; ``apply``
    waits for them.

    A fresh state's mask costs ~20 us a row (16 rows of a 400-character regex: ~0.3 ms a step, against
    ~2.5 ms for the tiny Llama's decode forward), so overlapping it with the forward hides it."""

    def __init__(self, matchers: Sequence[Any], vocab: int) -> None:
        import llguidance.torch as lt

        self.rows = [i for i, m in enumerate(matchers) if m is not None]
        self._vocab = vocab
        self._filled = None
        if self.rows:
            self._bitmask = lt.allocate_token_bitmask(len(self.rows), vocab)  # a row of words per row
            pairs = [(matchers[i], k) for k, i in enumerate(self.rows)]
            self._filled = _pool().submit(lt.fill_next_token_bitmask_par, _executor(), pairs, self._bitmask)

    def apply(self, logits: Any) -> None:
        """In place on ``[rows, vocab]`` logits: -inf on every token a constrained row may not take next."""
        import numpy as np
        import torch

        if self._filled is None:
            return
        self._filled.result()
        # Bit j of word w is token 32w + j: little-endian bytes, unpacked least significant bit first (numpy
        # does it in microseconds; shifting and masking in torch took ~0.3 ms a step for 16 rows).
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :self._vocab]
        banned = torch.from_numpy(bits == 0).to(logits.device)
        index = torch.tensor(self.rows, dtype=torch.long, device=logits.device)
        logits.index_copy_(0, index, logits.index_select(0, index).masked_fill_(banned, float("-inf")))


_POOL: Any = None


def _pool() -> Any:
    """The thread that waits on llguidance's fill while the engine's thread runs the model."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wf-grammar")
    return _POOL


_EXECUTOR: Any = None


def _executor() -> Any:
    """llguidance's thread pool for computing several rows' masks at once (one per process)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from llguidance import LLExecutor

        _EXECUTOR = LLExecutor()
    return _EXECUTOR


def advance(matcher: Any, token: int) -> None:
    """Feed the row's chosen token to its matcher. A token outside the mask cannot be chosen, so a
    refusal here is a bug (or a grammar the library failed on): it is raised, never ignored."""
    if not matcher.consume_token(token):
        raise RuntimeError(f"the grammar refused token {token}: {matcher.get_error()}")


def finished(matcher: Any) -> bool:
    """The output is complete and the grammar admits nothing more (only EOS)."""
    return matcher.is_stopped()
