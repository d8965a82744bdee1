"""OpenAI-compatible text generation: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

The same translation as every REST route: OpenAI's JSON becomes a ``CreateRequest`` with the typed
``text_generation`` input (the fields of the runner's ``TextGenerationInput``), ``PredictionService`` runs
it (``create`` for a whole answer, ``create_and_follow`` for Server-Sent Events), and the prediction
becomes OpenAI's JSON. Nothing here generates: sampling, stop sequences, defaults and their ranges are the
runner's (its input schema checks them, and an error names the OpenAI field that carried the value).

How OpenAI's request reads here:

- ``model``: a model or a deployment, "owner/name" (the two share one namespace, so a name is never
  both). It must be a text generation (``llm``) model. The response's ``model`` echoes the name asked for.
- ``messages`` (chat): roles system, user and assistant (``developer`` is read as system); ``content`` a
  string or a list of ``{"type": "text", "text": ...}`` parts, joined with newlines (as vLLM does).
  ``prompt`` (completions): a string, or a list of one string.
- ``max_completion_tokens`` (or the older ``max_tokens``) is ``max_new_tokens``; ``stop`` (a string or a
  list) is ``stop_sequences``; ``temperature``, ``top_p``, ``seed``, ``frequency_penalty`` and
  ``presence_penalty`` keep their names and OpenAI's meaning. Extensions, as vLLM has them: ``top_k``,
  ``min_tokens`` (``min_new_tokens``) and ``repetition_penalty``. A field left out takes the model's
  default from its input schema (128 new tokens, temperature 0.7, top_p 0.95), not OpenAI's.
- ``n`` must be 1. Fields that would change the answer in a way warmfleet cannot honour (``logprobs``,
  ``tools``, ``response_format`` other than text, ``logit_bias``, ...) are refused with 422 naming them,
  unless they carry their no-op value; ``user``, ``store``, ``metadata`` and fields unknown here are
  ignored (OpenAI refuses unknown fields; being lenient keeps newer clients working).
- ``stream: true`` answers ``text/event-stream``: ``data: <chunk>`` lines (the chat stream opens with a
  ``{"role": "assistant"}`` delta), a last chunk with ``finish_reason``, with
  ``stream_options.include_usage`` a chunk with ``usage`` and no choices, then ``data: [DONE]``. A
  prediction that fails mid-stream sends ``data: {"error": {...}}`` before ``[DONE]``; a client that
  goes away cancels its prediction.

Errors answer RFC 7807 problem details, as the rest of the REST API, with OpenAI's ``error`` object
(``message``, ``type``, ``param``, ``code``) in the same body, which OpenAI's clients read. Only errors
these routes raise get it: an unauthenticated request is refused by the REST middleware before a route
runs, in plain problem details (OpenAI's clients still raise ``AuthenticationError`` from the status).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway.auth import Principal, current_principal
from gateway.predictions import MAX_WAIT_S, CreateRequest
from gateway.rest import openai_tools
from gateway.rest.context import REST, RestContext, problem_of
from gateway.rest.openai_request import INPUT_KIND, Generation, chat_request, completion_request
from gateway.rest.shapes import epoch_seconds
from warmfleet.domain import Completed, Metrics, OutputChunk, Prediction, PredictionEvent, Status
from warmfleet.errors import InvalidInput, NotFound, Unavailable, WarmfleetError, error_from_code, status_for

log = logging.getLogger(__name__)

# Responses: Prediction -> OpenAI JSON

# The runner's finish_reason -> OpenAI's: an end-of-sequence token and a stop sequence both "stop".
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def finish_reason(reason: str | None) -> str:
    """OpenAI's finish_reason of an ended generation."""
    return FINISH_REASONS.get(reason or "", "stop")


def usage(metrics: Metrics) -> dict[str, Any]:
    """OpenAI's usage, with the prompt tokens the prefix cache held as ``prompt_tokens_details.cached_tokens``."""
    prompt, completion = metrics.input_token_count or 0, metrics.output_token_count or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": metrics.cached_input_token_count or 0}}


