"""Bad input never reaches a 5xx: each REST body and query value that used to answer 500 (issue 13's
list) is refused with 422 naming the field and the rule, and one user's bad request leaves another's
prediction alone. Real gateway, real HTTP, on a local Ray."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.integration.conftest import ECHO, LLM, create_request
from tests.integration.test_rest import admin, http  # noqa: F401 - the fixtures, shared
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

BODIES = [  # (raw JSON body of a create of the echo model, the field named, a word of the rule)
    (b'{"input": {"text": "x", "delay_ms": NaN}}', "body", "JSON"),
    (b'{"input": {"text": "x", "delay_ms": 1e999}}', "body", "infinity"),
    (b'{"input": {"text": "x", "delay_ms": ' + b"9" * 400 + b"}}", "body", "infinity"),
    (b'{"input": {"text": "\\ud800"}}', "body", "surrogate"),
    (b"[" * 100_000, "body", "depth"),
    (b'{"input": {"text": "x", "delay_ms": 1e300}}', "input.delay_ms", "within"),
    (b'{"input": {"text": "x", "nested": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}}", "input.nested",
     "deeper"),
    (b'{"input": {"text": "\xff"}}', "body", "JSON"),
]


@pytest.mark.parametrize("body, field, rule", BODIES)
async def test_a_create_with_a_value_json_cannot_carry_is_422_naming_it(
        http, admin, body, field, rule):  # noqa: F811
    async with http.post(f"/v1/models/{ECHO}/predictions", data=body,
                         headers={**admin, "Content-Type": "application/json"}) as resp:
        answer = await resp.json(content_type=None)
    assert resp.status == 422, answer
    assert answer["field"].startswith(field) and rule in answer["detail"], answer  # the place, as deep as it is


@pytest.mark.parametrize("page_size", ["99999999999", "%C2%B2", "-1", "1.5", "abc"])
async def test_a_list_with_a_page_size_out_of_its_rule_is_422(http, admin, page_size):  # noqa: F811
    async with http.get(f"/v1/predictions?page_size={page_size}", headers=admin) as resp:
        answer = await resp.json(content_type=None)
    assert resp.status == 422 and answer["field"] == "page_size", answer


async def test_a_nan_over_grpc_is_refused_naming_the_field_in_either_input_form(api):
    as_json = create_request(ECHO, wait_s=5.0)
    as_json.input.ClearField("echo")
    as_json.input.json.fields.update({"text": "x", "delay_ms": float("nan")})
    typed = P.CreatePredictionRequest(model=LLM, input=T.PredictionInput(
        text_generation=T.TextGenerationInput(prompt="hi", max_new_tokens=2, frequency_penalty=float("nan"))))
    for request, field in ((as_json, "delay_ms"), (typed, "frequency_penalty")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.predictions.CreatePrediction(request, metadata=api.md)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert field in err.value.details()


async def test_one_users_refused_nan_leaves_anothers_llm_prediction_in_the_same_turn_alone(api):
    """The NaN that failed every request prefilled in its engine turn is refused at the door now."""
    good = P.CreatePredictionRequest(model=LLM, wait_s=30.0, input=T.PredictionInput(
        text_generation=T.TextGenerationInput(prompt="the quick brown fox", max_new_tokens=4, seed=1)))
    bad = P.CreatePredictionRequest(model=LLM, input=T.PredictionInput(text_generation=T.TextGenerationInput(
        prompt="hi", max_new_tokens=4, frequency_penalty=float("inf"))))
    results = await asyncio.gather(api.predictions.CreatePrediction(good, metadata=api.md),
                                   api.predictions.CreatePrediction(bad, metadata=api.md),
                                   return_exceptions=True)
    assert results[0].status == T.STATUS_SUCCEEDED, results[0].error
    assert isinstance(results[1], grpc.aio.AioRpcError)
    assert results[1].code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_prefer_wait_and_an_output_index_in_other_digits_are_client_errors(http, admin):  # noqa: F811
    async with http.post(f"/v1/models/{ECHO}/predictions", json={"input": {"text": "x"}},
                         headers={**admin, "Prefer": "wait=²"}) as resp:
        answer = await resp.json(content_type=None)
    assert resp.status == 422 and answer["field"] == "Prefer", answer
    async with http.post(f"/v1/models/{ECHO}/predictions", json={"input": {"text": "x"}},
                         headers={**admin, "Prefer": "wait=5"}) as resp:
        done = await resp.json(content_type=None)
    async with http.get(f"/v1/predictions/{done['id']}/output/²", headers=admin) as resp:
        assert resp.status == 404, await resp.text()


async def test_an_upload_whose_multipart_type_has_no_boundary_is_422(http, admin):  # noqa: F811
    async with http.post("/v1/files", data=b"x", headers={**admin, "Content-Type": "multipart/form-data"}) as resp:
        answer = await resp.json(content_type=None)
    assert resp.status == 422 and answer["field"] == "Content-Type", answer
