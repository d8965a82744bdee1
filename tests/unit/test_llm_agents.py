"""The engine's knobs for agents, without a cluster: n samples from one prefill, logit_bias, min_p,
stop_token_ids, log-probabilities, and constrained decoding through llguidance."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import jsonschema
import pytest
import torch

from runners.llm.constraints import Constraint, Grammars
from runners.llm.engine import Finished
from runners.llm.sampling import SamplingParams, apply_min_p
from tests.unit import test_llm_engine as engine_tests
from tests.unit.test_llm_engine import GREEDY, Counting, Recorder, run
from warmfleet.errors import InvalidInput

tiny, make_engine = engine_tests.tiny, engine_tests.make_engine  # that module's fixtures, here by name
SAMPLED = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=16, min_new_tokens=16, seed=40)


def ids(tiny, text: str) -> list[int]:
    return list(tiny.tokenizer(text).input_ids)


def samples(engine, prompt: list[int], params: SamplingParams, n: int, matchers=()) -> list[Finished]:
    rec = Recorder()
    engine.submit(prompt, params, rec, n=n, matchers=matchers)
    with rec._cond:
        assert rec._cond.wait_for(lambda: sum(isinstance(e, Finished) for _, e in rec.events) == n, 60)
    return sorted((e for _, e in rec.events if isinstance(e, Finished)), key=lambda f: f.index)


def test_n_samples_share_one_prefill_and_each_equals_its_seed_alone(tiny, make_engine):
    counting = Counting(tiny.model)
    engine = make_engine(model=counting)
    prompt = ids(tiny, "The gateway answers every request")
    together = samples(engine, prompt, SAMPLED, 3)
    assert [f.index for f in together] == [0, 1, 2]
    assert sum(1 for call in counting.calls if call[0] == "prefill") == 1
    alone = run(make_engine(), [(prompt, replace(SAMPLED, seed=SAMPLED.seed + k)) for k in range(3)])
    assert [f.token_ids for f in together] == [f.token_ids for f in alone]
    assert len({f.token_ids for f in together}) == 3


def test_logit_bias_bans_the_greedy_token_and_stop_token_ids_end_the_text(tiny, make_engine):
    engine = make_engine()
    prompt = ids(tiny, "Hello!")
    (free,) = run(engine, [(prompt, replace(GREEDY, min_new_tokens=40))])
    (banned,) = run(engine, [(prompt, replace(GREEDY, min_new_tokens=40,
                                               logit_bias=((free.token_ids[0], -100.0),)))])
    assert banned.token_ids[0] != free.token_ids[0] and free.token_ids[0] not in banned.token_ids
    at = next(k for k in range(2, len(free.token_ids)) if free.token_ids[k] not in free.token_ids[:k])
    (stopped,) = run(engine, [(prompt, replace(GREEDY, stop_token_ids=(free.token_ids[at],)))])
    assert stopped.token_ids == free.token_ids[:at] and stopped.finish_reason == "stop"


def test_min_p_keeps_only_tokens_near_the_most_likely():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = apply_min_p(probs, torch.tensor([[0.2]]))  # the floor is 0.1
    assert (kept > 0).tolist() == [[True, True, True, False]] and torch.equal(kept[:, :3], probs[:, :3])
    assert torch.equal(apply_min_p(probs, torch.tensor([[0.0]])), probs)


def test_logprobs_are_the_log_softmax_of_the_raw_logits(tiny, make_engine):
    engine = make_engine()
    prompt = ids(tiny, "Why?")
    (done,) = run(engine, [(prompt, replace(GREEDY, max_new_tokens=4, min_new_tokens=4, logprobs=True,
                                             top_logprobs=2))])
    assert [lp.token_id for lp in done.logprobs] == list(done.token_ids)
    sequence = torch.tensor([prompt + list(done.token_ids)])
    with torch.inference_mode():
        logits = tiny.model(sequence).logits[0].float().log_softmax(-1)
    for step, lp in enumerate(done.logprobs):
        row = logits[len(prompt) - 1 + step]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        assert [i for i, _ in lp.top] == row.topk(2).indices.tolist()


@pytest.fixture(scope="module")
def grammars(tiny):
    return Grammars(tiny.tokenizer, tiny.model.config.vocab_size, tiny.eos)


def test_a_schema_constrained_sample_validates_and_the_free_one_in_its_batch_is_untouched(tiny, make_engine,
                                                                                          grammars):
    schema = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
              "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99}}}
    prompt = ids(tiny, "The gateway answers every request")
    free_params = replace(SAMPLED, seed=3)
    (free_alone,) = run(make_engine(), [(prompt, free_params)])
    engine = make_engine(start=False)
    constrained, free = Recorder(), Recorder()
    matcher = grammars.matcher(Constraint("json_schema", schema, "input.json_schema"))
    engine.submit(prompt, replace(SAMPLED, min_new_tokens=-1, max_new_tokens=200), constrained, matchers=[matcher])
    engine.submit(prompt, free_params, free)
    engine.start()
    done = constrained.result()
    jsonschema.validate(json.loads(done.text), schema)
    assert done.finish_reason == "eos"
    assert free.result().token_ids == free_alone.token_ids  # the mask is the constrained row's alone


def test_a_regex_and_choices_hold_for_every_sample(tiny, make_engine, grammars):
    engine = make_engine()
    prompt = ids(tiny, "Hello!")
    params = replace(SAMPLED, min_new_tokens=-1, max_new_tokens=40)
    first = grammars.matcher(Constraint("regex", r"[a-z]{3}-[0-9]{2}", "input.regex"))
    for f in samples(engine, prompt, params, 3, [first, first.deep_copy(), first.deep_copy()]):
        assert re.fullmatch(r"[a-z]{3}-[0-9]{2}", f.text), f.text
    pick = grammars.matcher(Constraint("choice", ["alpha", "beta", "gamma"], "input.choices"))
    (chosen,) = samples(engine, prompt, params, 1, [pick])
    assert chosen.text in ("alpha", "beta", "gamma")


def test_a_repeated_grammar_s_matcher_is_a_copy_of_the_one_built_and_each_copy_is_its_own(tiny):
    grammars = Grammars(tiny.tokenizer, tiny.model.config.vocab_size, tiny.eos, cached=2)
    built: list[str] = []
    build = grammars._build
    grammars._build = lambda constraint, text: built.append(constraint.value) or build(constraint, text)
    code = Constraint("regex", r"[a-z]{3}-[0-9]{2}", "input.regex")
    first, second = grammars.matcher(code), grammars.matcher(code)
    assert built == [code.value]  # the second is a copy
    for token in tiny.tokenizer.encode("abc-12", add_special_tokens=False):
        assert first.consume_token(token)
    assert first.is_accepting() and not second.is_accepting()  # advancing one leaves the other at its start
    assert not grammars.matcher(code).is_accepting()  # and the kept one
    for other in ("x+", "y+"):  # two more grammars push the first out of a cache of two
        grammars.matcher(Constraint("regex", other, "input.regex"))
    grammars.matcher(code)
    assert built == [code.value, "x+", "y+", code.value]


@pytest.mark.parametrize("constraint", [
    Constraint("json_schema", {"type": "strin"}, "input.json_schema"),
    Constraint("regex", "[a-", "input.regex"),
    Constraint("grammar", "start: undefined_rule", "input.grammar"),
])
def test_a_grammar_the_library_cannot_hold_is_invalid_input_naming_its_field(grammars, constraint):
    with pytest.raises(InvalidInput) as caught:
        grammars.matcher(constraint)
    assert caught.value.field == constraint.field


# Prefix caching


class Shapes(torch.nn.Module):
    """The tiny Llama, recording the (rows, columns) of every forward's input ids."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(self, input_ids, **kwargs):
        self.calls.append(tuple(input_ids.shape))
        return self.inner(input_ids=input_ids, **kwargs)


