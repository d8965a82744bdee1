"""The official ``openai`` client against the gateway's OpenAI-compatible routes, on the tiny Llama: models
list (this gateway's, as Replicate's client lists them too: tests/integration/test_replicate_client.py),
chat (equal to the gRPC answer for the same messages), streamed chat, completions, by a deployment's name,
a stream the client leaves (its prediction is canceled), and errors that name the field."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
import pytest

from tests.integration.conftest import ECHO, LLM
from tests.integration.test_predictions import wait_terminal
from warmfleet.v1 import deployments_pb2 as D, deployments_pb2_grpc, predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "the quick brown fox"}]


@pytest.fixture
def client(running, api) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{running.gateway.http_port}/v1", api_key=api.token,
                              max_retries=0, timeout=60)


async def by_grpc(api, **text_generation) -> T.Prediction:
    """The same generation through gRPC, for comparison."""
    pred = await api.predictions.CreatePrediction(P.CreatePredictionRequest(
        model=LLM, wait_s=30, input=T.PredictionInput(text_generation=T.TextGenerationInput(**text_generation))),
        metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    return pred


def chat_messages() -> list[T.ChatMessage]:
    return [T.ChatMessage(**m) for m in MESSAGES]


async def test_models_list_names_this_gateways_models_the_llm_among_them(client, running):
    listed = [model async for model in client.models.list()]
    ids = [model.id for model in listed]
    assert LLM in ids and len(ids) == len(set(ids))
    routes = {entry.spec.name for entry in running.gateway.catalog.entries()}  # models and deployments
    assert set(ids) <= routes
    assert all(model.object == "model" for model in listed)


async def test_a_greedy_chat_equals_the_grpc_answer_for_the_same_messages(client, api):
    reply = await client.chat.completions.create(model=LLM, messages=MESSAGES, temperature=0, max_tokens=24)
    grpc_pred = await by_grpc(api, messages=chat_messages(), temperature=0.0, max_new_tokens=24)

    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == grpc_pred.output.value.string_value != ""
    assert choice.finish_reason == {"length": "length", "eos": "stop"}[grpc_pred.metrics.finish_reason]
    assert reply.object == "chat.completion" and reply.model == LLM and reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens == grpc_pred.metrics.input_token_count
    assert reply.usage.completion_tokens == grpc_pred.metrics.output_token_count
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # The id is the prediction's: the same answer is there through gRPC.
    stored = await api.get(reply.id.removeprefix("chatcmpl-"))
    assert stored.output.value.string_value == choice.message.content
    assert stored.input.text_generation.max_new_tokens == 24


async def test_a_streamed_chat_adds_up_to_the_answer_and_ends_with_finish_reason_and_usage(client, api):
    whole = await by_grpc(api, messages=chat_messages(), temperature=0.0, max_new_tokens=32,
                          min_new_tokens=32)
    stream = await client.chat.completions.create(
        model=LLM, messages=MESSAGES, temperature=0, max_completion_tokens=32, stream=True,
        stream_options={"include_usage": True}, extra_body={"min_tokens": 32})
    chunks = [chunk async for chunk in stream]

    assert {c.id for c in chunks} == {chunks[0].id} and {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.output.value.string_value
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 32
    assert chunks[-1].usage.prompt_tokens == whole.metrics.input_token_count
    assert all(c.usage is None for c in chunks[:-1])


async def test_a_completion_continues_a_prompt_as_grpc_does_and_streams_it(client, api):
    grpc_pred = await by_grpc(api, prompt="seven wise owls watch", temperature=0.0, max_new_tokens=20)
    reply = await client.completions.create(model=LLM, prompt="seven wise owls watch", temperature=0,
                                            max_tokens=20)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == grpc_pred.output.value.string_value
    assert reply.usage.completion_tokens == grpc_pred.metrics.output_token_count

    stream = await client.completions.create(model=LLM, prompt=["seven wise owls watch"], temperature=0,
                                             max_tokens=20, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == reply.choices[0].text
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


async def test_a_deployment_is_addressed_by_its_name_like_a_model(client, api):
    deployments = deployments_pb2_grpc.DeploymentsStub(api.channel)
    await deployments.CreateDeployment(D.CreateDeploymentRequest(
        name="test/llama-chat", model=LLM, min_instances=0, max_instances=1), metadata=api.md)
    try:
        reply = await client.chat.completions.create(model="test/llama-chat", messages=MESSAGES, temperature=0,
                                                     max_tokens=12)
        direct = await client.chat.completions.create(model=LLM, messages=MESSAGES, temperature=0,
                                                      max_tokens=12)
        assert reply.model == "test/llama-chat"
        assert reply.choices[0].message.content == direct.choices[0].message.content
        stored = await api.get(reply.id.removeprefix("chatcmpl-"))
        assert (stored.deployment, stored.model) == ("test/llama-chat", LLM)
    finally:
        await deployments.DeleteDeployment(D.DeleteDeploymentRequest(name="test/llama-chat"), metadata=api.md)


async def test_a_stream_the_client_leaves_cancels_its_prediction(client, api):
    stream = await client.chat.completions.create(
        model=LLM, messages=MESSAGES, temperature=0, max_tokens=4000, stream=True,
        extra_body={"min_tokens": 4000})
    seen = 0
    async for chunk in stream:
        seen += 1
        if seen == 4:
            break
    await stream.close()
    pred = await wait_terminal(api, chunk.id.removeprefix("chatcmpl-"))
    assert pred.status == T.STATUS_CANCELED
    assert pred.metrics.output_token_count < 4000


@pytest.mark.parametrize("fields, error, param", [
    ({"temperature": 5}, openai.UnprocessableEntityError, "temperature"),
    ({"max_tokens": 0}, openai.UnprocessableEntityError, "max_tokens"),
    ({"stop": ["ok", ""]}, openai.UnprocessableEntityError, "stop[1]"),
    ({"n": 17}, openai.UnprocessableEntityError, "n"),
    ({"logprobs": True, "top_logprobs": 21}, openai.UnprocessableEntityError, "top_logprobs"),
    ({"logit_bias": {"100000": 5}}, openai.UnprocessableEntityError, "logit_bias.100000"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     openai.UnprocessableEntityError, "response_format.json_schema.schema"),
    ({"model": ECHO}, openai.UnprocessableEntityError, "model"),
    ({"model": "nobody/nothing"}, openai.NotFoundError, "model"),
])
async def test_an_error_is_openais_error_naming_the_field(client, fields, error, param):
    request = {"model": LLM, "messages": MESSAGES, "max_tokens": 4, **fields}
    with pytest.raises(error) as caught:
        await client.chat.completions.create(**request)
    assert caught.value.param == param
    assert param in caught.value.message
    assert caught.value.code == ("model_not_found" if error is openai.NotFoundError else "invalid_argument")


async def test_the_error_of_a_stream_comes_before_the_stream_opens(client):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.completions.create(model=LLM, prompt="a", temperature=-1, stream=True)
    assert caught.value.param == "temperature"


async def test_on_the_wire_errors_are_problem_details_too_and_streams_end_with_done(running, api):
    url = f"http://127.0.0.1:{running.gateway.http_port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url, json={"model": LLM, "messages": MESSAGES, "top_p": 0}) as bad:
            body = await bad.json(content_type=None)
        async with http.post(url, json={"model": LLM, "messages": MESSAGES, "max_tokens": 3,
                                        "stream": True}) as ok:
            content_type, text = ok.headers["Content-Type"], await ok.text()
    assert bad.status == 422 and bad.headers["Content-Type"].startswith("application/problem+json")
    assert (body["status"], body["field"], body["title"]) == (422, "top_p", "Invalid Argument")
    assert body["error"]["param"] == "top_p" and body["error"]["message"] == body["detail"]
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert content_type.startswith("text/event-stream") and events[-1] == "[DONE]"
    assert [orjson.loads(e)["object"] for e in events[:-1]] == ["chat.completion.chunk"] * (len(events) - 1)


async def test_a_bad_token_is_refused(client, running):
    stranger = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await stranger.chat.completions.create(model=LLM, messages=MESSAGES)


async def test_many_chats_at_once_all_complete(client):
    replies = await asyncio.gather(*(
        client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": f"count {i}"}],
                                       max_tokens=8, seed=i) for i in range(8)))
    assert len({r.id for r in replies}) == 8
    assert all(r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
               for r in replies)
