"""The OpenAI translation's pure parts: OpenAI JSON -> the text_generation input, and Prediction -> OpenAI JSON."""

from __future__ import annotations

import json

import pytest

from gateway.rest import openai as oa
from warmfleet.errors import InvalidInput, NotFound, QueueFull, Unavailable, WarmfleetError
from warmfleet.domain import Metrics, Output, Prediction, Status

MODEL = "warmfleet/tiny-llama"


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def invalid_field(parse, body) -> str:
    with pytest.raises(InvalidInput) as err:
        parse(body)
    return err.value.field


# Requests


def test_a_chat_maps_every_sampling_field_to_the_runner_field():
    gen = oa.chat_request(chat(
        messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}],
        max_completion_tokens=7, temperature=0, top_p=0.5, top_k=3, stop=["\n", "END"], seed=42,
        frequency_penalty=0.5, presence_penalty=-0.25, min_tokens=2, repetition_penalty=1.1,
        user="someone", store=False, metadata={"a": "b"}, some_future_field=1))
    wire = gen.input
    assert wire["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    assert wire["max_new_tokens"] == 7 and wire["min_new_tokens"] == 2
    assert wire["temperature"] == 0.0  # 0 is greedy, not "unset"
    assert (wire["top_p"], wire["top_k"], wire["seed"]) == (0.5, 3, 42)
    assert (wire["frequency_penalty"], wire["presence_penalty"], wire["repetition_penalty"]) == (0.5, -0.25, 1.1)
    assert wire["stop_sequences"] == ["\n", "END"]
    assert "prompt" not in wire and gen.model == MODEL and not gen.stream
    assert list(wire) == ["messages", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k",
                          "repetition_penalty", "frequency_penalty", "presence_penalty", "stop_sequences", "seed"]


def test_fields_left_out_stay_unset_so_the_model_defaults_apply():
    wire = oa.chat_request(chat()).input
    assert wire == {"messages": [{"role": "user", "content": "hi"}]}
    assert "temperature" not in oa.chat_request(chat(temperature=None, stop=None)).input
    assert oa.chat_request(chat(messages=[{"role": "user", "content": ""}])).input["messages"] == [{"role": "user"}]


def test_max_tokens_is_read_when_max_completion_tokens_is_absent_and_loses_when_both_are_given():
    assert oa.chat_request(chat(max_tokens=9)).input["max_new_tokens"] == 9
    both = oa.chat_request(chat(max_tokens=9, max_completion_tokens=3))
    assert both.input["max_new_tokens"] == 3 and both.openai_field("input.max_new_tokens") == "max_completion_tokens"


def test_content_as_text_parts_is_joined_and_a_single_stop_string_is_a_list_of_one():
    gen = oa.chat_request(chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}], stop="STOP"))
    assert gen.input["messages"][0]["content"] == "one\ntwo"
    assert gen.input["stop_sequences"] == ["STOP"]


def test_a_completion_takes_a_prompt_string_or_a_list_of_one():
    assert oa.completion_request({"model": MODEL, "prompt": "once upon"}).input["prompt"] == "once upon"
    gen = oa.completion_request({"model": MODEL, "prompt": ["once upon"], "max_tokens": 5, "stream": True,
                                 "stream_options": {"include_usage": True}})
    assert gen.input == {"prompt": "once upon", "max_new_tokens": 5} and gen.stream and gen.include_usage
    assert oa.completion_request({"model": MODEL, "prompt": ""}).input == {}  # the schema says it is missing


