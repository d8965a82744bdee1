"""Replicate's JSON <-> the core's domain types: headers, create bodies, prediction objects, catalog shapes."""

from __future__ import annotations

import base64
import json

import pytest
from google.protobuf import timestamp_pb2

from gateway.catalog import CatalogEntry
from gateway.deployments import Deployment, Scale
from gateway.rest import shapes
from warmfleet.domain import FileData, Metrics, RouteSpec, NodeInfo, Output, Prediction, Status
from warmfleet.errors import InvalidInput

BASE = "http://127.0.0.1:8000"
CREATED = 1714564800.0  # 2024-05-01T12:00:00Z


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


def test_a_create_body_becomes_the_json_input_form_with_its_files_in_place():
    png = FileData(b"\x89PNG...", "image/png", "in.png")
    input = {"prompt": "fox", "steps": 4, "controlnets": [{"type": "canny", "image": png}], "image": png}
    req = shapes.create_request({"input": {}}, input, wait_s=5.0, deadline_s=30.0, model="warmfleet/tiny-sd")
    assert (req.model, req.version, req.deployment, req.wait_s, req.deadline_s) == ("warmfleet/tiny-sd", "", "", 5.0, 30.0)
    assert req.input_kind == "json" and (req.webhook, req.webhook_events_filter) == ("", [])
    values = req.input
    assert values["prompt"] == "fox" and values["steps"] == 4 and isinstance(values["steps"], int)
    assert values["controlnets"][0] == {"type": "canny", "image": png}
    assert values["image"] == png


def test_input_numbers_read_as_json_numbers_do_over_grpc():
    req = shapes.create_request({}, {"steps": 4.0, "big": 2**53 + 1, "pair": (1, 2.5), "x": {"n": -0.0}},
                                wait_s=0, deadline_s=0, model="m/n")
    assert req.input == {"steps": 4, "big": 2**53, "pair": [1, 2.5], "x": {"n": 0}}
    assert isinstance(req.input["steps"], int) and isinstance(req.input["big"], int)


@pytest.mark.parametrize("input, field", [
    ({"scale": float("nan")}, "input.scale"), ({"cfg": {"steps": [1, float("inf")]}}, "input.cfg.steps[1]"),
])
def test_a_number_json_has_not_is_invalid_naming_its_place(input, field):
    with pytest.raises(InvalidInput) as err:
        shapes.create_request({}, input, wait_s=0, deadline_s=0, model="m/n")
    assert err.value.field == field and "is not a JSON number; numbers must be finite" in err.value.rule


@pytest.mark.parametrize("value, mentions", [
    ({"prompt": "a fox"}, False), ({"n": 3, "xs": [1, "two"]}, False), ({"image": "data:image/png;base64,AA"}, True),
    ({"cn": [{"image": "HTTPS://example.com/a.png"}]}, True), ({"u": "http://x"}, True), ({"t": "see http://x"}, False),
])
def test_only_an_input_with_url_strings_needs_its_files_resolved(value, mentions):
    assert shapes.mentions_url(value) is mentions


def test_webhook_fields_pass_on_and_must_have_their_types():
    body = {"input": {}, "webhook": "https://example.com/hook", "webhook_events_filter": ["completed"]}
    req = shapes.create_request(body, {}, wait_s=0, deadline_s=0, model="m/n")
    assert req.webhook == "https://example.com/hook" and req.webhook_events_filter == ["completed"]
    for bad, field in [({"webhook_events_filter": "completed"}, "webhook_events_filter"),
                       ({"webhook_events_filter": [1]}, "webhook_events_filter"), ({"webhook": 5}, "webhook")]:
        with pytest.raises(InvalidInput) as err:
            shapes.create_request(bad, {}, wait_s=0, deadline_s=0)
        assert err.value.field == field and err.value.rule.startswith("has the wrong type")


# Prediction objects


def prediction(**fields) -> Prediction:
    fields = {"status": Status.SUCCEEDED, "logs": ["a", "b"], "input": {"text": "hi", "delay_ms": 5},
              "input_kind": "echo", **fields}
    return Prediction(id="p1", model="warmfleet/echo", version="v1", owner="alice", created_at=CREATED + 0.5,
                      **fields)


