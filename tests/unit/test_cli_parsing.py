"""The CLI's -i parsing and output handling, and the client's conversions and error mapping.

No Ray and no server: protobuf messages are built by hand and the CLI runs against a fake client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from google.protobuf import struct_pb2

from warmfleet import client
from warmfleet.cli import commands as cli, context as cli_context
from warmfleet.client import (
    Client, Event, File, GatewayUnreachableError, InvalidArgumentError, Node, NotFoundError, Output,
    Prediction, PredictionError, UnauthenticatedError, UnavailableError, WarmfleetClientError,
)
from warmfleet.settings import load_settings
from warmfleet.v1 import cluster_pb2, models_pb2, predictions_pb2, types_pb2

# -i values


@pytest.mark.parametrize("text, expected", [
    ("1", 1), ("2.5", 2.5), ("-3", -3), ("true", True), ("false", False), ("null", None),
    ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ('"42"', "42"), ('"@john"', "@john"),
    ("hello", "hello"), ("hello world", "hello world"), ("", ""), ("NaN", "NaN"), ("Infinity", "Infinity"),
    ("01", "01"),
])
def test_input_values_are_json_when_they_parse_else_text(text: str, expected: Any) -> None:
    value = cli.parse_input_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_input_splits_at_the_first_equals_sign() -> None:
    assert cli.parse_input("prompt=a=b") == ("prompt", "a=b")


def test_input_at_path_reads_the_file_as_a_file_input(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG...")
    key, value = cli.parse_input(f"image=@{image}")
    assert key == "image"
    assert value == File(b"\x89PNG...", "image/png", "cat.png")


@pytest.mark.parametrize("text, message", [
    ("novalue", "expected key=value, got 'novalue'"),
    ("=x", "missing the key"),
    ("image=@/no/such/file.png", "cannot read '/no/such/file.png' for 'image'"),
])
def test_malformed_inputs_are_rejected_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cli.parse_input(text)


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.cli, list(args))


def test_an_input_without_equals_is_a_usage_error_naming_the_option() -> None:
    result = _invoke("predict", "warmfleet/echo", "-i", "novalue")
    assert result.exit_code == 2
    assert "Invalid value for '-i' / '--input': expected key=value, got 'novalue'" in result.output


def test_an_input_given_twice_is_a_usage_error() -> None:
    result = _invoke("predict", "warmfleet/echo", "-i", "text=a", "-i", "text=b")
    assert result.exit_code == 2
    assert "'text' is given twice" in result.output


def test_an_unreadable_input_file_is_a_usage_error() -> None:
    result = _invoke("predict", "warmfleet/echo", "-i", "image=@/no/such/file.png")
    assert result.exit_code == 2
    assert "cannot read '/no/such/file.png'" in result.output


def test_stream_and_async_together_are_refused() -> None:
    result = _invoke("predict", "warmfleet/echo", "-i", "text=a", "--stream", "--async")
    assert result.exit_code == 2
    assert "--stream and --async do not go together" in result.output


# The CLI against a fake client


def _prediction(status: str = "succeeded", output: Any = None, files: list[File] | None = None,
                error: str = "", logs: str = "") -> Prediction:
    return Prediction(id="p1", model="warmfleet/echo", version="v1", status=status, input={},
                      output=output, output_files=files or [], error=error, logs=logs)


class FakePredictions:
    def __init__(self, final: Prediction | None = None, error: WarmfleetClientError | None = None) -> None:
        self.final, self.error, self.created_with = final, error, None

    def create(self, model: str, input: dict[str, Any], **options: Any) -> Prediction:
        if self.error is not None:
            raise self.error
        self.created_with = (model, input, options)
        return self.final

    def wait(self, prediction: Prediction, timeout_s: float | None = None) -> Prediction:
        return prediction


class FakeClient:
    def __init__(self, predictions: FakePredictions) -> None:
        self.predictions = predictions


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePredictions:
    predictions = FakePredictions(_prediction(output="hi"))
    monkeypatch.setattr(cli_context, "Client", lambda **kwargs: FakeClient(predictions))
    return predictions


def test_predict_sends_the_parsed_inputs_and_prints_text_raw(fake: FakePredictions) -> None:
    result = _invoke("predict", "warmfleet/echo", "-i", "text=hello", "-i", "chunks=3")
    assert result.exit_code == 0, result.output
    assert result.output == "hi\n"
    assert fake.created_with[:2] == ("warmfleet/echo", {"text": "hello", "chunks": 3})


def test_predict_prints_structured_output_as_json(fake: FakePredictions) -> None:
    fake.final = _prediction(output={"n": 1})
    result = _invoke("predict", "m/x")
    assert json.loads(result.output) == {"n": 1}


def test_a_failed_prediction_exits_1_with_its_error_on_stderr(fake: FakePredictions) -> None:
    fake.final = _prediction(status="failed", error="CUDA out of memory", logs="loading")
    result = _invoke("predict", "warmfleet/echo", "-i", "text=x")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "loading\nerror: prediction p1 failed: CUDA out of memory\n"


@pytest.mark.parametrize("error, line", [
    (GatewayUnreachableError("UNAVAILABLE", "no gateway at h:1: is `warmfleet up` running?"),
     "error: no gateway at h:1: is `warmfleet up` running?\n"),
    (UnauthenticatedError("UNAUTHENTICATED", "unknown token"),
     "error: unknown token; pass --token or set WARMFLEET_TOKEN\n"),
    (InvalidArgumentError("INVALID_ARGUMENT", "input.chunks: 0 is less than the minimum of 1"),
     "error: input.chunks: 0 is less than the minimum of 1\n"),
])
def test_client_errors_print_one_line_and_exit_1(fake: FakePredictions, error: WarmfleetClientError,
                                                 line: str) -> None:
    fake.error = error
    result = _invoke("predict", "warmfleet/echo", "-i", "text=x")
    assert result.exit_code == 1
    assert result.stderr == line


def test_a_launch_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(settings: Any) -> None:
        raise cli.launch.LaunchError(f"the gateway exited with code 1; see {settings.home}/logs/gateway.log")

    monkeypatch.setattr(cli.launch, "up", fail)
    result = _invoke("--home", str(tmp_path), "up", "--grpc-port", "0")
    assert result.exit_code == 1
    last_line = result.stderr.splitlines()[-1]
    assert last_line == f"error: the gateway exited with code 1; see {tmp_path}/logs/gateway.log"


def test_output_files_are_written_to_the_output_dir(fake: FakePredictions, tmp_path: Path) -> None:
    fake.final = _prediction(files=[File(b"one", "image/png", "out.png"),
                                    File(b"two", "image/png", "out.png")])
    result = _invoke("predict", "m/x", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "out.png").read_bytes() == b"one"
    assert (tmp_path / "out" / "out-1.png").read_bytes() == b"two"
    assert result.stdout.split() == [str(tmp_path / "out" / "out.png"), str(tmp_path / "out" / "out-1.png")]


def test_output_file_names_cannot_escape_the_folder_and_are_distinct() -> None:
    files = [File(b"", name="../../etc/passwd"), File(b"", content_type="image/png"),
             File(b"", name="a.png"), File(b"", name="a.png"), File(b"", name="..")]
    assert cli.output_file_names(files) == ["passwd", "output-1.png", "a.png", "a-1.png", "output-4.bin"]


# Inputs to protobuf


def test_input_dict_becomes_json_fields_and_files(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    path.write_bytes(b"PNG")
    with open(path, "rb") as handle:
        pb = client.input_to_pb({"prompt": "a cat", "steps": 20, "image": b"raw", "mask": path,
                                 "init": handle, "tags": ["x", 1]})
    assert pb.WhichOneof("kind") == "json"
    assert set(pb.json.fields.fields) == {"prompt", "steps", "tags"}
    assert pb.json.fields["steps"] == 20
    assert set(pb.json.files) == {"image", "mask", "init"}
    assert pb.json.files["image"].data == b"raw"
    assert (pb.json.files["mask"].name, pb.json.files["mask"].content_type) == ("mask.png", "image/png")
    assert pb.json.files["init"].data == b"PNG"


def test_input_round_trips_through_protobuf() -> None:
    values = {"text": "hi", "n": 3, "ratio": 0.5, "flags": [True, None],
              "image": File(b"x", "image/png", "i.png")}
    assert client.input_from_pb(client.input_to_pb(values)) == values


def test_a_value_that_is_neither_json_nor_a_file_names_the_field() -> None:
    with pytest.raises(InvalidArgumentError, match=r"input\.when: not JSON-shaped and not a file"):
        client.input_to_pb({"when": object()})


def test_nested_files_travel_under_their_paths_and_come_back_in_place() -> None:
    values = {"prompt": "a cat", "images": [b"a", b"b"],
              "controlnets": [{"type": "canny", "image": b"edges"}, {"type": "depth", "image": b"map"}]}
    pb = client.input_to_pb(values)
    assert set(pb.json.files) == {"images[0]", "images[1]", "controlnets[0].image", "controlnets[1].image"}
    assert pb.json.fields["controlnets"][0]["type"] == "canny"
    back = client.input_from_pb(pb)
    assert [f.data for f in back["images"]] == [b"a", b"b"]
    assert [(u["type"], u["image"].data) for u in back["controlnets"]] == [("canny", b"edges"), ("depth", b"map")]


def test_a_path_key_puts_a_file_into_the_json_fields() -> None:
    """As the CLI sends ``-i controlnets='[{"type": "canny"}]' -i controlnets[0].image=@edges.png``."""
    pb = client.input_to_pb({"controlnets": [{"type": "canny"}], "controlnets[0].image": b"edges"})
    back = client.input_from_pb(pb)
    assert back["controlnets"][0]["type"] == "canny" and back["controlnets"][0]["image"].data == b"edges"
    assert set(back) == {"controlnets"}


@pytest.mark.parametrize("path", ["a..b", "[0]", "a[x]", "a.", "a[5000]", "prompt.x"])
def test_a_file_path_that_does_not_fit_is_refused(path) -> None:
    from warmfleet.jsonvalues import place_files

    with pytest.raises(ValueError, match="path"):
        place_files({"prompt": "text"}, {path: b"x"})


# Protobuf to client types


def _timestamp_pb(pb: Any, name: str, seconds: int) -> None:
    getattr(pb, name).FromSeconds(seconds)


def test_prediction_from_pb() -> None:
    pb = types_pb2.Prediction(id="p1", model="acme/sdxl", version="v9", status=types_pb2.STATUS_SUCCEEDED,
                              logs="a\nb", owner="alice")
    pb.input.json.fields.update({"steps": 20, "scale": 7.5})
    pb.input.json.files["image"].CopyFrom(types_pb2.File(data=b"in", name="in.png"))
    pb.output.value.CopyFrom(struct_pb2.Value(number_value=4.0))
    pb.output.files.add(data=b"img", content_type="image/png", name="out-0.png", width=8, height=8)
    pb.metrics.predict_time_s = 1.5
    pb.metrics.queue_time_s = 0.0
    _timestamp_pb(pb, "created_at", 1_700_000_000)
    p = client.prediction_from_pb(pb)
    assert p.status == "succeeded" and p.succeeded and p.done
    assert p.input == {"steps": 20, "scale": 7.5, "image": File(b"in", "", "in.png")}
    assert p.output == 4 and type(p.output) is int
    assert p.output_files == [File(b"img", "image/png", "out-0.png", 8, 8)]
    assert p.metrics == {"predict_time_s": 1.5, "queue_time_s": 0.0}
    assert p.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert p.started_at is None and p.completed_at is None
    assert (p.logs, p.owner) == ("a\nb", "alice")


def test_a_prediction_without_output_has_none_and_no_files() -> None:
    p = client.prediction_from_pb(types_pb2.Prediction(id="p", status=types_pb2.STATUS_PROCESSING))
    assert (p.output, p.output_files, p.status, p.done) == (None, [], "processing", False)


def test_an_output_of_json_null_is_none() -> None:
    pb = types_pb2.Prediction(status=types_pb2.STATUS_SUCCEEDED)
    pb.output.value.null_value = struct_pb2.NULL_VALUE
    assert client.prediction_from_pb(pb).output is None


def test_a_typed_input_comes_back_with_the_fields_that_are_set() -> None:
    pb = types_pb2.Prediction(input=types_pb2.PredictionInput(echo=types_pb2.EchoInput(text="hi", chunks=2)))
    assert client.prediction_from_pb(pb).input == {"text": "hi", "chunks": 2}


def _event(**kind: Any) -> types_pb2.PredictionEvent:
    return types_pb2.PredictionEvent(prediction_id="p1", seq=7, **kind)


@pytest.mark.parametrize("pb, kind, data", [
    (_event(status=types_pb2.STATUS_PROCESSING), "status", "processing"),
    (_event(log="loading"), "log", "loading"),
    (_event(output=types_pb2.OutputChunk(value=struct_pb2.Value(string_value="tok"))), "output",
     client.OutputChunk("tok", None)),
    (_event(output=types_pb2.OutputChunk(file=types_pb2.File(data=b"x"))), "output",
     client.OutputChunk(None, File(b"x"))),
    (_event(progress=types_pb2.Progress(step=3, total=20, eta_s=1.5)), "progress",
     client.Progress(3, 20, 1.5)),
    (_event(), "", None),
])
def test_events_from_pb(pb: types_pb2.PredictionEvent, kind: str, data: Any) -> None:
    assert client.event_from_pb(pb) == Event("p1", 7, kind, data)


def test_the_completed_event_carries_the_final_prediction() -> None:
    final = types_pb2.Prediction(id="p1", status=types_pb2.STATUS_FAILED, error="boom")
    event = client.event_from_pb(_event(completed=final))
    assert event.kind == "completed"
    assert (event.data.id, event.data.status, event.data.error) == ("p1", "failed", "boom")


def test_a_node_without_nvml_has_no_utilization_but_zero_is_kept() -> None:
    pb = cluster_pb2.Node(id="n1", accelerator="cpu", instance_count=2)
    assert client.record_from_pb(Node, pb).utilization_percent is None
    pb.utilization_percent = 0.0
    node = client.record_from_pb(Node, pb)
    assert (node.utilization_percent, node.instance_count, node.accelerator) == (0.0, 2, "cpu")


def test_model_schemas_are_parsed() -> None:
    pb = models_pb2.Model(name="warmfleet/echo", runner="echo", input_schema_json='{"type": "object"}')
    model = client.model_from_pb(pb)
    assert (model.input_schema, model.output_schema) == ({"type": "object"}, {})


# Errors


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code, details, cls, message", [
    (grpc.StatusCode.NOT_FOUND, "model 'x/y' not found", NotFoundError, "model 'x/y' not found"),
    (grpc.StatusCode.UNAUTHENTICATED, "unknown token", UnauthenticatedError, "unknown token"),
    (grpc.StatusCode.INVALID_ARGUMENT, "input.text: is required", InvalidArgumentError,
     "input.text: is required"),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: Connection refused",
     GatewayUnreachableError, "no gateway at h:1: is `warmfleet up` running?"),
    (grpc.StatusCode.UNAVAILABLE, "model 'x/y' has no running instance", UnavailableError,
     "model 'x/y' has no running instance"),
    (grpc.StatusCode.INTERNAL, "internal error", WarmfleetClientError, "internal error"),
])
def test_rpc_errors_map_to_client_errors(code: grpc.StatusCode, details: str, cls: type,
                                         message: str) -> None:
    err = client.error_from_rpc(FakeRpcError(code, details), "h:1")
    assert type(err) is cls
    assert (err.code, str(err)) == (code.name, message)


def test_an_answered_unavailable_is_not_reported_as_a_missing_gateway() -> None:
    err = client.error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "node lost"), "h:1")
    assert not isinstance(err, GatewayUnreachableError)


class FakeCall:
    def __init__(self, items: list[Any]) -> None:
        self.items, self.canceled = items, False

    def __iter__(self):
        for item in self.items:
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self.canceled = True


def test_streams_send_the_token_map_errors_and_cancel_when_left() -> None:
    transport = client._Transport("h:1", "tok", 5.0)
    seen: dict[str, Any] = {}
    call = FakeCall([_event(log="one"), FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone")])

    def method(request: Any, metadata: Any, timeout: Any) -> FakeCall:
        seen.update(metadata=metadata, timeout=timeout)
        return call

    events = transport.events(method, predictions_pb2.StreamPredictionRequest(id="p1"), 30.0)
    assert next(events).data == "one"
    with pytest.raises(NotFoundError, match="gone"):
        next(events)
    assert seen == {"metadata": (("authorization", "Bearer tok"),), "timeout": 30.0}
    assert call.canceled
    transport.channel.close()


# Client.run


class RunPredictions:
    def __init__(self, created: Prediction, final: Prediction) -> None:
        self.created, self.final, self.waited_on, self.wait_s = created, final, None, None

    def create(self, model: str, input: dict[str, Any], wait_s: float = 0.0) -> Prediction:
        self.wait_s = wait_s
        return self.created

    def wait(self, prediction: Prediction, timeout_s: float | None = None) -> Prediction:
        self.waited_on = prediction
        return self.final


def _run(final: Prediction, wait_s: float = 60.0) -> tuple[Any, RunPredictions]:
    c = Client(url="grpc://h:1", token="tok")
    c.predictions = RunPredictions(_prediction(status="starting"), final)
    try:
        return c.run("m/x", {"text": "a"}, wait_s=wait_s), c.predictions
    finally:
        c.close()


def test_run_returns_the_value_or_value_and_files() -> None:
    assert _run(_prediction(output="text"))[0] == "text"
    files = [File(b"png", "image/png")]
    assert _run(_prediction(output=None, files=files))[0] == Output(None, files)


def test_run_waits_on_what_it_created_and_caps_the_server_wait() -> None:
    _, fake = _run(_prediction(output="x"), wait_s=300)
    assert fake.wait_s == 60.0
    assert fake.waited_on.status == "starting"


def test_run_raises_with_the_failed_prediction_attached() -> None:
    failed = _prediction(status="canceled", error="canceled while processing")
    with pytest.raises(PredictionError, match="prediction p1 canceled: canceled while processing") as info:
        _run(failed)
    assert info.value.prediction is failed
    assert info.value.code == "PREDICTION_CANCELED"


# Where the client connects, with which token


def test_target_from_url_env_state_or_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARMFLEET_URL", raising=False)
    settings = load_settings({"home": str(tmp_path), "grpc_port": 6000}, environ={})
    get = lambda: settings  # noqa: E731
    assert client.resolve_target("grpc://gw:1", get) == "gw:1"
    assert client.resolve_target(None, get) == "127.0.0.1:6000"
    settings.state_path.write_text(json.dumps({"pid": 1, "grpc_target": "127.0.0.1:4242",
                                               "admin_token_path": "", "started_at": 0.0}))
    assert client.resolve_target(None, get) == "127.0.0.1:4242"
    monkeypatch.setenv("WARMFLEET_URL", "grpc://env:2")
    assert client.resolve_target(None, get) == "env:2"


def test_a_url_with_another_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="expected host:port or grpc://host:port"):
        client.resolve_target("http://gw:1", lambda: load_settings(environ={}))


def test_token_from_argument_settings_or_admin_file(tmp_path: Path) -> None:
    settings = load_settings({"home": str(tmp_path)}, environ={})
    get = lambda: settings  # noqa: E731
    assert client.resolve_token(None, get) is None
    settings.admin_token_path.write_text("wf_admin\n")
    assert client.resolve_token(None, get) == "wf_admin"
    assert client.resolve_token("explicit", get) == "explicit"
    with_env = load_settings({"home": str(tmp_path)}, environ={"WARMFLEET_TOKEN": "wf_env"})
    assert client.resolve_token(None, lambda: with_env) == "wf_env"


def test_importing_warmfleet_loads_neither_grpc_nor_ray() -> None:
    code = "import sys, warmfleet; print('grpc' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
