"""Signed links (gateway/signing.py): a link opens its one path as its owner until it expires; a changed
signature, expiry, owner or path, another key and an expired link are refused (403); the key file; and
the REST middleware's choice between the token and a link."""

from __future__ import annotations

import stat
import threading
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.accounts import Accounts
from gateway.auth import current_principal
from gateway.files import StoredFile
from gateway.rest.context import REST, RestContext, middleware
from gateway.rest.files import file_json
from gateway.rest.shapes import prediction_json
from gateway.signing import UrlSigner, key_path, load_key, unsigned
from tests.unit.fakes import ManualClock
from warmfleet.domain import FileData, Output, Prediction, Status
from warmfleet.errors import PermissionDenied, status_for
from warmfleet.settings import Settings

KEY = bytes(range(32))
PATH = "/v1/predictions/p1"
OWNER = "acct_0123456789abcdef"
T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def signer(clock) -> UrlSigner:
    return UrlSigner(KEY, clock)


def test_a_valid_link_opens_its_path_as_its_owner(signer):
    params = signer.sign(PATH, OWNER, 3600)
    assert set(params) == {"owner", "expires", "signature"}
    assert params["owner"] == OWNER and params["expires"] == str(int(T0) + 3600)
    assert len(params["signature"]) == 64 and int(params["signature"], 16) >= 0  # hex SHA-256
    assert signer.verify(PATH, params) == OWNER


def test_link_puts_the_signature_in_the_query_of_the_same_path(signer):
    link = signer.link(PATH, OWNER, 60)
    parts = urlsplit(link)
    assert parts.path == PATH
    assert signer.verify(parts.path, dict(parse_qsl(parts.query))) == OWNER
    assert signer.links(60)(PATH, OWNER) == link
    assert unsigned(PATH, OWNER) == PATH


