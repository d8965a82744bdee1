"""Replicate's HTTP API over a real cluster: every REST route of predictions and the catalog, with a real
HTTP client (aiohttp) against the gateway's HTTP port on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest

from tests.integration.conftest import ECHO, ESRGAN, LLM, NARROW, SD, RunningGateway, user

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http(running):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as session:
        yield session


@pytest.fixture
def admin(api) -> dict[str, str]:
    return bearer(api.token)


async def new_user(api, prefix: str) -> dict[str, str]:
    return bearer((await user(api, f"{prefix}-{uuid.uuid4().hex[:6]}")).token)


async def create(http, headers, model=ECHO, status=201, **input):
    if not {"prompt", "image"} & set(input):
        input.setdefault("text", "hello")
    async with http.post(f"/v1/models/{model}/predictions", json={"input": input}, headers=headers) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, body
        return body


async def get(http, url, headers, status=200):
    async with http.get(url, headers=headers) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, body
        return body


async def until(http, url, headers, done, timeout_s=20.0) -> dict:
    """GET ``url`` until ``done(prediction)``."""
    async with asyncio.timeout(timeout_s):
        while not done(pred := await get(http, url, headers)):
            await asyncio.sleep(0.05)
        return pred


# Create, sync mode, read, cancel


async def test_prefer_wait_returns_the_finished_prediction_in_replicates_shape(http, admin, running):
    text = f"hello {uuid.uuid4().hex}"
    async with http.post(f"/v1/models/{ECHO}/predictions", json={"input": {"text": text}},
                         headers={**admin, "Prefer": "wait"}) as resp:
        pred = await resp.json()
        assert resp.status == 201 and resp.headers["Location"] == pred["urls"]["get"]
    assert (pred["status"], pred["output"], pred["error"], pred["model"]) == ("succeeded", text, None, ECHO)
    assert pred["input"] == {"text": text} and pred["version"] and pred["source"] == "api"
    assert pred["data_removed"] is False
    assert pred["created_at"].endswith("Z") and pred["completed_at"].endswith("Z")
    assert pred["created_at"] <= pred["started_at"] <= pred["completed_at"]
    assert pred["metrics"]["predict_time"] >= 0 and pred["metrics"]["total_time"] >= pred["metrics"]["predict_time"]
    base = f"http://127.0.0.1:{running.gateway.http_port}"
    # The same paths as ever; get and stream carry a signature (tests/integration/test_signed_urls.py).
    assert {kind: urlsplit(url).path for kind, url in pred["urls"].items()} == {
        "get": f"/v1/predictions/{pred['id']}", "cancel": f"/v1/predictions/{pred['id']}/cancel",
        "stream": f"/v1/predictions/{pred['id']}/stream", "web": f"/predictions/{pred['id']}"}
    assert all(url.startswith(base + "/v1/") for kind, url in pred["urls"].items() if kind != "web")
    assert pred["urls"]["web"] == f"{base}/predictions/{pred['id']}"  # its page in the web console
    assert pred["urls"]["cancel"] == f"{base}/v1/predictions/{pred['id']}/cancel"
    again = await get(http, pred["urls"]["get"], admin)  # its links are signed afresh: compared apart
    assert {**again, "urls": None} == {**pred, "urls": None}


async def test_prefer_wait_n_answers_unfinished_when_n_passes(http, admin):
    started = time.monotonic()
    async with http.post(f"/v1/models/{ECHO}/predictions", json={"input": {"text": "slow", "delay_ms": 3000}},
                         headers={**admin, "Prefer": "wait=1"}) as resp:
        pred = await resp.json()
    elapsed = time.monotonic() - started
    assert resp.status == 201 and 0.9 <= elapsed < 2.5
    assert pred["status"] in ("starting", "processing") and pred["output"] is None
    assert "completed_at" not in pred  # not known yet: left out (Replicate's document has no null for it)
    done = await until(http, pred["urls"]["get"], admin, lambda p: p["status"] in TERMINAL)
    assert (done["status"], done["output"]) == ("succeeded", "slow")


async def test_without_prefer_the_create_answers_at_once(http, admin):
    started = time.monotonic()
    pred = await create(http, admin, delay_ms=1500)
    assert time.monotonic() - started < 1.0 and pred["status"] in ("starting", "processing")


async def test_create_by_version_id_and_by_model_name_with_the_token_scheme(http, api):
    headers = {"Authorization": f"Token {api.token}", "Prefer": "wait=30"}  # Replicate's older clients
    version = (await get(http, f"/v1/models/{ECHO}", headers))["latest_version"]["id"]
    for ref in (version, ECHO, f"{ECHO}:{version}"):
        async with http.post("/v1/predictions", json={"version": ref, "input": {"text": ref}},
                             headers=headers) as resp:
            pred = await resp.json()
            assert resp.status == 201, pred
        assert (pred["status"], pred["output"], pred["version"], pred["model"]) == ("succeeded", ref, version, ECHO)


async def test_cancel_a_running_prediction(http, admin):
    pred = await create(http, admin, delay_ms=30_000)
    await until(http, pred["urls"]["get"], admin, lambda p: p["status"] == "processing")
    async with http.post(pred["urls"]["cancel"], headers=admin) as resp:
        canceled = await resp.json()
        assert resp.status == 200, canceled
    done = await until(http, pred["urls"]["get"], admin, lambda p: p["status"] in TERMINAL, timeout_s=10)
    assert done["status"] == "canceled" and canceled["id"] == pred["id"]


async def test_cancel_after_aborts_a_prediction_that_never_started(http, admin):
    blocker = await create(http, admin, model=NARROW, delay_ms=4000)  # NARROW runs one at a time
    await until(http, blocker["urls"]["get"], admin, lambda p: p["status"] == "processing")
    async with http.post(f"/v1/models/{NARROW}/predictions", json={"input": {"text": "late"}},
                         headers={**admin, "Cancel-After": "1s"}) as resp:
        queued = await resp.json()
        assert resp.status == 201, queued
    done = await until(http, queued["urls"]["get"], admin, lambda p: p["status"] in TERMINAL, timeout_s=10)
    assert done["status"] == "aborted" and "started_at" not in done and "deadline" in done["error"]
    assert (await until(http, blocker["urls"]["get"], admin, lambda p: p["status"] in TERMINAL))["status"] == "succeeded"


# Errors


async def problem(resp) -> dict:
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == resp.status and body["type"].startswith("https://") and body["title"]
    return body


@pytest.mark.parametrize("body, headers, field", [
    ({"input": {"text": 5}}, {}, "input.text"),
    ({"input": {"text": "x", "colour": "red"}}, {}, "input.colour"),
    ({"input": {}}, {}, "input.text"),
    ({}, {}, "input"),
    ({"input": {"text": "x"}}, {"Prefer": "wait=0"}, "Prefer"),
    ({"input": {"text": "x"}}, {"Prefer": "wait=61"}, "Prefer"),
    ({"input": {"text": "x"}}, {"Cancel-After": "soon"}, "Cancel-After"),
])
async def test_invalid_input_is_422_naming_the_field(http, admin, body, headers, field):
    async with http.post(f"/v1/models/{ECHO}/predictions", json=body, headers={**admin, **headers}) as resp:
        assert resp.status == 422
        details = await problem(resp)
    assert details["field"] == field and field in details["detail"]


async def test_a_body_that_is_not_json_is_422(http, admin):
    async with http.post(f"/v1/models/{ECHO}/predictions", data=b"{nope", headers=admin) as resp:
        assert resp.status == 422 and (await problem(resp))["field"] == "body"


async def test_no_token_or_a_wrong_one_is_401(http):
    for headers in ({}, bearer("wf_nope"), {"Authorization": "Basic abc"}):
        async with http.get("/v1/predictions", headers=headers) as resp:
            assert resp.status == 401
            await problem(resp)


async def test_a_user_on_an_admin_route_is_403(http, api):
    carol = await new_user(api, "carol")
    async with http.post("/v1/deployments", json={"name": "x", "model": ECHO}, headers=carol) as resp:
        assert resp.status == 403 and "admin" in (await problem(resp))["detail"]
    async with http.get("/v1/tokens?account=admin", headers=carol) as resp:
        assert resp.status == 404  # another account's tokens: as if it did not exist


async def test_another_users_prediction_is_404(http, api):
    alice, bob = await new_user(api, "alice"), await new_user(api, "bob")
    pred = await create(http, {**alice, "Prefer": "wait"}, text="alice's")
    assert (await get(http, pred["urls"]["get"], alice))["output"] == "alice's"
    for method, url in (("GET", pred["urls"]["get"]), ("POST", pred["urls"]["cancel"])):
        async with http.request(method, url, headers=bob) as resp:
            assert resp.status == 404 and pred["id"] in (await problem(resp))["detail"]
    bobs = await get(http, "/v1/predictions", bob)
    assert pred["id"] not in [p["id"] for p in bobs["results"]]


# Lists


async def test_the_list_pages_by_cursor_newest_first(http, api):
    dave = await new_user(api, "dave")
    made = [(await create(http, {**dave, "Prefer": "wait"}, text=f"n{i}"))["id"] for i in range(5)]
    seen, url, pages = [], "/v1/predictions?page_size=2", 0
    while url:
        page = await get(http, url, dave)
        assert page["previous"] is None and len(page["results"]) <= 2
        seen += [p["id"] for p in page["results"]]
        url, pages = page["next"], pages + 1
        assert url is None or ("cursor=" in url and url.startswith("http://127.0.0.1:"))
    assert seen == made[::-1] and pages == 3
    first = await get(http, "/v1/predictions", dave)  # Replicate's default page holds all five
    assert [p["id"] for p in first["results"]] == made[::-1] and first["next"] is None
    assert first["results"][0]["output"] == "n4"


async def test_a_bad_page_size_is_422(http, admin):
    for size in ("lots", "5000"):
        async with http.get(f"/v1/predictions?page_size={size}", headers=admin) as resp:
            assert resp.status == 422 and (await problem(resp))["field"] == "page_size"


# Files out


async def test_an_image_output_is_inline_and_its_url_serves_the_png_bytes_to_its_owner(http, api):
    import base64

    erin, frank = await new_user(api, "erin"), await new_user(api, "frank")
    pred = await create(http, {**erin, "Prefer": "wait=60"}, model=SD,
                        prompt="a red fox in the snow", num_outputs=2, seed=7)
    assert pred["status"] == "succeeded", pred["error"]
    assert isinstance(pred["output"], list) and len(pred["output"]) == 2
    images, first = [], f"/v1/predictions/{pred['id']}/output/0"
    for index, inline in enumerate(pred["output"]):  # small, over plain http: data URLs (README)
        async with http.get(f"/v1/predictions/{pred['id']}/output/{index}", headers=erin) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            images.append(await resp.read())
        assert inline == "data:image/png;base64," + base64.b64encode(images[-1]).decode()
    assert all(image.startswith(PNG_SIGNATURE) for image in images) and images[0] != images[1]
    async with http.get(first) as resp:  # no token and no signature
        assert resp.status == 401
    async with http.get(first, headers=frank) as resp:
        assert resp.status == 404
    async with http.get(first.replace("/output/0", "/output/2"), headers=erin) as resp:
        assert resp.status == 404


# Catalog


async def test_models_and_their_versions(http, admin):
    models = await get(http, "/v1/models", admin)
    names = [f"{m['owner']}/{m['name']}" for m in models["results"]]
    assert ECHO in names and SD in names and models["next"] is None
    echo = await get(http, f"/v1/models/{ECHO}", admin)
    assert (echo["owner"], echo["name"], echo["runner"]) == ("warmfleet", "echo", "echo")
    version = echo["latest_version"]
    schemas = version["openapi_schema"]["components"]["schemas"]
    assert "text" in schemas["Input"]["properties"] and schemas["Output"]["type"] == "string"
    assert (await get(http, f"/v1/models/{ECHO}/versions", admin))["results"] == [version]
    assert await get(http, f"/v1/models/{ECHO}/versions/{version['id']}", admin) == version
    await get(http, f"/v1/models/{ECHO}/versions/nope", admin, status=404)
    await get(http, "/v1/models/nobody/nothing", admin, status=404)
    sd = await get(http, f"/v1/models/{SD}", admin)
    output = sd["latest_version"]["openapi_schema"]["components"]["schemas"]["Output"]
    assert output["type"] == "array" and output["items"]["format"] == "uri"


async def test_deployments_crud_and_predict_by_deployment(http, admin):
    name = f"rest-{uuid.uuid4().hex[:6]}"
    async with http.post("/v1/deployments", headers=admin, json={
            "name": name, "model": ECHO, "min_instances": 0, "max_instances": 1}) as resp:
        created = await resp.json()
        assert resp.status == 200, created  # Replicate's document answers a create 200
    full = f"{created['owner']}/{name}"
    assert created["owner"] == "admin" and created["name"] == name  # a plain name goes under the caller
    release = created["current_release"]
    assert (release["number"], release["model"]) == (1, ECHO) and release["version"]
    assert release["configuration"] == {"hardware": "any", "min_instances": 0, "max_instances": 1, "autoscaling": {}}
    assert release["created_by"]["username"] == "admin" and release["created_at"].endswith("Z")
    assert await get(http, f"/v1/deployments/{full}", admin) == created
    listed = await get(http, "/v1/deployments", admin)
    assert full in [f"{d['owner']}/{d['name']}" for d in listed["results"]]

    async with http.patch(f"/v1/deployments/{full}", headers=admin, json={"max_instances": 2}) as resp:
        updated = await resp.json()
        assert resp.status == 200, updated
    assert updated["current_release"]["number"] == 2
    assert updated["current_release"]["configuration"]["max_instances"] == 2

    async with http.post(f"/v1/deployments/{full}/predictions", json={"input": {"text": "by deployment"}},
                         headers={**admin, "Prefer": "wait=60"}) as resp:
        pred = await resp.json()
        assert resp.status == 201, pred
    assert (pred["status"], pred["output"], pred["deployment"], pred["model"]) == (
        "succeeded", "by deployment", full, ECHO)

    async with http.delete(f"/v1/deployments/{full}", headers=admin) as resp:
        assert resp.status == 204
    await get(http, f"/v1/deployments/{full}", admin, status=404)


async def test_a_bad_deployment_body_is_422_naming_the_field(http, admin):
    async with http.post("/v1/deployments", headers=admin, json={"name": "x", "model": ECHO,
                                                                  "min_instances": -1}) as resp:
        assert resp.status == 422 and (await problem(resp))["field"] == "min_instances"


async def test_hardware_lists_the_nodes_skus_to_any_token(http, api):
    hardware = await get(http, "/v1/hardware", bearer((await user(api, f"hal-{uuid.uuid4().hex[:6]}")).token))
    assert hardware and all(set(h) == {"sku", "name"} and h["sku"] for h in hardware)
    from warmfleet.v1 import cluster_pb2

    nodes = await api.cluster.ListNodes(cluster_pb2.ListNodesRequest(), metadata=api.md)
    assert [h["sku"] for h in hardware] == sorted({n.hardware for n in nodes.nodes})


async def test_the_account_is_the_tokens_account(http, api):
    name = f"gina-{uuid.uuid4().hex[:6]}"
    gina = await user(api, name)
    assert await get(http, "/v1/account", bearer(gina.token)) == {
        "type": "user", "username": name, "name": name, "id": await gina.account_id(), "organizations": []}


# Rate limit


@pytest.fixture(scope="module")
async def limited(controller, tmp_path_factory):
    """A gateway whose tokens may create 2 predictions a minute, with room for 1 queued per model."""
    gw = RunningGateway(tmp_path_factory.mktemp("limited"), controller, rate_limit_per_minute=2,
                        max_queue_per_model=1)
    await gw.start()
    yield gw
    await gw.stop()


async def test_over_the_rate_limit_is_429_with_retry_after_on_every_entry(limited):
    ivy = await user(limited.api, f"ivy-{uuid.uuid4().hex[:6]}")
    headers = bearer(ivy.token)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{limited.gateway.http_port}") as http:
        for _ in range(2):
            await create(http, headers)
        async with http.post(f"/v1/models/{ECHO}/predictions", json={"input": {"text": "x"}},
                             headers=headers) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "30"  # a token comes back every 30 s
            assert "2 predictions a minute" in (await problem(resp))["detail"]
        # The same account's bucket over gRPC, and over the OpenAI route.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ivy.create(text="over grpc")
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(err.value.trailing_metadata())["retry-after"] == "30"
        async with http.post("/v1/completions", json={"model": LLM, "prompt": "x"}, headers=headers) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "30"
        # Reads are not limited, another account has its own bucket, and an admin is not limited.
        await get(http, "/v1/predictions", headers)
        await create(http, bearer((await user(limited.api, f"henry-{uuid.uuid4().hex[:6]}")).token))
        for _ in range(3):
            await create(http, bearer(limited.api.token))


async def test_a_full_queue_is_429_with_retry_after(limited):
    tokens = [bearer((await user(limited.api, f"q{i}-{uuid.uuid4().hex[:6]}")).token) for i in range(3)]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{limited.gateway.http_port}") as http:
        busy = await create(http, tokens[0], model=NARROW, delay_ms=20_000)
        await until(http, busy["urls"]["get"], tokens[0], lambda p: p["status"] == "processing")
        queued = await create(http, tokens[1], model=NARROW)
        async with http.post(f"/v1/models/{NARROW}/predictions", json={"input": {"text": "one too many"}},
                             headers=tokens[2]) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
            assert "full" in (await problem(resp))["detail"]
        for pred, headers in ((queued, tokens[1]), (busy, tokens[0])):
            async with http.post(pred["urls"]["cancel"], headers=headers) as resp:
                assert resp.status == 200


# Files in


async def test_a_data_url_input_is_a_file_and_the_output_image_comes_back(http, admin):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    pred = await create(http, {**admin, "Prefer": "wait=60"}, model=ESRGAN, image=data_url)
    assert pred["status"] == "succeeded", pred["error"]
    assert pred["input"]["image"].startswith("data:image/png;base64,")
    (inline,) = pred["output"]  # small, over plain http: a data URL (README, "Output files")
    assert inline.startswith("data:image/png;base64,")
    upscaled = Image.open(io.BytesIO(base64.b64decode(inline.partition(",")[2])))
    assert upscaled.width > 16 and upscaled.width * 12 == upscaled.height * 16
