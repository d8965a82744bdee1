"""Replicate's official Python client (``replicate`` 1.0.7, from the test extra) against a real gateway,
unchanged but for its base URL and token: models (list, get, create), versions, ``run`` on text (the
whole text) and on image models (file objects whose ``read()`` is a PNG: small outputs come inline over
plain http), ``stream``, predictions (create, get, list, cancel, wait), deployments and a prediction
through one, files, hardware, and the default webhook secret checking a real webhook; Replicate's
model-creation ``curl`` call as its guide writes it; and OpenAI's client listing the same gateway's models.

The client is synchronous (httpx) and the gateway serves on this test's event loop, so each client call
runs on a worker thread (``call``), as a user's script would run beside the gateway."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import uuid

import aiohttp
import openai
import pytest
import replicate
from aiohttp import web
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput
from replicate.webhook import InvalidSignatureError, WebhookSigningSecret

from tests.integration.conftest import ECHO, ESRGAN, LLM, SD, RunningGateway, user
from tests.integration.test_openai import by_grpc

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SD_INPUT = {"prompt": "a red fox in the snow", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 7}
LLM_INPUT = {"prompt": "seven wise owls watch", "temperature": 0, "max_new_tokens": 16}
# A stream long enough to span several of the agent's paced frames (20 ms apart, node/outbox.py): 16
# tokens can all come within one, and then the text arrives in two pieces however it is streamed.
STREAM_INPUT = {**LLM_INPUT, "max_new_tokens": 96, "min_new_tokens": 96}
TIMEOUT_S = 60.0


async def call(fn, *args, **kwargs):
    """A client call on a worker thread: the gateway's loop (this one) keeps serving meanwhile."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def base_of(gw: RunningGateway) -> str:
    return f"http://127.0.0.1:{gw.gateway.http_port}"


def client_for(gw: RunningGateway, token: str) -> replicate.Client:
    client = replicate.Client(api_token=token, base_url=base_of(gw))
    client.poll_interval = 0.1  # how often the client's own wait() polls (REPLICATE_POLL_INTERVAL; 0.5 s)
    return client


