"""Signed links against a real cluster: a prediction's ``urls.get`` and ``urls.stream``, its output files,
and a file's ``urls.get`` and ``urls.download`` open without the token, as their owner; a tampered, expired
or another prediction's link is 403; a link opens neither the list nor anything that changes state; the
token works as before, and decides when it is sent."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest
from PIL import Image

from gateway.signing import UrlSigner, key_path, load_key
from tests.integration.conftest import ECHO, ESRGAN, RunningGateway, user
from tests.integration.test_rest_stream import sse

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SSE = {"Accept": "text/event-stream"}
TIMEOUT_S = 60.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def split(url: str) -> tuple[str, dict[str, str]]:
    """A link's path and its query."""
    parts = urlsplit(url)
    return parts.path, dict(parse_qsl(parts.query))


def with_query(gw: RunningGateway, path: str, query: dict[str, str]) -> str:
    return f"http://127.0.0.1:{gw.gateway.http_port}{path}?{urlencode(query)}"


def flipped(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


def signer_at(gw: RunningGateway, now: float) -> UrlSigner:
    """A signer with the gateway's own key whose clock reads ``now``: links as the gateway made them then."""
    return UrlSigner(load_key(key_path(gw.settings.home)), lambda: now)


@pytest.fixture
async def http(running):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as session:
        yield session


@pytest.fixture
async def alice(running) -> dict[str, str]:
    return bearer((await user(running.api, f"alice-{uuid.uuid4().hex[:6]}")).token)


async def create(http, headers, model=ECHO, **input) -> dict:
    async with http.post(f"/v1/models/{model}/predictions", json={"input": input},
                         headers={**headers, "Prefer": "wait=60"}) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 201 and body["status"] == "succeeded", body
        return body


async def status_and_body(http, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with http.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


async def refused(http, url: str, headers: dict[str, str] | None = None) -> dict:
    """GET ``url`` (no token unless ``headers``): a 403 problem; its body."""
    status, body = await status_and_body(http, url, headers)
    assert status == 403 and body["status"] == 403, body
    return body


async def stream(http, url: str) -> list[dict]:
    """The SSE events of ``url`` without the token, to ``done``."""
    events = []
    async with asyncio.timeout(TIMEOUT_S), http.get(url, headers=SSE) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for event in sse(resp):
            if "comment" not in event:
                events.append(event)
            if event.get("event") == "done":
                break
    return events


# Valid links open without the token


async def test_urls_get_opens_without_the_token_and_keeps_its_path(running, http, alice):
    text = f"signed {uuid.uuid4().hex}"
    pred = await create(http, alice, text=text)
    path, query = split(pred["urls"]["get"])
    assert path == f"/v1/predictions/{pred['id']}" and set(query) == {"owner", "expires", "signature"}
    assert 3600 - 30 < int(query["expires"]) - time.time() <= 3600  # signed_url_ttl_s, the default hour
    assert split(pred["urls"]["stream"])[0] == f"/v1/predictions/{pred['id']}/stream"
    # cancel changes state: no signature, the token only
    assert pred["urls"]["cancel"].endswith(f"/v1/predictions/{pred['id']}/cancel")
    status, got = await status_and_body(http, pred["urls"]["get"])
    assert status == 200, got
    assert (got["id"], got["output"], got["status"]) == (pred["id"], text, "succeeded")
    status, with_token = await status_and_body(http, path, alice)  # the token alone still works
    assert status == 200 and with_token["output"] == text


async def test_urls_stream_opens_without_the_token_and_reads_to_done(running, http, alice):
    text = f"one two three {uuid.uuid4().hex}"
    async with http.post(f"/v1/models/{ECHO}/predictions", headers=alice,
                         json={"input": {"text": text, "chunks": 3, "delay_ms": 600}}) as resp:
        pred = await resp.json()
        assert resp.status == 201, pred
    events = await stream(http, pred["urls"]["stream"])
    assert "".join(e["data"] for e in events if e["event"] == "output") == text
    assert events[-1]["event"] == "done" and events[-1]["data"] == "{}"


@pytest.fixture(scope="module")
async def links_gw(controller, tmp_path_factory):
    """A gateway that never inlines outputs (inline_output_max_bytes = 0): over plain http, small outputs
    are otherwise data URLs, not links (README, "Output files")."""
    gw = RunningGateway(tmp_path_factory.mktemp("links"), controller, inline_output_max_bytes=0)
    await gw.start()
    yield gw
    await gw.stop()


async def test_an_output_file_url_opens_without_the_token(links_gw):
    alice = bearer((await user(links_gw.api, f"alice-{uuid.uuid4().hex[:6]}")).token)
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{links_gw.gateway.http_port}") as http:
        pred = await create(http, alice, model=ESRGAN, image=data_url)
        (url,) = pred["output"]
        assert split(url)[0] == f"/v1/predictions/{pred['id']}/output/0"
        async with http.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            unsigned_read = await resp.read()
        async with http.get(split(url)[0], headers=alice) as resp:
            assert resp.status == 200
            assert await resp.read() == unsigned_read and unsigned_read.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(unsigned_read)).width > 16
        path, query = split(url)
        await refused(http, with_query(links_gw, path, {**query, "signature": flipped(query["signature"])}))
        other = await create(http, alice, text="no files")  # its output/0 with this one's signature
        await refused(http, with_query(links_gw, f"/v1/predictions/{other['id']}/output/0", query))
        await refused(http, with_query(links_gw, f"/v1/predictions/{pred['id']}/output/1", query))


async def test_a_files_urls_open_without_the_token(running, http, alice):
    data = png()
    form = aiohttp.FormData()
    form.add_field("content", data, filename="red.png", content_type="image/png")
    async with http.post("/v1/files", data=form, headers=alice) as resp:
        made = await resp.json()
        assert resp.status == 201, made
    assert split(made["urls"]["get"])[0] == f"/v1/files/{made['id']}"
    assert split(made["urls"]["download"])[0] == f"/v1/files/{made['id']}/download"
    status, got = await status_and_body(http, made["urls"]["get"])
    assert status == 200 and (got["id"], got["size"], got["name"]) == (made["id"], len(data), "red.png")
    async with http.get(made["urls"]["download"]) as resp:
        assert resp.status == 200 and await resp.read() == data
    # The get link's signature does not open the download, nor the list of files.
    get_query = split(made["urls"]["get"])[1]
    await refused(http, with_query(running, f"/v1/files/{made['id']}/download", get_query))
    await refused(http, with_query(running, "/v1/files", get_query))
    async with http.delete(made["urls"]["get"]) as resp:  # deleting takes the token
        assert resp.status == 401
    async with http.get(made["urls"]["download"]) as resp:
        assert resp.status == 200  # still there


# Bad links are 403


async def test_a_tampered_link_is_403(running, http, alice):
    pred = await create(http, alice, text="tamper")
    for url in (pred["urls"]["get"], pred["urls"]["stream"]):
        path, query = split(url)
        for changed in ({**query, "signature": flipped(query["signature"])},
                        {**query, "expires": str(int(query["expires"]) + 86400)},
                        {**query, "owner": "acct_0000000000000000"},
                        {key: value for key, value in query.items() if key != "expires"}):
            body = await refused(http, with_query(running, path, changed), SSE)
            assert "the link" in body["detail"], body


async def test_an_expired_link_is_403_and_the_same_link_unexpired_opens(running, http, alice):
    pred = await create(http, alice, text="expired")
    path, query = split(pred["urls"]["get"])
    owner = query["owner"]
    old = signer_at(running, time.time() - 7200).sign(path, owner, 3600)  # expired an hour ago
    body = await refused(http, with_query(running, path, old))
    assert body["detail"].startswith("the link expired at "), body
    fresh = signer_at(running, time.time()).sign(path, owner, 3600)  # the same making, unexpired
    status, got = await status_and_body(http, with_query(running, path, fresh))
    assert status == 200 and got["id"] == pred["id"], got
    status, got = await status_and_body(http, with_query(running, path, old), alice)  # the token decides
    assert status == 200 and got["id"] == pred["id"], got


async def test_another_predictions_signature_is_403_on_this_ones_path(running, http, alice):
    mine, other = await create(http, alice, text="mine"), await create(http, alice, text="other")
    bob = bearer((await user(running.api, f"bob-{uuid.uuid4().hex[:6]}")).token)
    bobs = await create(http, bob, text="bob's")
    for donor in (other, bobs):  # the same owner's other prediction, and another owner's
        for kind in ("get", "stream"):
            target_path = split(mine["urls"][kind])[0]
            body = await refused(http, with_query(running, target_path, split(donor["urls"][kind])[1]), SSE)
            assert body["detail"] == "the link's signature does not match", body


async def test_a_copied_signature_opens_no_list(running, http, alice):
    pred = await create(http, alice, text="listed")
    query = split(pred["urls"]["get"])[1]
    for path in ("/v1/predictions", "/v1/files", "/v1/models", "/v1/account"):
        async with http.get(with_query(running, path, query)) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 403 and "does not match" in body["detail"], (path, body)


async def test_a_link_does_not_cancel(running, http, alice):
    async with http.post(f"/v1/models/{ECHO}/predictions", headers=alice,
                         json={"input": {"text": "slow", "delay_ms": 3000}}) as resp:
        pred = await resp.json()
    path = f"/v1/predictions/{pred['id']}/cancel"
    signed = signer_at(running, time.time()).sign(path, split(pred["urls"]["get"])[1]["owner"], 3600)
    async with http.post(with_query(running, path, signed)) as resp:
        assert resp.status == 401
    status, got = await status_and_body(http, pred["urls"]["get"])
    assert status == 200 and got["status"] != "canceled", got


async def test_a_link_acts_as_its_owner_so_it_opens_nothing_of_anyone_elses(running, http, alice):
    """A link signed (with the gateway's key) for bob's account on alice's prediction: the owner check
    in the service answers, as for bob's token: 404."""
    pred = await create(http, alice, text="alice's")
    bob_api = await user(running.api, f"bob-{uuid.uuid4().hex[:6]}")
    path = split(pred["urls"]["get"])[0]
    forged = signer_at(running, time.time()).sign(path, await bob_api.account_id(), 3600)
    status, body = await status_and_body(http, with_query(running, path, forged))
    assert status == 404 and pred["id"] in body["detail"], body
    status, body = await status_and_body(http, pred["urls"]["get"], bearer(bob_api.token))
    assert status == 404, body  # with bob's token, alice's link is ignored


# A gateway whose links are given already expired (signed_url_ttl_s = 0)


@pytest.fixture(scope="module")
async def unsigned_gw(controller, tmp_path_factory):
    gw = RunningGateway(tmp_path_factory.mktemp("ttl0"), controller, signed_url_ttl_s=0.0)
    await gw.start()
    yield gw
    await gw.stop()


async def test_with_a_ttl_of_zero_links_are_given_expired_and_only_the_token_opens(unsigned_gw):
    admin = bearer(unsigned_gw.api.token)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{unsigned_gw.gateway.http_port}") as http:
        pred = await create(http, admin, text="ttl 0")
        body = await refused(http, pred["urls"]["get"])
        assert body["detail"].startswith("the link expired at "), body
        status, got = await status_and_body(http, pred["urls"]["get"], admin)
        assert status == 200 and got["output"] == "ttl 0", got
