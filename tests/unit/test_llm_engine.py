"""The continuous-batching engine on the tiny Llama (CPU, float32): exactness against ``generate``,
sampling, stopping, cancelling, joining, batched prefill and its limits, batch invariance and
streaming of multi-byte text."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
from types import SimpleNamespace

import pytest
import torch

from runners.llm.engine import Capacity, Failed, Finished, LLMEngine, TextDelta
from runners.llm.sampling import SamplingParams
from warmfleet.errors import InvalidInput

PROMPTS = [
    "The gateway answers every request",
    "Hello!",
    "A tired engineer reads the morning news before the rain, and the scheduler keeps the warm cache",
    "Why?",
]
GREEDY = SamplingParams(temperature=0, max_new_tokens=40)
_ORDER = itertools.count()  # a global order of events, to tell which came first across requests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runners.tiny_models import make_tiny_llama

    path = make_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return SimpleNamespace(model=model, tokenizer=AutoTokenizer.from_pretrained(path),
                           eos=list(model.generation_config.eos_token_id))


@pytest.fixture
def make_engine(tiny):
    engines = []

    def make(model=None, capacity=None, on_step=None, start=True, prefix=None) -> LLMEngine:
        """``start`` False: the caller starts it, e.g. after submitting requests that must all be
        taken in the engine's first turn."""
        engine = LLMEngine(model or tiny.model, tiny.tokenizer, eos_token_ids=tiny.eos,
                           capacity=capacity or Capacity(), on_step=on_step, prefix=prefix)
        if start:
            engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


class Recorder:
    """A request's ``emit``: keeps its events (with their global order) and lets the test wait on them."""

    def __init__(self) -> None:
        self.events: list[tuple[int, object]] = []
        self._cond = threading.Condition()

    def __call__(self, event) -> None:
        with self._cond:
            self.events.append((next(_ORDER), event))
            self._cond.notify_all()

    @property
    def tokens(self) -> list[int]:
        return [e.token_id for _, e in self.events if isinstance(e, TextDelta) and e.token_id is not None]

    @property
    def deltas(self) -> list[str]:
        return [e.text for _, e in self.events if isinstance(e, TextDelta)]

    def order_of(self, predicate) -> int:
        return next(n for n, e in self.events if predicate(e))

    def wait_tokens(self, count: int, timeout_s: float = 30) -> int:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.tokens) >= count, timeout_s)
            return len(self.tokens)

    def result(self, timeout_s: float = 60) -> Finished:
        with self._cond:
            assert self._cond.wait_for(
                lambda: self.events and isinstance(self.events[-1][1], (Finished, Failed)), timeout_s)
        last = self.events[-1][1]
        assert isinstance(last, Finished), last
        return last


def run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]], start: bool = False
        ) -> list[Finished]:
    """Submit every request, then (``start``) start the engine, so that its first turn takes them all."""
    recorders = [Recorder() for _ in requests]
    for (ids, params), rec in zip(requests, recorders):
        engine.submit(ids, params, rec)
    if start:
        engine.start()
    return [rec.result() for rec in recorders]


