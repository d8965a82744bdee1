"""Files without a network: data URLs, the address fence, the fetch's bounds and redirects (a fetcher
whose hops are scripted), file inputs placed by the schema, the file store, and retention."""

from __future__ import annotations

import base64
import hashlib
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from multidict import CIMultiDict

from gateway.auth import Principal, Role
from gateway.fetch import UrlFetcher, _Hop, _PinnedResolver, address_refusal, parse_data_url, read_limited
from gateway.files import FileStore, InputResolver, Retention, takes_file
from gateway.store import PredictionStore, without_data
from warmfleet.domain import FileData, Output, Prediction, Status
from warmfleet.errors import InvalidInput, NotFound
from warmfleet.settings import load_settings

ALICE = Principal("acct_alice", "alice", Role.USER)
BOB = Principal("acct_bob", "bob", Role.USER)
ADMIN = Principal("acct_admin", "admin", Role.ADMIN)
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


# data: URLs


def test_a_base64_data_url_gives_its_bytes_type_and_name():
    url = "data:image/png;name=dot.png;base64," + base64.b64encode(PNG).decode()
    assert parse_data_url(url, 1024) == FileData(PNG, "image/png", "dot.png")


@pytest.mark.parametrize("url, data, content_type", [
    ("data:,Hello%2C%20World%21", b"Hello, World!", "text/plain"),  # RFC 2397's own example
    ("data:text/plain;charset=utf-8,%E2%9C%93", "✓".encode(), "text/plain"),
    ("data:;base64,SGk", b"Hi", "text/plain"),  # no media type, padding left off
    ("data:application/octet-stream;base64,SGV s\nbG8=", b"Hello", "application/octet-stream"),  # whitespace
    ("data:application/octet-stream;base64,-_8", b"\xfb\xff", "application/octet-stream"),  # URL-safe
    ("DATA:Image/PNG;BASE64,SGk=", b"Hi", "image/png"),
])
def test_data_url_forms(url, data, content_type):
    parsed = parse_data_url(url, 1024)
    assert (parsed.data, parsed.content_type) == (data, content_type)


@pytest.mark.parametrize("url, says", [
    ("data:image/png;base64", "without the ','"),
    ("data:image/png;base64,@@@@", "does not decode"),
    ("data:not a type;base64,SGk=", "not type/subtype"),
    ("data:," + "x" * 11, "larger than 10 bytes"),
])
def test_bad_data_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_data_url(url, 10)


def test_a_base64_payload_over_the_bound_is_refused_before_it_is_decoded(monkeypatch):
    from gateway import fetch

    monkeypatch.setattr(fetch.base64, "b64decode", lambda *a, **k: pytest.fail("decoded a payload too big"))
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        parse_data_url("data:;base64," + "A" * 4000, 1000)


# The address fence


@pytest.mark.parametrize("address, refusal", [
    ("127.0.0.1", "a loopback address"),
    ("127.8.9.10", "a loopback address"),
    ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
    ("2002:7f00:1::", "a loopback address"),  # 6to4 around 127.0.0.1
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.254", "a private address"),
    ("192.168.1.1", "a private address"),
    ("fc00::1", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("64:ff9b::a00:1", "a private address"),  # NAT64 around 10.0.0.1
    ("169.254.169.254", "a link-local address"),  # the cloud metadata service
    ("fe80::1", "a link-local address"),
    ("fe80::1%eth0", "a link-local address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("224.0.0.1", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("93.184.216.34", None),
    ("172.32.0.1", None),  # just past 172.16.0.0/12
    ("2606:4700:4700::1111", None),
])
def test_address_refusal(address, refusal):
    assert address_refusal(address) == refusal


async def test_the_pinned_resolver_answers_only_with_the_checked_addresses_of_its_host():
    resolver = _PinnedResolver("files.example", [(socket.AF_INET, "93.184.216.34")])
    [answer] = await resolver.resolve("files.example", 443)
    assert (answer["host"], answer["port"], answer["hostname"]) == ("93.184.216.34", 443, "files.example")
    with pytest.raises(OSError, match="not checked"):
        await resolver.resolve("elsewhere.example", 443)


# The fetch: bounds and redirects, over scripted hops


async def _chunks(parts: list[bytes], read: list[int]):
    for part in parts:
        read.append(len(part))
        yield part


async def test_a_declared_length_over_the_bound_is_refused_before_reading():
    read: list[int] = []
    with pytest.raises(InvalidInput, match="input.image: is larger than 10 bytes"):
        await read_limited(_chunks([b"x" * 5] * 4, read), 10, 20, "input.image")
    assert read == []


async def test_a_body_is_abandoned_once_it_passes_the_bound_whatever_its_length_said():
    read: list[int] = []
    with pytest.raises(InvalidInput, match="larger than 10 bytes"):
        await read_limited(_chunks([b"x" * 4] * 100, read), 10, 8, "input.image")  # it said 8: a lie
    assert len(read) == 3  # 12 bytes read of 400
    assert await read_limited(_chunks([b"x" * 5] * 2, []), 10, None, "f") == b"x" * 10  # the bound itself


@dataclass
class Scripted:
    status: int = 200
    body: bytes = b""
    headers: dict | None = None


DNS = {"files.example": ["93.184.216.34"], "cdn.example": ["151.101.1.1"], "internal.example": ["10.0.0.7"],
       "split.example": ["151.101.1.2", "192.168.0.9"]}


class ScriptedFetcher(UrlFetcher):
    """A fetcher whose DNS and responses are tables; records each hop it connects to."""

    def __init__(self, hops: dict[str, Scripted], max_bytes: int = 1024, allow_private: bool = False) -> None:
        super().__init__(max_bytes, 5.0, allow_private, resolve=self._dns)
        self.hops = hops
        self.opened: list[tuple[str, list[str]]] = []

    async def _dns(self, host: str, port: int):
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, a) for a in DNS[host]]

    @asynccontextmanager
    async def _open(self, url, addresses):
        self.opened.append((str(url), [a for _, a in addresses]))
        hop = self.hops[str(url)]
        yield _Hop(hop.status, "Whatever", CIMultiDict(hop.headers or {}), len(hop.body),
                   _chunks([hop.body], []))


