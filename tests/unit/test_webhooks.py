"""Webhooks without a network: Standard Webhooks signatures, secrets, URL checks, throttling on a fake
clock, which events a filter lets through, and the completed webhook's retry schedule."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import stat
import time

import orjson
import pytest

from gateway.rest.shapes import prediction_json
from gateway.webhooks import (
    RETRY_DELAYS_S, Throttle, WebhookSecrets, WebhookSender, check_webhook, sign,
    signed_headers,
)
from warmfleet.domain import Completed, FileData, LogLine, Output, OutputChunk, Prediction, Status
from warmfleet.errors import InvalidInput

# The example of the Standard Webhooks specification (and Svix's test suite).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# Signatures and secrets


def test_the_signature_is_the_specifications_example():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_signature_is_hmac_sha256_of_id_timestamp_and_body_under_the_decoded_secret():
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    body = orjson.dumps({"id": "p1", "output": "héllo\nworld"})
    expected = hmac.new(key, b"msg_p1_1.1700000000." + body, hashlib.sha256).digest()
    assert sign(secret, "msg_p1_1", 1700000000, body) == "v1," + base64.b64encode(expected).decode()


def test_the_standardwebhooks_library_verifies_our_headers():
    import standardwebhooks  # the reference implementation (the test extra installs it)

    body = orjson.dumps({"id": "p1", "status": "succeeded"})
    headers = signed_headers(SPEC_SECRET, "msg_p1_3", int(time.time()), body)
    assert standardwebhooks.Webhook(SPEC_SECRET).verify(body, headers) == {"id": "p1", "status": "succeeded"}
    tampered = body.replace(b"succeeded", b"failed")
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SPEC_SECRET).verify(tampered, headers)


def test_the_master_secret_is_made_once_0600_and_each_owner_gets_a_key_of_their_own(tmp_path):
    path = tmp_path / "home" / "webhook_secret"
    first = WebhookSecrets(path)
    alice = first.key_for("alice")
    assert path.read_text().startswith("whsec_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = WebhookSecrets(path)  # a restarted gateway reads the same file
    assert again.key_for("alice") == alice
    assert again.key_for("bob") != alice
    assert alice.startswith("whsec_") and len(base64.b64decode(alice[len("whsec_"):])) == 32


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook",
                                 "http://", "javascript:alert(1)"])
def test_a_webhook_that_is_not_an_http_url_is_refused_naming_the_field(url):
    with pytest.raises(InvalidInput) as err:
        check_webhook(url, [])
    assert err.value.field == "webhook"


def test_an_unknown_event_in_the_filter_is_refused_naming_the_field():
    check_webhook("https://example.com/hook", ["start", "completed"])
    with pytest.raises(InvalidInput) as err:
        check_webhook("https://example.com/hook", ["start", "finished"])
    assert err.value.field == "webhook_events_filter" and "'finished'" in str(err.value)


# Throttling


def test_the_throttle_sends_at_once_then_defers_once_per_interval():
    throttle = Throttle(0.5)
    assert throttle.offer(10.0) == 0.0  # the first goes now
    assert throttle.offer(10.1) == pytest.approx(0.4)  # too soon: deferred to the interval's end
    assert throttle.offer(10.2) is None  # already covered by the deferred send
    assert throttle.offer(10.45) is None
    throttle.fired(10.5)
    assert throttle.offer(10.7) == pytest.approx(0.3)  # counted from when the deferred one went
    throttle.fired(11.0)
    assert throttle.offer(12.0) == 0.0  # a quiet interval: at once again


# The sender, on fakes


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay_s: float, callback) -> "FakeTimer":
        timer = FakeTimer(self.now + delay_s, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in [t for t in self.timers if t.at <= self.now and not t.cancelled]:
            self.timers.remove(timer)
            timer.callback()


class FakeTimer:
    def __init__(self, at: float, callback) -> None:
        self.at, self.callback, self.cancelled = at, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Receiver:
    """Answers each POST with the next of ``statuses`` (200 after them), or raises what is listed."""

    def __init__(self, *statuses) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[str, dict, dict]] = []  # (url, headers, body)

    async def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.got.append((url, headers, orjson.loads(body)))
        answer = self.statuses.pop(0) if self.statuses else 200
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def bodies(self) -> list[dict]:
        return [body for _url, _headers, body in self.got]


def _prediction(events: list[str] | None = None, pid: str = "p1") -> Prediction:
    return Prediction(id=pid, model="acme/echo", version="v1", input={"text": "abcd"}, owner="alice",
                      created_at=1.0, webhook="http://127.0.0.1:9/hook", webhook_events_filter=events or [])


def _sender(tmp_path, receiver: Receiver, clock: FakeClock | None = None, sleeps: list[float] | None = None,
            **kwargs) -> WebhookSender:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    clock = clock or FakeClock()
    return WebhookSender(WebhookSecrets(tmp_path / "webhook_secret"), base_url="http://gw", post=receiver,
                         render=prediction_json, clock=clock, call_later=clock.call_later,
                         sleep=fake_sleep if sleeps is not None else asyncio.sleep, **kwargs)


async def _settle(sender: WebhookSender) -> None:
    for _ in range(100):
        await asyncio.sleep(0)
        if not sender._tasks:
            return
    raise AssertionError("sends still in flight")


def _finish(pred: Prediction, status: Status = Status.SUCCEEDED, value: str = "abcd") -> Completed:
    pred.status, pred.completed_at = status, 2.0
    pred.output = Output(value=value) if status is Status.SUCCEEDED else None
    pred.error = "" if status is Status.SUCCEEDED else "boom"
    return Completed(pred)


async def test_a_start_and_completed_filter_gets_exactly_those_two(tmp_path):
    receiver = Receiver()
    sender = _sender(tmp_path, receiver)
    pred = _prediction(["start", "completed"])
    sender.notify(pred, Status.STARTING)
    await _settle(sender)
    for piece in "abcd":
        sender.notify(pred, OutputChunk(value=piece))
        sender.notify(pred, LogLine(f"wrote {piece}"))
    sender.notify(pred, _finish(pred))
    await _settle(sender)
    assert [b["status"] for b in receiver.bodies] == ["starting", "succeeded"]
    assert receiver.bodies[1]["output"] == "abcd"
    assert [h["webhook-id"] for _u, h, _b in receiver.got] == ["msg_p1_1", "msg_p1_2"]
    assert sender.watching() == 0


async def test_output_is_sent_at_most_every_500_ms_with_the_latest_state(tmp_path):
    clock, receiver = FakeClock(), Receiver()
    sender = _sender(tmp_path, receiver, clock)
    pred = _prediction(["output"])
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, OutputChunk(value="a"))  # first: at once
    await _settle(sender)
    for piece in "bcd":
        clock.advance(0.125)  # binary fractions: the fake clock adds up exactly
        sender.notify(pred, OutputChunk(value=piece))  # within 500 ms: one deferred send covers them
    await _settle(sender)
    assert [b["output"] for b in receiver.bodies] == ["a"]
    clock.advance(0.0625)
    await _settle(sender)
    assert [b["output"] for b in receiver.bodies] == ["a"]
    clock.advance(0.0625)  # 500 ms after the first
    await _settle(sender)
    assert [b["output"] for b in receiver.bodies] == ["a", "abcd"]
    assert len([t for t in clock.timers if not t.cancelled]) == 0


async def test_completed_supersedes_a_deferred_intermediate_state(tmp_path):
    clock, receiver = FakeClock(), Receiver()
    sender = _sender(tmp_path, receiver, clock)
    pred = _prediction()  # every event
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, LogLine("one"))
    await _settle(sender)
    clock.advance(0.125)
    sender.notify(pred, LogLine("two"))  # deferred...
    sender.notify(pred, _finish(pred))  # ...and superseded before it fires
    await _settle(sender)
    clock.advance(1.0)
    await _settle(sender)
    assert [b["status"] for b in receiver.bodies] == ["starting", "starting", "succeeded"]
    assert clock.timers[0].cancelled


async def test_a_newer_state_replaces_an_intermediate_one_not_sent_yet(tmp_path):
    receiver = Receiver()
    sender = _sender(tmp_path, receiver)
    pred = _prediction()
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, LogLine("one"))  # queued behind start, not sent...
    sender.notify(pred, _finish(pred))  # ...so the final state replaces it
    await _settle(sender)
    assert [b["status"] for b in receiver.bodies] == ["starting", "succeeded"]


async def test_a_failing_completed_webhook_is_retried_on_the_backoff_schedule_with_one_id(tmp_path):
    sleeps: list[float] = []
    receiver = Receiver(500, ConnectionRefusedError("refused"), 502)
    sender = _sender(tmp_path, receiver, sleeps=sleeps)
    pred = _prediction(["completed"])
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, _finish(pred))
    await _settle(sender)
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(receiver.got) == 4
    assert {h["webhook-id"] for _u, h, _b in receiver.got} == {"msg_p1_1"}


async def test_a_completed_webhook_is_tried_five_times_then_given_up(tmp_path, caplog):
    sleeps: list[float] = []
    receiver = Receiver(*[500] * 10)
    sender = _sender(tmp_path, receiver, sleeps=sleeps)
    pred = _prediction(["completed"])
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, _finish(pred, Status.FAILED))
    await _settle(sender)
    assert len(receiver.got) == 1 + len(RETRY_DELAYS_S) == 5
    assert sleeps == list(RETRY_DELAYS_S) == [1.0, 2.0, 4.0, 8.0]
    assert "failed after 5 tries: HTTP 500" in caplog.text
    assert receiver.bodies[0]["status"] == "failed" and receiver.bodies[0]["error"] == "boom"


async def test_start_and_intermediate_webhooks_are_not_retried(tmp_path):
    sleeps: list[float] = []
    receiver = Receiver(500, 500)
    sender = _sender(tmp_path, receiver, sleeps=sleeps)
    pred = _prediction(["start", "logs"])
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, LogLine("hello"))
    await _settle(sender)
    assert sleeps == [] and len(receiver.got) == 2


async def test_messages_of_one_prediction_arrive_in_order_behind_a_slow_receiver(tmp_path):
    release = asyncio.Event()
    got: list[str] = []

    async def slow(url: str, body: bytes, headers: dict[str, str]) -> int:
        got.append(orjson.loads(body)["status"])
        await release.wait()
        return 204

    sender = _sender(tmp_path, Receiver())
    sender._post = slow
    pred = _prediction()
    sender.notify(pred, Status.STARTING)
    await asyncio.sleep(0)
    sender.notify(pred, _finish(pred))
    await asyncio.sleep(0)
    assert got == ["starting"]  # the completed one waits its turn
    release.set()
    await _settle(sender)
    assert got == ["starting", "succeeded"]


async def test_each_message_is_signed_with_the_owners_key(tmp_path):
    receiver = Receiver()
    sender = _sender(tmp_path, receiver)
    pred = _prediction(["start"])
    sender.notify(pred, Status.STARTING)
    await _settle(sender)
    url, headers, _body = receiver.got[0]
    key = sender.secrets.key_for("alice")
    raw = orjson.dumps(prediction_json(pred, "http://gw"))
    assert url == "http://127.0.0.1:9/hook"
    timestamp = int(headers["webhook-timestamp"])
    assert headers["webhook-signature"] == sign(key, headers["webhook-id"], timestamp, raw)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5


async def test_past_the_bound_new_predictions_send_nothing(tmp_path):
    receiver = Receiver()
    sender = _sender(tmp_path, receiver, max_watches=1)
    first, second = _prediction(["start"], "p1"), _prediction(["start"], "p2")
    sender.notify(first, Status.STARTING)
    sender.notify(second, Status.STARTING)
    await _settle(sender)
    assert [b["id"] for b in receiver.bodies] == ["p1"] and sender.watching() == 1


def test_the_body_is_the_prediction_as_the_rest_api_renders_it():
    pred = _prediction(["start", "completed"])
    _finish(pred)
    pred.started_at, pred.metrics.predict_time_s = 1.5, 0.5
    body = prediction_json(pred, "http://gw:8000")
    assert body["urls"] == {"get": "http://gw:8000/v1/predictions/p1",
                            "cancel": "http://gw:8000/v1/predictions/p1/cancel",
                            "stream": "http://gw:8000/v1/predictions/p1/stream",
                            "web": "http://gw:8000/predictions/p1"}
    assert body["status"] == "succeeded" and body["output"] == "abcd" and body["error"] is None
    assert body["input"] == {"text": "abcd"} and body["metrics"] == {"predict_time": 0.5}
    assert body["created_at"] == "1970-01-01T00:00:01Z"
    assert body["webhook"] == "http://127.0.0.1:9/hook" and body["webhook_events_filter"] == ["start", "completed"]


async def test_intermediate_states_carry_the_text_so_far_and_files_as_urls(tmp_path):
    receiver = Receiver()
    sender = _sender(tmp_path, receiver)
    pred = _prediction(["output"])
    sender.notify(pred, Status.STARTING)
    sender.notify(pred, OutputChunk(file=FileData(b"png", "image/png")))
    await _settle(sender)
    assert receiver.bodies[-1]["output"] == ["http://gw/v1/predictions/p1/output/0"]