def test_a_prediction_has_replicates_fields_and_links():
    pred = prediction(output=Output("hi"), started_at=CREATED + 0.75,
                      metrics=Metrics(predict_time_s=0.5, total_time_s=0.75, output_token_count=3))
    out = shapes.prediction_json(pred, BASE)
    assert out == {
        "id": "p1", "model": "warmfleet/echo", "version": "v1", "input": {"text": "hi", "delay_ms": 5},
        "output": "hi", "logs": "a\nb", "error": None, "status": "succeeded",
        "created_at": "2024-05-01T12:00:00.500Z", "started_at": "2024-05-01T12:00:00.750000128Z",
        "urls": {"get": f"{BASE}/v1/predictions/p1", "cancel": f"{BASE}/v1/predictions/p1/cancel",
                 "stream": f"{BASE}/v1/predictions/p1/stream", "web": f"{BASE}/predictions/p1"},
        "metrics": {"predict_time": 0.5, "total_time": 0.75, "output_token_count": 3},
        "data_removed": False, "source": "api",
    }  # not completed yet: no completed_at (Replicate's document has no null for it), and no deadline
    json.dumps(out)  # JSON all the way down
    assert shapes.prediction_response(pred, BASE) == out  # one renderer: webhooks send what GET answers


def test_times_appear_once_known_and_a_deadline_is_shown():
    pred = prediction(started_at=CREATED + 1, completed_at=CREATED + 2, deadline_at=CREATED + 30)
    out = shapes.prediction_json(pred, BASE)
    assert (out["started_at"], out["completed_at"], out["deadline"]) == (
        "2024-05-01T12:00:01Z", "2024-05-01T12:00:02Z", "2024-05-01T12:00:30Z")
    bare = shapes.prediction_json(prediction(status=Status.STARTING), BASE)
    assert not {"started_at", "completed_at", "deadline"} & set(bare)


def test_llm_metrics_carry_replicates_names():
    metrics = Metrics(predict_time_s=1.5, total_time_s=2.0, input_token_count=7, output_token_count=20,
                      time_to_first_token_s=0.25, tokens_per_second=16.0)
    assert shapes.metrics_json(metrics) == {
        "predict_time": 1.5, "total_time": 2.0, "input_token_count": 7, "output_token_count": 20,
        "time_to_first_token": 0.25, "tokens_per_second": 16.0}


@pytest.mark.parametrize("text, seconds", [
    ("2024-05-01T12:00:00Z", CREATED), ("2024-05-01T14:00:00+02:00", CREATED),
    ("2024-05-01t12:00:00.5z", CREATED + 0.5), ("2024-05-01 12:00:00.250-00:00", CREATED + 0.25),
])
def test_rfc_3339_times_are_read_with_their_offset(text, seconds):
    assert shapes.parse_rfc3339(text, "created_after") == seconds


@pytest.mark.parametrize("text", ["2024-05-01", "2024-05-01T12:00:00", "yesterday", "2024-13-01T00:00:00Z",
                                  "20240501T120000Z", "2024-05-01T12:00:00Z trailing"])
def test_a_time_that_is_not_rfc_3339_is_invalid_naming_its_parameter(text):
    with pytest.raises(InvalidInput) as err:
        shapes.parse_rfc3339(text, "created_before")
    assert err.value.field == "created_before" and "RFC 3339" in err.value.rule


@pytest.mark.parametrize("t", [0.0, 1.5, CREATED, CREATED + 0.25, CREATED + 0.001, 1_700_000_000.123456,
                               1_700_000_000.1234567, 1_699_999_999.9999998, 12.000001, -1.5])
def test_times_are_rfc_3339_in_utc_as_protobuf_writes_timestamps(t):
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(t * 1e9))
    assert shapes.rfc3339(t) == stamp.ToJsonString()
    assert shapes.epoch_seconds(t) == stamp.seconds


def test_metrics_are_replicates_names_with_the_models_own_beside():
    metrics = Metrics(predict_time_s=1, queue_time_s=0.0, input_token_count=0, finish_reason="", image_count=2,
                      custom={"steps": 3})
    out = shapes.metrics_json(metrics)
    assert out == {"steps": 3.0, "predict_time": 1.0, "queue_time": 0.0, "input_token_count": 0, "image_count": 2}
    assert isinstance(out["predict_time"], float) and isinstance(out["image_count"], int)


@pytest.mark.parametrize("status, name", [
    (Status.STARTING, "starting"), (Status.PROCESSING, "processing"), (Status.FAILED, "failed"),
    (Status.CANCELED, "canceled"), (Status.ABORTED, "aborted"),
])
def test_statuses_are_replicates_words(status, name):
    out = shapes.prediction_json(prediction(error="boom", status=status), BASE)
    assert out["status"] == name and out["error"] == "boom" and out["output"] is None