async def test_a_fetch_follows_redirects_and_names_the_file_by_its_last_url():
    fetcher = ScriptedFetcher({
        "https://files.example/a": Scripted(302, headers={"Location": "https://cdn.example/x/cat.png?sig=1"}),
        "https://cdn.example/x/cat.png?sig=1": Scripted(200, PNG, {"Content-Type": "image/png; q=1"}),
    })
    file = await fetcher.fetch("https://files.example/a", "input.image")
    assert file == FileData(PNG, "image/png", "cat.png")
    assert fetcher.opened == [("https://files.example/a", ["93.184.216.34"]),
                              ("https://cdn.example/x/cat.png?sig=1", ["151.101.1.1"])]  # connected as checked


async def test_a_redirect_to_a_private_address_is_refused_before_connecting_to_it():
    fetcher = ScriptedFetcher({
        "https://files.example/a": Scripted(307, headers={"Location": "http://internal.example/admin?token=s"}),
    })
    with pytest.raises(InvalidInput) as caught:
        await fetcher.fetch("https://files.example/a", "input.image")
    assert caught.value.field == "input.image"
    assert "10.0.0.7 is a private address; refused" in str(caught.value) and "allow_private_urls" in str(caught.value)
    assert "token=s" not in str(caught.value)  # a query may hold a secret
    assert [url for url, _ in fetcher.opened] == ["https://files.example/a"]


async def test_a_host_with_any_private_address_is_refused():
    fetcher = ScriptedFetcher({})
    with pytest.raises(InvalidInput, match="192.168.0.9 is a private address"):
        await fetcher.fetch("http://split.example/f", "input.image")
    assert fetcher.opened == []


async def test_an_address_literal_is_checked_and_allow_private_lifts_the_fence():
    with pytest.raises(InvalidInput, match=r"input.image: URL http://127.0.0.1:9/x: 127.0.0.1 is a loopback"):
        await ScriptedFetcher({}).fetch("http://127.0.0.1:9/x", "input.image")
    allowed = ScriptedFetcher({"http://internal.example/f.bin": Scripted(200, b"secret")}, allow_private=True)
    assert (await allowed.fetch("http://internal.example/f.bin", "input.f")).data == b"secret"


async def test_more_than_five_redirects_are_refused():
    hops = {f"https://files.example/{i}": Scripted(302, headers={"Location": f"/{i + 1}"}) for i in range(10)}
    fetcher = ScriptedFetcher(hops)
    with pytest.raises(InvalidInput, match="more than 5 redirects"):
        await fetcher.fetch("https://files.example/0", "input.image")
    assert len(fetcher.opened) == 6


@pytest.mark.parametrize("url, says", [
    ("ftp://files.example/a", r"not an http\(s\) URL"),
    ("https://nowhere.example/a", "cannot resolve nowhere.example"),
])
async def test_urls_that_cannot_be_fetched(url, says):
    with pytest.raises(InvalidInput, match=says):
        await ScriptedFetcher({}).fetch(url, "input.image")


