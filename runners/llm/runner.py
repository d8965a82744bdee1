"""The ``llm`` runner: Llama-family text generation with transformers, continuously batched.

``load`` builds an ``LLMEngine`` (``runners.llm.engine``) that owns the model on its own thread;
``predict`` is an async generator on the agent's event loop that submits the request, streams the
engine's text deltas as output chunks, and reports token counts and timings before the final output.
This module imports no torch at import time (the registry imports it); ``load`` does.

Options (``RouteSpec.options``):

- ``dtype``: "auto" (float32 on CPU; bfloat16 on a GPU that has it, else float16), "float32",
  "float16" or "bfloat16".
- ``max_batch_size``: sequences the engine decodes together (default 64); also the instance's
  ``max_concurrency``, so the router never sends more than the engine batches.
- ``max_tokens_in_flight``: bound on the padded KV cache, in tokens (default 65536); a request
  whose prompt plus ``max_new_tokens`` exceeds it is refused.
- ``attn_implementation``: passed to ``from_pretrained`` ("sdpa", "eager"...); transformers' choice
  when unset.
- ``prefix_cache_tokens``: the prefix cache's bound, in tokens (default 32768; 0 turns it off):
  ``runners/llm/prefix_cache.py``.
- ``threads``: torch's CPU threads for the engine (default on a CPU: the agent's share of the node's
  CPUs less one, at least one; on a GPU: torch's own). The one left over is for the agent's event loop
  that relays the tokens, and the gateway beside it: a parallel region whose second thread waits for a
  core those hold stalls the whole step (measured on 2 cores, 32 greedy streams through the cluster:
  3,763 tokens/s with one thread against 2,660 with two; `bench/results/llm_agents.md`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from runners.base import AsyncPredictGenerator, NodeResources, PredictContext, Runner, RunnerPolicy
from runners.devices import free_memory, resolve_dtype
from runners.relay import Relay
from warmfleet.domain import LogLine, MetricsUpdate, RouteSpec, Output, OutputChunk
from warmfleet.errors import InvalidInput

MAX_NEW_TOKENS = 4096
MAX_SAMPLES = 16
CONSTRAINTS = {"json_schema": "json_schema", "regex": "regex", "choices": "choice", "grammar": "grammar"}
MAX_STOP_SEQUENCES = 16
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_TOKENS_IN_FLIGHT = 65_536
DEFAULT_PREFIX_CACHE_TOKENS = 32_768


def _number(kind: str, default: Any, description: str, **bounds: Any) -> dict[str, Any]:
    return {"type": kind, "default": default, "description": description, **bounds}


INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "prompt": {
            "type": "string", "maxLength": 1_000_000,
            "description": "Text to continue, as is (the tokenizer adds BOS); or, with system_prompt, the "
                           "user message of a chat. Give either prompt or messages, not both.",
        },
        "system_prompt": {
            "type": "string", "default": "", "maxLength": 1_000_000,
            "description": "System message; when not empty, the chat template is applied. Empty: none.",
        },
        "messages": {
            "type": "array", "minItems": 1, "maxItems": 1000,
            "description": "A conversation (alternative to prompt), 1 to 1000 messages, formatted with the "
                           "model's chat template and an assistant turn to complete.",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "user", "assistant", "tool"],
                             "description": "Who speaks: system, user, assistant, or tool (a tool's result, "
                                            "to the assistant's call before it)."},
                    "content": {"type": "string", "maxLength": 1_000_000,
                                "description": "What they say."},
                },
            },
        },
        "max_new_tokens": _number("integer", 128, f"Most tokens to generate, 1 to {MAX_NEW_TOKENS}.",
                                  minimum=1, maximum=MAX_NEW_TOKENS),
        "min_new_tokens": _number("integer", -1, f"Fewest tokens to generate before an end-of-sequence "
                                  f"token may end the text, -1 (off) to {MAX_NEW_TOKENS}.",
                                  minimum=-1, maximum=MAX_NEW_TOKENS),
        "temperature": _number("number", 0.7, "Sampling temperature, 0 to 2; 0 is greedy (always the "
                               "most likely token).", minimum=0, maximum=2),
        "top_p": _number("number", 0.95, "Nucleus sampling: sample from the most likely tokens whose "
                         "probabilities add up to top_p, in (0, 1]; 1 is off.",
                         exclusiveMinimum=0, maximum=1),
        "top_k": _number("integer", -1, "Sample from the top_k most likely tokens, -1 to 100000; -1 or 0 "
                         "is off, 1 is greedy.", minimum=-1, maximum=100_000),
        "repetition_penalty": _number("number", 1.0, "Penalty on tokens already in the prompt or output "
                                      "(transformers' semantics: positive logits divided by it, negative "
                                      "ones multiplied), above 0 and at most 10; 1 is off.",
                                      exclusiveMinimum=0, maximum=10),
        "frequency_penalty": _number("number", 0.0, "Subtracted from a token's logit once per time it is "
                                     "already in the output (OpenAI's semantics), -2 to 2; 0 is off.",
                                     minimum=-2, maximum=2),
        "presence_penalty": _number("number", 0.0, "Subtracted from the logit of every token already in "
                                    "the output (OpenAI's semantics), -2 to 2; 0 is off.",
                                    minimum=-2, maximum=2),
        "stop_sequences": {
            "type": "array", "default": [], "maxItems": MAX_STOP_SEQUENCES,
            "items": {"type": "string", "minLength": 1, "maxLength": 1000},
            "description": f"Up to {MAX_STOP_SEQUENCES} strings (1 to 1000 characters each); generation "
                           "ends where one appears, and it is not included in the output.",
        },
        "seed": {
            "type": "integer", "minimum": 0, "maximum": 2**63 - 1,
            "description": "Random seed, 0 to 2^63-1, for reproducible sampling whatever else is in the "
                           "batch; sample k of n uses seed + k. Unset: a random seed (it is logged).",
        },
        "min_p": _number("number", 0.0, "Drop tokens less likely than min_p times the most likely one, 0 to "
                         "1; 0 is off.", minimum=0, maximum=1),
        "logit_bias": {
            "type": "object", "maxProperties": 300, "propertyNames": {"pattern": "^[0-9]{1,9}$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            "description": "Token id (as a string) -> bias added to its logit, -100 to 100 (OpenAI's).",
        },
        "stop_token_ids": {
            "type": "array", "maxItems": 64, "items": {"type": "integer", "minimum": 0},
            "description": "Token ids that end the text like end-of-sequence (not in the output).",
        },
        "n": _number("integer", 1, f"Samples of the same prompt, 1 to {MAX_SAMPLES}: one prefill, each "
                     "sample its own seed (seed + k). Above 1 the output is {choices: [...]}.",
                     minimum=1, maximum=MAX_SAMPLES),
        "logprobs": {"type": "boolean", "default": False,
                     "description": "Report each output token's log-probability under the model; the "
                                    "output is then {choices: [...]}."},
        "top_logprobs": _number("integer", 0, "With logprobs: the most likely tokens at each step, 0 to 20.",
                                minimum=0, maximum=20),
        "json_schema": {"type": "object",
                        "description": "Constrain the output to JSON valid against this JSON Schema "
                                       "({\"type\": \"object\"}: any JSON object)."},
        "regex": {"type": "string", "minLength": 1, "maxLength": 10_000,
                  "description": "Constrain the output to match this regular expression (Rust regex syntax)."},
        "choices": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "string"},
                    "description": "Constrain the output to exactly one of these strings."},
        "grammar": {"type": "string", "minLength": 1, "maxLength": 100_000,
                    "description": "Constrain the output to this Lark grammar (llguidance's dialect)."},
        "tools": {
            "type": "array", "maxItems": 128,
            "items": {"type": "object", "required": ["type", "function"],
                      "properties": {"type": {"const": "function"},
                                     "function": {"type": "object", "required": ["name"]}}},
            "description": "Functions the model may call (OpenAI's tools), shown to it by its chat template; "
                           "needs messages or system_prompt. A call is answered as JSON, {name, parameters}.",
        },
    },
    # Exactly one of prompt and messages: with messages, prompt must be absent or empty; without, it
    # is required. (Written so that the validator's message names the field.)
    "if": {"required": ["messages"]},
    "then": {"properties": {"prompt": {"maxLength": 0}}},
    "else": {"required": ["prompt"], "properties": {"prompt": {"minLength": 1}}},
}


class LLMRunner(Runner):
    family = "llm"

    def __init__(self, spec: RouteSpec, device: str = "cpu", node: NodeResources | None = None) -> None:
        super().__init__(spec, device, node)
        self.model: Any = None
        self.tokenizer: Any = None
        self.engine: Any = None
        self.grammars: Any = None
        self._byte_table: list[bytes] | None = None
        self._relay: Relay | None = None

    @classmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return INPUT_SCHEMA

    @classmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {"type": "string", "description": "The generated text (streamed as chunks while generated)."}

    @classmethod
    def policy(cls, spec: RouteSpec) -> RunnerPolicy:
        return RunnerPolicy(max_concurrency=int(spec.options.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)))

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from runners.llm.constraints import Grammars
        from runners.llm.detokenize import byte_table
        from runners.llm.engine import Capacity, LLMEngine
        from runners.llm.prefix_cache import PrefixCache

        options = self.spec.options
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(options.get("dtype", "auto"), self.device)}
        if options.get("attn_implementation"):
            kwargs["attn_implementation"] = options["attn_implementation"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.spec.weights)
        self.model = AutoModelForCausalLM.from_pretrained(self.spec.weights, **kwargs).to(self.device).eval()
        capacity = Capacity(
            max_sequences=int(options.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            max_tokens_in_flight=int(options.get("max_tokens_in_flight", DEFAULT_MAX_TOKENS_IN_FLIGHT)),
            max_prefill_tokens=int(options.get("max_prefill_tokens", Capacity.max_prefill_tokens)),
        )
        eos = eos_token_ids(self.model, self.tokenizer)
        cached = int(options.get("prefix_cache_tokens", DEFAULT_PREFIX_CACHE_TOKENS))
        self.engine = LLMEngine(self.model, self.tokenizer, capacity=capacity, eos_token_ids=eos,
                                prefix=PrefixCache(max_tokens=cached) if cached else None,
                                threads=engine_threads(options.get("threads"), self.device))
        self.grammars = Grammars(self.tokenizer, int(self.model.get_output_embeddings().weight.shape[0]), eos)
        self._byte_table = byte_table(self.tokenizer)
        self.engine.start()

    def unload(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self.engine = self.model = self.tokenizer = None
        free_memory(self.device)

    async def predict(self, input: dict[str, Any], ctx: PredictContext) -> AsyncPredictGenerator:
        # Async, on the agent's loop: tokenizing and grammar building go to a worker thread, compute to
        # the engine thread, and this generator only awaits the engine's events.
        from runners.llm.engine import Failed, Finished, TextDelta

        engine = self.engine
        if engine is None:
            raise RuntimeError("the llm runner is not loaded")
        params = sampling_params(input)
        if input.get("seed") is None:
            yield LogLine(f"Using seed: {params.seed}")
        n = int(input.get("n") or 1)
        prompt_ids, matchers = await asyncio.to_thread(self.prepare, input, n)
        # One sample without log-probabilities streams text and ends with a string; otherwise each
        # chunk and the output say which sample they are of (``choices_of``).
        rich = n > 1 or params.logprobs
        relay = self._relay_on(asyncio.get_running_loop())
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: Any) -> None:  # on the engine thread
            if not (isinstance(event, TextDelta) and not event.text and event.logprob is None):
                relay.put(events, event)

        request_id = engine.submit(prompt_ids, params, emit, n=n, matchers=matchers)
        done: dict[int, Any] = {}
        try:
            while len(done) < n:
                event = await events.get()
                if isinstance(event, TextDelta):
                    yield OutputChunk(value=self.chunk_of(event) if rich else event.text)
                elif isinstance(event, Finished):
                    done[event.index] = event
                elif isinstance(event, Failed):
                    raise RuntimeError(f"generation failed: {event.error}") from event.error  # noqa: TRY004
            samples = [done[k] for k in range(n)]
            yield MetricsUpdate(metrics_of(samples))
            yield Output(value=self.choices_of(samples) if rich else samples[0].text)
        finally:
            if len(done) < n:  # cancelled (CancelledError), abandoned (GeneratorExit) or failed: free the rows
                engine.cancel(request_id)

    def _relay_on(self, loop: asyncio.AbstractEventLoop) -> Relay:
        """The engine's events reach every request's queue on ``loop`` through one ``Relay``: one wake-up
        of the loop a decode step, not one a token."""
        if self._relay is None or self._relay.loop is not loop:
            self._relay = Relay(loop)
        return self._relay

    def prepare(self, input: dict[str, Any], n: int) -> tuple[list[int], list[Any]]:
        """The prompt's token ids, and a grammar matcher per sample when the input constrains the output."""
        prompt_ids = self.encode(input)
        self.check_token_ids(input)
        given = [name for name in CONSTRAINTS if input.get(name) not in (None, "", [])]
        if len(given) > 1:
            raise InvalidInput(f"input.{given[1]}", f"give one constraint, not {' and '.join(given)}")
        if not given:
            return prompt_ids, []
        from runners.llm.constraints import Constraint

        constraint = Constraint(CONSTRAINTS[given[0]], input[given[0]], f"input.{given[0]}")
        first = self.grammars.matcher(constraint)
        return prompt_ids, [first, *(first.deep_copy() for _ in range(n - 1))]

    def check_token_ids(self, input: dict[str, Any]) -> None:
        vocab = self.grammars.vocab_size
        for key in input.get("logit_bias") or {}:
            if int(key) >= vocab:
                raise InvalidInput(f"input.logit_bias.{key}", f"is not a token id of this model (0 to {vocab - 1})")
        for i, token in enumerate(input.get("stop_token_ids") or ()):
            if token >= vocab:
                raise InvalidInput(f"input.stop_token_ids[{i}]", f"is not a token id of this model (0 to {vocab - 1})")

    def chunk_of(self, delta: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {"index": delta.index, "text": delta.text}
        if delta.logprob is not None:
            chunk["logprobs"] = [self.logprob_json(delta.logprob)]
        return chunk

    def choices_of(self, samples: list[Any]) -> dict[str, Any]:
        """``{"choices": [{index, text, finish_reason, logprobs?}]}``: each sample, in order."""
        choices = []
        for sample in samples:
            choice: dict[str, Any] = {"index": sample.index, "text": sample.text,
                                      "finish_reason": sample.finish_reason}
            if sample.logprobs:
                choice["logprobs"] = [self.logprob_json(lp) for lp in sample.logprobs]
            choices.append(choice)
        return {"choices": choices}

    def logprob_json(self, lp: Any) -> dict[str, Any]:
        """A token's log-probability as OpenAI writes it: token, logprob, bytes, top_logprobs (and its id)."""
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            raw = self.token_bytes(token_id)
            return {"token": raw.decode("utf-8", errors="replace"), "token_id": token_id, "logprob": logprob,
                    "bytes": list(raw)}

        return {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]}

    def token_bytes(self, token_id: int) -> bytes:
        if self._byte_table is not None and 0 <= token_id < len(self._byte_table):
            return self._byte_table[token_id]
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode()

    def encode(self, input: dict[str, Any]) -> list[int]:
        """The prompt's token ids: the chat template with a system prompt or messages, else the raw prompt."""
        prompt, messages = input.get("prompt") or "", input.get("messages") or []
        system = input.get("system_prompt") or ""
        if prompt and messages:
            raise InvalidInput("input.prompt", "give either prompt or messages, not both")
        if not prompt and not messages:
            raise InvalidInput("input.prompt", "give a prompt or messages")
        if not messages and not system:
            if input.get("tools"):
                raise InvalidInput("input.tools", "needs a chat (messages or system_prompt): the chat template "
                                                  "shows the tools")
            return list(self.tokenizer(prompt).input_ids)
        chat = [dict(m) for m in messages] or [{"role": "user", "content": prompt}]
        if system:
            if chat[0]["role"] == "system":
                raise InvalidInput("input.system_prompt", "messages already begin with a system message; "
                                                          "give one or the other")
            chat.insert(0, {"role": "system", "content": system})
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidInput("input.messages" if messages else "input.system_prompt",
                               "this model has no chat template; give a plain prompt")
        text = self.tokenizer.apply_chat_template(chat, tools=input.get("tools") or None,
                                                  add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)


