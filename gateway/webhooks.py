"""Webhooks: the gateway POSTs a prediction, as Replicate's JSON, to the URL its creator gave, as it
progresses (Replicate's ``webhook`` and ``webhook_events_filter``).

- Events: ``start`` (on creation), ``output`` and ``logs`` (at most every ``THROTTLE_S``, each carrying
  the latest state), ``completed`` (retried with exponential backoff on a non-2xx answer or a
  connection error). An empty filter means all four.
- Signing: the Standard Webhooks layout. Headers ``webhook-id`` (one per message, the same on its
  retries), ``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature``:
  ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), the key being the bytes of a
  ``whsec_<base64>`` secret.
- Secrets: one master secret per gateway home, created on first use (mode 0600). Each owner signs with
  a key derived from it (HMAC of the owner's name), served to that owner by
  ``GET /v1/webhooks/default/secret``: a user can verify their own webhooks but cannot forge another's.
- Off the hot path: a prediction without a webhook costs the gateway nothing here (the caller checks
  ``prediction.webhook`` first). Each prediction with one has a ``_Watch`` that holds at most three
  pending messages (start, the latest intermediate state, completed), sent in order by a task of its
  own that lives while it has messages; a slow or failing receiver delays only its own predictions.
  Failures are logged and never touch the prediction.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway.fetch import PublicResolver, literal_refusal
from warmfleet.domain import (
    Completed, FileData, LogLine, Output, OutputChunk, Prediction, PublicEventBody, Status,
)
from warmfleet.errors import InvalidInput

log = logging.getLogger(__name__)

EVENTS = ("start", "output", "logs", "completed")
THROTTLE_S = 0.5  # output and logs webhooks of one prediction: at most one per this many seconds
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)  # between the tries of a completed webhook: 5 tries in all
ATTEMPT_TIMEOUT_S = 10.0  # one POST, connecting included
MAX_WATCHES = 10_000  # predictions with a webhook followed at once; past it, new ones send none
SECRET_PREFIX = "whsec_"
SECRET_FILE = "webhook_secret"
_KEY_CONTEXT = b"warmfleet webhook signing key for "


# Checking what a client asks for


def check_webhook(url: str, events_filter: Iterable[str]) -> None:
    """Raise ``InvalidInput`` naming the field unless ``url`` is empty or an http(s) URL with a host and
    every filter entry is one of ``EVENTS``."""
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("webhook", "must be an http:// or https:// URL with a host")
    unknown = sorted(set(events_filter) - set(EVENTS))
    if unknown:
        raise InvalidInput("webhook_events_filter", f"{unknown[0]!r} is not one of {', '.join(EVENTS)}")


# Secrets and signatures


class WebhookSecrets:
    """The gateway home's master secret (``whsec_...`` in ``path``, 0600, made on first use) and the
    signing key of each owner, derived from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._master: bytes | None = None

    def master(self) -> bytes:
        if self._master is None:
            self._master = _decode_secret(self._read_or_create())
        return self._master

    def key_for(self, owner: str) -> str:
        """The ``whsec_`` secret that signs (and verifies) the webhooks of ``owner``'s predictions."""
        derived = hmac.new(self.master(), _KEY_CONTEXT + owner.encode(), hashlib.sha256).digest()
        return SECRET_PREFIX + base64.b64encode(derived).decode()

    def _read_or_create(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
        try:  # O_EXCL: of two gateways on one home making it at once, one writes and both read it
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        return text


def _decode_secret(text: str) -> bytes:
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"the webhook secret must start with {SECRET_PREFIX!r}")
    return base64.b64decode(text[len(SECRET_PREFIX):])


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


# Throttling


