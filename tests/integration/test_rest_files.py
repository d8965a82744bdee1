"""Files over a real cluster: URL and data URL inputs reaching the upscale runner, the address fence,
Replicate's Files API with a real HTTP client, and retention. A local HTTP server on 127.0.0.1 serves
the files that inputs name."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from gateway.auth import Principal, Role
from gateway.predictions import CreateRequest
from tests.integration.conftest import ESRGAN, RunningGateway, user
from warmfleet.domain import FileData, Status
from warmfleet.errors import InvalidInput
from warmfleet.v1 import types_pb2 as T

pytestmark = pytest.mark.integration

SCALE = 4  # the tiny ESRGAN's
SMALL_BYTES = 256 * 1024


def png(width: int = 12, height: int = 8) -> bytes:
    image = Image.new("RGB", (width, height))
    image.putdata([(17 * i % 256, 40 * i % 256, 90) for i in range(width * height)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png()


class FileServer:
    """Serves /cat.png, /redirect (to it) and /big (more than SMALL_BYTES, streamed); counts requests."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        app = web.Application()
        app.router.add_get("/cat.png", self._cat)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/big", self._big)
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _cat(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(body=PNG, content_type="image/png")

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        raise web.HTTPFound("/cat.png")

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(SMALL_BYTES // 4096 + 64):
                await response.write(b"x" * 4096)
        except ConnectionError:
            pass  # the gateway stopped reading past its bound, as it should
        return response


@pytest.fixture(scope="module")
async def server():
    srv = FileServer()
    await srv.start()
    yield srv
    await srv._runner.cleanup()


@pytest.fixture(scope="module")
async def private_gw(controller, tmp_path_factory):
    """A gateway whose operator allows private URLs, with small bounds on inputs and uploads."""
    gw = RunningGateway(tmp_path_factory.mktemp("files-private"), controller, allow_private_urls=True,
                        max_input_file_bytes=SMALL_BYTES, files_max_bytes=SMALL_BYTES)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture(scope="module")
async def retaining_gw(controller, tmp_path_factory):
    """A gateway that removes predictions' data half a second after they end, and keeps uploads 1 s."""
    gw = RunningGateway(tmp_path_factory.mktemp("files-retention"), controller, retention_s=0.5,
                        retention_interval_s=0.1, file_ttl_s=1.0)
    await gw.start()
    yield gw
    await gw.stop()


def base(gw: RunningGateway) -> str:
    return f"http://127.0.0.1:{gw.gateway.http_port}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def schema(gw: RunningGateway, model: str = ESRGAN) -> dict:
    return gw.gateway.catalog.by_name(model).input_schema


async def resolve(gw: RunningGateway, principal: Principal, input: dict) -> dict:
    return await gw.gateway.resolver.resolve(principal, input, schema(gw))


async def upscale(gw: RunningGateway, principal: Principal, input: dict):
    """The resolved input through the whole cluster, to the upscale runner; the finished prediction."""
    pred = await gw.gateway.service.create(principal, CreateRequest(input=input, model=ESRGAN, wait_s=60.0))
    assert pred.status is Status.SUCCEEDED, pred.error
    return pred


def admin(gw: RunningGateway) -> Principal:
    return gw.gateway.accounts.authenticate(f"Bearer {gw.api.token}")


async def test_a_url_at_127_0_0_1_is_refused_by_default_and_never_fetched(running, server):
    server.hits.clear()
    with pytest.raises(InvalidInput) as caught:
        await resolve(running, admin(running), {"image": server.url("/cat.png")})
    assert caught.value.field == "input.image"
    assert "127.0.0.1 is a loopback address; refused" in str(caught.value)
    assert "allow_private_urls" in str(caught.value)
    assert server.hits == []


async def test_the_rest_create_answers_422_naming_the_field(running, server):
    async with aiohttp.ClientSession(base(running)) as http, \
            http.post(f"/v1/models/{ESRGAN}/predictions", headers=bearer(running.api.token),
                      json={"input": {"image": server.url("/cat.png")}}) as reply:
        body = await reply.json(content_type=None)
    assert reply.status == 422 and reply.content_type == "application/problem+json", body
    assert body["field"] == "input.image" and "loopback" in body["detail"], body


async def test_an_allowed_url_through_a_redirect_reaches_the_runner(private_gw, server):
    server.hits.clear()
    resolved = await resolve(private_gw, admin(private_gw), {"image": server.url("/redirect", "localhost")})
    assert resolved["image"] == FileData(PNG, "image/png", "cat.png")
    assert server.hits == ["/redirect", "/cat.png"]
    [out] = (await upscale(private_gw, admin(private_gw), resolved)).output.files
    assert (out.width, out.height) == (12 * SCALE, 8 * SCALE)  # the runner decoded the fetched image


async def test_a_url_past_max_input_file_bytes_is_refused(private_gw, server):
    with pytest.raises(InvalidInput, match=f"input.image: is larger than {SMALL_BYTES} bytes"):
        await resolve(private_gw, admin(private_gw), {"image": server.url("/big")})


async def test_a_data_url_input_reaches_the_runner(running):
    data_url = "data:image/png;base64," + base64.b64encode(png(10, 6)).decode()
    resolved = await resolve(running, admin(running), {"image": data_url, "tile": 0})
    assert resolved["image"].content_type == "image/png" and resolved["tile"] == 0
    [out] = (await upscale(running, admin(running), resolved)).output.files
    assert (out.width, out.height) == (10 * SCALE, 6 * SCALE)


async def _upload(http, headers, data: bytes, name: str, **fields) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("content", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post("/v1/files", data=form, headers=headers) as reply:
        return reply.status, await reply.json(content_type=None)


async def test_the_files_api_round_trip_and_an_upload_as_an_input(running):
    name = f"alice-{uuid.uuid4().hex[:6]}"
    alice_api = await user(running.api, name)
    alice = bearer(alice_api.token)
    bob = bearer((await user(running.api, f"bob-{uuid.uuid4().hex[:6]}")).token)
    async with aiohttp.ClientSession(base(running)) as http:
        status, made = await _upload(http, alice, PNG, "cat.png", metadata='{"album": "pets"}')
        assert status == 201, made
        assert (made["name"], made["content_type"], made["size"]) == ("cat.png", "image/png", len(PNG))
        assert made["checksums"]["sha256"] == hashlib.sha256(PNG).hexdigest()
        assert made["etag"] == hashlib.md5(PNG).hexdigest() and made["metadata"] == {"album": "pets"}
        assert made["created_at"].endswith("Z") and made["expires_at"] > made["created_at"]
        get_url = made["urls"]["get"]
        download_url = made["urls"]["download"]
        assert get_url.startswith(base(running)) and urlsplit(get_url).path == f"/v1/files/{made['id']}"
        assert urlsplit(download_url).path == f"/v1/files/{made['id']}/download"
        async with http.get(get_url, headers=alice) as reply:  # its links are signed afresh: compared apart
            assert reply.status == 200 and {**await reply.json(), "urls": None} == {**made, "urls": None}
        async with http.get("/v1/files", headers=alice) as reply:
            page = await reply.json()
            assert [f["id"] for f in page["results"]] == [made["id"]] and page["next"] is None
        async with http.get(download_url, headers=alice) as reply:
            assert reply.status == 200 and await reply.read() == PNG
            assert reply.headers["Content-Type"] == "image/png"
            assert 'filename="cat.png"' in reply.headers["Content-Disposition"]
        for url in (get_url, download_url):
            async with http.get(url, headers=bob) as reply:
                assert reply.status == 404  # not bob's: as if it did not exist
        async with http.get("/v1/files", headers=bob) as reply:
            assert (await reply.json())["results"] == []

        owner = running.gateway.accounts.authenticate(f"Bearer {alice_api.token}")
        resolved = await resolve(running, owner, {"image": get_url})  # loopback, yet read here: it is ours
        assert resolved["image"] == FileData(PNG, "image/png", "cat.png")
        [out] = (await upscale(running, owner, resolved)).output.files
        assert (out.width, out.height) == (12 * SCALE, 8 * SCALE)
        with pytest.raises(InvalidInput, match="input.image: names file .* which is not yours"):
            await resolve(running, Principal("acct_someone", "someone-else", Role.USER), {"image": get_url})

        async with http.delete(get_url, headers=alice) as reply:
            assert reply.status == 204
        async with http.get(get_url, headers=alice) as reply:
            body = await reply.json(content_type=None)
            assert reply.status == 404 and body["status"] == 404 and made["id"] in body["detail"]


async def test_a_raw_body_upload_and_one_past_files_max_bytes(private_gw):
    headers = bearer(private_gw.api.token)
    async with aiohttp.ClientSession(base(private_gw)) as http:
        async with http.post("/v1/files?filename=notes.txt", data=b"hello files",
                             headers={**headers, "Content-Type": "text/plain"}) as reply:
            made = await reply.json()
            assert reply.status == 201 and (made["name"], made["content_type"], made["size"]) == (
                "notes.txt", "text/plain", 11)
        status, body = await _upload(http, headers, b"x" * (SMALL_BYTES + 1), "big.bin")
        assert status == 413 and "files_max_bytes" in body["detail"], body
        for form in (aiohttp.FormData({"metadata": "{}"}, default_to_multipart=True),
                     aiohttp.FormData({"content": "not a file part"})):  # urlencoded: no file in it
            async with http.post("/v1/files", data=form, headers=headers) as reply:
                body = await reply.json(content_type=None)
                assert reply.status == 422 and body["field"] == "content", body


async def test_retention_removes_inputs_and_outputs_and_sets_data_removed(retaining_gw):
    gw = retaining_gw
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    resolved = await resolve(gw, admin(gw), {"image": data_url, "tile": 0})
    pred = await upscale(gw, admin(gw), resolved)
    assert pred.output.files and not pred.data_removed
    async with aiohttp.ClientSession(base(gw)) as http:
        status, made = await _upload(http, bearer(gw.api.token), PNG, "short-lived.png")
        assert status == 201 and made["expires_at"] is not None
    blob = gw.gateway.files.root / "blobs" / made["checksums"]["sha256"]
    async with asyncio.timeout(10):
        while not (stored := await gw.gateway.store.get(pred.id)).data_removed:
            await asyncio.sleep(0.1)
    assert stored.output is None and stored.input == {"image": None, "tile": 0}
    assert stored.status is Status.SUCCEEDED and stored.metrics.predict_time_s is not None  # the rest stays
    got = await gw.api.get(pred.id)
    assert not got.HasField("output") and got.status == T.STATUS_SUCCEEDED  # without its output
    assert got.data_removed
    async with aiohttp.ClientSession(base(gw)) as http, \
            http.get(f"/v1/predictions/{pred.id}", headers=bearer(gw.api.token)) as reply:
        shown = await reply.json()
        assert (shown["data_removed"], shown["output"]) == (True, None)
    async with asyncio.timeout(10):
        while blob.exists():
            await asyncio.sleep(0.1)
    async with aiohttp.ClientSession(base(gw)) as http, \
            http.get(made["urls"]["get"], headers=bearer(gw.api.token)) as reply:
        assert reply.status == 404
