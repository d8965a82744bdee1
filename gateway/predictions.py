"""The predictions domain: create, read, list, cancel and follow predictions, and record what nodes report.

This is the one implementation of the prediction lifecycle; the gRPC servicer (and the REST layer) only
convert to and from it.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

from gateway.auth import Principal
from gateway.catalog import ModelCatalog, model_not_found
from gateway.events import EventHub
from gateway.limits import AccountLimits
from gateway.metrics import PredictionMetrics
from gateway.store import PredictionStore, StoredTask
from gateway.webhooks import WebhookSender, check_webhook
from scheduler.router import Router, Unfinished
from warmfleet.domain import (
    Completed, Finished, LogLine, OutputChunk, Prediction, PredictionEvent, ProgressUpdate, Requeued, Started,
    Status, TaskEventBody,
)
from warmfleet.errors import (
    AlreadyExists, InvalidInput, NotFound, PermissionDenied, Unavailable, WarmfleetError,
)
from warmfleet.jsonvalues import check_json

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_WAIT_S = 60.0
MAX_PAGE = 1000
NOT_KEPT = ("the gateway stopped while it was in flight, and its input was not kept to run it again (it "
            "holds a secret, which is never written to disk): run it again")


@dataclass
class CreateRequest:
    """A create call, after conversion from the wire."""

    input: dict[str, Any]
    input_kind: str = "json"
    model: str = ""
    version: str = ""
    deployment: str = ""
    wait_s: float = 0.0
    id: str = ""
    deadline_s: float = 0.0
    priority: int = 0
    webhook: str = ""
    webhook_events_filter: list[str] = field(default_factory=list)
    source: str = "api"  # "web" when the console makes it


def new_prediction_id() -> str:
    return base64.b32encode(secrets.token_bytes(15)).decode().lower()


class PredictionService:
    def __init__(self, store: PredictionStore, router: Router, catalog: ModelCatalog, hub: EventHub,
                 clock: Callable[[], float] = time.time, metrics: PredictionMetrics | None = None,
                 on_cold: Callable[[], None] = lambda: None, webhooks: WebhookSender | None = None,
                 limits: AccountLimits | None = None) -> None:
        self._store = store
        self._router = router
        self._catalog = catalog
        self._hub = hub
        self._clock = clock
        self._metrics = metrics or PredictionMetrics()
        self._active: dict[str, Prediction] = {}
        self._active_of: Counter[str] = Counter()  # owner account id -> its predictions in _active
        self._limits = limits or AccountLimits(0, 0, sys.maxsize, sys.maxsize)
        self._on_cold = on_cold  # a prediction waits for a cold boot: tell the autoscaler now
        self._cold: set[str] = set()
        # Told the events of predictions that have a webhook (and of no others: see ``pred.webhook`` checks).
        self._webhooks = webhooks
        self._replays: dict[str, _Replay] = {}  # re-runs whose first run streamed output: what to skip

    # Create

    async def create(self, principal: Principal, req: CreateRequest) -> Prediction:
        pred, new = await self._start(principal, req)
        if new and (req.wait_s <= 0 or not await self._hub.wait(pred.id, req.wait_s)):
            await self._store.flush()  # the client may come back for it: make it durable first
        return pred

    async def create_and_follow(self, principal: Principal, req: CreateRequest
                                ) -> tuple[Prediction, AsyncIterator[PredictionEvent]]:
        """Create without waiting (the events are the wait: ``req.wait_s`` is not used) and follow the
        prediction from its first event. The subscription is made before the store's flush is awaited:
        a prediction that ends meanwhile still streams every event to this caller, not only its end."""
        pred, new = await self._start(principal, req)
        events = self._hub.subscribe(pred, 0)
        if new:
            await self._store.flush()
        return pred, events

    async def _start(self, principal: Principal, req: CreateRequest) -> tuple[Prediction, bool]:
        """Check, validate and enqueue a prediction; with it, whether it is new (False: the caller's
        earlier prediction of the same id)."""
        _check_create(req)
        if req.priority > 0 and not principal.may_prioritise:
            raise PermissionDenied(f"priority: above 0 needs a token of role priority or admin; this one is "
                                   f"{principal.role.value}")
        if req.webhook and self._webhooks:
            self._webhooks.check_destination(req.webhook)
        if req.id:
            # Looked up again after the await: a create of the same id may have begun meanwhile, and from
            # here to ``_active`` nothing awaits, so of two at once only the first enqueues.
            existing = await self._find(req.id) or self._active.get(req.id)
            if existing is not None:
                return self._idempotent(principal, existing, req), False
        self._store.check_writable()  # refused now (503) rather than accepted and not written
        self._limits.admit_prediction(principal, self._active_of[principal.account])
        entry = self._catalog.resolve(req.model, req.version, req.deployment)
        if not principal.may_see(entry.spec):
            raise model_not_found(entry.spec.model_name)
        filled = entry.validator.validate(req.input)
        seed = entry.validator.fix_seed(filled)
        redacted = entry.validator.redact(req.input)
        cold = not self._router.has_instances(entry.spec.name)
        now = self._clock()
        pred = Prediction(
            id=req.id or new_prediction_id(), model=entry.spec.model_name, version=entry.spec.version,
            deployment=entry.spec.name if entry.spec.is_deployment else "",
            input=redacted, input_kind=req.input_kind, owner=principal.account, created_at=now,
            deadline_at=now + req.deadline_s if req.deadline_s else None, priority=req.priority,
            webhook=req.webhook, webhook_events_filter=req.webhook_events_filter, source=req.source,
        )
        if seed is not None:
            pred.logs.append(f"Using seed: {seed}")
        self._router.enqueue(pred.id, entry.spec.name, filled, pred.priority, pred.deadline_at,
                             account=pred.owner)
        self._metrics.observe_created(pred)
        self._activate(pred)
        if cold:  # scaled to zero (or not loaded yet): it waits in starting while an instance boots
            self._cold.add(pred.id)
            pred.logs.append(f"Booting {entry.spec.name}: no instance was warm; waiting for one to load")
            self._on_cold()
        # Kept beside it until it ends, to run it again after a crash; not an input with a secret.
        self._store.save(pred, StoredTask(entry.spec.name, filled) if redacted is req.input else None)
        if pred.webhook and self._webhooks:
            self._webhooks.notify(pred, Status.STARTING)
        return pred, True

    def _idempotent(self, principal: Principal, existing: Prediction, req: CreateRequest) -> Prediction:
        same_input = existing.input == req.input or existing.input == self._redacted(existing, req.input)
        if existing.owner != principal.account or not same_input or (
                req.model and existing.model != req.model):
            raise AlreadyExists(f"prediction id {req.id!r} is taken by a different request")
        return existing

    def _redacted(self, existing: Prediction, input: dict[str, Any]) -> dict[str, Any]:
        try:
            entry = self._catalog.resolve(existing.model, existing.version, existing.deployment)
        except WarmfleetError:
            return input
        return entry.validator.redact(input)

    # Read

    async def _find(self, prediction_id: str) -> Prediction | None:
        return self._active.get(prediction_id) or await self._store.get(prediction_id)

    async def get(self, principal: Principal, prediction_id: str) -> Prediction:
        pred = await self._find(prediction_id)
        if pred is None or not principal.owns(pred.owner):
            raise NotFound(f"prediction {prediction_id!r} not found")
        return pred

    async def list(self, principal: Principal, page_size: int, cursor: str,
                   created_after: float | None = None, created_before: float | None = None
                   ) -> tuple[list[Prediction], str]:
        """A page of the caller's predictions (every one, for an admin), newest first; only those created
        at or after ``created_after`` and before ``created_before`` when given."""
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidInput("page_size", f"must be between 1 and {MAX_PAGE} (0 means 100)")
        owner = None if principal.is_admin else principal.account
        return await self._store.list(owner, page_size or 100, cursor, created_after, created_before)

    # Cancel

    async def cancel(self, principal: Principal, prediction_id: str) -> Prediction:
        pred = await self.get(principal, prediction_id)
        if pred.status.is_terminal:
            return pred
        self._router.cancel(pred.id)
        await self._hub.wait(pred.id, 5.0)
        return pred

    # Follow

    async def events(self, principal: Principal, prediction_id: str, after_seq: int = 0
                     ) -> AsyncIterator[PredictionEvent]:
        """The prediction's events after ``after_seq``, live, ending with its ``Completed`` event; the
        caller's access is checked at the first read."""
        async for event in await self.follow(principal, prediction_id, after_seq):
            yield event

    async def follow(self, principal: Principal, prediction_id: str, after_seq: int = 0
                     ) -> AsyncIterator[PredictionEvent]:
        """``events``, with the caller's access checked by this call: ``NotFound`` comes now, before the
        first read, while an HTTP stream can still answer it as a status."""
        return self._hub.subscribe(await self.get(principal, prediction_id), after_seq)

    # What nodes report, via the router

    def on_task_event(self, prediction_id: str, body: TaskEventBody) -> None:
        pred = self._active.get(prediction_id)
        if pred is None:
            return
        if isinstance(body, Started):
            pred.status, pred.started_at = Status.PROCESSING, body.at
            pred.metrics.queue_time_s = body.at - pred.created_at
            if pred.id in self._cold:
                pred.metrics.boot_time_s = body.at - pred.created_at
            self._hub.publish(pred.id, Status.PROCESSING)
        elif isinstance(body, LogLine):
            pred.logs.append(body.text)
            self._hub.publish(pred.id, body)
            if pred.webhook and self._webhooks:
                self._webhooks.notify(pred, body)
        elif isinstance(body, (OutputChunk, ProgressUpdate)):
            if self._replays and isinstance(body, OutputChunk) and (body := self._unseen(pred.id, body)) is None:
                return
            self._hub.publish(pred.id, body)
            if pred.webhook and self._webhooks:
                self._webhooks.notify(pred, body)
        elif isinstance(body, Finished):
            self._complete(pred, body)
        elif isinstance(body, Requeued):
            self._requeued(pred, body)

    def _requeued(self, pred: Prediction, body: Requeued) -> None:
        """Its run was lost and it runs again: said in its logs and counted. With its seed fixed at create
        the re-run streams what the first run did: that much of its output is not sent twice."""
        pred.status, pred.started_at, pred.attempt = Status.STARTING, None, body.attempt
        line = LogLine(f"{body.reason}: running it again (attempt {body.attempt})")
        pred.logs.append(line.text)
        self._metrics.observe_rerun(pred)
        streamed = [e for e in self._hub.published(pred.id) if isinstance(e, OutputChunk)]
        if streamed:
            self._replays[pred.id] = _Replay.of(streamed)
        self._hub.publish(pred.id, line)
        self._store.save(pred)
        if pred.webhook and self._webhooks:
            self._webhooks.notify(pred, line)

    def _unseen(self, prediction_id: str, chunk: OutputChunk) -> OutputChunk | None:
        """What of a re-run's output chunk its first run did not stream already (None: nothing)."""
        replay = self._replays.get(prediction_id)
        if replay is None:
            return chunk
        rest = replay.skip(chunk)
        if replay.done:
            del self._replays[prediction_id]
        return rest

    def _activate(self, pred: Prediction) -> None:
        self._active[pred.id] = pred
        self._active_of[pred.owner] += 1
        self._hub.open(pred.id)

    def _complete(self, pred: Prediction, body: Finished) -> None:
        del self._active[pred.id]
        self._active_of[pred.owner] -= 1
        if not self._active_of[pred.owner]:
            del self._active_of[pred.owner]
        self._replays.pop(pred.id, None)
        if pred.id in self._cold:
            self._cold.discard(pred.id)
            if pred.started_at is not None or body.started_at is not None:
                body.metrics.boot_time_s = (body.started_at or pred.started_at) - pred.created_at
        pred.status, pred.error, pred.completed_at = body.status, body.error, body.completed_at
        pred.error_code, pred.error_field = body.error_code, body.error_field
        pred.output = body.output
        if body.started_at is not None:
            pred.started_at = body.started_at
        metrics = body.metrics
        metrics.total_time_s = body.completed_at - pred.created_at
        if pred.started_at is not None:
            metrics.queue_time_s = pred.started_at - pred.created_at
        pred.metrics = metrics
        self._metrics.observe_finished(pred)
        self._store.save(pred)
        completed = Completed(pred)
        self._hub.publish(pred.id, completed)
        if pred.webhook and self._webhooks:
            self._webhooks.notify(pred, completed)

    def active_count(self) -> int:
        return len(self._active)

    async def fail_all_active(self, reason: str) -> None:
        """On shutdown: end every active prediction as failed, with ``reason``, and persist it (what the
        store cannot write in time stays unfinished on disk: the next start takes it up)."""
        now = self._clock()
        for pred in list(self._active.values()):
            self._complete(pred, Finished(Status.FAILED, pred.started_at, now, error=reason))
        try:
            await self._store.flush()
        except Unavailable as err:
            log.error("%s: the predictions ended at shutdown are not all on disk", err)

    def recover(self, unfinished: list[tuple[Prediction, StoredTask | None]]) -> list[Unfinished]:
        """Take back what the gateway before left unfinished (``PredictionStore.open``): each whose task
        was kept is active again, and returned for the router to take up (``Router.recover``); one
        without ends failed, saying why (``NOT_KEPT``)."""
        taken = []
        for pred, task in unfinished:
            self._activate(pred)
            self._metrics.observe_created(pred)
            if task is None:
                self._complete(pred, Finished(Status.FAILED, pred.started_at, self._clock(), error=NOT_KEPT))
                continue
            if pred.webhook and self._webhooks:
                self._webhooks.follow(pred)
            taken.append(Unfinished(pred.id, task.route, task.input, pred.priority, pred.deadline_at,
                                    started=pred.status is Status.PROCESSING, attempt=pred.attempt,
                                    account=pred.owner))
        return taken