class Throttle:
    """At most one send per ``interval_s``. A send asked for sooner is deferred to the end of the
    interval, once: further asks before then ride on it (it carries the state of when it fires)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = float("-inf")
        self._deferred = False

    def offer(self, now: float) -> float | None:
        """Seconds until the send (0: now), or None when a deferred send already covers this ask."""
        if self._deferred:
            return None
        wait = self._last + self.interval_s - now
        if wait <= 0:
            self._last = now
            return 0.0
        self._deferred = True
        return wait

    def fired(self, now: float) -> None:
        """The deferred send went out at ``now``."""
        self._deferred = False
        self._last = now


# Sending


@dataclass
class _Message:
    kind: str  # one of EVENTS
    id: str  # webhook-id: the same on every try of this message
    body: bytes
    tries: int = 0


@dataclass
class _Watch:
    """What the sender keeps about one prediction with a webhook."""

    pred: Prediction
    url: str
    events: frozenset[str]
    throttle: Throttle
    chunks: list[Any] = field(default_factory=list)  # output so far, for the intermediate states
    pending: deque[_Message] = field(default_factory=deque)
    sent: int = 0  # messages made so far: numbers the webhook-ids
    timer: Any = None  # the deferred throttled send (an asyncio.TimerHandle-like), if any
    task: asyncio.Task | None = None  # the task that sends ``pending``, while there is one


def _unsent_intermediate(message: _Message) -> bool:
    return message.kind in ("output", "logs") and message.tries == 0


# POST ``body`` with ``headers`` to ``url``; returns the HTTP status. Raises on connection errors.
Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


class WebhookSender:
    """Follows the predictions that have a webhook and delivers their webhooks (see the module doc).

    ``notify`` is called by the prediction service, for predictions with a webhook only, with each
    public event: ``Status.STARTING`` on creation, ``LogLine``, ``OutputChunk``, then ``Completed``.
    The clock, the timer, the sleep and the POST itself can be passed in for tests.
    """

    def __init__(self, secrets_: WebhookSecrets, *, base_url: str = "", post: Post | None = None,
                 render: Callable[[Prediction, str], dict[str, Any]],
                 throttle_s: float = THROTTLE_S, retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 call_later: Callable[[float, Callable[[], None]], Any] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 max_watches: int = MAX_WATCHES, allow_private: bool = False,
                 completed_done: Callable[[str], None] = lambda prediction_id: None) -> None:
        self.secrets = secrets_
        self._allow_private = allow_private  # webhooks to loopback/private addresses (the operator's call)
        self.base_url = base_url  # the gateway's HTTP URL, for the links in the bodies; set once it binds
        self._post = post
        self._render = render
        self._throttle_s = throttle_s
        self._retry_delays_s = tuple(retry_delays_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._call_later = call_later
        self._sleep = sleep
        self._max_watches = max_watches
        # Told when a prediction's completed webhook went out or was given up on (the store's due mark
        # goes then: until that, a gateway that restarts sends it again).
        self.completed_done = completed_done
        self._watches: dict[str, _Watch] = {}
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._post is None:
            timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)
            connector = None if self._allow_private else aiohttp.TCPConnector(resolver=PublicResolver())
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                                  headers={"User-Agent": "warmfleet-webhooks"})
            self._post = self._post_with_session

    async def stop(self, grace_s: float = 2.0) -> None:
        """Give sends in flight ``grace_s`` to finish (completed webhooks of a shutdown, say), then drop
        the rest and close."""
        for watch in self._watches.values():
            if watch.timer is not None:
                watch.timer.cancel()
        self._watches.clear()
        if self._tasks:
            _done, still = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_destination(self, url: str) -> None:
        """Refuse (naming ``webhook``) a URL whose host is a non-public IP literal, unless allowed; a name
        is checked as it resolves, at each delivery (``PublicResolver``)."""
        why = None if self._allow_private else literal_refusal(url)
        if why:
            raise InvalidInput("webhook", f"{url}: {why}; refused (the operator may allow it: "
                                          "allow_private_urls)")

    def watching(self) -> int:
        return len(self._watches)

    # Events, from the prediction service

    def notify(self, pred: Prediction, body: PublicEventBody) -> None:
        if isinstance(body, Status):
            self._watch(pred)
            return
        watch = self._watches.get(pred.id)
        if watch is None:
            return
        if isinstance(body, OutputChunk):
            watch.chunks.append(body.value if body.file is None else body.file)
            self._intermediate(watch, "output")
        elif isinstance(body, LogLine):
            self._intermediate(watch, "logs")
        elif isinstance(body, Completed):
            self._completed(watch)

    def follow(self, pred: Prediction) -> None:
        """Follow a prediction a gateway before this one created (its start webhook went out then)."""
        self._watch(pred, start=False)

    def resend_completed(self, pred: Prediction) -> None:
        """Send the completed webhook of an ended prediction whose webhook was still due at a restart."""
        self._watch(pred, start=False)
        self.notify(pred, Completed(pred))

    def _watch(self, pred: Prediction, start: bool = True) -> None:
        if pred.id in self._watches:
            return
        if len(self._watches) >= self._max_watches:
            log.warning("webhooks: following %d predictions already; prediction %s sends none",
                        len(self._watches), pred.id)
            return
        events = frozenset(pred.webhook_events_filter or EVENTS)
        watch = _Watch(pred, pred.webhook, events, Throttle(self._throttle_s))
        self._watches[pred.id] = watch
        if start and "start" in events:
            self._enqueue(watch, "start", pred)

    def _intermediate(self, watch: _Watch, kind: str) -> None:
        if kind not in watch.events:
            return
        delay = watch.throttle.offer(self._clock())
        if delay is None:
            return
        if delay == 0:
            self._enqueue(watch, kind, self._partial(watch))
        else:
            watch.timer = self._schedule(delay, lambda: self._fire(watch, kind))

    def _fire(self, watch: _Watch, kind: str) -> None:
        watch.timer = None
        watch.throttle.fired(self._clock())
        if self._watches.get(watch.pred.id) is watch:
            self._enqueue(watch, kind, self._partial(watch))

    def _completed(self, watch: _Watch) -> None:
        del self._watches[watch.pred.id]
        deferred = watch.timer is not None
        if deferred:
            watch.timer.cancel()
            watch.timer = None
        if "completed" in watch.events:
            # The final state says everything an unsent intermediate one would have.
            while watch.pending and _unsent_intermediate(watch.pending[-1]):
                watch.pending.pop()
            self._enqueue(watch, "completed", watch.pred)
        elif deferred:  # no completed webhook: the last intermediate state still goes out
            self._enqueue(watch, "output" if "output" in watch.events else "logs", watch.pred)

    def _partial(self, watch: _Watch) -> Prediction:
        """The prediction as it stands, with the output streamed so far (text joined, files in order)."""
        if not watch.chunks:
            return watch.pred
        files = [c for c in watch.chunks if isinstance(c, FileData)]
        values = [c for c in watch.chunks if not isinstance(c, FileData)]
        value = "".join(values) if all(isinstance(v, str) for v in values) else values
        return dataclasses.replace(watch.pred, output=Output(value=value or None, files=files))

    def _enqueue(self, watch: _Watch, kind: str, state: Prediction) -> None:
        watch.sent += 1
        body = orjson.dumps(self._render(state, self.base_url))
        message = _Message(kind, f"msg_{watch.pred.id}_{watch.sent}", body)
        last = watch.pending[-1] if watch.pending else None
        if kind in ("output", "logs") and last is not None and _unsent_intermediate(last):
            watch.pending[-1] = message  # a newer state replaces one not sent yet
        else:
            watch.pending.append(message)
        if watch.task is None:
            loop = asyncio.get_running_loop()
            watch.task = loop.create_task(self._drain(watch), name=f"webhook-{watch.pred.id}")
            self._tasks.add(watch.task)
            watch.task.add_done_callback(self._tasks.discard)

    def _schedule(self, delay_s: float, callback: Callable[[], None]) -> Any:
        if self._call_later is not None:
            return self._call_later(delay_s, callback)
        return asyncio.get_running_loop().call_later(delay_s, callback)

    # Delivery

    async def _drain(self, watch: _Watch) -> None:
        try:
            while watch.pending:
                message = watch.pending[0]
                await self._deliver(watch, message)
                watch.pending.popleft()
        finally:
            watch.task = None

    async def _deliver(self, watch: _Watch, message: _Message) -> None:
        """Send one message; a completed one is tried again after each of the retry delays."""
        key = self.secrets.key_for(watch.pred.owner)
        retries = self._retry_delays_s if message.kind == "completed" else ()
        while True:
            message.tries += 1
            timestamp = int(self._wall_clock())
            headers = signed_headers(key, message.id, timestamp, message.body)
            outcome = await self._attempt(watch.url, message, headers)
            if outcome is not None and message.tries > len(retries):
                log.warning("webhook %s for prediction %s to %s failed after %d tries: %s", message.kind,
                            watch.pred.id, watch.url, message.tries, outcome)
            if outcome is None or message.tries > len(retries):
                if message.kind == "completed":
                    self.completed_done(watch.pred.id)
                return
            delay = retries[message.tries - 1]
            log.info("webhook %s for prediction %s: %s; trying again in %gs", message.kind, watch.pred.id,
                     outcome, delay)
            await self._sleep(delay)

    async def _attempt(self, url: str, message: _Message, headers: dict[str, str]) -> str | None:
        """None on a 2xx answer; otherwise what went wrong."""
        try:
            status = await self._post(url, message.body, headers)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a connection refused, a timeout, a bad address: all mean try again
            return f"{type(err).__name__}: {err}".rstrip(": ")
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def _post_with_session(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status


def secret_path(home: Path) -> Path:
    """Where a gateway home keeps its webhook master secret."""
    return home / SECRET_FILE
