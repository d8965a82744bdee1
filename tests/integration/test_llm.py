"""Text generation through the whole cluster: gateway, router, a Ray node agent, the llm runner."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch

from tests.integration.conftest import LLM
from tests.integration.test_predictions import wait_status, wait_terminal
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

PROMPT = "the quick brown fox"


def generation(wait_s: float = 30.0, **fields) -> P.CreatePredictionRequest:
    fields.setdefault("prompt", PROMPT)
    return P.CreatePredictionRequest(model=LLM, wait_s=wait_s,
                                     input=T.PredictionInput(text_generation=T.TextGenerationInput(**fields)))


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    """The same weights loaded in this process, for transformers' own ``generate``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    return model, tokenizer


async def test_greedy_through_the_cluster_equals_transformers_generate(api, reference):
    model, tokenizer = reference
    for prompt, tokens in ((PROMPT, 24), ("seven wise owls watch", 40)):
        pred = await api.predictions.CreatePrediction(
            generation(prompt=prompt, max_new_tokens=tokens, temperature=0.0), metadata=api.md)
        assert pred.status == T.STATUS_SUCCEEDED, pred.error
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        eos = set(model.generation_config.eos_token_id)
        if new and new[-1] in eos:
            new = new[:-1]
        assert pred.output.value.string_value == tokenizer.decode(new, skip_special_tokens=True)
        assert pred.metrics.output_token_count == len(new)
        assert pred.metrics.input_token_count == ids["input_ids"].shape[1]
        assert pred.metrics.finish_reason in ("length", "eos")
        assert pred.metrics.time_to_first_token_s > 0 and pred.metrics.tokens_per_second > 0


async def test_the_same_seed_gives_the_same_text_twice(api):
    async def sample(seed: int) -> str:
        pred = await api.predictions.CreatePrediction(
            generation(max_new_tokens=32, temperature=1.0, top_p=1.0, seed=seed), metadata=api.md)
        assert pred.status == T.STATUS_SUCCEEDED, pred.error
        return pred.output.value.string_value

    first, again, other = await asyncio.gather(sample(11), sample(11), sample(12))
    assert first == again
    assert first != other


async def test_tokens_stream_and_add_up_to_the_output(api):
    events = [e async for e in api.predictions.CreateAndStreamPrediction(
        generation(wait_s=0, max_new_tokens=48, min_new_tokens=48, temperature=0.0), metadata=api.md)]
    chunks = [e.output.value.string_value for e in events if e.WhichOneof("kind") == "output"]
    final = events[-1].completed
    assert final.status == T.STATUS_SUCCEEDED
    # More than one piece: the first token goes at once, the rest in paced frames (node/outbox.py).
    assert len(chunks) > 1 and "".join(chunks) == final.output.value.string_value
    assert final.metrics.output_token_count == 48 and final.metrics.finish_reason == "length"


@pytest.mark.parametrize("fields, field", [
    ({"top_p": 0.0}, "input.top_p"),
    ({"temperature": -0.5}, "input.temperature"),
    ({"max_new_tokens": 0}, "input.max_new_tokens"),
    ({"frequency_penalty": 3.0}, "input.frequency_penalty"),
])
async def test_out_of_range_values_are_invalid_argument_naming_the_field(api, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(generation(**fields), metadata=api.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


async def test_a_canceled_stream_stops_within_a_few_tokens_and_frees_its_slot(api):
    long = generation(wait_s=0, max_new_tokens=4000, min_new_tokens=4000, temperature=0.0)
    pred = await api.predictions.CreatePrediction(long, metadata=api.md)
    await wait_status(api, pred.id, T.STATUS_PROCESSING)
    stream = api.predictions.StreamPrediction(P.StreamPredictionRequest(id=pred.id), metadata=api.md)
    seen = 0
    async for event in stream:
        if event.WhichOneof("kind") == "output":
            seen += 1
            if seen == 3:
                await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=pred.id), metadata=api.md)
        if event.WhichOneof("kind") == "completed":
            final = event.completed
            break
    assert final.status == T.STATUS_CANCELED
    assert seen < 200, "it kept generating long after the cancel"
    # Its slot is free: a short request runs at once.
    after = await api.predictions.CreatePrediction(generation(max_new_tokens=4), metadata=api.md)
    assert after.status == T.STATUS_SUCCEEDED
    assert (await wait_terminal(api, pred.id)).status == T.STATUS_CANCELED


async def test_greedy_is_the_same_alone_and_in_a_mixed_batch_of_16(api):
    prompts = [f"{PROMPT} {' '.join(['owls'] * i)}" for i in range(8)]
    greedy = [generation(prompt=p, max_new_tokens=24, temperature=0.0) for p in prompts]
    alone = [(await api.predictions.CreatePrediction(r, metadata=api.md)).output.value.string_value
             for r in greedy]
    noise = [generation(prompt=p, max_new_tokens=16 + 8 * i, temperature=0.9, top_k=20, seed=i)
             for i, p in enumerate(prompts)]
    mixed = await asyncio.gather(*(api.predictions.CreatePrediction(r, metadata=api.md) for r in greedy + noise))
    together = [p.output.value.string_value for p in mixed[:8]]
    matches = sum(a == b for a, b in zip(alone, together))
    assert matches == len(alone), f"{matches}/{len(alone)} greedy requests matched inside the batch"
