"""Users' own Cog models through a real cluster: pushed over gRPC, inspected by Cog, run on real coglet
processes started by the node agents of a real local Ray. One-behaviour fixture models live in
``tests/fixtures/cog`` (in the spirit of Cog's own fixtures); each test pushes a copy of one."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import grpc
import pytest
from PIL import Image

from tests.integration.test_autoscaling import instances_of
from warmfleet.bundle import bundle_to_tempfile, read_chunks
from warmfleet.client import File, input_to_pb, prediction_from_pb
from warmfleet.v1 import (
    deployments_pb2 as D, deployments_pb2_grpc, models_pb2 as M, predictions_pb2 as P, types_pb2 as T,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cog"


def fixture_copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


async def push(api, directory: Path, model: str) -> M.PushVersionResponse:
    path, digest, size = bundle_to_tempfile(directory)

    async def parts():
        yield M.PushVersionRequest(header=M.PushHeader(model=model, digest=digest, size_bytes=size))
        for chunk in read_chunks(path, 4096):  # small chunks: the gateway reassembles many
            yield M.PushVersionRequest(chunk=chunk)

    try:
        return await api.models.PushVersion(parts(), metadata=api.md)
    finally:
        path.unlink()


async def push_fixture(api, tmp_path: Path, name: str, model: str) -> M.PushVersionResponse:
    return await push(api, fixture_copy(tmp_path, name), model)


def create(model: str, wait_s: float = 30.0, version: str = "", **values) -> P.CreatePredictionRequest:
    return P.CreatePredictionRequest(model=model, version=version, wait_s=wait_s, input=input_to_pb(values))


async def run(api, model: str, **values):
    return prediction_from_pb(await api.predictions.CreatePrediction(create(model, **values), metadata=api.md))


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


# Types and schema


async def test_a_pushed_model_gets_cog_schema_enforced_at_the_gateway_and_runs(api, tmp_path):
    pushed = await push_fixture(api, tmp_path, "typed", "alice/typed")
    assert pushed.created_model and pushed.new_version
    assert pushed.version.runner == "cog" and len(pushed.version.id) == 64  # the bundle's sha256
    openapi = json.loads(pushed.version.openapi_schema_json)
    props = openapi["components"]["schemas"]["Input"]["properties"]
    assert (props["count"]["minimum"], props["count"]["maximum"], props["count"]["default"]) == (1, 5, 1)
    assert openapi["components"]["schemas"]["mode"]["enum"] == ["upper", "lower"]

    pred = await run(api, "alice/typed", text="ab", count=2, mode="upper", loud=True, scale=1.5)
    assert pred.status == "succeeded", pred.error
    assert pred.output == "ABAB! x1.5 ab"
    assert (pred.metrics["letters"], pred.metrics["timing.format"]) == (4, 0.25)  # recorded by the model
    assert pred.metrics["predict_time_s"] > 0
    [instance] = await instances_of(api, "alice/typed")
    assert instance.memory_bytes > 20 << 20  # coglet and its worker's resident memory, measured by the agent
    assert pred.model == "alice/typed" and pred.version == pushed.version.id
    assert "setup: typed is ready" in pred.logs  # it waited for the boot: it shows what setup() printed
    assert "setup:" not in (await run(api, "alice/typed", text="again")).logs

    for values, field in [({"count": 6}, "input.count"), ({"mode": "shout"}, "input.mode"),
                          ({"code": "AB1"}, "input.code"), ({"text": 3}, "input.text"),
                          ({"nope": 1}, "input.nope"), ({"scale": float("nan")}, "input.scale")]:
        err = await refused(api.predictions.CreatePrediction(create("alice/typed", **values), metadata=api.md))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(field), err.details()

    again = await push(api, tmp_path / "typed", "alice/typed")  # identical content: the same version
    assert (again.created_model, again.new_version, again.version.id) == (False, False, pushed.version.id)


async def test_path_in_and_a_list_of_paths_out(api, tmp_path):
    await push_fixture(api, tmp_path, "paths", "alice/paths")
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 200, 30)).save(buf, "PNG")
    pred = await run(api, "alice/paths", image=File(buf.getvalue(), "image/png", "in.png"), copies=2)
    assert pred.status == "succeeded", pred.error
    assert len(pred.output_files) == 2
    for f in pred.output_files:
        image = Image.open(io.BytesIO(f.data))
        assert f.content_type == "image/png" and image.size == (4, 3)
        assert image.getpixel((0, 0)) == (245, 55, 225)  # inverted by the predictor


async def test_iterator_outputs_stream_chunk_by_chunk(api, tmp_path):
    await push_fixture(api, tmp_path, "iterate", "alice/iterate")
    gate = tmp_path / "gate"
    stream = api.predictions.CreateAndStreamPrediction(
        create("alice/iterate", wait_s=0, words="one two three", gate=str(gate)), metadata=api.md)
    chunks, logs = [], []
    async for event in stream:
        if event.HasField("output"):
            chunks.append(event.output.value.string_value)
            gate.touch()  # the predictor yields the rest only after the first chunk reached us
        elif event.HasField("log"):
            logs.append(event.log)
        elif event.HasField("completed"):
            final = event.completed
    # "one " travelled alone (the rest waited for it); text chunks that pile up may travel merged
    assert chunks[0] == "one " and "".join(chunks) == "one two three "
    assert final.status == T.STATUS_SUCCEEDED
    assert [v.string_value for v in final.output.value.list_value.values] == ["one ", "two ", "three "]
    assert logs[-3:] == ["word 0", "word 1", "word 2"]

    await push_fixture(api, tmp_path, "numbers", "alice/numbers")
    pred = await run(api, "alice/numbers", n=4)
    assert pred.output == [0, 1, 4, 9]


async def test_secret_inputs_are_redacted_in_stored_input_logs_and_lists(api, tmp_path):
    await push_fixture(api, tmp_path, "secret", "alice/secret")
    pred = await run(api, "alice/secret", token="s3cr3t-value", name="bob")
    assert pred.status == "succeeded", pred.error
    assert pred.output == "bob used a token of 12 characters"  # the predictor got the real value
    assert pred.input == {"token": "**********", "name": "bob"}
    assert "calling the API with **********" in pred.logs and "s3cr3t" not in pred.logs
    stored = prediction_from_pb(await api.get(pred.id))
    assert stored.input["token"] == "**********" and "s3cr3t" not in stored.logs
    listed = await api.predictions.ListPredictions(P.ListPredictionsRequest(page_size=50), metadata=api.md)
    assert "s3cr3t" not in str(listed)


# Lifecycle


async def test_a_failing_setup_fails_the_waiting_prediction_with_its_error(api, tmp_path):
    await push_fixture(api, tmp_path, "setup-fails", "alice/setup-fails")
    pred = await run(api, "alice/setup-fails", x=1)
    assert pred.status == "failed"
    assert "setup() failed" in pred.error and "RuntimeError: the weights are missing" in pred.error, pred.error


async def test_a_raising_predict_fails_with_its_error_and_logs_and_the_model_keeps_serving(api, tmp_path):
    await push_fixture(api, tmp_path, "raises", "alice/raises")
    pred = await run(api, "alice/raises", x=0)
    assert pred.status == "failed" and "x must not be zero" in pred.error
    assert "about to divide" in pred.logs
    assert (await run(api, "alice/raises", x=5)).output == 2


async def wait_for_log(api, prediction_id: str, needle: str) -> str:
    stream = api.predictions.StreamPrediction(P.StreamPredictionRequest(id=prediction_id), metadata=api.md)
    async for event in stream:
        if event.HasField("log") and needle in event.log:
            stream.cancel()
            return event.log
    raise AssertionError(f"no log line with {needle!r}")


async def test_cancel_reaches_the_running_predictor_and_the_process_keeps_serving(api, tmp_path):
    await push_fixture(api, tmp_path, "slow", "alice/slow")
    marker = tmp_path / "cleaned"
    started = await api.predictions.CreatePrediction(create("alice/slow", wait_s=0, marker=str(marker)),
                                                     metadata=api.md)
    await wait_for_log(api, started.id, "started pid=")
    await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=started.id), metadata=api.md)
    async with asyncio.timeout(15):
        while (done := await api.get(started.id)).status not in (T.STATUS_CANCELED, T.STATUS_FAILED):
            await asyncio.sleep(0.05)
    assert done.status == T.STATUS_CANCELED
    assert marker.read_text() == "cleaned up"  # the predictor's own handler ran: CancelationException
    assert (await run(api, "alice/slow", steps=2)).output == "done 2"


async def test_a_process_killed_mid_prediction_fails_it_with_a_reason_and_the_instance_restarts(api, tmp_path):
    await push_fixture(api, tmp_path, "slow", "alice/slow-kill")
    started = await api.predictions.CreatePrediction(create("alice/slow-kill", wait_s=0), metadata=api.md)
    line = await wait_for_log(api, started.id, "started pid=")
    os.kill(int(line.split("pid=")[1]), signal.SIGKILL)  # coglet's worker, the predictor's process
    async with asyncio.timeout(20):
        while not (done := prediction_from_pb(await api.get(started.id))).completed_at:
            await asyncio.sleep(0.05)
    assert done.status == "failed" and "crash" in done.error.lower(), done.error
    assert "restarts" in done.error
    assert (await run(api, "alice/slow-kill", steps=2)).output == "done 2"  # a fresh process serves it
    assert len(await instances_of(api, "alice/slow-kill")) == 1


# Dependencies and hardware


def build_wheel(directory: Path) -> None:
    """A pure-Python wheel of a package named wfdep, made here: the push installs it with no index."""
    wheels = directory / "wheels"
    wheels.mkdir()
    dist = "wfdep-1.0.dist-info"
    files = {
        "wfdep/__init__.py": 'GREETING = "hello from a local wheel"\n',
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: wfdep\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: warmfleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(wheels / "wfdep-1.0-py3-none-any.whl", "w") as whl:
        for name, text in {**files, f"{dist}/RECORD": record}.items():
            whl.writestr(name, text)


async def test_a_python_package_from_a_local_wheel_is_installed_and_imported(api, tmp_path, monkeypatch):
    directory = fixture_copy(tmp_path, "with-dep")
    build_wheel(directory)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing may come from an index
    await push(api, directory, "alice/with-dep")
    pred = await run(api, "alice/with-dep", x="there")
    assert pred.status == "succeeded", pred.error
    assert pred.output == "hello from a local wheel there"


def gpu_present() -> bool:
    from node.metrics import Nvml

    return Nvml(0).available


@pytest.mark.skipif(gpu_present(), reason="this machine has a GPU: the CPU-only refusal cannot be shown here")
async def test_a_gpu_model_is_refused_on_a_cpu_only_cluster_naming_the_hardware(api, tmp_path):
    err = await refused(push_fixture(api, tmp_path, "gpu", "alice/gpu"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "build.gpu" in err.details() and "cpu" in err.details()


@pytest.mark.skipif(not gpu_present(), reason="no GPU here (NVML finds none): CUDA and NVML run where one is")
async def test_a_gpu_model_runs_on_cuda_and_nvml_shows_its_memory(api, tmp_path):
    await push_fixture(api, tmp_path, "gpu", "alice/gpu-run")
    pred = await run(api, "alice/gpu-run")
    assert pred.status == "succeeded" and pred.output.startswith("cuda"), (pred.error, pred.output)
    [instance] = await instances_of(api, "alice/gpu-run")
    assert instance.memory_bytes >= 64 << 20  # its process's GPU memory, from NVML


# Bad pushes


@pytest.mark.parametrize("change, field, also", [
    (lambda d: (d / "cog.yaml").unlink(), "cog.yaml", "not found"),
    (lambda d: (d / "cog.yaml").write_text('build:\n  python_version: "3.11"\n'), "cog.yaml: predict", "required"),
    (lambda d: (d / "predict.py").write_text("import not_a_module_anywhere\n"), "predict",
     "No module named 'not_a_module_anywhere'"),
    (lambda d: (d / "cog.yaml").write_text('build:\n  python_version: "3.8"\npredict: "predict.py:Predictor"\n'),
     "cog.yaml: build.python_version", "3.11"),
    (lambda d: (d / "cog.yaml").write_text('build:\n  run: ["apt-get install x"]\npredict: "predict.py:Predictor"\n'),
     "cog.yaml: build.run", "container image"),

    (lambda d: (d / "cog.yaml").write_text('concurrency:\n  max: 4\npredict: "predict.py:Predictor"\n'),
     "cog.yaml: concurrency.max", "async"),
])
async def test_a_bad_push_is_refused_naming_the_field(api, tmp_path, change, field, also):
    directory = fixture_copy(tmp_path, "typed")
    change(directory)
    err = await refused(push(api, directory, "alice/bad"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field) and also in err.details(), err.details()


async def test_a_traceback_names_the_line_that_failed_to_import(api, tmp_path):
    directory = fixture_copy(tmp_path, "typed")
    (directory / "predict.py").write_text("from cog import BasePredictor\n\nx = 1 / 0\n")
    err = await refused(push(api, directory, "alice/bad-import"))
    assert "ZeroDivisionError" in err.details() and 'predict.py", line 3' in err.details()


# Versions and deployments


async def push_versioned(api, tmp_path: Path, model: str, value: str) -> str:
    directory = tmp_path / value
    shutil.copytree(FIXTURES / "versioned", directory)
    source = directory / "predict.py"
    source.write_text(source.read_text().replace('VERSION = "one"', f'VERSION = "{value}"'))
    return (await push(api, directory, model)).version.id


async def test_two_versions_side_by_side_and_a_deployment_rolled_under_load(api, tmp_path):
    model = "alice/versioned"
    one = await push_versioned(api, tmp_path, model, "one")
    two = await push_versioned(api, tmp_path, model, "two")
    listed = await api.models.ListVersions(M.ListVersionsRequest(model=model), metadata=api.md)
    assert [v.id for v in listed.versions] == [two, one]  # newest first
    assert (await api.models.GetModel(M.GetModelRequest(name=model), metadata=api.md)).version == two

    latest, pinned = await asyncio.gather(run(api, model), run(api, model, version=one))
    assert (latest.output, latest.version) == ("two", two)
    assert (pinned.output, pinned.version) == ("one", one)

    deployments = deployments_pb2_grpc.DeploymentsStub(api.channel)
    await deployments.CreateDeployment(D.CreateDeploymentRequest(
        name="alice/versioned-prod", model=model, version=one, min_instances=1, max_instances=1), metadata=api.md)
    err = await refused(api.models.DeleteVersion(M.DeleteVersionRequest(model=model, id=one), metadata=api.md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "alice/versioned-prod" in err.details()

    by_deployment = P.CreatePredictionRequest(deployment="alice/versioned-prod", wait_s=30,
                                              input=input_to_pb({"delay_ms": 20}))
    warm = await api.predictions.CreatePrediction(by_deployment, metadata=api.md)  # its instance is up
    assert warm.output.value.string_value == "one"
    stop = asyncio.Event()
    results: list = []

    async def steady_load() -> None:  # until the new version has answered, after the old one's instance left
        while not stop.is_set() or not any(p.output.value.string_value == "two" for p in results[-1:]):
            results.append(await api.predictions.CreatePrediction(by_deployment, metadata=api.md))

    load = asyncio.create_task(steady_load())
    await deployments.UpdateDeployment(D.UpdateDeploymentRequest(name="alice/versioned-prod", version=two),
                                       metadata=api.md)
    async with asyncio.timeout(30):  # the new version's instance boots, then the old one drains
        while {i.version for i in await instances_of(api, "alice/versioned-prod")} != {two}:
            await asyncio.sleep(0.1)
    stop.set()
    async with asyncio.timeout(30):
        await load
    assert results and all(p.status == T.STATUS_SUCCEEDED for p in results), [p.error for p in results]
    outputs = [p.output.value.string_value for p in results]
    assert set(outputs) == {"one", "two"}  # both served while it rolled, none dropped
    after = await api.predictions.CreatePrediction(by_deployment, metadata=api.md)
    assert after.output.value.string_value == "two"

    deleted = await api.models.DeleteVersion(M.DeleteVersionRequest(model=model, id=one), metadata=api.md)
    assert deleted.id == one
    left = await api.models.ListVersions(M.ListVersionsRequest(model=model), metadata=api.md)
    assert [v.id for v in left.versions] == [two]


# Over REST, in Replicate's shapes


async def test_push_and_run_over_rest_with_a_data_url_file_and_replicate_version_shapes(running, tmp_path):
    import aiohttp

    headers = {"Authorization": f"Bearer {running.api.token}"}
    path, digest, size = bundle_to_tempfile(fixture_copy(tmp_path, "paths"))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as http:
        async with http.post("/v1/models/bob/rest-paths/versions", data=path.read_bytes(),
                             headers={**headers, "Content-Type": "application/octet-stream", "X-Bundle-Digest": digest}
                             ) as reply:
            pushed = await reply.json()
            assert reply.status == 201, pushed
        assert (pushed["id"], pushed["created_model"], pushed["cog_version"]) == (digest, True, "0.23.1")
        assert pushed["openapi_schema"]["components"]["schemas"]["Input"]["properties"]["image"]["format"] == "uri"
        async with http.get("/v1/models/bob/rest-paths", headers=headers) as reply:
            model = await reply.json()
        assert model["latest_version"]["id"] == digest and model["visibility"] == "private"
        assert model["latest_version"]["created_at"].startswith("20")

        buf = io.BytesIO()
        Image.new("RGB", (2, 2), (0, 0, 0)).save(buf, "PNG")
        data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        async with http.post("/v1/models/bob/rest-paths/predictions", json={"input": {"image": data_url}},
                             headers={**headers, "Prefer": "wait=30"}) as reply:
            pred = await reply.json()
        assert pred["status"] == "succeeded", pred
        (inline,) = pred["output"]  # small, over plain http: a data URL (README, "Output files")
        image = Image.open(io.BytesIO(base64.b64decode(inline.partition(",")[2])))
        assert image.getpixel((1, 1)) == (255, 255, 255)

        async with http.get("/v1/models/bob/rest-paths/versions", headers=headers) as reply:
            assert [v["id"] for v in (await reply.json())["results"]] == [digest]
        async with http.post("/v1/models/bob/rest-paths/versions", data=b"not a tar at all",
                             headers={**headers, "Content-Type": "application/octet-stream"}) as reply:
            problem = await reply.json()
        assert reply.status == 422 and problem["field"] == "bundle", problem
    path.unlink()


async def test_a_hung_process_is_killed_its_prediction_fails_naming_why_and_the_instance_restarts(api, tmp_path):
    await push_fixture(api, tmp_path, "slow", "alice/slow-hang")
    started = await api.predictions.CreatePrediction(create("alice/slow-hang", wait_s=0), metadata=api.md)
    line = await wait_for_log(api, started.id, "started pid=")
    worker = int(line.split("pid=")[1])
    coglet = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    os.kill(coglet, signal.SIGSTOP)  # coglet's HTTP side stops answering, as a wedged process does
    async with asyncio.timeout(30):
        while not (done := prediction_from_pb(await api.get(started.id))).completed_at:
            await asyncio.sleep(0.1)
    assert done.status == "failed" and "did not answer its health check" in done.error, done.error
    assert "restarts" in done.error
    assert (await run(api, "alice/slow-hang", steps=2)).output == "done 2"
