"""When an output's files come inline as data URLs (``gateway.rest.shapes.inlines_files``): over plain http
within ``inline_output_max_bytes`` (all of one output's files together; a page's predictions sharing the
bound), never over https or with 0; what Replicate's Python client makes of each form; webhook bodies."""

from __future__ import annotations

import asyncio
import base64
import functools

import pytest

from gateway.rest import shapes
from gateway.signing import UrlSigner
from gateway.webhooks import WebhookSecrets, WebhookSender
from tests.unit.test_webhooks import FakeClock, Receiver
from warmfleet.domain import Completed, FileData, Output, Prediction, Status
from warmfleet.errors import InvalidInput
from warmfleet.settings import Settings, load_settings

HTTP, HTTPS = "http://127.0.0.1:8000", "https://gw.example:8000"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3  # 776 bytes that start as a PNG does


def prediction(*files: FileData, value=None, pid: str = "p1") -> Prediction:
    return Prediction(id=pid, model="acme/draw", version="v1", input={}, owner="acct-1", created_at=1.0,
                      status=Status.SUCCEEDED, output=Output(value=value, files=list(files)))


def png(size: int = len(PNG)) -> FileData:
    return FileData(PNG[:size].ljust(size, b"\0"), "image/png")


def decoded(data_url: str) -> tuple[str, bytes]:
    head, _, body = data_url.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), data_url[:40]
    return head[len("data:"):-len(";base64")], base64.b64decode(body)


# One output


def test_over_plain_http_a_small_output_is_its_data_urls_in_order():
    first, second = png(), FileData(b"GIF89a-second", "image/gif")
    shown = shapes.output_json(prediction(first, second), HTTP, inline_max_bytes=1024 * 1024)
    assert [decoded(url) for url in shown] == [("image/png", first.data), ("image/gif", second.data)]


def test_a_file_without_a_content_type_is_octet_stream():
    (url,) = shapes.output_json(prediction(FileData(b"\x00\x01raw")), HTTP, inline_max_bytes=100)
    assert decoded(url) == ("application/octet-stream", b"\x00\x01raw")


def test_the_bound_counts_all_of_one_outputs_bytes_and_admits_exactly_the_bound():
    assert shapes.inlines_files([png(600), png(400)], HTTP, 1000)
    assert not shapes.inlines_files([png(600), png(401)], HTTP, 1000)  # each fits alone; not together
    assert not shapes.inlines_files([png(1001)], HTTP, 1000)


def test_over_the_bound_the_files_are_their_urls_under_the_gateway():
    shown = shapes.output_json(prediction(png(1001), png(10)), HTTP, inline_max_bytes=1000)
    assert shown == [f"{HTTP}/v1/predictions/p1/output/0", f"{HTTP}/v1/predictions/p1/output/1"]


def test_over_https_the_urls_stay_signed_whatever_the_size():
    signer = UrlSigner(bytes(32), clock=lambda: 1000.0)
    (url,) = shapes.output_json(prediction(png(10)), HTTPS, signer.links(60), inline_max_bytes=1024 * 1024)
    assert url == HTTPS + signer.link("/v1/predictions/p1/output/0", "acct-1", 60)
    assert not shapes.inlines_files([png(10)], HTTPS, 1024 * 1024)


def test_zero_never_inlines_and_is_what_prediction_json_shows():
    assert not shapes.inlines_files([png(1)], HTTP, 0)
    pred = prediction(png(1))
    assert shapes.output_json(pred, HTTP) == [f"{HTTP}/v1/predictions/p1/output/0"]
    assert shapes.prediction_json(pred, HTTP)["output"] == [f"{HTTP}/v1/predictions/p1/output/0"]


def test_a_value_with_files_keeps_its_value_beside_the_inline_files():
    shown = shapes.output_json(prediction(png(), value={"caption": "fox", "score": 2.0}), HTTP,
                               inline_max_bytes=10_000)
    assert shown["value"] == {"caption": "fox", "score": 2}
    assert [decoded(url)[1] for url in shown["files"]] == [PNG]


def test_outputs_without_files_are_the_same_inline_or_not():
    for pred in (prediction(value="some text"), prediction(value=None)):
        assert shapes.output_json(pred, HTTP, inline_max_bytes=10) == shapes.output_json(pred, HTTP)
    pending = prediction()
    pending.output = None
    assert shapes.prediction_response(pending, HTTP, inline_max_bytes=10)["output"] is None


