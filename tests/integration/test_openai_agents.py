"""What agents ask of an OpenAI-compatible endpoint, with the official ``openai`` client, on the tiny Llama
through the cluster: structured outputs that validate (JSON Schema, any JSON object, a regex, a choice),
tool calls (auto and a named function, whole and streamed), log-probabilities that agree with the model's
own log-softmax, and ``n`` seeded samples equal alone and inside a mixed batch.

The tiny Llama's weights are random, so what it writes is gibberish; constrained decoding is what makes
it valid, which is what these tests check. Where a test needs the model to choose to call a tool, it
biases the first token to "{" (``logit_bias``), as a model trained for tools would choose it."""

from __future__ import annotations

import asyncio
import json
import math
import re

import jsonschema
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.integration.conftest import LLM

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Describe a person."}]
# Every value of these schemas is bounded in length, so every sample must end within max_tokens: a random
# model's free string or decimal number has no end of its own (its digits run on to the limit).
SCHEMAS = [
    {"type": "object", "additionalProperties": False, "required": ["name", "age"],
     "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0,
                                                                         "maximum": 120}}},
    {"type": "object", "additionalProperties": False, "required": ["pet", "colour", "tags"],
     "properties": {"pet": {"type": "object", "additionalProperties": False, "required": ["kind", "legs"],
                            "properties": {"kind": {"enum": ["cat", "dog", "fox"]},
                                           "legs": {"type": "integer", "minimum": 0, "maximum": 8}}},
                    "colour": {"enum": ["red", "green", "blue"]},
                    "tags": {"type": "array", "minItems": 1, "maxItems": 3,
                             "items": {"type": "string", "maxLength": 6}}}},
    {"type": "array", "minItems": 2, "maxItems": 4,
     "items": {"type": "object", "additionalProperties": False, "required": ["x", "ok"],
               "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10}, "ok": {"type": "boolean"}}}},
]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                   "properties": {"zone": {"type": "string", "maxLength": 20}}}}}


@pytest.fixture
def client(running, api) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{running.gateway.http_port}/v1", api_key=api.token,
                              max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return tokenizer, model


@pytest.mark.parametrize("schema", SCHEMAS, ids=["flat", "nested-enums-arrays", "array-of-objects"])
async def test_a_json_schema_output_always_validates(client, schema):
    for seed in (1, 2, 3):
        reply = await client.chat.completions.create(
            model=LLM, messages=CHAT, max_tokens=400, temperature=1.0, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                                    "strict": True}})
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


async def test_json_object_gives_a_json_object_and_unconstrained_does_not(client):
    # Any JSON object has unbounded strings: a random model ends some within max_tokens, and is cut off
    # in others, where the text is still the beginning of an object. Those that end must parse.
    replies = await asyncio.gather(*(client.chat.completions.create(
        model=LLM, messages=CHAT, max_tokens=300, seed=seed, response_format={"type": "json_object"})
        for seed in range(1, 9)))
    ended = [r.choices[0].message.content for r in replies if r.choices[0].finish_reason == "stop"]
    assert ended and all(isinstance(json.loads(text), dict) for text in ended)
    assert all(r.choices[0].message.content.startswith("{") for r in replies)
    free = await client.chat.completions.create(model=LLM, messages=CHAT, max_tokens=40, seed=4)
    with pytest.raises(ValueError):  # the random model alone writes no JSON: the constraint did it
        json.loads(free.choices[0].message.content)


async def test_a_regex_and_a_choice_hold_streamed_and_whole(client):
    pattern = r"[A-Z][a-z]{2,5}-[0-9]{3}"
    for seed in (5, 6):
        reply = await client.completions.create(model=LLM, prompt="Code:", max_tokens=30, seed=seed,
                                                extra_body={"structured_outputs": {"regex": pattern}})
        assert re.fullmatch(pattern, reply.choices[0].text), reply.choices[0].text
    stream = await client.chat.completions.create(model=LLM, messages=CHAT, max_tokens=30, seed=7, stream=True,
                                                  extra_body={"structured_outputs": {"choice": ["yes", "no",
                                                                                                "maybe"]}})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text in ("yes", "no", "maybe")


async def test_a_bad_schema_is_refused_naming_the_field(client):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.chat.completions.create(
            model=LLM, messages=CHAT, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}})
    assert caught.value.body["param"] == "response_format.json_schema.schema"


def brace_bias(tiny) -> dict[str, int]:
    """The bias that makes the model open its answer with "{", as a model choosing to call would."""
    tokenizer, _ = tiny
    return {str(tokenizer.convert_tokens_to_ids("{")): 100}


async def test_auto_tool_choice_parses_a_call_the_model_makes_and_text_it_writes(client, tiny):
    called = await client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],
        max_tokens=200, seed=8, logit_bias=brace_bias(tiny))
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    # Without the bias the random model writes text; auto leaves it as text.
    text = await client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],
        max_tokens=20, seed=8)
    assert text.choices[0].message.tool_calls is None and text.choices[0].message.content