@pytest.mark.parametrize("body, field", [
    (chat(n=-1), "n"),
    (chat(logprobs="yes"), "logprobs"),
    (chat(top_logprobs=2), "top_logprobs"),  # without logprobs
    (chat(tools=[{"type": "function", "function": {"name": "no spaces"}}]), "tools[0].function.name"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}] * 2), "tools[1].function.name"),
    (chat(tools=[{"type": "code"}]), "tools[0]"),
    (chat(tool_choice="required"), "tool_choice"),  # without tools
    (chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), "tool_choice.function.name"),
    (chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="required",
          response_format={"type": "json_object"}), "tool_choice"),
    (chat(response_format={"type": "xml"}), "response_format.type"),
    (chat(response_format={"type": "json_schema", "json_schema": {"schema": []}}), "response_format.json_schema"),
    (chat(response_format={"type": "json_object"}, structured_outputs={"regex": "a+"}),
     "structured_outputs.regex"),
    (chat(structured_outputs={"ebnf": "x"}), "structured_outputs.ebnf"),
    (chat(guided_json="{not json"), "structured_outputs.json"),
    (chat(logit_bias=[1]), "logit_bias"),
    (chat(logit_bias={"5": "up"}), "logit_bias.5"),
    (chat(stop_token_ids=[-1]), "stop_token_ids[0]"),
    (chat(functions=[{"name": "f"}]), "functions"),
    (chat(temperature="hot"), "temperature"),
    (chat(temperature=True), "temperature"),
    (chat(max_tokens=-1), "max_tokens"),
    (chat(max_tokens=2.5), "max_tokens"),
    (chat(seed=2**64), "seed"),
    (chat(stop=[1]), "stop"),
    (chat(stream="yes"), "stream"),
    (chat(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    (chat(messages=[]), "messages"),
    (chat(messages=["hi"]), "messages[0]"),
    (chat(messages=[{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]), "messages[1].role"),
    (chat(messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]),
     "messages[0].tool_calls[0].function"),
    (chat(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (chat(messages=[{"role": {"name": "user"}, "content": "hi"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": None}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[1]"),
])
def test_a_chat_the_translation_cannot_carry_is_refused_naming_the_field(body, field):
    assert invalid_field(oa.chat_request, body) == field


@pytest.mark.parametrize("body, field", [
    ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": "a", "echo": True}, "echo"),
    ({"model": MODEL, "prompt": "a", "best_of": 2}, "best_of"),
    ({"model": MODEL, "prompt": "a", "suffix": "end"}, "suffix"),
    ({"model": MODEL, "prompt": "a", "logprobs": -1}, "logprobs"),
    ({"model": MODEL, "prompt": "a", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
])
def test_a_completion_the_translation_cannot_carry_is_refused_naming_the_field(body, field):
    assert invalid_field(oa.completion_request, body) == field


def test_no_op_values_of_unsupported_fields_are_accepted():
    gen = oa.chat_request(chat(n=1, logprobs=False, tools=[], tool_choice="none",
                               response_format={"type": "text"}, logit_bias={}, modalities=["text"]))
    assert gen.input == {"messages": [{"role": "user", "content": "hi"}], "n": 1, "logprobs": False}
    assert oa.completion_request({"model": MODEL, "prompt": "a", "best_of": 1, "echo": False,
                                  "logprobs": None}).input["prompt"] == "a"


@pytest.mark.parametrize("runner_field, sent", [
    ("input.temperature", "temperature"),
    ("input.max_new_tokens", "max_tokens"),
    ("input.min_new_tokens", "min_tokens"),
    ("input.stop_sequences[1]", "stop[1]"),
    ("input.messages[2].content", "messages[2].content"),
    ("input.prompt", "messages"),
    ("model", "model"),
])
def test_a_runner_error_is_renamed_to_the_openai_field_the_client_sent(runner_field, sent):
    gen = oa.chat_request(chat(max_tokens=4))
    err = oa.renamed(InvalidInput(runner_field, "is wrong"), gen)
    assert err.field == sent and str(err) == f"{sent}: is wrong"
    assert oa.renamed(NotFound("x"), gen).__class__ is NotFound


# Responses


def prediction(text: str = "hello there", finish: str = "eos", **fields) -> Prediction:
    fields.setdefault("status", Status.SUCCEEDED)
    return Prediction(id="p123", model=MODEL, version="v9", input={}, owner="alice", created_at=1_700_000_000.25,
                      metrics=Metrics(input_token_count=5, output_token_count=3, finish_reason=finish),
                      output=Output(text), **fields)


@pytest.mark.parametrize("ours, theirs", [("eos", "stop"), ("stop", "stop"), ("length", "length"), ("", "stop")])
def test_finish_reasons(ours, theirs):
    assert oa.finish_reason(ours) == theirs


def test_a_chat_completion_has_openais_shape():
    body = oa.completion_response(oa.CHAT, prediction(finish="length"), oa.chat_request(chat(model="my/alias")))
    assert body == {
        "id": "chatcmpl-p123", "object": "chat.completion", "created": 1_700_000_000, "model": "my/alias",
        "system_fingerprint": "v9",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there", "refusal": None},
                     "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                  "prompt_tokens_details": {"cached_tokens": 0}},
    }


def test_a_text_completion_has_openais_shape():
    body = oa.completion_response(oa.COMPLETION, prediction(), oa.completion_request({"model": MODEL, "prompt": "a"}))
    assert body["id"] == "cmpl-p123" and body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "hello there", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["total_tokens"] == 8


def test_chat_chunks_open_with_the_role_then_text_then_the_finish_reason_then_usage():
    chunks = oa.Chunks(oa.CHAT, "p123", oa.chat_request(chat(stream=True, stream_options={"include_usage": True})),
                       created=7)
    stream = [*chunks.opening(), *chunks.output("hel"), *chunks.output("lo"), *chunks.ending(prediction("hello"))]
    assert {c["id"] for c in stream} == {"chatcmpl-p123"}
    assert {c["object"] for c in stream} == {"chat.completion.chunk"}
    assert {c["created"] for c in stream} == {7}
    assert [c["choices"][0]["delta"] for c in stream[:4]] == [
        {"role": "assistant", "content": ""}, {"content": "hel"}, {"content": "lo"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in stream[:4]] == [None, None, None, "stop"]
    assert [c["usage"] for c in stream[:4]] == [None] * 4
    assert stream[4]["choices"] == [] and stream[4]["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}}


def test_without_include_usage_chunks_carry_no_usage_and_no_usage_chunk_ends_the_stream():
    chunks = oa.Chunks(oa.COMPLETION, "p1", oa.completion_request({"model": MODEL, "prompt": "a"}))
    stream = [*chunks.opening(), *chunks.output("a"), *chunks.ending(prediction(finish="length"))]
    assert all("usage" not in c for c in stream)
    assert [c["choices"] for c in stream] == [
        [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}],
        [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]]
    assert {c["object"] for c in stream} == {"text_completion"}


# Errors


def test_a_failed_prediction_with_the_runners_invalid_input_is_the_clients_error():
    pred = prediction(status=Status.FAILED, error="InvalidInput: input.messages: this model has no chat "
                                                    "template; give a plain prompt",
                      error_code="InvalidInput", error_field="input.messages")
    err = oa.ended_error(pred)
    assert isinstance(err, InvalidInput) and err.field == "input.messages"
    assert err.rule == "this model has no chat template; give a plain prompt"


@pytest.mark.parametrize("status, error, cls, text", [
    (Status.FAILED, "RuntimeError: generation failed: oom", WarmfleetError,
     "prediction p123 failed: RuntimeError: generation failed: oom"),
    # Text that reads like a runner's InvalidInput, without its code, is not taken for one.
    (Status.FAILED, "InvalidInput: input.x: no", WarmfleetError, "prediction p123 failed: InvalidInput: input.x: no"),
    (Status.CANCELED, "canceled while processing", Unavailable,
     "prediction p123 was canceled: canceled while processing"),
    (Status.ABORTED, "", Unavailable, "prediction p123 was aborted"),
])
def test_other_ended_predictions_are_server_side_errors(status, error, cls, text):
    err = oa.ended_error(prediction(status=status, error=error))
    assert type(err) is cls and str(err) == text


@pytest.mark.parametrize("err, status, kind, param, code", [
    (InvalidInput("temperature", "5 is greater than the maximum of 2"), 422, "invalid_request_error",
     "temperature", "invalid_argument"),
    (NotFound("model 'x/y' not found"), 404, "invalid_request_error", "model", "model_not_found"),
    (QueueFull("queue full"), 429, "invalid_request_error", None, "resource_exhausted"),
    (WarmfleetError("prediction p failed"), 500, "server_error", None, "unknown"),
    (Unavailable("no node"), 503, "server_error", None, "unavailable"),
])
def test_an_error_body_is_problem_details_and_openais_error_object(err, status, kind, param, code):
    response = oa.error_response(err)
    body = json.loads(response.text)
    assert response.status == status and response.content_type == "application/problem+json"
    assert body["status"] == status and body["detail"] == str(err) and body["type"].startswith("https://")
    assert body["error"] == {"message": str(err), "type": kind, "param": param, "code": code}
    assert body.get("field") == (err.field if isinstance(err, InvalidInput) else None)
    assert ("Retry-After" in response.headers) == (status == 429)


# Structured outputs, tools, logprobs and n

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_response_formats_and_vllms_structured_outputs_become_one_constraint():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert oa.chat_request(chat(response_format={"type": "json_object"})).input["json_schema"] == {"type": "object"}
    gen = oa.chat_request(chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert gen.input["json_schema"] == schema
    assert gen.openai_field("input.json_schema") == "response_format.json_schema.schema"
    assert oa.chat_request(chat(structured_outputs={"regex": "[a-z]+"})).input["regex"] == "[a-z]+"
    assert oa.chat_request(chat(guided_choice=["yes", "no"])).input["choices"] == ["yes", "no"]
    assert oa.chat_request(chat(guided_json='{"type": "array"}')).input["json_schema"] == {"type": "array"}


def test_sampling_extensions_logprobs_and_n_reach_the_runner_input():
    gen = oa.chat_request(chat(n=3, seed=7, min_p=0.1, logit_bias={"17": -100}, stop_token_ids=[5],
                               logprobs=True, top_logprobs=2))
    assert {k: gen.input[k] for k in ("n", "seed", "min_p", "logit_bias", "stop_token_ids", "logprobs",
                                      "top_logprobs")} == {
        "n": 3, "seed": 7, "min_p": 0.1, "logit_bias": {"17": -100.0}, "stop_token_ids": [5], "logprobs": True,
        "top_logprobs": 2}
    assert gen.rich and gen.choices == 3
    completion = oa.completion_request({"model": MODEL, "prompt": "a", "logprobs": 3})
    assert (completion.input["logprobs"], completion.input["top_logprobs"]) == (True, 3)
    assert completion.openai_field("input.top_logprobs") == "logprobs"


def test_tool_choices_constrain_the_answer_as_openai_means_them():
    auto = oa.chat_request(chat(tools=[WEATHER]))
    assert auto.input["tools"] == [WEATHER] and auto.functions == [WEATHER]
    assert auto.input["grammar"].startswith("start: call | text\ncall: %json {")
    required = oa.chat_request(chat(tools=[WEATHER], tool_choice="required")).input["json_schema"]
    assert required["anyOf"][0]["properties"]["name"] == {"const": "get_weather"}
    named = oa.chat_request(chat(tools=[WEATHER], tool_choice={"type": "function",
                                                               "function": {"name": "get_weather"}}))
    assert named.input["json_schema"]["properties"]["parameters"] == WEATHER["function"]["parameters"]
    none = oa.chat_request(chat(tools=[WEATHER], tool_choice="none"))
    assert none.input["tools"] == [WEATHER] and not none.functions
    assert not {"grammar", "json_schema"} & set(none.input)


def test_a_conversation_with_a_call_and_its_result_goes_back_as_the_model_wrote_it():
    gen = oa.chat_request(chat(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]))
    assert gen.input["messages"][1:] == [
        {"role": "assistant", "content": '{"name":"get_weather","parameters":{"city":"Paris"}}'},
        {"role": "tool", "content": "18 C"}]


def rich_prediction(choices: list[dict]) -> Prediction:
    return prediction(finish="eos") if not choices else Prediction(
        id="p9", model=MODEL, version="v1", input={}, owner="a", created_at=1.0, status=Status.SUCCEEDED,
        metrics=Metrics(input_token_count=2, output_token_count=4, finish_reason="eos"),
        output=Output({"choices": choices}))


LP = {"token": "hi", "token_id": 5, "logprob": -0.5, "bytes": [104, 105],
      "top_logprobs": [{"token": "hi", "token_id": 5, "logprob": -0.5, "bytes": [104, 105]}]}


def test_n_choices_with_logprobs_in_chat_and_completion_shapes():
    pred = rich_prediction([{"index": 0, "text": "hi", "finish_reason": "eos", "logprobs": [LP]},
                            {"index": 1, "text": "yo", "finish_reason": "length", "logprobs": [LP]}])
    chat_body = oa.completion_response(oa.CHAT, pred, oa.chat_request(chat(n=2, logprobs=True, top_logprobs=1)))
    assert [c["finish_reason"] for c in chat_body["choices"]] == ["stop", "length"]
    assert chat_body["choices"][1]["message"]["content"] == "yo"
    assert chat_body["choices"][0]["logprobs"] == {"content": [{
        "token": "hi", "logprob": -0.5, "bytes": [104, 105],
        "top_logprobs": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105]}]}], "refusal": None}
    text_body = oa.completion_response(oa.COMPLETION, pred, oa.completion_request(
        {"model": MODEL, "prompt": "a", "n": 2, "logprobs": 1}))
    assert text_body["choices"][0]["logprobs"] == {"tokens": ["hi"], "token_logprobs": [-0.5],
                                                   "top_logprobs": [{"hi": -0.5}], "text_offset": [0]}


def test_an_answer_that_is_a_call_is_tool_calls_and_a_streamed_one_is_held_back_to_the_end():
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    gen = oa.chat_request(chat(tools=[WEATHER], stream=True))
    body = oa.completion_response(oa.CHAT, prediction(call), gen)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (made,) = choice["message"]["tool_calls"]
    assert made["id"].startswith("call_") and made["function"] == {"name": "get_weather",
                                                                    "arguments": '{"city":"Paris"}'}
    chunks = oa.Chunks(oa.CHAT, "p123", gen)
    stream = [*chunks.opening(), *chunks.output(call[:10]), *chunks.output(call[10:]),
              *chunks.ending(prediction(call))]
    deltas = [c["choices"][0]["delta"] for c in stream]
    assert deltas[0] == {"role": "assistant", "content": ""} and "content" not in deltas[1]
    assert deltas[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert stream[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Text that is not a call streams as it comes.
    text_chunks = oa.Chunks(oa.CHAT, "p123", gen)
    assert text_chunks.output("Sunny")[0]["choices"][0]["delta"] == {"content": "Sunny"}
    assert oa.answers_of(prediction("{not a call"), gen)[0].tool_calls is None