def test_file_outputs_are_urls_under_the_gateway():
    files = [FileData(b"1", "image/png"), FileData(b"2", "image/png")]
    out = shapes.prediction_json(prediction(output=Output(files=files)), BASE)
    assert out["output"] == [f"{BASE}/v1/predictions/p1/output/0", f"{BASE}/v1/predictions/p1/output/1"]
    both = prediction(output=Output(value={"n": 2.0}, files=files[:1]))
    assert shapes.prediction_json(both, BASE)["output"] == {
        "value": {"n": 2}, "files": [f"{BASE}/v1/predictions/p1/output/0"]}


def test_a_deployment_prediction_names_its_deployment():
    assert shapes.prediction_json(prediction(deployment="acme/echo"), BASE)["deployment"] == "acme/echo"
    assert "deployment" not in shapes.prediction_json(prediction(), BASE)


def test_a_prediction_with_a_webhook_shows_it():
    out = shapes.prediction_json(prediction(webhook="https://x/h", webhook_events_filter=["completed"]), BASE)
    assert (out["webhook"], out["webhook_events_filter"]) == ("https://x/h", ["completed"])
    assert "webhook" not in shapes.prediction_json(prediction(), BASE)


def test_input_files_come_back_as_data_urls():
    pred = prediction(input={"image": FileData(b"\x89PNG", "image/png"), "scale": 2}, input_kind="json")
    out = shapes.prediction_json(pred, BASE)["input"]
    assert out == {"scale": 2, "image": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()}


def test_unsafe_file_names_stay_out_of_headers():
    assert shapes.file_name(FileData(b"", name="out-0.png")) == "out-0.png"
    assert shapes.file_name(FileData(b"", name='x"; evil=1')) is None
    assert shapes.file_name(FileData(b"", name="")) is None


# Models, versions, deployments


def test_a_model_carries_its_version_with_an_openapi_schema():
    spec = RouteSpec(name="warmfleet/tiny-sd", runner="diffusion", description="draws", version_id="v9")
    entry = CatalogEntry(spec, {"type": "object", "properties": {"prompt": {"type": "string"}}}, {"type": "null"},
                         validator=None, listed_at=CREATED)
    out = shapes.model_json(entry, BASE)
    assert (out["owner"], out["name"], out["description"], out["visibility"]) == ("warmfleet", "tiny-sd", "draws", "public")
    schemas = out["latest_version"]["openapi_schema"]["components"]["schemas"]
    # A configured version: its time is when the gateway first listed it; its cog_version names its family.
    assert out["latest_version"]["id"] == "v9"
    assert out["latest_version"]["created_at"] == "2024-05-01T12:00:00+00:00"
    assert out["latest_version"]["cog_version"] == "warmfleet-diffusion"
    assert schemas["Input"]["properties"] == {"prompt": {"type": "string"}}
    # Files only, over REST: the list of their URLs.
    assert schemas["Output"]["type"] == "array" and schemas["Output"]["items"]["format"] == "uri"


def test_a_pushed_version_is_cogs_own_document_with_its_time_and_cog_version():
    openapi = {"openapi": "3.0.2", "components": {"schemas": {"Input": {"type": "object"}}}}
    spec = RouteSpec(name="alice/cog", runner="cog", version_id="d" * 64, created_at=CREATED + 0.5,
                     options={"openapi_schema": openapi, "cog_version": "0.16.0"})
    out = shapes.version_json(CatalogEntry(spec, {}, {}, validator=None))
    assert out == {"id": "d" * 64, "created_at": "2024-05-01T12:00:00.500000+00:00", "cog_version": "0.16.0",
                   "openapi_schema": openapi}


def test_a_deployment_shows_its_current_release():
    spec = RouteSpec(name="acme/echo", runner="echo", model="warmfleet/echo", version_id="v1", hardware="cpu",
                     min_instances=1, max_instances=3, release=2, autoscaling={"upscale_delay_s": 2},
                     released_at=CREATED + 2, released_by="carol")
    out = shapes.deployment_json(Deployment(spec, target_instances=1, released_at=spec.released_at))
    assert out["owner"] == "acme" and out["name"] == "echo" and out["target_instances"] == 1
    release = out["current_release"]
    assert (release["number"], release["model"], release["version"]) == (2, "warmfleet/echo", "v1")
    assert release["created_at"] == "2024-05-01T12:00:02Z"
    assert release["created_by"] == {"type": "user", "username": "carol", "name": "carol"}
    assert release["configuration"] == {"hardware": "cpu", "min_instances": 1, "max_instances": 3,
                                        "autoscaling": {"upscale_delay_s": 2.0}}