async def test_a_named_function_is_called_whole_and_streamed_alike(client):
    asked = dict(model=LLM, messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
                 tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
                 max_tokens=200, temperature=0, seed=9)
    whole = (await client.chat.completions.create(**asked)).choices[0]
    assert whole.finish_reason == "tool_calls"
    assert whole.message.tool_calls[0].function.name == "get_time"
    jsonschema.validate(json.loads(whole.message.tool_calls[0].function.arguments),
                        TIME["function"]["parameters"])
    stream = await client.chat.completions.create(**asked, stream=True)
    names, arguments, finish = [], "", None
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            names.append(call.function.name)
            arguments += call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert (names, finish) == (["get_time"], "tool_calls")
    assert json.loads(arguments) == json.loads(whole.message.tool_calls[0].function.arguments)  # greedy


async def test_the_tool_result_goes_back_to_the_model_in_the_conversation(client):
    reply = await client.chat.completions.create(model=LLM, max_tokens=10, temperature=0, tools=[WEATHER],
                                                 tool_choice="none", messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}])
    without = await client.chat.completions.create(model=LLM, max_tokens=10, temperature=0, messages=[
        {"role": "user", "content": "Weather in Paris?"}])
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > without.usage.prompt_tokens + 20  # the tools, the call and its result


async def test_logprobs_are_the_models_own_log_softmax_for_greedy_tokens(client, tiny):
    tokenizer, model = tiny
    messages = [{"role": "user", "content": "the quick brown fox"}]
    reply = await client.chat.completions.create(model=LLM, messages=messages, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=3, extra_body={"min_tokens": 8})
    got = reply.choices[0].logprobs.content
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.eos_token_id)
    steps = [torch.log_softmax(logits[0].float(), dim=-1) for logits in out.logits]
    new = out.sequences[0, ids.shape[1]:].tolist()
    assert len(got) == len(new) == 8
    # The tokens' bytes are the text's (a character split over tokens is whole only in the text).
    assert b"".join(bytes(e.bytes) for e in got).decode(errors="replace") == reply.choices[0].message.content
    for step, (entry, token) in enumerate(zip(got, new)):
        assert entry.logprob == pytest.approx(float(steps[step][token]), abs=1e-4)
        values, _ = steps[step].topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        # Greedy: the most likely token, but for end-of-sequence (no bytes: it stands for no text), which
        # min_tokens keeps out.
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs if t.bytes), abs=1e-6)
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0 + 1e-6


async def test_completions_logprobs_have_the_older_shape_with_text_offsets(client):
    reply = await client.completions.create(model=LLM, prompt="the quick brown fox", max_tokens=6, temperature=0,
                                            logprobs=2)
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == reply.choices[0].text and len(lp.token_logprobs) == len(lp.tokens)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(0 < len(top) <= 2 for top in lp.top_logprobs)


async def test_n_seeded_samples_are_the_same_alone_and_in_a_mixed_batch(client):
    asked = dict(model=LLM, messages=CHAT, max_tokens=24, temperature=1.0, seed=11, n=3)
    alone = await client.chat.completions.create(**asked)
    texts = [c.message.content for c in alone.choices]
    assert [c.index for c in alone.choices] == [0, 1, 2] and len(set(texts)) > 1
    others = [client.chat.completions.create(model=LLM, messages=CHAT, max_tokens=24, temperature=1.0, seed=s)
              for s in (1, 2, 3, 4)]
    mixed, *_ = await asyncio.gather(client.chat.completions.create(**asked), *others)
    assert [c.message.content for c in mixed.choices] == texts
    # Sample k is the request seeded seed + k alone.
    second = await client.chat.completions.create(model=LLM, messages=CHAT, max_tokens=24, temperature=1.0,
                                                  seed=12)
    assert second.choices[0].message.content == texts[1]


async def test_a_shared_system_prompt_is_read_from_the_prefix_cache_and_changes_no_token(client):
    system = "You answer for the warmfleet test of prefix caching, " + " ".join(
        f"rule {i}: be brief and exact." for i in range(40))
    asked = dict(model=LLM, max_tokens=16, temperature=1.0, seed=13)
    first = await client.chat.completions.create(**asked, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "One?"}])
    again = await client.chat.completions.create(**asked, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "One?"}])
    other = await client.chat.completions.create(**asked, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "Two?"}])
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # a system prompt no test sent before
    assert again.choices[0].message.content == first.choices[0].message.content  # a hit, the same tokens
    assert first.usage.prompt_tokens - 16 <= again.usage.prompt_tokens_details.cached_tokens \
        < first.usage.prompt_tokens
    assert other.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 32