async def test_an_error_status_is_named():
    fetcher = ScriptedFetcher({"https://files.example/gone": Scripted(404)})
    with pytest.raises(InvalidInput, match="input.image: fetching https://files.example/gone: the server "
                                           "answered 404"):
        await fetcher.fetch("https://files.example/gone", "input.image")


async def test_a_body_past_the_bound_is_refused():
    fetcher = ScriptedFetcher({"https://files.example/big": Scripted(200, b"x" * 2000)})
    with pytest.raises(InvalidInput, match="larger than 1024 bytes"):
        await fetcher.fetch("https://files.example/big", "input.image")


# File inputs, placed by the schema

SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "format": "uri"},
        "prompt": {"type": "string"},
        "controlnets": {"type": "array", "items": {"type": "object", "properties": {
            "image": {"type": "string", "format": "uri"}, "kind": {"type": "string"}}}},
        "mask": {"anyOf": [{"type": "null"}, {"type": "string", "format": "uri"}]},
    },
}
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture
async def files(tmp_path):
    store = FileStore(tmp_path / "files")
    await store.open()
    yield store
    store.close()


def resolver(files=None, **hops) -> InputResolver:
    return InputResolver(files, ScriptedFetcher({url: Scripted(200, body) for url, body in hops.items()}))


async def test_files_are_resolved_where_the_schema_takes_one_and_nowhere_else():
    r = resolver(**{"https://files.example/c.png": PNG})
    out = await r.resolve(ALICE, {
        "image": DATA_URL, "prompt": "https://files.example/c.png",
        "controlnets": [{"image": "https://files.example/c.png", "kind": DATA_URL}], "mask": DATA_URL,
    }, SCHEMA)
    assert out["image"] == FileData(PNG, "image/png", "image.png")  # named after its field
    assert out["prompt"] == "https://files.example/c.png"  # a string place: a URL is text
    assert out["controlnets"][0] == {"image": FileData(PNG, "image/png", "c.png"), "kind": DATA_URL}
    assert out["mask"].data == PNG


async def test_without_a_schema_only_data_urls_are_files():
    out = await resolver().resolve(ALICE, {"a": [DATA_URL], "b": "https://files.example/c.png"}, None)
    assert out == {"a": [FileData(PNG, "image/png", "a-0.png")], "b": "https://files.example/c.png"}


@pytest.mark.parametrize("value, says", [
    ("file:///etc/passwd", "input.controlnets[0].image: expected a file"),
    ("data:image/png;base64,%%%", "input.controlnets[0].image: is a data URL whose base64"),
    ("http://127.0.0.1/x.png", "input.controlnets[0].image: URL http://127.0.0.1/x.png: 127.0.0.1 is a loopback"),
])
async def test_a_bad_file_input_names_its_place(value, says):
    with pytest.raises(InvalidInput, match=says.replace("[", r"\[").replace("]", r"\]")):
        await resolver().resolve(ALICE, {"controlnets": [{"image": value}]}, SCHEMA)


async def test_an_uploaded_file_url_is_read_from_the_store_for_its_owner_only(files):
    stored = await files.create(ALICE.account, PNG, "mine.png", "image/png")
    url = f"http://127.0.0.1:8000/v1/files/{stored.id}"  # loopback: read here, never fetched
    out = await resolver(files).resolve(ALICE, {"image": url}, SCHEMA)
    assert out["image"] == FileData(PNG, "image/png", "mine.png")
    out = await resolver(files).resolve(ALICE, {"image": url + "/download"}, SCHEMA)
    assert out["image"].data == PNG
    with pytest.raises(InvalidInput, match=f"input.image: names file '{stored.id}', which is not yours"):
        await resolver(files).resolve(BOB, {"image": url}, SCHEMA)


def test_takes_file():
    assert takes_file({"type": "string", "format": "uri"})
    assert takes_file({"oneOf": [{"type": "integer"}, {"format": "uri"}]})
    assert not takes_file({"type": "string"}) and not takes_file({})


# The file store