@dataclass
class _Replay:
    """How much output a re-run's first run streamed: text (characters of joined chunks) and items
    (chunks of anything else, files included), in order; the re-run's first that much is skipped."""

    text: int
    items: int

    @classmethod
    def of(cls, chunks: list[OutputChunk]) -> _Replay:
        text = sum(len(c.value) for c in chunks if _is_text(c))
        return cls(text, sum(not _is_text(c) for c in chunks))

    @property
    def done(self) -> bool:
        return self.text <= 0 and self.items <= 0

    def skip(self, chunk: OutputChunk) -> OutputChunk | None:
        if not _is_text(chunk):
            if self.items > 0:
                self.items -= 1
                return None
            return chunk
        if self.text <= 0:
            return chunk
        seen, self.text = min(self.text, len(chunk.value)), self.text - len(chunk.value)
        return replace(chunk, value=chunk.value[seen:]) if seen < len(chunk.value) else None


def _is_text(chunk: OutputChunk) -> bool:
    return chunk.joinable and chunk.file is None and isinstance(chunk.value, str)


def _check_create(req: CreateRequest) -> None:
    check_json(req.input)
    if not 0 <= req.wait_s <= MAX_WAIT_S:
        raise InvalidInput("wait_s", f"must be between 0 and {MAX_WAIT_S:g} seconds")
    if req.deadline_s < 0:
        raise InvalidInput("deadline_s", "must be 0 (no deadline) or positive seconds")
    if req.id and not _ID.match(req.id):
        raise InvalidInput("id", "must be 1 to 64 characters of letters, digits, '_' and '-'")
    if req.webhook or req.webhook_events_filter:
        check_webhook(req.webhook, req.webhook_events_filter)