def test_a_configured_deployment_asks_for_any_hardware_and_no_account_made_it():
    spec = RouteSpec(name="acme/echo", runner="echo", model="warmfleet/echo", release=1)
    release = shapes.deployment_json(Deployment(spec, 0, released_at=CREATED))["current_release"]
    assert release["configuration"]["hardware"] == "any" and "created_by" not in release
    assert release["created_at"] == "2024-05-01T12:00:00Z"


def test_a_deployment_create_body_puts_a_plain_name_under_the_caller():
    name, model, version, scale = shapes.deployment_create(
        {"name": "echo", "model": "warmfleet/echo", "hardware": "cpu", "min_instances": 1, "max_instances": 2,
         "autoscaling": {"upscale_delay_s": 1, "target_ongoing_requests": 2}}, "acme")
    assert (name, model, version) == ("acme/echo", "warmfleet/echo", "")
    assert scale == Scale(1, 2, {"target_ongoing_requests": 2.0, "upscale_delay_s": 1.0}, "cpu")
    assert list(scale.autoscaling) == ["target_ongoing_requests", "upscale_delay_s"]  # as kept, whatever sent
    kept, _, _, defaults = shapes.deployment_create({"name": "other/echo", "model": "warmfleet/echo"}, "acme")
    assert kept == "other/echo" and defaults == Scale(0, None, {}, "")
    _, _, _, anywhere = shapes.deployment_create({"name": "x", "model": "m/n", "hardware": "any"}, "acme")
    assert anywhere.hardware == ""  # what the API shows for no SKU reads back as none


@pytest.mark.parametrize("body, field", [
    ({"model": "m/n"}, "name"), ({"name": "x"}, "model"), ({"name": "x", "model": "m/n", "min_instances": -1}, "min_instances"),
    ({"name": "x", "model": "m/n", "max_instances": "2"}, "max_instances"),
    ({"name": "x", "model": "m/n", "min_instances": True}, "min_instances"),
    ({"name": "x", "model": "m/n", "autoscaling": {"speed": 1}}, "autoscaling.speed"),
    ({"name": "x", "model": "m/n", "hardware": "GPU please"}, "hardware"),
])
def test_a_bad_deployment_body_names_the_field(body, field):
    with pytest.raises(InvalidInput) as err:
        shapes.deployment_create(body, "acme")
    assert err.value.field == field


def test_an_update_sets_only_what_the_body_names():
    version, scale = shapes.deployment_update({"max_instances": 4, "version": None})
    assert version is None and scale == Scale(None, 4, {}, None)
    version, scale = shapes.deployment_update({"version": "", "hardware": "cpu"})
    assert version == "" and scale == Scale(None, None, {}, "cpu")


def test_hardware_lists_each_sku_once():
    nodes = [NodeInfo("n1", "r1", "a1", accelerator="NVIDIA H100 80GB HBM3", hardware="gpu-nvidia-h100-80gb"),
             NodeInfo("n2", "r2", "a2", accelerator="cpu", hardware="cpu"),
             NodeInfo("n3", "r3", "a3", accelerator="NVIDIA H100 80GB HBM3", hardware="gpu-nvidia-h100-80gb")]
    assert shapes.hardware_json(nodes) == [{"sku": "cpu", "name": "CPU"},
                                           {"sku": "gpu-nvidia-h100-80gb", "name": "NVIDIA H100 80GB HBM3"}]


def test_pages_go_forward_only():
    assert shapes.page([1], "next-url") == {"next": "next-url", "previous": None, "results": [1]}


# Models as both clients read them, and Replicate's model bodies


def test_a_model_is_also_openais_and_the_list_is_both_pages():
    spec = RouteSpec(name="warmfleet/tiny-llama", runner="llm", version_id="v1", created_at=CREATED + 9)
    out = shapes.model_json(CatalogEntry(spec, {}, {}, validator=None), BASE, created_at=CREATED)
    assert (out["id"], out["object"], out["created"], out["owned_by"]) == (
        "warmfleet/tiny-llama", "model", 1714564800, "warmfleet")
    assert out["latest_version"]["created_at"] == "2024-05-01T12:00:09+00:00"  # the version's own time
    listed = shapes.models_page([out])
    assert listed == {"next": None, "previous": None, "results": [out], "object": "list", "data": [out]}