@dataclass
class Answer:
    """One choice of an answer: its text (or tool calls), how it ended, its tokens' log-probabilities
    (the runner's entries: token, token_id, logprob, bytes, top_logprobs)."""

    index: int
    text: str
    finish_reason: str
    logprobs: list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @property
    def finish(self) -> str:
        return "tool_calls" if self.tool_calls else finish_reason(self.finish_reason)


def answers_of(pred: Prediction, gen: Generation) -> list[Answer]:
    """The choices of a prediction that succeeded: the runner's {choices: [...]} or its one string."""
    value = pred.output.value if pred.output is not None else None
    if gen.rich and isinstance(value, dict):
        answers = [Answer(c["index"], c["text"], c["finish_reason"], c.get("logprobs")) for c in value["choices"]]
    else:
        answers = [Answer(0, value if isinstance(value, str) else "", pred.metrics.finish_reason or "")]
    if gen.functions:
        for answer in answers:
            answer.tool_calls = openai_tools.tool_calls_of(answer.text, gen.functions)
    return answers


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    return {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"]}


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """OpenAI chat's ``logprobs``: ``content``, a list of {token, logprob, bytes, top_logprobs}."""
    if entries is None:
        return None
    return {"content": [{**_entry(e), "top_logprobs": [_entry(t) for t in e["top_logprobs"]]} for e in entries],
            "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    """OpenAI completions' (older) ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset."""
    if entries is None:
        return None
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


@dataclass(frozen=True)
class Dialect:
    """What differs between chat completions and completions: ids, object names and choice shapes."""

    id_prefix: str
    object: str
    chunk_object: str
    parse: Callable[[dict[str, Any]], Generation]
    whole: Callable[[Answer], dict[str, Any]]  # a choice of the whole answer
    piece: Callable[[int, dict[str, Any]], dict[str, Any]]  # (index, delta fields) -> a chunk's choice
    opening: bool  # whether each choice opens with a role delta


def _chat_whole(a: Answer) -> dict[str, Any]:
    message = {"role": "assistant", "content": None if a.tool_calls else a.text, "refusal": None}
    if a.tool_calls:
        message["tool_calls"] = a.tool_calls
    return {"index": a.index, "message": message, "logprobs": chat_logprobs(a.logprobs), "finish_reason": a.finish}


def _chat_piece(index: int, d: dict[str, Any]) -> dict[str, Any]:
    delta = {k: d[k] for k in ("role", "content", "tool_calls") if k in d}
    return {"index": index, "delta": delta, "logprobs": chat_logprobs(d.get("logprobs")),
            "finish_reason": d.get("finish")}


def _text_whole(a: Answer) -> dict[str, Any]:
    return {"index": a.index, "text": a.text, "logprobs": completion_logprobs(a.logprobs), "finish_reason": a.finish}


def _text_piece(index: int, d: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "text": d.get("content", ""), "logprobs": completion_logprobs(d.get("logprobs")),
            "finish_reason": d.get("finish")}


CHAT = Dialect("chatcmpl-", "chat.completion", "chat.completion.chunk", chat_request, _chat_whole, _chat_piece,
               True)
COMPLETION = Dialect("cmpl-", "text_completion", "text_completion", completion_request, _text_whole,
                     _text_piece, False)


def completion_response(dialect: Dialect, pred: Prediction, gen: Generation) -> dict[str, Any]:
    """The whole answer for a prediction that succeeded."""
    return {
        "id": dialect.id_prefix + pred.id, "object": dialect.object,
        "created": epoch_seconds(pred.created_at), "model": gen.model, "system_fingerprint": pred.version,
        "choices": [dialect.whole(a) for a in answers_of(pred, gen)], "usage": usage(pred.metrics),
    }


@dataclass
class Chunks:
    """The chunks of one streamed answer; all carry the same id, creation time and model.

    With tools, a choice whose text begins with "{" may be a call: its text is held back, and at the
    end it is sent as one ``tool_calls`` delta (name and whole arguments) if it is one, else as text."""

    dialect: Dialect
    prediction_id: str
    gen: Generation
    created: int = field(default_factory=lambda: int(time.time()))
    held: dict[int, list[str]] = field(default_factory=dict)  # index -> text held back
    started: set[int] = field(default_factory=set)  # indices whose text has begun

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {"id": self.dialect.id_prefix + self.prediction_id, "object": self.dialect.chunk_object,
                "created": self.created, "model": self.gen.model, "choices": choices, **extra}
        if self.gen.include_usage:
            body.setdefault("usage", None)  # OpenAI: null on every chunk but the last
        return body

    def opening(self) -> list[dict[str, Any]]:
        if not self.dialect.opening:
            return []
        return [self.chunk([self.dialect.piece(i, {"role": "assistant", "content": ""})])
                for i in range(self.gen.choices)]

    def output(self, value: Any) -> list[dict[str, Any]]:
        """The chunks for one output chunk of the runner (a string, or {index, text, logprobs?})."""
        index, text, logprobs = (value["index"], value["text"], value.get("logprobs")) if isinstance(value, dict) \
            else (0, value, None)
        if not text and not logprobs:
            return []
        if self.gen.functions and index not in self.started and text:
            self.started.add(index)
            if text.startswith("{"):
                self.held[index] = []
        if index in self.held:
            self.held[index].append(text)
            return []
        return [self.chunk([self.dialect.piece(index, {"content": text, "logprobs": logprobs})])]

    def ending(self, pred: Prediction) -> list[dict[str, Any]]:
        """Held calls (or text), each choice's last chunk (finish_reason), and usage when asked for."""
        out = []
        for answer in answers_of(pred, self.gen):
            if answer.index in self.held:
                delta = ({"tool_calls": [{"index": 0, **call} for call in answer.tool_calls]} if answer.tool_calls
                         else {"content": "".join(self.held[answer.index])})
                out.append(self.chunk([self.dialect.piece(answer.index, delta)]))
            out.append(self.chunk([self.dialect.piece(answer.index, {"finish": answer.finish})]))
        if self.gen.include_usage:
            out.append(self.chunk([], usage=usage(pred.metrics)))
        return out


# Errors


def ended_error(pred: Prediction) -> WarmfleetError:
    """The error a prediction that did not succeed stands for: the runner's own (its code and field; an
    invalid input is the client's), else a server-side one."""
    if pred.status is Status.FAILED and pred.error_code:
        message = pred.error.removeprefix(f"{pred.error_code}: ")
        return error_from_code(pred.error_code, message, pred.error_field)
    if pred.status is Status.FAILED:
        return WarmfleetError(f"prediction {pred.id} failed: {pred.error}")
    because = f": {pred.error}" if pred.error else ""
    return Unavailable(f"prediction {pred.id} was {pred.status.value}{because}")


def openai_error(err: WarmfleetError) -> dict[str, Any]:
    """OpenAI's error object. In these routes a NotFound is always the requested model."""
    code, status = status_for(err)
    param = getattr(err, "field", None) or ("model" if isinstance(err, NotFound) else None)
    return {"message": str(err), "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param, "code": "model_not_found" if isinstance(err, NotFound) else code.lower()}


def error_response(err: WarmfleetError) -> web.Response:
    """RFC 7807 problem details (as every REST error) with OpenAI's ``error`` object in the same body."""
    return problem_of(err, error=openai_error(err))


def renamed(err: WarmfleetError, gen: Generation) -> WarmfleetError:
    """An InvalidInput naming the runner's field, renamed to the OpenAI field the client sent."""
    if isinstance(err, InvalidInput) and err.field.startswith("input."):
        return InvalidInput(gen.openai_field(err.field), err.rule)
    return err


# Routes


def _target(ctx: RestContext, principal: Principal, name: str) -> dict[str, str]:
    """``{"model": name}`` or ``{"deployment": name}``, for a text generation model or deployment."""
    try:
        found = ctx.catalog.visible(principal, name)
        kind = "model"
    except NotFound:
        try:
            found = ctx.catalog.deployment(name)
            kind = "deployment"
        except NotFound:
            raise NotFound(f"model {name!r} not found: no model or deployment has that name") from None
    if found.spec.runner != "llm":
        raise InvalidInput("model", f"{name!r} runs {found.spec.runner!r}: chat and completions need a text "
                                    "generation (llm) model")
    return {kind: name}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError as err:
        raise InvalidInput("body", f"must be a JSON object ({err})") from None
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    return body


async def _answer(ctx: RestContext, principal: Principal, gen: Generation, create: CreateRequest,
                  dialect: Dialect) -> web.Response:
    pred = await ctx.predictions.create(principal, create)
    if not pred.status.is_terminal:  # longer than one wait: follow it to its end
        async for event in await ctx.predictions.follow(principal, pred.id):
            if isinstance(event.body, Completed):
                pred = event.body.prediction
    if pred.status is not Status.SUCCEEDED:
        raise ended_error(pred)
    return web.json_response(completion_response(dialect, pred, gen), dumps=_dumps)


async def _stream(request: web.Request, ctx: RestContext, principal: Principal, gen: Generation,
                  create: CreateRequest, dialect: Dialect) -> web.StreamResponse:
    pred, events = await ctx.predictions.create_and_follow(principal, create)  # an invalid request raises now
    first = await anext(events)  # the stream opens when the prediction has news (it started, or ended)
    chunks = Chunks(dialect, pred.id, gen)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    ended = False
    try:
        for body in chunks.opening():
            await _send(response, body)
        async for event in _from(first, events):
            if isinstance(event.body, OutputChunk) and isinstance(event.body.value, (str, dict)):
                for body in chunks.output(event.body.value):
                    await _send(response, body)
            elif isinstance(event.body, Completed):
                ended = True
                await _send_ending(response, chunks, gen, event.body.prediction)
        await response.write(b"data: [DONE]\n\n")
    except WarmfleetError as err:  # the stream is open: the error goes in it
        with contextlib.suppress(ConnectionResetError):
            await _send(response, {"error": openai_error(renamed(err, gen))})
    except ConnectionResetError:
        log.info("the client left the stream of prediction %s", pred.id)
    finally:
        await events.aclose()
        if not ended:  # the client went away (or this task was cancelled): free the model's slot
            await _cancel(ctx, principal, pred.id)
    return response


async def _cancel(ctx: RestContext, principal: Principal, prediction_id: str) -> None:
    try:
        await ctx.predictions.cancel(principal, prediction_id)
    except WarmfleetError as err:
        log.warning("could not cancel abandoned prediction %s: %s", prediction_id, err)


async def _send_ending(response: web.StreamResponse, chunks: Chunks, gen: Generation,
                       pred: Prediction) -> None:
    if pred.status is Status.SUCCEEDED:
        for body in chunks.ending(pred):
            await _send(response, body)
    else:
        await _send(response, {"error": openai_error(renamed(ended_error(pred), gen))})


async def _from(first: PredictionEvent, rest: AsyncIterator[PredictionEvent]
                ) -> AsyncIterator[PredictionEvent]:
    yield first
    async for event in rest:
        yield event


async def _send(response: web.StreamResponse, body: dict[str, Any]) -> None:
    await response.write(b"data: " + orjson.dumps(body) + b"\n\n")


def _dumps(body: Any) -> str:
    return orjson.dumps(body).decode()


def _route(dialect: Dialect) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx, principal = request.app[REST], current_principal.get()
        gen: Generation | None = None
        try:
            gen = dialect.parse(await _body(request))
            target = _target(ctx, principal, gen.model)
            create = CreateRequest(input=gen.input, input_kind=INPUT_KIND, **target)
            if gen.stream:
                return await _stream(request, ctx, principal, gen, create, dialect)
            create.wait_s = MAX_WAIT_S
            return await _answer(ctx, principal, gen, create, dialect)
        except WarmfleetError as err:
            return error_response(renamed(err, gen) if gen else err)
    return handle


def register(app: web.Application) -> None:
    """Add ``POST /v1/chat/completions`` and ``POST /v1/completions``."""
    app.router.add_post("/v1/chat/completions", _route(CHAT))
    app.router.add_post("/v1/completions", _route(COMPLETION))
