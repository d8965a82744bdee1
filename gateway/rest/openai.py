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
from gateway.rest.context import REST, RestContext, problem_of
from gateway.rest.shapes import epoch_seconds
from warmfleet.domain import Completed, Metrics, OutputChunk, Prediction, PredictionEvent, Status
from warmfleet.errors import InvalidInput, NotFound, Unavailable, WarmfleetError, error_from_code, status_for

log = logging.getLogger(__name__)

# The form of input these routes create, and its fields in their order (TextGenerationInput's). A field
# appears only when it is given: one left out takes the model's default.
INPUT_KIND = "text_generation"
INPUT_FIELDS = ("prompt", "system_prompt", "messages", "max_new_tokens", "min_new_tokens", "temperature",
                "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty",
                "stop_sequences", "seed")
# PredictionMetrics.finish_reason -> OpenAI's: an end-of-sequence token and a stop sequence both "stop".
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


# Requests: OpenAI JSON -> the text_generation input


def _no(value: Any) -> bool:
    """Absent, null, false, or empty: the no-op value of most unsupported fields."""
    return value is None or value is False or value in ([], {}, "")


# Fields whose OpenAI meaning warmfleet cannot honour, with the test for their harmless value.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "logprobs": _no, "top_logprobs": lambda v: v in (None, 0), "logit_bias": _no,
    "tools": _no, "functions": _no, "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "audio": _no, "modalities": lambda v: v in (None, ["text"]), "prediction": _no,
    "web_search_options": _no,
}
COMPLETION_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    **UNSUPPORTED, "best_of": lambda v: v in (None, 1), "echo": _no, "suffix": _no,
}


@dataclass
class Generation:
    """An OpenAI request, translated: the typed input, the target, how to answer, and which OpenAI field
    carried each runner field (so that an error from the runner's schema names what the client sent)."""

    model: str
    input: dict[str, Any]  # the text_generation input's fields, those the request gives (INPUT_FIELDS)
    stream: bool = False
    include_usage: bool = False
    fields: dict[str, str] = field(default_factory=dict)  # runner field -> OpenAI field

    def openai_field(self, runner_field: str) -> str:
        """``input.max_new_tokens`` -> ``max_tokens``; ``input.stop_sequences[1]`` -> ``stop[1]``."""
        if not runner_field.startswith("input."):
            return runner_field
        path = runner_field[len("input."):]
        cut = min((i for i in (path.find("."), path.find("[")) if i >= 0), default=len(path))
        head, tail = path[:cut], path[cut:]
        return self.fields.get(head, head) + tail


def chat_request(body: dict[str, Any]) -> Generation:
    """A chat completion request as a Generation (``messages`` -> ``messages``)."""
    _refuse_unsupported(body, UNSUPPORTED)
    gen = _common(body)
    gen.input["messages"] = _messages(body.get("messages"))
    gen.fields["prompt"] = "messages"
    return _ordered(gen)


def completion_request(body: dict[str, Any]) -> Generation:
    """A (legacy) completion request as a Generation (``prompt`` -> ``prompt``)."""
    _refuse_unsupported(body, COMPLETION_UNSUPPORTED)
    gen = _common(body)
    prompt = _prompt(body.get("prompt"))
    if prompt:  # an empty prompt is no prompt: the model's schema says what is missing
        gen.input["prompt"] = prompt
    return _ordered(gen)


def _ordered(gen: Generation) -> Generation:
    """``gen`` with its input's fields in INPUT_FIELDS' order, as the typed input over gRPC has them."""
    gen.input = {name: gen.input[name] for name in INPUT_FIELDS if name in gen.input}
    return gen


def _refuse_unsupported(body: dict[str, Any], table: dict[str, Callable[[Any], bool]]) -> None:
    for name, harmless in table.items():
        if not harmless(body.get(name)):
            raise InvalidInput(name, "is not supported by warmfleet; leave it out")
    if body.get("n") not in (None, 1):
        raise InvalidInput("n", "must be 1: warmfleet generates one choice per request")


def _common(body: dict[str, Any]) -> Generation:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model", "is required: a model or deployment name, owner/name")
    gen = Generation(model, {}, stream=_flag(body, "stream"))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidInput("stream_options", "must be an object")
        gen.include_usage = _flag(options, "include_usage", "stream_options.include_usage")
    _sampling(body, gen)
    return gen


def _sampling(body: dict[str, Any], gen: Generation) -> None:
    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    for runner_field, openai_field, read in (
        ("max_new_tokens", tokens_field, _uint32),
        ("min_new_tokens", "min_tokens", _int32),
        ("temperature", "temperature", _number),
        ("top_p", "top_p", _number),
        ("top_k", "top_k", _int32),
        ("repetition_penalty", "repetition_penalty", _number),
        ("frequency_penalty", "frequency_penalty", _number),
        ("presence_penalty", "presence_penalty", _number),
        ("seed", "seed", _int64),
    ):
        if body.get(openai_field) is not None:
            gen.input[runner_field] = read(body[openai_field], openai_field)
        gen.fields[runner_field] = openai_field
    stops = _stop(body.get("stop"))
    if stops:
        gen.input["stop_sequences"] = stops
    gen.fields["stop_sequences"] = "stop"


def _flag(body: dict[str, Any], name: str, label: str | None = None) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(label or name, "must be true or false")
    return bool(value)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(name, "must be a number")
    return float(value)