def test_a_model_with_no_version_yet_shows_none_and_its_links():
    spec = RouteSpec(name="alice/hot-dog", runner="", owner="alice", visibility="private", created_at=CREATED,
                     about={"github_url": "https://github.com/alice/hot-dog", "readme": "# Hot dog"})
    out = shapes.model_json(CatalogEntry(spec, {}, {}, validator=None), BASE)
    assert out["latest_version"] is None and out["runner"] == "" and out["created"] == 1714564800
    assert (out["github_url"], out["paper_url"], out["visibility"]) == (
        "https://github.com/alice/hot-dog", None, "private")
    assert "readme" not in out and "weights_url" not in out  # GET .../readme serves it; Replicate's has no weights


def test_replicates_create_a_model_body_is_a_model_with_no_version():
    spec = shapes.model_create({"owner": "alice", "name": "hot-dog", "visibility": "public", "hardware": "cpu",
                                "description": "Detects hot dogs", "paper_url": "https://arxiv.org/abs/1"})
    assert (spec.name, spec.runner, spec.owner, spec.visibility, spec.hardware) == (
        "alice/hot-dog", "", "alice", "public", "cpu")
    assert spec.description == "Detects hot dogs" and spec.about == {"paper_url": "https://arxiv.org/abs/1"}
    assert not spec.has_version and spec.version == "" and spec.min_instances == 0


@pytest.mark.parametrize("body, field", [
    ({"name": "n", "visibility": "public", "hardware": "cpu"}, "owner"),
    ({"owner": "a", "visibility": "public", "hardware": "cpu"}, "name"),
    ({"owner": "a", "name": "n", "hardware": "cpu"}, "visibility"),
    ({"owner": "a", "name": "n", "visibility": "secret", "hardware": "cpu"}, "visibility"),
    ({"owner": "a", "name": "n", "visibility": "public"}, "hardware"),
    ({"owner": "a", "name": "n", "visibility": "public", "hardware": "cpu", "github_url": "github.com/a"},
     "github_url"),
    ({"owner": "a", "name": "n", "visibility": "public", "hardware": "cpu", "description": 5}, "description"),
])
def test_a_bad_create_a_model_body_names_the_field(body, field):
    with pytest.raises(InvalidInput) as err:
        shapes.model_create(body)
    assert err.value.field == field


def test_an_update_of_a_model_sets_what_it_names():
    changes = shapes.model_update({"description": "new", "readme": "# Hi", "license_url": "",
                                   "weights_url": "https://huggingface.co/a/b"})
    assert (changes.description, changes.visibility) == ("new", None)
    assert changes.about == {"readme": "# Hi", "license_url": "", "weights_url": "https://huggingface.co/a/b"}
    assert shapes.model_update({"visibility": "private"}).visibility == "private"
    with pytest.raises(InvalidInput) as err:
        shapes.model_update({"paper_url": "ftp://x"})
    assert err.value.field == "paper_url"


def test_search_scores_the_name_above_words_in_it_above_the_description_and_needs_every_word():
    spec = RouteSpec(name="warmfleet/tiny-llama", runner="llm", description="A tiny text model")
    entry = CatalogEntry(spec, {}, {}, validator=None)
    assert shapes.search_score("tiny-llama", entry) == 3.0 and shapes.search_score("warmfleet/tiny-llama", entry) == 3.0
    assert shapes.search_score("llama", entry) == 2.0 and shapes.search_score("TINY", entry) == 3.0
    assert shapes.search_score("text", entry) == 1.0 and shapes.search_score("tiny image", entry) == 0.0
    found = shapes.search_json("llama", [({"id": "warmfleet/tiny-llama"}, 2.0)])
    assert found == {"query": "llama", "collections": [], "pages": [], "models": [
        {"model": {"id": "warmfleet/tiny-llama"},
         "metadata": {"generated_description": None, "tags": [], "score": 2.0}}]}


def test_an_account_is_replicates_without_the_links_it_has_not():
    assert shapes.account_json("organization", "acme") == {"type": "organization", "username": "acme",
                                                          "name": "acme"}


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