def png(width: int = 16, height: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def output_file(gw: RunningGateway, token: str, prediction_id: str, index: int) -> bytes:
    """The bytes ``GET /v1/predictions/{id}/output/{index}`` serves (with the token)."""
    url = f"{base_of(gw)}/v1/predictions/{prediction_id}/output/{index}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "image/png", await resp.text()
        return await resp.read()


@pytest.fixture
async def account(api):
    """A new user account: its name and an Api acting as its token."""
    name = f"rc-{uuid.uuid4().hex[:6]}"
    return name, await user(api, name)


@pytest.fixture
def client(running, account) -> replicate.Client:
    return client_for(running, account[1].token)


@pytest.fixture
def admin_client(running, api) -> replicate.Client:
    return client_for(running, api.token)


# Models and versions


async def test_models_list_holds_the_built_in_models_with_their_latest_versions(client):
    page = await call(client.models.list)
    by_name = {model.id: model for model in page.results}
    assert {ECHO, LLM, SD, ESRGAN} <= set(by_name)
    echo = by_name[ECHO]
    assert isinstance(echo, replicate.model.Model) and echo.latest_version is not None
    assert "text" in echo.latest_version.openapi_schema["components"]["schemas"]["Input"]["properties"]


async def test_models_get_and_its_versions_list_and_get(client):
    model = await call(client.models.get, SD)
    assert (model.owner, model.name, model.visibility) == ("warmfleet", "tiny-sd", "public")
    latest = model.latest_version
    versions = await call(model.versions.list)
    assert latest.id in [version.id for version in versions.results]
    got = await call(model.versions.get, latest.id)
    assert got.id == latest.id and got.openapi_schema == latest.openapi_schema
    output = got.openapi_schema["components"]["schemas"]["Output"]
    assert output["type"] == "array" and output["items"]["format"] == "uri"
    with pytest.raises(ReplicateError) as missing:
        await call(client.models.get, "nobody/nothing")
    assert missing.value.status == 404


async def test_models_create_makes_a_model_its_caller_owns(client, account, running, api):
    owner = account[0]
    made = await call(client.models.create, owner=owner, name="made-by-client", visibility="private",
                      hardware="cpu", description="made by Replicate's client")
    assert (made.owner, made.name, made.visibility) == (owner, "made-by-client", "private")
    assert made.description == "made by Replicate's client" and made.latest_version is None
    got = await call(client.models.get, f"{owner}/made-by-client")
    assert (got.id, got.visibility) == (made.id, "private")
    stranger = client_for(running, (await user(api, f"rc-{uuid.uuid4().hex[:6]}")).token)
    with pytest.raises(ReplicateError) as hidden:  # a private model is its owner's
        await call(stranger.models.get, f"{owner}/made-by-client")
    assert hidden.value.status == 404


async def test_replicates_model_creation_curl_call_works_as_written(running, api):
    """The call of Replicate's guide "Create a model with the API", with its account name."""
    assert shutil.which("curl"), "curl is missing: scripts/install.sh installs it with the test extra"
    token = (await user(api, "my-username")).token
    command = ("curl -s -X POST -H \"Authorization: Token $TOKEN\" -d '{\"owner\": \"my-username\", "
               "\"name\": \"my-new-model\", \"visibility\": \"public\", \"hardware\": \"cpu\"}' "
               "$GATEWAY/v1/models")
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TOKEN": token, "GATEWAY": base_of(running)})
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode == 0, err
    made = json.loads(out)
    assert (made.get("owner"), made.get("name"), made.get("visibility")) == (
        "my-username", "my-new-model", "public"), made
    got = await call(client_for(running, token).models.get, "my-username/my-new-model")
    assert (got.owner, got.name, got.visibility) == ("my-username", "my-new-model", "public")


# run and stream


async def test_run_on_text_gives_the_whole_text(client, api):
    text = f"one two three {uuid.uuid4().hex}"
    assert await call(client.run, ECHO, input={"text": text, "chunks": 3}) == text
    version = (await call(client.models.get, ECHO)).latest_version.id
    assert await call(client.run, f"{ECHO}:{version}", input={"text": "by version"}) == "by version"
    generated = await call(client.run, LLM, input=LLM_INPUT)
    greedy = await by_grpc(api, prompt=LLM_INPUT["prompt"], temperature=0.0, max_new_tokens=16)
    assert generated == greedy.output.value.string_value != ""


async def test_run_on_an_image_model_gives_file_objects_whose_read_is_a_png(client):
    outputs = await call(client.run, SD, input={**SD_INPUT, "num_outputs": 2})
    assert len(outputs) == 2 and all(isinstance(output, FileOutput) for output in outputs), outputs
    images = [await call(output.read) for output in outputs]
    assert all(image.startswith(PNG_SIGNATURE) for image in images) and images[0] != images[1]
    assert Image.open(io.BytesIO(images[0])).size == (64, 64)
    assert all(output.url.startswith("data:image/png;base64,") for output in outputs)


async def test_run_uploads_a_file_input_and_gives_the_upscaled_image(client, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png(16, 12))
    with path.open("rb") as image:  # the client uploads it (Files API) and passes its URL
        (upscaled,) = await call(client.run, ESRGAN, input={"image": image})
    assert isinstance(upscaled, FileOutput)
    picture = Image.open(io.BytesIO(await call(upscaled.read)))
    assert picture.width > 16 and picture.width * 12 == picture.height * 16


async def test_stream_gives_the_text_as_output_events_then_done(client, api):
    text = f"a b c d {uuid.uuid4().hex}"
    events = await call(lambda: list(client.stream(ECHO, input={"text": text, "chunks": 4, "delay_ms": 400})))
    kinds = [event.event.value for event in events]
    assert "".join(str(e) for e in events if e.event.value == "output") == text
    assert "output" in kinds and kinds[-1] == "done" and events[-1].data == "{}"
    tokens = await call(lambda: [str(e) for e in client.stream(LLM, input=STREAM_INPUT)
                                 if e.event.value == "output"])
    greedy = await by_grpc(api, **STREAM_INPUT)
    assert len(tokens) > 2 and "".join(tokens) == greedy.output.value.string_value


# Predictions


async def test_predictions_create_wait_get_and_list(client):
    version = (await call(client.models.get, ECHO)).latest_version.id
    text = f"waited {uuid.uuid4().hex}"
    pred = await call(client.predictions.create, version=version, input={"text": text, "delay_ms": 500})
    assert pred.status in ("starting", "processing") and pred.output is None  # no wait: answered at once
    await call(pred.wait)
    assert (pred.status, pred.output, pred.error) == ("succeeded", text, None)
    got = await call(client.predictions.get, pred.id)
    assert (got.id, got.output, got.version, got.model) == (pred.id, text, version, ECHO)
    # Prefer: wait. (replicate 1.0.7's predictions.create(model=...) drops wait=; models.predictions.create,
    # which run() calls, sends it.)
    blocking = await call(client.models.predictions.create, model=ECHO, input={"text": "by model"}, wait=True)
    assert (blocking.status, blocking.output) == ("succeeded", "by model")
    page = await call(client.predictions.list)
    assert [p.id for p in page.results] == [blocking.id, pred.id]  # the caller's own, newest first


async def test_a_prediction_the_client_cancels_ends_canceled(client):
    pred = await call(client.predictions.create, model=ECHO, input={"text": "never", "delay_ms": 30_000})
    await call(pred.cancel)
    await call(pred.wait)
    assert (pred.status, pred.output) == ("canceled", None)
    assert (await call(client.predictions.get, pred.id)).status == "canceled"


async def test_an_image_prediction_shows_its_small_output_inline_in_every_response(client, running, account):
    pred = await call(client.models.predictions.create, model=SD, input=SD_INPUT, wait=True)
    assert pred.status == "succeeded", pred.error
    (inline,) = pred.output
    assert inline.startswith("data:image/png;base64,")
    served = await output_file(running, account[1].token, pred.id, 0)  # the output's URL still serves it
    assert base64.b64decode(inline.partition(",")[2]) == served and served.startswith(PNG_SIGNATURE)
    assert (await call(client.predictions.get, pred.id)).output == [inline]
    (listed,) = (await call(client.predictions.list)).results
    assert listed.output == [inline]


# Deployments


async def test_deployments_create_get_list_update_and_a_prediction_through_one(admin_client, api):
    hardware = (await call(admin_client.hardware.list))[0].sku
    version = (await call(admin_client.models.get, ECHO)).latest_version.id
    name = f"rc-{uuid.uuid4().hex[:6]}"
    made = await call(admin_client.deployments.create, name=name, model=ECHO, version=version,
                      hardware=hardware, min_instances=0, max_instances=1)
    try:
        assert (made.owner, made.name) == ("admin", name)
        release = made.current_release
        assert (release.number, release.model, release.version) == (1, ECHO, version)
        configuration = release.configuration
        assert (configuration.hardware, configuration.min_instances, configuration.max_instances) == (
            hardware, 0, 1)
        got = await call(admin_client.deployments.get, f"admin/{name}")
        assert got.current_release.number == 1 and got.current_release.version == version
        listed = await call(admin_client.deployments.list)
        assert f"admin/{name}" in {f"{d.owner}/{d.name}" for d in listed.results}
        updated = await call(admin_client.deployments.update, deployment_owner="admin", deployment_name=name,
                             max_instances=2)
        assert updated.current_release.number == 2
        assert updated.current_release.configuration.max_instances == 2
        pred = await call(got.predictions.create, input={"text": "through a deployment"}, wait=True)
        assert (pred.status, pred.output, pred.model) == ("succeeded", "through a deployment", ECHO)
        assert (await api.get(pred.id)).deployment == f"admin/{name}"
    finally:
        assert await call(admin_client.deployments.delete, "admin", name)


# Files, hardware


async def test_files_create_get_list_and_delete(client, tmp_path):
    data = png()
    path = tmp_path / "red.png"
    path.write_bytes(data)
    made = await call(client.files.create, path, metadata={"purpose": "test"})
    assert (made.name, made.content_type, made.size, made.metadata) == ("red.png", "image/png", len(data),
                                                                        {"purpose": "test"})
    assert made.checksums["sha256"] == hashlib.sha256(data).hexdigest()
    got = await call(client.files.get, made.id)
    assert (got.id, got.size, got.checksums) == (made.id, made.size, made.checksums)
    assert [f.id for f in await call(client.files.list)] == [made.id]
    assert await call(client.files.delete, made.id) is True
    with pytest.raises(ReplicateError) as gone:
        await call(client.files.get, made.id)
    assert gone.value.status == 404
    assert await call(client.files.list) == []


async def test_hardware_list_is_the_clusters_hardware_for_any_user(client, running):
    listed = await call(client.hardware.list)  # SKUs only: a user picks one for a model, as Replicate's
    skus = {node.hardware for node in await running.gateway.controller.nodes() if node.hardware}
    assert listed and sorted(h.sku for h in listed) == sorted(skus)
    assert all(h.name for h in listed)


# OpenAI's client on the same gateway


async def test_openais_client_lists_models_of_the_same_catalog_replicates_client_lists(admin_client, running,
                                                                                       api):
    openai_client = openai.AsyncOpenAI(base_url=f"{base_of(running)}/v1", api_key=api.token, max_retries=0)
    openai_ids = [model.id async for model in openai_client.models.list()]
    replicate_ids = {model.id for model in (await call(admin_client.models.list)).results}
    assert LLM in openai_ids and set(openai_ids) <= replicate_ids


# Outputs over the bound; webhooks


@pytest.fixture(scope="module")
async def bounded(controller, tmp_path_factory):
    """A gateway that inlines outputs of at most 100 bytes: none of the tiny models' images."""
    gw = RunningGateway(tmp_path_factory.mktemp("bounded"), controller, inline_output_max_bytes=100)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture(scope="module")
async def hooked(controller, tmp_path_factory):
    """A gateway as ``running`` is, but that lets webhooks reach a receiver on 127.0.0.1 (the operator's
    allow_private_urls)."""
    gw = RunningGateway(tmp_path_factory.mktemp("hooked"), controller, allow_private_urls=True)
    await gw.start()
    yield gw
    await gw.stop()


async def test_over_the_bound_outputs_stay_signed_urls_that_open_without_the_token(bounded):
    token = (await user(bounded.api, f"rc-{uuid.uuid4().hex[:6]}")).token
    client = client_for(bounded, token)
    pred = await call(client.models.predictions.create, model=SD, input=SD_INPUT, wait=True)
    assert pred.status == "succeeded", pred.error
    (url,) = pred.output
    assert url.startswith(f"{base_of(bounded)}/v1/predictions/{pred.id}/output/0?") and "signature=" in url
    async with aiohttp.ClientSession() as http, http.get(url) as resp:  # no token: the signature opens it
        assert resp.status == 200
        assert await resp.read() == await output_file(bounded, token, pred.id, 0)
    (plain,) = await call(client.run, SD, input=SD_INPUT)  # over http, a URL is not a file to the client
    assert isinstance(plain, str) and plain.startswith(f"{base_of(bounded)}/v1/predictions/")


class Hook:
    """A webhook receiver on 127.0.0.1: each POST's headers and body, in order of arrival."""

    def __init__(self) -> None:
        self.deliveries: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> "Hook":
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        await self.deliveries.put((dict(request.headers), await request.read()))
        return web.Response(status=200)


async def test_the_default_webhook_secret_validates_a_real_webhook_with_replicates_check(hooked):
    """The completed webhook carries the upscaled image inline, as the REST responses do."""
    gw, hook = hooked, await Hook().start()
    try:
        name = f"rc-{uuid.uuid4().hex[:6]}"
        client = client_for(gw, (await user(gw.api, name)).token)
        secret = await call(client.webhooks.default.secret)
        assert isinstance(secret, WebhookSigningSecret) and secret.key.startswith("whsec_")
        pred = await call(client.predictions.create, model=ESRGAN, input={"image": data_url(png())},
                          webhook=hook.url, webhook_events_filter=["completed"])
        headers, body = await asyncio.wait_for(hook.deliveries.get(), TIMEOUT_S)
        client.webhooks.validate(headers=headers, body=body.decode(), secret=secret)  # raises if not valid
        shown = json.loads(body)
        assert (shown["id"], shown["status"]) == (pred.id, "succeeded")
        (inline,) = shown["output"]
        assert inline.startswith("data:image/png;base64,")
        assert base64.b64decode(inline.partition(",")[2]) == await output_file(gw, gw.api.token, pred.id, 0)
        with pytest.raises(InvalidSignatureError):
            client.webhooks.validate(headers=headers, body=body.decode().replace("succeeded", "failed"),
                                     secret=secret)
        other = await call(client_for(gw, (await user(gw.api, f"{name}-b")).token).webhooks.default.secret)
        assert other.key != secret.key
        with pytest.raises(InvalidSignatureError):  # another account's secret does not verify it
            client.webhooks.validate(headers=headers, body=body.decode(), secret=other)
    finally:
        await hook.stop()