def _integer(lo: int, hi: int) -> Callable[[Any, str], int]:
    """A reader of integers that the wire type (not the runner: its schema has the rules) can carry."""
    def read(value: Any, name: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(name, "must be an integer")
        if not lo <= value <= hi:
            raise InvalidInput(name, f"must be an integer from {lo} to {hi}")
        return value
    return read


_uint32, _int32, _int64 = _integer(0, 2**32 - 1), _integer(-2**31, 2**31 - 1), _integer(-2**63, 2**63 - 1)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidInput("stop", "must be a string or a list of strings")
    return stops


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) > 1:
        raise InvalidInput("prompt", "must be one prompt: warmfleet generates one choice per request")
    raise InvalidInput("prompt", "must be a string (token ids are not supported)")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("messages", "must be a non-empty list of {role, content} objects")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(message: Any, where: str) -> dict[str, str]:
    """A chat message as the typed input carries it: ``role``, and ``content`` unless it is empty."""
    if not isinstance(message, dict):
        raise InvalidInput(where, "must be an object with role and content")
    role = message.get("role")
    role = ROLES.get(role) if isinstance(role, str) else None
    if role is None:
        raise InvalidInput(f"{where}.role", f"must be system, developer, user or assistant, not "
                                            f"{message.get('role')!r} (tools are not supported)")
    if message.get("tool_calls") or message.get("function_call"):
        raise InvalidInput(f"{where}.tool_calls", "is not supported by warmfleet; leave it out")
    content = _content(message.get("content"), f"{where}.content")
    return {"role": role, "content": content} if content else {"role": role}


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidInput(where, "must be a string or a list of text parts")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidInput(f"{where}[{i}]", 'must be {"type": "text", "text": "..."}: warmfleet '
                                                 "chat models read text only")
        texts.append(part["text"])
    return "\n".join(texts)


# Responses: Prediction -> OpenAI JSON


def finish_reason(metrics: Metrics) -> str:
    """OpenAI's finish_reason of an ended generation."""
    return FINISH_REASONS.get(metrics.finish_reason or "", "stop")


def usage(metrics: Metrics) -> dict[str, int]:
    prompt, completion = metrics.input_token_count or 0, metrics.output_token_count or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass(frozen=True)
class Dialect:
    """What differs between chat completions and completions: ids, object names and choice shapes."""

    id_prefix: str
    object: str
    chunk_object: str
    parse: Callable[[dict[str, Any]], Generation]
    whole: Callable[[str, str], dict[str, Any]]  # (text, finish_reason) -> the answer's choice
    piece: Callable[[str | None, str | None], dict[str, Any]]  # (text, finish_reason) -> a chunk's choice
    opening: tuple[dict[str, Any], ...]  # choices sent before any text


def _chat_whole(text: str, finish: str) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None, "finish_reason": finish}


def _chat_piece(text: str | None, finish: str | None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _text_whole(text: str, finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


CHAT = Dialect("chatcmpl-", "chat.completion", "chat.completion.chunk", chat_request, _chat_whole, _chat_piece,
               ({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None},))
COMPLETION = Dialect("cmpl-", "text_completion", "text_completion", completion_request, _text_whole,
                     lambda text, finish: _text_whole(text or "", finish), ())


def completion_response(dialect: Dialect, pred: Prediction, model: str) -> dict[str, Any]:
    """The whole answer for a prediction that succeeded."""
    return {
        "id": dialect.id_prefix + pred.id, "object": dialect.object,
        "created": epoch_seconds(pred.created_at), "model": model, "system_fingerprint": pred.version,
        "choices": [dialect.whole(text_of(pred), finish_reason(pred.metrics))],
        "usage": usage(pred.metrics),
    }


def text_of(pred: Prediction) -> str:
    """The generated text: the output's value when it is text ("" otherwise)."""
    value = pred.output.value if pred.output is not None else None
    return value if isinstance(value, str) else ""


@dataclass
class Chunks:
    """The chunks of one streamed answer; all carry the same id, creation time and model."""

    dialect: Dialect
    prediction_id: str
    model: str
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {"id": self.dialect.id_prefix + self.prediction_id, "object": self.dialect.chunk_object,
                "created": self.created, "model": self.model, "choices": choices, **extra}
        if self.include_usage:
            body.setdefault("usage", None)  # OpenAI: null on every chunk but the last
        return body

    def opening(self) -> list[dict[str, Any]]:
        return [self.chunk([c]) for c in self.dialect.opening]

    def text(self, text: str) -> dict[str, Any]:
        return self.chunk([self.dialect.piece(text, None)])

    def ending(self, pred: Prediction) -> list[dict[str, Any]]:
        """The last chunk (finish_reason), and the usage chunk when asked for."""
        last = [self.chunk([self.dialect.piece(None, finish_reason(pred.metrics))])]
        if self.include_usage:
            last.append(self.chunk([], usage=usage(pred.metrics)))
        return last


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
    return web.json_response(completion_response(dialect, pred, gen.model), dumps=_dumps)


async def _stream(request: web.Request, ctx: RestContext, principal: Principal, gen: Generation,
                  create: CreateRequest, dialect: Dialect) -> web.StreamResponse:
    pred, events = await ctx.predictions.create_and_follow(principal, create)  # an invalid request raises now
    first = await anext(events)  # the stream opens when the prediction has news (it started, or ended)
    chunks = Chunks(dialect, pred.id, gen.model, gen.include_usage)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    ended = False
    try:
        for body in chunks.opening():
            await _send(response, body)
        async for event in _from(first, events):
            if isinstance(event.body, OutputChunk) and isinstance(event.body.value, str) and event.body.value:
                await _send(response, chunks.text(event.body.value))
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