def test_a_prefix_cache_hit_gives_the_same_tokens_as_a_miss_and_prefills_only_the_rest(tiny, make_engine):
    from runners.llm.prefix_cache import PrefixCache

    system = " ".join(["You are a careful assistant who answers in one line."] * 12)
    prompts = [ids(tiny, system + " Question: " + q) for q in ("why is the sky blue?", "what is rain?")]
    params = [replace(SAMPLED, seed=21), replace(GREEDY, max_new_tokens=12, min_new_tokens=12)]
    uncached = run(make_engine(), [(p, q) for p in prompts for q in params])
    shapes = Shapes(tiny.model)
    prefix = PrefixCache(block_tokens=16, max_tokens=4096)
    engine = make_engine(model=shapes, prefix=prefix)
    first = run(engine, [(prompts[0], params[0])])  # a miss: it fills the cache
    assert first[0].cached_input_token_count == 0
    rest = run(engine, [(prompts[0], params[1]), (prompts[1], params[0]), (prompts[1], params[1])])
    cached = [f.cached_input_token_count for f in rest]
    shared = (len(prompts[0]) - 1) // 16 * 16
    assert cached[0] == shared and all(c >= 16 * (len(system.split()) // 2 // 16) for c in cached)
    assert [f.token_ids for f in first + rest] == [f.token_ids for f in uncached]
    # The hits prefilled only what the cache did not hold: forwards of the rest of each prompt (one for
    # those that reached the engine in the same turn, as wide as the widest rest among them).
    prefills = [(rows, cols) for rows, cols in shapes.calls if cols > 1]
    rests = [len(prompts[i]) - c for i, c in zip((0, 1, 1), cached)]
    assert prefills[0] == (1, len(prompts[0]))
    assert sum(rows for rows, _ in prefills[1:]) == 3 and all(min(rests) <= cols <= max(rests)
                                                                for _, cols in prefills[1:])
    stats = prefix.stats()
    assert stats.hit_tokens == sum(cached) and 0 < stats.hit_rate < 1


def test_hits_of_one_turn_are_prefilled_together_behind_their_cached_blocks(tiny, make_engine):
    # Rows of different cached lengths and different rests in one forward: [padding][cached][padding]
    # [rest]. Each must give the tokens of its lone, uncached run, and fill the cache with its own blocks.
    from runners.llm.prefix_cache import PrefixCache

    system = " ".join(["You are a careful assistant who answers in one line."] * 12)
    prompts = [ids(tiny, system + " Question: " + q) for q in ("why is the sky blue?", "what is rain?")]
    prompts.append(ids(tiny, system[:len(system) // 2] + " and a much longer question that follows it here?"))
    params = [replace(SAMPLED, seed=5), replace(GREEDY, max_new_tokens=12, min_new_tokens=12),
              replace(SAMPLED, seed=9)]
    alone = [run(make_engine(), [request])[0] for request in zip(prompts, params)]
    prefix = PrefixCache(block_tokens=16, max_tokens=4096)
    run(make_engine(prefix=prefix), [(prompts[0], params[0])])  # fills the cache
    shapes = Shapes(tiny.model)
    together = run(make_engine(model=shapes, prefix=prefix, start=False), list(zip(prompts, params)), start=True)

    cached = [f.cached_input_token_count for f in together]
    assert len(set(cached)) > 1 and all(c > 0 for c in cached)  # different cached lengths in one batch
    rests = [len(p) - c for p, c in zip(prompts, cached)]
    assert [cols for _, cols in shapes.calls if cols > 1] == [max(rests)] and shapes.calls[0][0] == 3
    assert [f.token_ids for f in together] == [f.token_ids for f in alone]
    assert [len(prefix.lookup(p + [0])) * 16 for p in prompts] == [len(p) // 16 * 16 for p in prompts]


def test_the_prefix_cache_is_bounded_and_forgets_the_least_recently_used():
    from runners.llm.prefix_cache import PrefixCache

    cache = PrefixCache(block_tokens=4, max_tokens=8)  # two blocks
    layers = [(torch.zeros(2, 12, 8), torch.zeros(2, 12, 8))]
    a, b = list(range(12)), list(range(100, 112))
    cache.store(a, layers)  # three blocks of a: the first is dropped at once
    assert cache.stats().cached_tokens == 8 and cache.lookup(a + [0]) == []  # its first block is gone
    cache.store(b[:9], layers)
    assert len(cache.lookup(b[:9])) == 2
    assert cache.lookup([1, 2, 3, 4, 5]) == []  # no exact match
