"""The llm runner: its input schema, its prompting, and predictions through a node agent (no Ray)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys

import pytest

from node.agent import NodeAgent
from runners.devices import resolve_dtype
from runners.llm.runner import INPUT_SCHEMA, LLMRunner
from runners.registry import runner_class
from runners.schema import InputValidator
from warmfleet.domain import Finished, LogLine, RouteSpec, OutputChunk, Status, Task
from warmfleet.errors import InvalidInput

ROUTER = "router-1"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from runners.tiny_models import make_tiny_llama

    return str(make_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama"))


def _spec(weights: str, **options) -> RouteSpec:
    return RouteSpec("warmfleet/tiny-llama", "llm", weights=weights, options=options)


@pytest.fixture
def validator():
    return InputValidator(INPUT_SCHEMA)


@pytest.fixture
async def agent():
    agent = NodeAgent("node-1")
    yield agent
    for info in await agent.instances():
        await agent.unload_instance(info.id)


async def _collect(agent: NodeAgent, prediction_id: str, timeout_s: float = 30.0) -> list:
    """Every event body of one prediction, up to its Finished."""
    bodies: list = []

    async def loop() -> None:
        while not bodies or not isinstance(bodies[-1], Finished):
            bodies.extend(e.body for e in await agent.poll(ROUTER, 1.0) if e.prediction_id == prediction_id)

    await asyncio.wait_for(loop(), timeout_s)
    return bodies


# Registration and schema


def test_the_registry_serves_llm_without_importing_torch():
    code = ("import sys, runners.registry as r; assert r.runner_class('llm').family == 'llm'; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert runner_class("llm") is LLMRunner and inspect.isasyncgenfunction(LLMRunner.predict)


def test_every_input_has_a_description_and_the_defaults_reach_predict(validator):
    props = INPUT_SCHEMA["properties"]
    assert all(p.get("description") for p in props.values())
    filled = validator.validate({"prompt": "hi"})
    assert filled == {"prompt": "hi", "system_prompt": "", "max_new_tokens": 128, "min_new_tokens": -1,
                      "temperature": 0.7, "top_p": 0.95, "top_k": -1, "repetition_penalty": 1.0,
                      "frequency_penalty": 0.0, "presence_penalty": 0.0, "stop_sequences": [], "min_p": 0.0,
                      "n": 1, "logprobs": False, "top_logprobs": 0}


@pytest.mark.parametrize("input, field", [
    ({}, "input.prompt"),
    ({"prompt": ""}, "input.prompt"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "input.prompt"),
    ({"messages": []}, "input.messages"),
    ({"messages": [{"role": "robot", "content": "b"}]}, "input.messages[0].role"),
    ({"prompt": "a", "top_p": 0}, "input.top_p"),
    ({"prompt": "a", "top_p": 1.5}, "input.top_p"),
    ({"prompt": "a", "max_new_tokens": 0}, "input.max_new_tokens"),
    ({"prompt": "a", "max_new_tokens": 4097}, "input.max_new_tokens"),
    ({"prompt": "a", "temperature": -1}, "input.temperature"),
    ({"prompt": "a", "top_k": -2}, "input.top_k"),
    ({"prompt": "a", "repetition_penalty": 0}, "input.repetition_penalty"),
    ({"prompt": "a", "frequency_penalty": 2.5}, "input.frequency_penalty"),
    ({"prompt": "a", "presence_penalty": -2.5}, "input.presence_penalty"),
    ({"prompt": "a", "stop_sequences": [""]}, "input.stop_sequences[0]"),
    ({"prompt": "a", "seed": -1}, "input.seed"),
    ({"prompt": "a", "n": 17}, "input.n"),
    ({"prompt": "a", "min_p": 1.5}, "input.min_p"),
    ({"prompt": "a", "top_logprobs": 21}, "input.top_logprobs"),
    ({"prompt": "a", "logit_bias": {"x": 1}}, "input.logit_bias"),
    ({"prompt": "a", "logit_bias": {"5": 101}}, "input.logit_bias.5"),
    ({"prompt": "a", "stop_token_ids": [-1]}, "input.stop_token_ids[0]"),
    ({"prompt": "a", "choices": []}, "input.choices"),
    ({"prompt": "a", "regex": ""}, "input.regex"),
    ({"messages": [{"role": "user", "content": "b"}], "tools": [{"type": "function"}]}, "input.tools[0].function"),
])
def test_invalid_inputs_are_refused_naming_the_field(validator, input, field):
    with pytest.raises(InvalidInput) as err:
        validator.validate(input)
    assert err.value.field == field


def test_messages_alone_are_a_valid_input(validator):
    filled = validator.validate({"messages": [{"role": "user", "content": "hi"}], "seed": 3})
    assert filled["messages"][0]["content"] == "hi" and "prompt" not in filled


def test_the_policy_admits_as_many_predictions_as_the_engine_batches():
    assert LLMRunner.policy(RouteSpec("m", "llm", options={"max_batch_size": 7})).max_concurrency == 7
    assert LLMRunner.policy(RouteSpec("m", "llm")).max_concurrency == 64


def test_dtype_auto_is_float32_on_cpu_and_unknown_names_are_refused():
    import torch

    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", "cpu")


# Prompting


@pytest.fixture(scope="module")
def tokenized(weights):
    from transformers import AutoTokenizer

    runner = LLMRunner(_spec(weights))
    runner.tokenizer = AutoTokenizer.from_pretrained(weights)
    return runner


def test_a_raw_prompt_is_tokenized_as_is_with_bos(tokenized):
    tok = tokenized.tokenizer
    ids = tokenized.encode({"prompt": "Hello there", "system_prompt": ""})
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == "Hello there"
    assert "<|start_header_id|>" not in tok.decode(ids)


def test_messages_and_system_prompts_go_through_the_chat_template_once(tokenized):
    tok = tokenized.tokenizer
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = tok(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False).input_ids
    assert tokenized.encode({"messages": chat}) == expected
    assert tokenized.encode({"prompt": "Hi", "system_prompt": "Be brief."}) == expected
    assert expected.count(tok.bos_token_id) == 1
    assert tok.decode(expected).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_a_system_prompt_beside_a_system_message_is_refused(tokenized):
    with pytest.raises(InvalidInput, match="input.system_prompt"):
        tokenized.encode({"messages": [{"role": "system", "content": "x"}], "system_prompt": "y"})


# Predictions through a node agent


async def test_a_prediction_streams_chunks_that_make_the_output_and_reports_metrics(agent, weights,
                                                                                      validator):
    await agent.load_instance("llm-1", _spec(weights, max_batch_size=4))
    task_input = validator.validate({"prompt": "The gateway", "max_new_tokens": 16, "min_new_tokens": 16,
                                     "temperature": 0.9, "seed": 11})
    await agent.submit(ROUTER, [Task("p1", "llm-1", task_input)])
    bodies = await _collect(agent, "p1")

    done = bodies[-1]
    chunks = [b.value for b in bodies if isinstance(b, OutputChunk)]
    assert done.status is Status.SUCCEEDED, done.error
    assert chunks and "".join(chunks) == done.output.value
    metrics = done.metrics
    assert (metrics.output_token_count, metrics.finish_reason) == (16, "length")
    assert metrics.input_token_count == 3  # BOS + two tokens
    assert 0 < metrics.time_to_first_token_s < metrics.predict_time_s
    assert metrics.tokens_per_second > 0
    assert not any(isinstance(b, LogLine) for b in bodies)  # the seed was given: nothing to log

    # The same seed through the same instance gives the same text.
    await agent.submit(ROUTER, [Task("p2", "llm-1", task_input)])
    assert (await _collect(agent, "p2"))[-1].output.value == done.output.value


async def test_an_unseeded_prediction_logs_its_seed(agent, weights, validator):
    await agent.load_instance("llm-1", _spec(weights))
    task_input = validator.validate({"prompt": "Hi", "max_new_tokens": 2})
    await agent.submit(ROUTER, [Task("p1", "llm-1", task_input)])
    bodies = await _collect(agent, "p1")
    assert bodies[-1].status is Status.SUCCEEDED
    assert any(isinstance(b, LogLine) and b.text.startswith("Using seed: ") for b in bodies)


async def test_cancel_ends_the_prediction_and_frees_its_engine_row(agent, weights, validator):
    await agent.load_instance("llm-1", _spec(weights, max_batch_size=1))
    engine = agent._instances["llm-1"].runner.engine
    long_input = validator.validate({"prompt": "Hi", "max_new_tokens": 1000, "min_new_tokens": 1000,
                                     "seed": 1})
    await agent.submit(ROUTER, [Task("long", "llm-1", long_input)])
    bodies: list = []
    while not any(isinstance(b, OutputChunk) for b in bodies):
        bodies.extend(e.body for e in await agent.poll(ROUTER, 1.0))

    await agent.cancel(["long"])
    finished = (await _collect(agent, "long"))[-1]
    assert finished.status is Status.CANCELED

    # The only row is free again: the next prediction runs now, not after the 1000 tokens.
    await agent.submit(ROUTER, [Task("next", "llm-1", validator.validate({"prompt": "Hi", "max_new_tokens": 3,
                                                                          "min_new_tokens": 3, "seed": 2}))])
    assert (await _collect(agent, "next"))[-1].metrics.output_token_count == 3
    assert engine.stats().tokens < 200  # the cancelled row made a few tokens, not its 1000


async def test_a_prompt_longer_than_the_model_takes_fails_naming_the_field(agent, weights, validator):
    await agent.load_instance("llm-1", _spec(weights))
    await agent.submit(ROUTER, [Task("p1", "llm-1", validator.validate({"prompt": "word " * 3000}))])
    done = (await _collect(agent, "p1"))[-1]
    assert done.status is Status.FAILED and "input.prompt" in done.error


async def test_unload_stops_the_engine_thread(weights):
    runner = LLMRunner(_spec(weights))
    await asyncio.to_thread(runner.load)
    engine = runner.engine
    assert engine._thread.is_alive()
    runner.unload()
    assert not engine._thread.is_alive() and runner.engine is None