def test_a_response_is_the_prediction_json_with_only_its_output_inline():
    pred = prediction(png())
    plain = shapes.prediction_json(pred, HTTP)
    inline = shapes.prediction_response(pred, HTTP, inline_max_bytes=10**6)
    assert {**inline, "output": None} == {**plain, "output": None}
    assert [decoded(url)[1] for url in inline["output"]] == [PNG]
    over_https = shapes.prediction_response(pred, HTTPS, inline_max_bytes=10**6)
    assert over_https == shapes.prediction_json(pred, HTTPS)


# A page


def test_a_page_shares_the_bound_in_its_order():
    preds = [prediction(png(600), pid="a"), prediction(png(600), pid="b"), prediction(value="text", pid="c"),
             prediction(png(300), pid="d"), prediction(png(101), pid="e")]
    shown = shapes.predictions_response(preds, HTTP, inline_max_bytes=1000)
    outputs = {p["id"]: p["output"] for p in shown}
    assert decoded(outputs["a"][0])[1] == png(600).data  # 400 left
    assert outputs["b"] == [f"{HTTP}/v1/predictions/b/output/0"]  # 600 > 400: its URL
    assert outputs["c"] == "text"
    assert decoded(outputs["d"][0])[1] == png(300).data  # 100 left
    assert outputs["e"] == [f"{HTTP}/v1/predictions/e/output/0"]  # 101 > 100
    assert [p["id"] for p in shown] == ["a", "b", "c", "d", "e"]


def test_a_page_over_https_or_with_zero_shows_urls_only():
    preds = [prediction(png(10), pid="a"), prediction(png(10), pid="b")]
    for base, bound in ((HTTPS, 1000), (HTTP, 0)):
        shown = shapes.predictions_response(preds, base, inline_max_bytes=bound)
        assert [p["output"] for p in shown] == [[f"{base}/v1/predictions/{i}/output/0"] for i in "ab"]


# What Replicate's Python client makes of them


def test_replicates_client_opens_an_inline_output_as_a_file_and_leaves_an_http_url_a_string():
    from replicate.helpers import FileOutput, transform_output

    inline = shapes.output_json(prediction(png()), HTTP, inline_max_bytes=10**6)
    (opened,) = transform_output(inline, client=None)  # a data: URL is read without the client
    assert isinstance(opened, FileOutput) and opened.read() == PNG
    (plain,) = transform_output(shapes.output_json(prediction(png()), HTTP), client=None)
    assert plain == f"{HTTP}/v1/predictions/p1/output/0" and not isinstance(plain, FileOutput)


# Webhook bodies and the setting


async def test_a_webhook_body_carries_the_output_as_the_rest_api_shows_it(tmp_path):
    bodies = {}
    for base in (HTTP, HTTPS):
        receiver, clock = Receiver(), FakeClock()
        render = functools.partial(shapes.prediction_response, inline_max_bytes=10_000)
        sender = WebhookSender(WebhookSecrets(tmp_path / "webhook_secret"), base_url=base, post=receiver,
                               render=render, clock=clock, call_later=clock.call_later)
        pred = prediction(png())
        pred.webhook, pred.webhook_events_filter = "http://127.0.0.1:9/hook", ["completed"]
        sender.notify(pred, Status.STARTING)
        sender.notify(pred, Completed(pred))
        for _ in range(100):
            if receiver.got:
                break
            await asyncio.sleep(0)
        (bodies[base],) = receiver.bodies
    assert [decoded(url)[1] for url in bodies[HTTP]["output"]] == [PNG]
    assert bodies[HTTPS]["output"] == [f"{HTTPS}/v1/predictions/p1/output/0"]


def test_the_setting_is_a_mebibyte_by_default_and_0_turns_it_off():
    assert Settings().inline_output_max_bytes == 1024 * 1024
    assert load_settings(environ={"WARMFLEET_INLINE_OUTPUT_MAX_BYTES": "0"}).inline_output_max_bytes == 0
    with pytest.raises(InvalidInput) as err:
        load_settings(flags={"inline_output_max_bytes": "lots"}, environ={})
    assert err.value.field == "settings.inline_output_max_bytes"