def sampling_params(input: dict[str, Any]) -> Any:
    """A ``SamplingParams`` from a validated input (defaults filled in)."""
    from runners.llm.sampling import SamplingParams

    fields = {name: input[name] for name in (
        "max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
        "frequency_penalty", "presence_penalty", "min_p", "logprobs", "top_logprobs") if name in input}
    fields["stop_sequences"] = tuple(input.get("stop_sequences") or ())
    fields["stop_token_ids"] = tuple(int(i) for i in input.get("stop_token_ids") or ())
    fields["logit_bias"] = tuple((int(k), float(v)) for k, v in (input.get("logit_bias") or {}).items())
    if input.get("seed") is not None:
        fields["seed"] = int(input["seed"])
    try:
        return SamplingParams(**fields)
    except ValueError as err:  # only for inputs that skipped the schema
        raise InvalidInput("input." + str(err).split()[0], str(err)) from err


def metrics_of(samples: list[Any]) -> dict[str, Any]:
    """A request's metrics from its samples' ``Finished``: tokens summed over them, the first token of
    any, tokens per second over the longest; the finish reason is the first sample's (each is in
    ``choices``)."""
    first = samples[0]
    output = sum(s.output_token_count for s in samples)
    longest = max((s.output_token_count / s.tokens_per_second for s in samples if s.tokens_per_second),
                  default=0.0)
    ttfts = [s.time_to_first_token_s for s in samples if s.time_to_first_token_s is not None]
    return {
        "input_token_count": first.input_token_count, "output_token_count": output,
        "cached_input_token_count": first.cached_input_token_count,
        "time_to_first_token_s": min(ttfts) if ttfts else None,
        "tokens_per_second": output / longest if longest else first.tokens_per_second,
        "finish_reason": first.finish_reason,
    }


def engine_threads(option: Any, device: str) -> int | None:
    """The engine's torch threads: the ``threads`` option, else on a CPU the process's less one (see the
    module docstring), else (a GPU) None, torch's own."""
    import torch

    if option is not None:
        if not isinstance(option, int) or isinstance(option, bool) or option < 1:
            raise InvalidInput("options.threads", f"must be a whole number, at least 1 (got {option!r})")
        return option
    return max(1, torch.get_num_threads() - 1) if device == "cpu" else None


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a sequence: the generation config's (an int or a list), else the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = getattr(model.config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return []
    return [int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured])]