async def test_the_store_keeps_files_by_owner_and_shares_identical_bytes(files, tmp_path):
    a = await files.create(ALICE.account, PNG, "a.png", "", {"k": 1}, ttl_s=60)
    b = await files.create(ALICE.account, PNG, "b.png", "image/png")
    c = await files.create("bob", b"other", "c.txt")
    assert (a.size, a.sha256, a.md5) == (len(PNG), hashlib.sha256(PNG).hexdigest(), hashlib.md5(PNG).hexdigest())
    assert a.content_type == "image/png" and c.content_type == "text/plain"  # guessed from the name
    assert a.expires_at == pytest.approx(a.created_at + 60) and b.expires_at is None
    assert [f.id for f in files.list(ALICE.account)] == [b.id, a.id]  # newest first
    assert files.get(ADMIN, c.id) == c
    with pytest.raises(NotFound):
        files.get(ALICE, c.id)
    assert files.path_of(a) == files.path_of(b)  # one blob for identical bytes
    await files.delete(ALICE, a.id)
    assert files.path_of(b).read_bytes() == PNG  # still b's
    await files.delete(ALICE, b.id)
    assert not files.path_of(b).exists()
    reopened = FileStore(tmp_path / "files")
    await reopened.open()
    assert [f.id for f in reopened.list("bob")] == [c.id] and await reopened.read(c) == b"other"
    reopened.close()


async def test_expired_files_are_gone_at_once_and_deleted_by_the_sweep(tmp_path):
    now = [1000.0]
    files = FileStore(tmp_path / "files", clock=lambda: now[0])
    await files.open()
    old = await files.create(ALICE.account, b"old", "old.txt", ttl_s=10)
    kept = await files.create(ALICE.account, b"kept", "kept.txt")
    now[0] += 11
    assert files.lookup(old.id) is None and [f.id for f in files.list(ALICE.account)] == [kept.id]
    assert await Retention(None, files, 0, 60).sweep() == (0, 1)
    assert not files.path_of(old).exists() and files.path_of(kept).exists()
    files.close()


# Retention of predictions' data


def _prediction(pid: str, completed_at: float | None, status: Status = Status.SUCCEEDED) -> Prediction:
    return Prediction(
        id=pid, model="m", version="v", owner="alice", created_at=100.0, status=status,
        input={"image": FileData(PNG, "image/png"), "mask": "data:,x", "prompt": "a cat", "n": [1, 2]},
        output=Output(value={"seed": 1}, files=[FileData(PNG, "image/png")]), completed_at=completed_at)


def test_without_data_leaves_no_file_and_no_output():
    stripped = without_data(_prediction("p", 200.0))
    assert stripped.input == {"image": None, "mask": None, "prompt": "a cat", "n": [1, 2]}
    assert stripped.output is None and stripped.data_removed


async def test_remove_data_clears_predictions_completed_before_the_time_only(tmp_path):
    store = PredictionStore(tmp_path / "p.sqlite3")
    await store.open()
    store.save(_prediction("old", 200.0))
    store.save(_prediction("recent", 900.0))
    store.save(_prediction("running", None, Status.PROCESSING))
    assert await store.remove_data(completed_before=500.0) == 1
    old, recent, running = [await store.get(p) for p in ("old", "recent", "running")]
    assert old.data_removed and old.output is None and old.input["image"] is None
    assert old.input["prompt"] == "a cat" and old.status is Status.SUCCEEDED
    assert not recent.data_removed and recent.output.files[0].data == PNG
    assert not running.data_removed and running.input["image"].data == PNG
    assert await store.remove_data(completed_before=500.0) == 0  # done once
    await store.close()


async def test_a_store_made_before_data_removed_gets_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "p.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE predictions (id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL, "
               "status TEXT NOT NULL, body TEXT NOT NULL)")
    db.commit()
    db.close()
    store = PredictionStore(path)
    await store.open()
    store.save(_prediction("old", 200.0))
    assert await store.remove_data(completed_before=500.0) == 1
    await store.close()


# Settings


@pytest.mark.parametrize("raw, value", [("1", True), ("true", True), ("Yes", True), ("0", False), ("off", False)])
def test_allow_private_urls_reads_as_a_flag(raw, value):
    assert load_settings(environ={"WARMFLEET_ALLOW_PRIVATE_URLS": raw}).allow_private_urls is value


def test_a_flag_that_is_neither_is_refused():
    with pytest.raises(InvalidInput, match="settings.allow_private_urls: expected bool"):
        load_settings(environ={"WARMFLEET_ALLOW_PRIVATE_URLS": "maybe"})


def test_file_settings_default_to_replicates_bounds():
    s = load_settings(environ={})
    assert (s.max_input_file_bytes, s.url_fetch_timeout_s, s.allow_private_urls) == (100 * 2**20, 30.0, False)
    assert (s.retention_s, s.retention_interval_s) == (3600.0, 60.0) and s.files_path == s.home / "files"