def _flipped(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


@pytest.mark.parametrize("change", [
    pytest.param(lambda p: {**p, "signature": _flipped(p["signature"])}, id="signature"),
    pytest.param(lambda p: {**p, "signature": p["signature"].upper()}, id="signature-case"),
    pytest.param(lambda p: {**p, "signature": p["signature"][:-1]}, id="signature-cut"),
    pytest.param(lambda p: {**p, "signature": "é" * 64}, id="signature-not-ascii"),
    pytest.param(lambda p: {**p, "expires": str(int(p["expires"]) + 86400)}, id="expires-later"),
    pytest.param(lambda p: {**p, "expires": "0" + p["expires"]}, id="expires-same-number"),
    pytest.param(lambda p: {**p, "expires": "soon"}, id="expires-not-a-number"),
    pytest.param(lambda p: {**p, "owner": "acct_ffffffffffffffff"}, id="owner"),
])
def test_a_tampered_link_does_not_match(signer, change):
    params = change(signer.sign(PATH, OWNER, 3600))
    with pytest.raises(PermissionDenied, match="^the link's signature does not match$"):
        signer.verify(PATH, params)


@pytest.mark.parametrize("other", [
    "/v1/predictions/p2",  # another prediction's
    "/v1/predictions",  # the list
    "/v1/predictions/p1/cancel",
    "/v1/predictions/p1/stream",
    "/v1/predictions/p1/",
    "/v1/files/p1",
])
def test_a_link_opens_no_other_path(signer, other):
    params = signer.sign(PATH, OWNER, 3600)
    with pytest.raises(PermissionDenied, match="does not match"):
        signer.verify(other, params)


def test_the_fields_cannot_be_shifted_into_one_another(signer):
    """A path that ends where the owner begins is another message, not the same one."""
    params = signer.sign("/v1/files/a", "bc", 3600)
    with pytest.raises(PermissionDenied, match="does not match"):
        signer.verify("/v1/files/ab", {**params, "owner": "c"})


def test_a_link_expires_at_its_time_by_the_injected_clock(signer, clock):
    params = signer.sign(PATH, OWNER, 60)
    clock.now = T0 + 59.5
    assert signer.verify(PATH, params) == OWNER
    clock.now = T0 + 60
    with pytest.raises(PermissionDenied, match=r"^the link expired at 2023-11-14T22:14:20Z"):
        signer.verify(PATH, params)
    clock.now = T0 + 10 * 86400
    with pytest.raises(PermissionDenied, match="expired"):
        signer.verify(PATH, params)


@pytest.mark.parametrize("ttl_s", [0, -1, -3600])
def test_a_ttl_of_zero_or_less_makes_a_link_already_expired(signer, ttl_s):
    with pytest.raises(PermissionDenied, match="expired"):
        signer.verify(PATH, signer.sign(PATH, OWNER, ttl_s))


def test_a_link_signed_with_a_past_clock_has_expired_now(clock):
    past = UrlSigner(KEY, lambda: T0 - 7200).sign(PATH, OWNER, 3600)
    with pytest.raises(PermissionDenied, match="expired"):
        UrlSigner(KEY, clock).verify(PATH, past)


def test_another_keys_link_does_not_match(signer, clock):
    other = UrlSigner(bytes(reversed(KEY)), clock).sign(PATH, OWNER, 3600)
    with pytest.raises(PermissionDenied, match="does not match"):
        signer.verify(PATH, other)


def test_a_tampered_expired_link_says_it_does_not_match_not_that_it_expired(signer, clock):
    params = signer.sign(PATH, OWNER, 60)
    clock.now = T0 + 3600
    with pytest.raises(PermissionDenied, match="does not match"):
        signer.verify(PATH, {**params, "expires": str(int(T0) + 7200)})


@pytest.mark.parametrize("missing", ["owner", "expires", "signature"])
def test_an_incomplete_link_names_what_it_lacks(signer, missing):
    params = signer.sign(PATH, OWNER, 3600)
    del params[missing]
    with pytest.raises(PermissionDenied, match=f"^the link is incomplete: it lacks {missing}$"):
        signer.verify(PATH, params)


def test_a_refused_link_is_403_in_the_status_table(signer):
    with pytest.raises(PermissionDenied) as refused:
        signer.verify(PATH, {**signer.sign(PATH, OWNER, 3600), "owner": "x"})
    assert status_for(refused.value) == ("PERMISSION_DENIED", 403)


def test_owner_of_reads_only_signed_gets_and_heads(signer):
    params = signer.sign(PATH, OWNER, 3600)
    assert signer.owner_of("GET", PATH, params) == OWNER
    assert signer.owner_of("HEAD", PATH, params) == OWNER
    for method in ("POST", "DELETE", "PUT", "PATCH"):
        assert signer.owner_of(method, PATH, params) is None  # left to the token check (401)
    assert signer.owner_of("GET", PATH, {"expires": params["expires"]}) is None  # not a signed link
    with pytest.raises(PermissionDenied):
        signer.owner_of("GET", PATH, {**params, "signature": "0" * 64})


def test_a_short_key_is_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        UrlSigner(b"k" * 31)


# The links in the REST shapes


BASE = "http://gw:8000"


def _opens(signer: UrlSigner, url: str) -> str:
    """The path a link of the gateway at BASE opens, after checking it opens as OWNER."""
    assert url.startswith(BASE + "/v1/")
    parts = urlsplit(url)
    assert signer.verify(parts.path, dict(parse_qsl(parts.query))) == OWNER
    return parts.path


def test_a_predictions_get_stream_and_output_files_are_signed_for_its_owner_and_cancel_is_not(signer):
    png = FileData(b"\x89PNG", "image/png", "out.png")
    pred = Prediction(id="p1", model="acme/sd", version="v1", input={}, owner=OWNER, created_at=T0,
                      status=Status.SUCCEEDED, output=Output(value=None, files=[png, png]))
    shown = prediction_json(pred, BASE, signer.links(3600))
    assert _opens(signer, shown["urls"]["get"]) == "/v1/predictions/p1"
    assert _opens(signer, shown["urls"]["stream"]) == "/v1/predictions/p1/stream"
    assert shown["urls"]["cancel"] == f"{BASE}/v1/predictions/p1/cancel"
    assert [_opens(signer, url) for url in shown["output"]] == ["/v1/predictions/p1/output/0",
                                                                "/v1/predictions/p1/output/1"]
    plain = prediction_json(pred, BASE)  # no signer: the URLs as they always were
    assert plain["urls"]["get"] == f"{BASE}/v1/predictions/p1" and plain["output"][1].endswith("/output/1")


def test_a_files_get_and_download_are_signed_for_its_owner(signer):
    stored = StoredFile(id="f1", owner=OWNER, name="a.png", content_type="image/png", size=4, sha256="s",
                        md5="m", created_at=T0)
    shown = file_json(stored, BASE, signer.links(3600))
    assert _opens(signer, shown["urls"]["get"]) == "/v1/files/f1"
    assert _opens(signer, shown["urls"]["download"]) == "/v1/files/f1/download"
    assert file_json(stored, BASE)["urls"] == {"get": f"{BASE}/v1/files/f1",
                                               "download": f"{BASE}/v1/files/f1/download"}


# The key file


def test_the_key_is_made_once_with_mode_0600_and_read_back(tmp_path):
    path = key_path(tmp_path / "home")
    assert path.name == "url_signing.key"
    key = load_key(path)
    assert len(key) == 32 and key != bytes(32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    assert list(path.parent.iterdir()) == [path]  # no draft left behind
    assert load_key(key_path(tmp_path / "other")) != key


def test_gateways_making_the_key_at_once_get_the_same_one(tmp_path):
    path = key_path(tmp_path)
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and keys[0] == load_key(path)


@pytest.mark.parametrize("text", ["", "not hex", "00" * 16])
def test_a_bad_key_file_is_refused_and_named(tmp_path, text):
    path = key_path(tmp_path)
    path.write_text(text)
    with pytest.raises(ValueError, match="url_signing.key must hold a URL signing key"):
        load_key(path)


# The middleware: a token, a signed link, or neither


async def _whoami(request: web.Request) -> web.Response:
    principal = current_principal.get()
    return web.json_response({"account": principal.account, "role": principal.role.value,
                              "token_id": principal.token_id})


@pytest.fixture
async def gateway(tmp_path, clock):
    """An app with the real middleware and accounts, whose routes say who called."""
    accounts = Accounts(tmp_path / "accounts.sqlite3")
    await accounts.open()
    token = await accounts.bootstrap_admin()
    admin = accounts.authenticate(f"Bearer {token}")
    signer = UrlSigner(KEY, clock)
    app = web.Application(middlewares=[middleware])
    app[REST] = RestContext(settings=Settings(home=tmp_path), accounts=accounts, predictions=None,
                            catalog=None, routes=None, pusher=None, controller=None, files=None,
                            resolver=None, webhooks=None, signer=signer)
    app.router.add_get("/v1/predictions", _whoami)
    app.router.add_get("/v1/predictions/{id}", _whoami)
    app.router.add_post("/v1/predictions/{id}/cancel", _whoami)
    async with TestClient(TestServer(app)) as client:
        yield client, signer, admin, token
    await accounts.close()


async def test_a_signed_link_without_a_token_acts_as_its_owner_as_a_plain_user(gateway):
    client, signer, admin, _ = gateway
    async with client.get(signer.link(PATH, admin.account, 3600)) as resp:
        assert resp.status == 200
        assert await resp.json() == {"account": admin.account, "role": "user", "token_id": ""}
    async with client.head(signer.link(PATH, admin.account, 3600)) as resp:
        assert resp.status == 200


async def test_a_bad_link_without_a_token_is_a_403_problem(gateway, clock):
    client, signer, admin, _ = gateway
    params = signer.sign(PATH, admin.account, 60)
    cases = {
        "/v1/predictions/p2": params,  # another prediction's path
        "/v1/predictions": params,  # the list
        PATH: {**params, "signature": _flipped(params["signature"])},
    }
    for path, query in cases.items():
        async with client.get(path, params=query) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 403 and resp.content_type == "application/problem+json", body
            assert body["detail"] == "the link's signature does not match", body
    clock.now = T0 + 60
    async with client.get(PATH, params=params) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 403 and body["detail"].startswith("the link expired at "), body


async def test_with_a_token_the_token_decides_and_the_link_is_ignored(gateway):
    client, signer, admin, token = gateway
    forged = {"owner": "acct_nobody", "expires": "1", "signature": "0" * 64}
    async with client.get(PATH, params=forged, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200 and (await resp.json())["role"] == "admin"
    good = signer.sign(PATH, admin.account, 3600)
    async with client.get(PATH, params=good, headers={"Authorization": "Bearer wf_wrong"}) as resp:
        assert resp.status == 401  # a bad token is refused, whatever link it carries
    async with client.get(PATH, params=good, headers={"Authorization": ""}) as resp:
        assert resp.status == 401


async def test_a_link_does_not_authenticate_a_request_that_changes_state(gateway):
    client, signer, admin, _ = gateway
    path = f"{PATH}/cancel"
    async with client.post(path, params=signer.sign(path, admin.account, 3600)) as resp:
        assert resp.status == 401


async def test_no_token_and_no_link_is_401_as_before(gateway):
    client, *_ = gateway
    async with client.get(PATH) as resp:
        assert resp.status == 401
    async with client.get(PATH, params={"expires": "9999999999"}) as resp:
        assert resp.status == 401