class Counting(torch.nn.Module):
    """The tiny Llama, recording every forward in ``calls``, in order: ("prefill", rows, columns) for a
    forward on an empty cache, ("decode", rows) for one on a filled cache."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(self, input_ids, cache=None, **kwargs):
        if cache.get_seq_length() == 0:
            self.calls.append(("prefill", *input_ids.shape))
        else:
            self.calls.append(("decode", input_ids.shape[0]))
        return self.inner(input_ids=input_ids, cache=cache, **kwargs)

    @property
    def prefills(self) -> list[tuple[int, int]]:
        return [call[1:] for call in self.calls if call[0] == "prefill"]


def ids_of(tiny, text: str) -> list[int]:
    return tiny.tokenizer(text).input_ids


def with_bias(model, bias: dict[int, float]):
    """A copy of ``model`` whose head adds ``bias`` to some logits (making them the greedy choice)."""
    biased = copy.deepcopy(model)
    head = biased.lm_head
    biased.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.lm_head.weight.copy_(head.weight)
        biased.lm_head.bias.zero_()
        for token, value in bias.items():
            biased.lm_head.bias[token] = value
    return biased


# Exactness and sampling


def test_greedy_output_equals_generate_token_for_token(tiny, make_engine):
    engine = make_engine()
    for prompt in PROMPTS:
        ids = ids_of(tiny, prompt)
        [done] = run(engine, [(ids, GREEDY)])
        with torch.inference_mode():
            out = tiny.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
        expected = out[0, len(ids):].tolist()
        ended_on_eos = bool(expected) and expected[-1] in tiny.eos
        assert list(done.token_ids) == (expected[:-1] if ended_on_eos else expected)
        assert done.finish_reason == ("eos" if ended_on_eos else "length")
        assert done.input_token_count == len(ids) and done.output_token_count == len(done.token_ids)
        assert done.text == tiny.tokenizer.decode(done.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_padded_batch_decodes_as_generate_with_each_attention_s_own_mask(tiny, make_engine, implementation):
    # The engine hands the prefill and each decode step a 4-D mask made for the attention (booleans for
    # SDPA, an additive float mask for eager): a wrong one would let a row see its padding or a later
    # prompt token, or none of its past.
    model = copy.deepcopy(tiny.model)
    model.set_attn_implementation(implementation)
    requests = [(ids_of(tiny, prompt), GREEDY) for prompt in PROMPTS]
    batched = run(make_engine(model, start=False), requests, start=True)  # one left-padded batch
    for (ids, _), done in zip(requests, batched):
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
        expected = out[0, len(ids):].tolist()
        assert list(done.token_ids) == (expected[:-1] if expected[-1] in tiny.eos else expected)


def test_the_engine_sets_its_own_thread_s_torch_threads_and_no_other(tiny):
    seen: list[int] = []
    engine = LLMEngine(tiny.model, tiny.tokenizer, eos_token_ids=tiny.eos, threads=1,
                       on_step=lambda rows: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine.start()
        run(engine, [(ids_of(tiny, "Why?"), replace_tokens(GREEDY, 3))])
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # this thread's count is its own
    finally:
        engine.stop()
        torch.set_num_threads(before)


def replace_tokens(params: SamplingParams, count: int) -> SamplingParams:
    return dataclasses.replace(params, max_new_tokens=count, min_new_tokens=count)


def test_same_seed_gives_the_same_text_and_different_seeds_differ(tiny, make_engine):
    engine = make_engine()
    ids = ids_of(tiny, PROMPTS[0])

    def sample(seed: int) -> Finished:
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=seed)
        return run(engine, [(ids, params)])[0]

    first, again, other = sample(5), sample(5), sample(6)
    assert first.token_ids == again.token_ids and first.text == again.text
    assert first.token_ids != other.token_ids
    assert first.token_ids != run(engine, [(ids, GREEDY)])[0].token_ids[:24]  # it did sample


def test_top_k_1_equals_greedy(tiny, make_engine):
    engine = make_engine()
    ids = ids_of(tiny, PROMPTS[2])
    [greedy, top1] = run(engine, [(ids, GREEDY), (ids, SamplingParams(temperature=1.3, top_k=1, top_p=1.0,
                                                                      max_new_tokens=40, seed=3))])
    assert top1.token_ids == greedy.token_ids


def test_each_penalty_covers_the_tokens_it_is_defined_over(tiny, make_engine):
    ids = ids_of(tiny, PROMPTS[0])
    favourite = ids[-1]  # a prompt token the biased model always prefers (logit ~2; the others < 1)
    engine = make_engine(with_bias(tiny.model, {favourite: 2.0}))

    def greedy(**penalty) -> tuple[int, ...]:
        return run(engine, [(ids, SamplingParams(temperature=0, max_new_tokens=12, **penalty))])[0].token_ids

    assert greedy() == (favourite,) * 12
    # repetition_penalty counts the prompt: the favourite never comes, and no output token repeats
    penalised = greedy(repetition_penalty=10.0)
    assert favourite not in penalised and len(set(penalised)) == len(penalised)
    # frequency and presence count the output only: the favourite comes once, then its logit drops
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        tokens = greedy(**penalty)
        assert tokens[0] == favourite and tokens.count(favourite) == 1, penalty


# Stopping


def test_a_stop_sequence_ends_the_text_before_it(tiny, make_engine):
    engine = make_engine()
    ids = ids_of(tiny, PROMPTS[0])
    [greedy] = run(engine, [(ids, GREEDY)])
    text = greedy.text
    start = len(text) // 2
    stop = text[start:start + 3]
    cut = text.index(stop)  # its first occurrence (may lie before the middle)
    rec = Recorder()
    engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=40, stop_sequences=("zzzz-none", stop)),
                  rec)
    done = rec.result()
    assert done.finish_reason == "stop"
    assert done.text == text[:cut]
    assert "".join(rec.deltas) == done.text  # the stop text was never streamed, not even in part
    assert len(done.token_ids) < len(greedy.token_ids)


@pytest.mark.parametrize("which", [0, 1])
def test_every_eos_id_of_the_generation_config_ends_the_sequence(tiny, make_engine, which):
    engine = make_engine(with_bias(tiny.model, {tiny.eos[which]: 100.0}))
    [done] = run(engine, [(ids_of(tiny, PROMPTS[0]), GREEDY)])
    assert (done.finish_reason, done.token_ids, done.text) == ("eos", (), "")


def test_min_new_tokens_holds_off_every_eos_id(tiny, make_engine):
    # Both EOS ids lead by far; masking only the first would let the second end the text.
    engine = make_engine(with_bias(tiny.model, {tiny.eos[0]: 100.0, tiny.eos[1]: 90.0}))
    ids = ids_of(tiny, PROMPTS[1])
    [held, sampled] = run(engine, [(ids, SamplingParams(temperature=0, min_new_tokens=6, max_new_tokens=40)),
                                   (ids, SamplingParams(temperature=1.0, min_new_tokens=3, max_new_tokens=40,
                                                        seed=1))])
    assert (held.finish_reason, held.output_token_count) == ("eos", 6)
    assert (sampled.finish_reason, sampled.output_token_count) == ("eos", 3)
    assert not set(held.token_ids + sampled.token_ids) & set(tiny.eos)


def test_max_new_tokens_caps_the_output(tiny, make_engine):
    engine = make_engine(with_bias(tiny.model, {tiny.eos[0]: 100.0}))
    [done] = run(engine, [(ids_of(tiny, PROMPTS[1]), SamplingParams(temperature=0.8, max_new_tokens=7,
                                                                    min_new_tokens=50, seed=0))])
    assert (done.finish_reason, done.output_token_count, len(done.token_ids)) == ("length", 7, 7)


def test_metrics_count_tokens_and_time_from_joining(tiny, make_engine):
    engine = make_engine()
    ids = ids_of(tiny, PROMPTS[0])
    [done] = run(engine, [(ids, SamplingParams(temperature=0, max_new_tokens=12, min_new_tokens=12))])
    assert (done.input_token_count, done.output_token_count) == (len(ids), 12)
    elapsed = done.output_token_count / done.tokens_per_second
    assert 0 < done.time_to_first_token_s < elapsed


def test_requests_the_engine_can_never_hold_are_refused_naming_the_field(tiny, make_engine):
    engine = make_engine(capacity=Capacity(max_sequences=2, max_tokens_in_flight=64))
    ids = ids_of(tiny, PROMPTS[2])
    with pytest.raises(InvalidInput, match="input.max_new_tokens"):
        engine.submit(ids, SamplingParams(max_new_tokens=64), Recorder())
    with pytest.raises(InvalidInput, match="input.prompt"):
        engine.submit(list(range(5)) * 400, SamplingParams(max_new_tokens=1), Recorder())
    with pytest.raises(InvalidInput, match="input.prompt"):
        engine.submit([], SamplingParams(max_new_tokens=1), Recorder())


# Continuous batching


def test_a_cancelled_request_stops_within_a_step_or_two_and_frees_its_row(tiny, make_engine):
    engine = make_engine(capacity=Capacity(max_sequences=1))
    long, short = Recorder(), Recorder()
    long_id = engine.submit(ids_of(tiny, PROMPTS[0]), SamplingParams(temperature=0, max_new_tokens=900,
                                                                     min_new_tokens=900), long)
    at_cancel = long.wait_tokens(3)
    engine.cancel(long_id)
    engine.submit(ids_of(tiny, PROMPTS[1]), SamplingParams(temperature=0, max_new_tokens=5, min_new_tokens=5),
                  short)
    cancelled = long.result()
    assert cancelled.finish_reason == "cancelled"
    assert cancelled.output_token_count <= at_cancel + 2
    assert short.result().output_token_count == 5
    # The only row was the cancelled one's: the next request ran after it left.
    short_began = short.order_of(lambda e: isinstance(e, TextDelta))
    assert short_began > long.order_of(lambda e: isinstance(e, Finished))


def test_a_request_joins_the_running_batch_at_the_next_step(tiny, make_engine):
    sizes: list[int] = []
    engine = make_engine(capacity=Capacity(max_sequences=4), on_step=sizes.append)
    first, joiner = Recorder(), Recorder()
    first_id = engine.submit(ids_of(tiny, PROMPTS[0]), SamplingParams(temperature=0, max_new_tokens=900,
                                                                      min_new_tokens=900), first)
    first.wait_tokens(3)
    submitted_at = next(_ORDER)
    engine.submit(ids_of(tiny, PROMPTS[1]), SamplingParams(temperature=0, max_new_tokens=5, min_new_tokens=5),
                  joiner)
    assert joiner.result().output_token_count == 5
    first.wait_tokens(len(first.tokens) + 1)  # a step after the joiner left
    engine.cancel(first_id)
    first.result()

    joined_at = joiner.order_of(lambda e: isinstance(e, TextDelta))
    steps_between = [n for n, e in first.events if isinstance(e, TextDelta) and submitted_at < n < joined_at]
    assert len(steps_between) <= 1  # at most the step already under way when it was submitted
    assert sizes[0] == 1 and 2 in sizes
    assert sizes.index(2) > 0 and sizes[-1] == 1  # rose while the first ran, fell when the joiner left


def mixed_requests(tiny) -> list[tuple[list[int], SamplingParams]]:
    """16 requests of 2 to 47 words, greedy (half with a repetition penalty) and seeded samplers."""
    words = " ".join(PROMPTS).split()
    requests = []
    for i in range(16):
        ids = ids_of(tiny, " ".join((words * 3)[i % 7: i % 7 + 2 + 3 * i]))  # 2 to 47 words
        if i % 2 == 0:
            params = SamplingParams(temperature=0, max_new_tokens=20 + 5 * i,
                                    repetition_penalty=1.3 if i % 4 == 0 else 1.0)
        else:
            params = SamplingParams(temperature=0.5 + i / 16, top_k=(-1, 5, 50)[i % 3],
                                    top_p=(1.0, 0.9)[(i // 2) % 2],
                                    frequency_penalty=0.5 if i % 3 == 0 else 0.0,
                                    max_new_tokens=10 + 6 * i, seed=i)
        requests.append((ids, params))
    return requests


@pytest.mark.parametrize("arrival", ["together", "while_running"])
def test_greedy_and_seeded_requests_give_the_same_tokens_alone_and_in_a_mixed_batch_of_16(tiny, make_engine,
                                                                                          arrival):
    # "together": all 16 are queued before the engine starts, so they are prefilled in one left-padded
    # forward; "while_running": submitted to a running engine, they join over one or more turns.
    model = Counting(tiny.model)
    together = arrival == "together"
    requests = mixed_requests(tiny)
    capacity = Capacity(max_sequences=16, max_prefill_tokens=16 * max(len(ids) for ids, _ in requests))
    engine = make_engine(model, capacity=capacity, start=not together)
    batched = run(engine, requests, start=together)
    if together:
        assert model.prefills[0] == (16, max(len(ids) for ids, _ in requests))
    alone = [run(engine, [request])[0] for request in requests]

    same = [b.token_ids == a.token_ids for b, a in zip(batched, alone)]
    fraction = sum(same) / len(same)
    print(f"batch invariance ({arrival}): {sum(same)}/{len(same)} requests give the same tokens in a batch "
          f"of 16")
    assert fraction == 1.0, f"only {fraction:.0%} of requests match their lone run: {same}"


# Batched prefill


def test_requests_that_arrive_together_are_prefilled_in_one_forward_and_match_their_lone_runs(tiny,
                                                                                            make_engine):
    # The longest prompt (and another) ends at its first token: the rows that stay are re-laid out
    # without the columns only it used, and still decode as they would alone.
    model = Counting(tiny.model)
    sizes: list[int] = []
    engine = make_engine(model, on_step=sizes.append, start=False)
    prompts = [ids_of(tiny, p) for p in PROMPTS]
    lengths = [7, 1, 1, 12]
    requests = [(ids, SamplingParams(temperature=0, max_new_tokens=n)) for ids, n in zip(prompts, lengths)]
    requests.append((prompts[0], SamplingParams(temperature=0.9, max_new_tokens=9, seed=4)))
    together = run(engine, requests, start=True)
    assert model.prefills == [(5, max(len(ids) for ids in prompts))]
    assert sizes[0] == 3  # the two that ended at their first token never joined the batch
    for done, request in zip(together, requests):
        assert done.token_ids == run(engine, [request])[0].token_ids
        assert done.time_to_first_token_s is not None


def test_a_turn_prefills_at_most_max_prefill_tokens_and_the_rest_join_at_the_next_turn(tiny, make_engine):
    model = Counting(tiny.model)
    short, long = ids_of(tiny, PROMPTS[0]), ids_of(tiny, PROMPTS[2])
    params = SamplingParams(temperature=0, max_new_tokens=6, min_new_tokens=6)
    engine = make_engine(model, capacity=Capacity(max_prefill_tokens=3 * len(long)), start=False)
    done = run(engine, [(short, params)] * 3 + [(long, params)] * 3, start=True)
    # 3 short and a long would be 4 rows of the long one's width: the long ones take the next turn,
    # after a decode step, and join a batch narrower than their cache.
    assert model.calls[:4] == [("prefill", 3, len(short)), ("decode", 3), ("prefill", 3, len(long)),
                               ("decode", 6)]
    alone = [run(engine, [(ids, params)])[0].token_ids for ids in (short, long)]
    assert [d.token_ids for d in done] == [alone[0]] * 3 + [alone[1]] * 3


def test_a_prompt_longer_than_max_prefill_tokens_is_still_prefilled_alone(tiny, make_engine):
    model = Counting(tiny.model)
    long, short = ids_of(tiny, PROMPTS[2]), ids_of(tiny, PROMPTS[1])
    engine = make_engine(model, capacity=Capacity(max_prefill_tokens=len(long) - 1), start=False)
    params = SamplingParams(temperature=0, max_new_tokens=4, min_new_tokens=4)
    done = run(engine, [(long, params), (short, params), (short, params)], start=True)
    assert [d.output_token_count for d in done] == [4, 4, 4]
    assert model.prefills == [(1, len(long)), (2, len(short))]


@pytest.mark.parametrize("limit", ["max_sequences", "max_tokens_in_flight"])
def test_a_burst_is_admitted_only_as_far_as_the_capacity_allows(tiny, make_engine, limit):
    model = Counting(tiny.model)
    sizes: list[int] = []
    ids = ids_of(tiny, PROMPTS[0])
    params = SamplingParams(temperature=0, max_new_tokens=5, min_new_tokens=5)
    reservation = len(ids) + params.max_new_tokens
    capacity = (Capacity(max_sequences=2) if limit == "max_sequences"
                else Capacity(max_tokens_in_flight=2 * reservation + reservation // 2))
    engine = make_engine(model, capacity=capacity, on_step=sizes.append, start=False)
    done = run(engine, [(ids, params)] * 5, start=True)
    assert [d.output_token_count for d in done] == [5] * 5
    assert model.prefills == [(2, len(ids)), (2, len(ids)), (1, len(ids))]
    assert max(sizes) == 2


def test_a_failed_prefill_fails_the_requests_of_its_turn_and_the_running_batch_carries_on(tiny, make_engine):
    class FailingPrefill(Counting):
        fail = False

        def forward(self, input_ids, cache=None, **kwargs):
            if self.fail and cache.get_seq_length() == 0:
                raise RuntimeError("out of memory, say")
            return super().forward(input_ids, cache=cache, **kwargs)

    model = FailingPrefill(tiny.model)
    engine = make_engine(model)
    running = Recorder()
    engine.submit(ids_of(tiny, PROMPTS[0]), SamplingParams(temperature=0, max_new_tokens=40, min_new_tokens=40),
                  running)
    running.wait_tokens(2)
    model.fail = True
    failing = [Recorder(), Recorder()]
    for rec in failing:
        engine.submit(ids_of(tiny, PROMPTS[1]), GREEDY, rec)
    for rec in failing:
        with rec._cond:
            assert rec._cond.wait_for(lambda rec=rec: rec.events, 30)
        assert isinstance(rec.events[-1][1], Failed) and not rec.tokens
    model.fail = False
    assert running.result().output_token_count == 40
    assert run(engine, [(ids_of(tiny, PROMPTS[1]), GREEDY)])[0].finish_reason in ("eos", "length")


# Streaming multi-byte text


class Scripted(torch.nn.Module):
    """The tiny Llama, run for real (its cache grows as usual), but whose next token is always the next
    one of ``script``: a model that writes a known multi-byte text."""

    def __init__(self, inner, script: list[int], prompt_length: int) -> None:
        super().__init__()
        self.inner, self.config, self.script, self.prompt_length = inner, inner.config, script, prompt_length

    def forward(self, input_ids, position_ids=None, **kwargs):
        out = self.inner(input_ids=input_ids, position_ids=position_ids, **kwargs)
        last = position_ids[:, -1].tolist() if position_ids is not None else [input_ids.shape[1] - 1]
        logits = torch.full_like(out.logits[:, -1:, :], -1e4)
        for row, position in enumerate(last):
            logits[row, 0, self.script[min(position + 1 - self.prompt_length, len(self.script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits)


MULTI_BYTE = "Olá, café → 世界 🙂 done"


@pytest.mark.parametrize("stops, expected", [((), MULTI_BYTE), (("🙂",), "Olá, café → 世界 ")])
def test_multi_byte_text_streams_whole_characters_that_make_up_the_final_text(tiny, make_engine, stops,
                                                                              expected):
    script = tiny.tokenizer(MULTI_BYTE, add_special_tokens=False).input_ids + [tiny.eos[1]]
    prompt = ids_of(tiny, "Say it:")
    engine = make_engine(Scripted(tiny.model, script, len(prompt)))
    rec = Recorder()
    params = SamplingParams(temperature=0.7, max_new_tokens=100, stop_sequences=stops, seed=0)
    engine.submit(prompt, params, rec)
    done = rec.result()
    assert not any("\ufffd" in d for d in rec.deltas)
    assert "".join(rec.deltas) == done.text == expected
    # A character split over tokens was held back until whole (the byte-level detokenizer emits the whole
    # characters of a token at once and holds only the split one's bytes).
    assert rec.deltas.count("") >= 1
    assert done.finish_reason == ("stop" if stops else "eos")
