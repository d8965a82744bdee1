"""Replicate's JSON <-> warmfleet.v1 messages: headers, create bodies, prediction objects, catalog shapes."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.grpc import convert
from gateway.rest import shapes
from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput
from warmfleet.v1 import cluster_pb2, deployments_pb2, models_pb2, predictions_pb2, types_pb2 as T

BASE = "http://127.0.0.1:8000"


# Headers


@pytest.mark.parametrize("header, seconds", [
    (None, 0.0), ("", 0.0), ("wait", 60.0), ("wait=5", 5.0), ("Wait = 60", 60.0), ('wait="12"', 12.0),
    ("respond-async, wait=7", 7.0), ("wait=3; foo=bar", 3.0), ("respond-async", 0.0),
])
def test_prefer_wait_reads_the_wait_preference(header, seconds):
    assert shapes.prefer_wait_s(header) == seconds


@pytest.mark.parametrize("header", ["wait=0", "wait=61", "wait=1.5", "wait=soon", "wait=-3"])
def test_prefer_wait_outside_1_to_60_is_invalid_naming_the_header(header):
    with pytest.raises(InvalidInput) as err:
        shapes.prefer_wait_s(header)
    assert err.value.field == "Prefer" and "1 to 60" in err.value.rule


@pytest.mark.parametrize("header, seconds", [
    (None, 0.0), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("90", 90.0), ("500ms", 0.5),
    ("1m30s", 90.0), (" 2.5s ", 2.5), ("1.5", 1.5),
])
def test_cancel_after_reads_durations_and_bare_seconds(header, seconds):
    assert shapes.cancel_after_s(header) == pytest.approx(seconds)


@pytest.mark.parametrize("header", ["", "soon", "5x", "0", "-3", "0s", "5m later", "m5", "inf", "nan"])
def test_a_bad_cancel_after_is_invalid_naming_the_header(header):
    with pytest.raises(InvalidInput) as err:
        shapes.cancel_after_s(header)
    assert err.value.field == "Cancel-After"


# Create bodies


def test_the_version_field_names_a_version_a_model_or_both():
    assert shapes.target_of({"version": "abc123"}) == {"version": "abc123"}
    assert shapes.target_of({"version": "warmfleet/echo"}) == {"model": "warmfleet/echo"}
    assert shapes.target_of({"version": "warmfleet/echo:abc123"}) == {"model": "warmfleet/echo", "version": "abc123"}
    for body in ({}, {"version": ""}, {"version": 5}):
        with pytest.raises(InvalidInput) as err:
            shapes.target_of(body)
        assert err.value.field == "version"


@pytest.mark.parametrize("body, field", [([1], "body"), (None, "body"), ({}, "input"), ({"input": "hi"}, "input")])
def test_a_body_without_an_input_object_is_invalid_naming_it(body, field):
    with pytest.raises(InvalidInput) as err:
        shapes.input_of(body)
    assert err.value.field == field


def test_a_create_body_becomes_the_json_input_form_with_its_files_beside():
    png = FileData(b"\x89PNG...", "image/png", "in.png")
    input = {"prompt": "fox", "steps": 4, "controlnets": [{"type": "canny", "image": png}], "image": png}
    pb = shapes.create_request({"input": {}}, input, wait_s=5.0, deadline_s=30.0, model="warmfleet/tiny-sd")
    assert (pb.model, pb.version, pb.deployment, pb.wait_s, pb.deadline_s) == ("warmfleet/tiny-sd", "", "", 5.0, 30.0)
    assert set(pb.input.json.files) == {"controlnets[0].image", "image"}  # bytes, never base64 in JSON
    values, kind = convert.input_from_pb(pb.input)
    assert kind == "json"
    assert values["prompt"] == "fox" and values["steps"] == 4 and isinstance(values["steps"], int)
    assert values["controlnets"][0] == {"type": "canny", "image": png}
    assert values["image"] == png


@pytest.mark.parametrize("value, mentions", [
    ({"prompt": "a fox"}, False), ({"n": 3, "xs": [1, "two"]}, False), ({"image": "data:image/png;base64,AA"}, True),
    ({"cn": [{"image": "HTTPS://example.com/a.png"}]}, True), ({"u": "http://x"}, True), ({"t": "see http://x"}, False),
])
def test_only_an_input_with_url_strings_needs_its_files_resolved(value, mentions):
    assert shapes.mentions_url(value) is mentions


def test_webhook_fields_pass_on_where_the_proto_has_them():
    fields = predictions_pb2.CreatePredictionRequest.DESCRIPTOR.fields_by_name
    body = {"input": {}, "webhook": "https://example.com/hook", "webhook_events_filter": ["completed"]}
    if "webhook" not in fields:
        with pytest.raises(InvalidInput) as err:
            shapes.create_request(body, {}, wait_s=0, deadline_s=0, model="m/n")
        assert err.value.field == "webhook"
        return
    pb = shapes.create_request(body, {}, wait_s=0, deadline_s=0, model="m/n")
    assert pb.webhook == "https://example.com/hook" and list(pb.webhook_events_filter) == ["completed"]
    with pytest.raises(InvalidInput) as err:
        shapes.create_request({"webhook_events_filter": "completed"}, {}, wait_s=0, deadline_s=0)
    assert err.value.field == "webhook_events_filter"


# Prediction objects


def prediction(**fields) -> T.Prediction:
    pb = T.Prediction(id="p1", model="warmfleet/echo", version="v1", status=T.STATUS_SUCCEEDED, logs="a\nb",
                      input=T.PredictionInput(echo=T.EchoInput(text="hi", delay_ms=5)), **fields)
    pb.created_at.FromJsonString("2024-05-01T12:00:00.250Z")
    return pb


def test_a_prediction_has_replicates_fields_and_links():
    pb = prediction(output=T.PredictionOutput(value=convert.value_to_pb("hi")),
                    metrics=T.PredictionMetrics(predict_time_s=0.5, total_time_s=0.75, output_token_count=3))
    pb.started_at.FromJsonString("2024-05-01T12:00:00.500Z")
    out = shapes.prediction_json(pb, BASE)
    assert out == {
        "id": "p1", "model": "warmfleet/echo", "version": "v1", "input": {"text": "hi", "delay_ms": 5},
        "output": "hi", "logs": "a\nb", "error": None, "status": "succeeded",
        "created_at": "2024-05-01T12:00:00.250Z", "started_at": "2024-05-01T12:00:00.500Z", "completed_at": None,
        "urls": {"get": f"{BASE}/v1/predictions/p1", "cancel": f"{BASE}/v1/predictions/p1/cancel",
                 "stream": f"{BASE}/v1/predictions/p1/stream"},
        "metrics": {"predict_time": 0.5, "total_time": 0.75, "output_token_count": 3},
        "data_removed": False, "source": "api",
    }
    json.dumps(out)  # JSON all the way down


@pytest.mark.parametrize("status, name", [
    (T.STATUS_STARTING, "starting"), (T.STATUS_PROCESSING, "processing"), (T.STATUS_FAILED, "failed"),
    (T.STATUS_CANCELED, "canceled"), (T.STATUS_ABORTED, "aborted"),
])
def test_statuses_are_replicates_words(status, name):
    pb = prediction(error="boom")
    pb.status = status
    out = shapes.prediction_json(pb, BASE)
    assert out["status"] == name and out["error"] == "boom" and out["output"] is None


def test_file_outputs_are_urls_under_the_gateway():
    files = [T.File(data=b"1", content_type="image/png"), T.File(data=b"2", content_type="image/png")]
    out = shapes.prediction_json(prediction(output=T.PredictionOutput(files=files)), BASE)
    assert out["output"] == [f"{BASE}/v1/predictions/p1/output/0", f"{BASE}/v1/predictions/p1/output/1"]
    both = prediction(output=T.PredictionOutput(value=convert.value_to_pb({"n": 2}), files=files[:1]))
    assert shapes.prediction_json(both, BASE)["output"] == {
        "value": {"n": 2}, "files": [f"{BASE}/v1/predictions/p1/output/0"]}


def test_a_deployment_prediction_names_its_deployment():
    assert shapes.prediction_json(prediction(deployment="acme/echo"), BASE)["deployment"] == "acme/echo"
    assert "deployment" not in shapes.prediction_json(prediction(), BASE)


def test_input_files_come_back_as_data_urls():
    pb = prediction()
    pb.input.CopyFrom(convert.input_to_pb({"image": FileData(b"\x89PNG", "image/png"), "scale": 2}, "json"))
    out = shapes.prediction_json(pb, BASE)["input"]
    assert out == {"scale": 2, "image": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()}


def test_unsafe_file_names_stay_out_of_headers():
    assert shapes.file_name(T.File(name="out-0.png")) == "out-0.png"
    assert shapes.file_name(T.File(name='x"; evil=1')) is None
    assert shapes.file_name(T.File(name="")) is None


# Models, versions, deployments


def test_a_model_carries_its_version_with_an_openapi_schema():
    pb = models_pb2.Model(name="warmfleet/tiny-sd", description="draws", runner="diffusion", version="v9",
                          input_schema_json=json.dumps({"type": "object", "properties": {"prompt": {"type": "string"}}}),
                          output_schema_json=json.dumps({"type": "null"}))
    out = shapes.model_json(pb, BASE)
    assert (out["owner"], out["name"], out["description"], out["visibility"]) == ("warmfleet", "tiny-sd", "draws", "public")
    schemas = out["latest_version"]["openapi_schema"]["components"]["schemas"]
    assert out["latest_version"]["id"] == "v9"
    assert schemas["Input"]["properties"] == {"prompt": {"type": "string"}}
    # Files only, over REST: the list of their URLs.
    assert schemas["Output"]["type"] == "array" and schemas["Output"]["items"]["format"] == "uri"


def test_a_deployment_shows_its_current_release():
    pb = deployments_pb2.Deployment(name="acme/echo", model="warmfleet/echo", version="v1", hardware="cpu",
                                    min_instances=1, max_instances=3, current_release=2, target_instances=1,
                                    autoscaling=deployments_pb2.Autoscaling(upscale_delay_s=2.0))
    out = shapes.deployment_json(pb)
    assert out["owner"] == "acme" and out["name"] == "echo"
    release = out["current_release"]
    assert (release["number"], release["model"], release["version"]) == (2, "warmfleet/echo", "v1")
    assert release["configuration"] == {"hardware": "cpu", "min_instances": 1, "max_instances": 3,
                                        "autoscaling": {"upscale_delay_s": 2.0}}


def test_a_deployment_create_body_puts_a_plain_name_under_the_caller():
    pb = shapes.deployment_create_request(
        {"name": "echo", "model": "warmfleet/echo", "hardware": "cpu", "min_instances": 1, "max_instances": 2,
         "autoscaling": {"target_ongoing_requests": 2}}, "acme")
    assert (pb.name, pb.model, pb.hardware, pb.min_instances, pb.max_instances) == (
        "acme/echo", "warmfleet/echo", "cpu", 1, 2)
    assert pb.autoscaling.target_ongoing_requests == 2.0
    kept = shapes.deployment_create_request({"name": "other/echo", "model": "warmfleet/echo"}, "acme")
    assert kept.name == "other/echo" and not kept.HasField("max_instances")


@pytest.mark.parametrize("body, field", [
    ({"model": "m/n"}, "name"), ({"name": "x"}, "model"), ({"name": "x", "model": "m/n", "min_instances": -1}, "min_instances"),
    ({"name": "x", "model": "m/n", "max_instances": "2"}, "max_instances"),
    ({"name": "x", "model": "m/n", "min_instances": True}, "min_instances"),
    ({"name": "x", "model": "m/n", "autoscaling": {"speed": 1}}, "autoscaling.speed"),
])
def test_a_bad_deployment_body_names_the_field(body, field):
    with pytest.raises(InvalidInput) as err:
        shapes.deployment_create_request(body, "acme")
    assert err.value.field == field


def test_an_update_sets_only_what_the_body_names():
    pb = shapes.deployment_update_request("acme/echo", {"max_instances": 4, "version": None})
    assert pb.name == "acme/echo" and pb.max_instances == 4
    assert not pb.HasField("version") and not pb.HasField("min_instances") and not pb.HasField("hardware")


def test_hardware_lists_each_sku_once():
    nodes = [cluster_pb2.Node(hardware="gpu-nvidia-h100-80gb", accelerator="NVIDIA H100 80GB HBM3"),
             cluster_pb2.Node(hardware="cpu", accelerator="cpu"),
             cluster_pb2.Node(hardware="gpu-nvidia-h100-80gb", accelerator="NVIDIA H100 80GB HBM3")]
    assert shapes.hardware_json(nodes) == [{"sku": "cpu", "name": "CPU"},
                                           {"sku": "gpu-nvidia-h100-80gb", "name": "NVIDIA H100 80GB HBM3"}]


def test_pages_go_forward_only():
    assert shapes.page([1], "next-url") == {"next": "next-url", "previous": None, "results": [1]}


def test_json_values_round_trip_as_json_format_makes_them_and_refuse_what_json_has_not():
    from google.protobuf import json_format, struct_pb2

    from warmfleet.jsonvalues import value_from_pb, value_to_pb

    value = {"text": "ü\n", "n": 3, "f": 1.5, "big": 2**53, "none": None, "yes": True,
             "nested": {"list": [1, 2.5, None, False, "x", [], {}]}}
    assert value_to_pb(value) == json_format.ParseDict(value, struct_pb2.Value())
    assert value_from_pb(value_to_pb(value)) == value
    with pytest.raises(ValueError, match=r"value\.nested\[1\]: nan is not a JSON number"):
        value_from_pb(value_to_pb({"nested": [0, float("nan")]}))
    for bad, rule in [({1: 2}, "a key must be a string"), ({"a": object()}, "object is not JSON"),
                      (10**400, "too large")]:
        with pytest.raises(json_format.ParseError, match=rule):
            value_to_pb(bad)
