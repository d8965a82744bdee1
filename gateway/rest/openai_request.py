"""OpenAI's requests as the ``llm`` runner's input: the request side of ``gateway/rest/openai.py``.

``chat_request`` and ``completion_request`` turn a request body into a ``Generation``: the fields of the
typed ``text_generation`` input that the body gives, and which OpenAI field carried each (so an error
from the runner's schema names what the client sent). Beyond the sampling fields, as in OpenAI's API
and vLLM's extensions:

- ``n`` samples (one prefill); ``logprobs`` / ``top_logprobs`` (completions: ``logprobs`` is the number
  of alternatives); ``logit_bias``; vLLM's ``min_p`` and ``stop_token_ids``.
- ``response_format`` ``json_object`` (any JSON object) or ``json_schema`` (its ``schema``), and vLLM's
  ``structured_outputs`` {json | regex | choice | grammar} (or the older ``guided_json``,
  ``guided_regex``, ``guided_choice``, ``guided_grammar``): one constraint per request, held by
  constrained decoding in the runner (``runners/llm/constraints.py``).
- ``tools`` and ``tool_choice``: ``gateway/rest/openai_tools.py``; messages of role ``tool`` and an
  assistant's ``tool_calls`` go back to the model as its chat template writes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.rest import openai_tools
from warmfleet.errors import InvalidInput

# The form of input these routes create, and its fields in their order (TextGenerationInput's). A field
# appears only when it is given: one left out takes the model's default.
INPUT_KIND = "text_generation"
INPUT_FIELDS = ("prompt", "system_prompt", "messages", "max_new_tokens", "min_new_tokens", "temperature",
                "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty",
                "stop_sequences", "seed", "min_p", "logit_bias", "stop_token_ids", "n", "logprobs",
                "top_logprobs", "json_schema", "regex", "choices", "grammar", "tools")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# vLLM's structured outputs (``structured_outputs``, and the older ``guided_*`` fields) -> the llm input.
STRUCTURED = {"json": "json_schema", "regex": "regex", "choice": "choices", "grammar": "grammar"}
GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


# Requests: OpenAI JSON -> the text_generation input


def _no(value: Any) -> bool:
    """Absent, null, false, or empty: the no-op value of most unsupported fields."""
    return value is None or value is False or value in ([], {}, "")


# Fields whose OpenAI meaning warmfleet cannot honour, with the test for their harmless value.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "functions": _no, "function_call": lambda v: v in (None, "none"),  # the old form of tools
    "audio": _no, "modalities": lambda v: v in (None, ["text"]), "prediction": _no,
    "web_search_options": _no, "parallel_tool_calls": lambda v: v in (None, False, True),
}
COMPLETION_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    **UNSUPPORTED, "best_of": lambda v: v in (None, 1), "echo": _no, "suffix": _no, "tools": _no,
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
    functions: list[dict[str, Any]] = field(default_factory=list)  # the tools, when answers may call them

    @property
    def choices(self) -> int:
        return int(self.input.get("n") or 1)

    @property
    def rich(self) -> bool:
        """The runner answers {choices: [...]} (several samples, or log-probabilities), not a string."""
        return self.choices > 1 or bool(self.input.get("logprobs"))

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
    if body.get("logprobs") is not None:
        gen.input["logprobs"] = _flag(body, "logprobs")
    if body.get("top_logprobs") is not None:
        if not gen.input.get("logprobs"):
            raise InvalidInput("top_logprobs", "needs logprobs: true")
        gen.input["top_logprobs"] = _uint32(body["top_logprobs"], "top_logprobs")
    _tools(body, gen)
    return _ordered(gen)


def _tools(body: dict[str, Any], gen: Generation) -> None:
    choice = body.get("tool_choice")
    if not body.get("tools"):
        if choice not in (None, "none", "auto"):
            raise InvalidInput("tool_choice", "needs tools")
        return
    functions = openai_tools.functions_of(body["tools"])
    gen.input["tools"] = functions
    held = openai_tools.constraint_of(functions, choice)
    if held and any(gen.input.get(name) for name in STRUCTURED.values()):
        raise InvalidInput("tool_choice", "cannot be used with response_format or structured outputs; "
                                          'give one, or tool_choice "none"')
    gen.input.update(held)
    gen.fields.update({name: "tool_choice" for name in held})
    if choice != "none":
        gen.functions = functions


def completion_request(body: dict[str, Any]) -> Generation:
    """A (legacy) completion request as a Generation (``prompt`` -> ``prompt``)."""
    _refuse_unsupported(body, COMPLETION_UNSUPPORTED)
    gen = _common(body)
    if body.get("logprobs") is not None:  # completions: the number of alternatives, 0 to 5
        gen.input["logprobs"] = True
        gen.input["top_logprobs"] = _uint32(body["logprobs"], "logprobs")
        gen.fields["top_logprobs"] = "logprobs"
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
    _structured(body, gen)
    return gen


def _structured(body: dict[str, Any], gen: Generation) -> None:
    """``response_format`` (OpenAI) and ``structured_outputs`` / ``guided_*`` (vLLM) -> one constraint."""
    given: list[tuple[str, str, Any]] = []  # (runner field, OpenAI field, value)
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_object":
            given.append(("json_schema", "response_format", {"type": "object"}))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise InvalidInput("response_format.json_schema", "must be {name, schema: {...}, strict?}")
            given.append(("json_schema", "response_format.json_schema.schema", spec.get("schema") or {}))
        elif kind != "text":
            raise InvalidInput("response_format.type", "must be text, json_object or json_schema")
    outputs = body.get("structured_outputs")
    if outputs is not None and not isinstance(outputs, dict):
        raise InvalidInput("structured_outputs", "must be an object: {json | regex | choice | grammar}")
    for name, value in {**(outputs or {}), **{GUIDED[k]: body[k] for k in GUIDED if body.get(k) is not None}}.items():
        if name not in STRUCTURED:
            raise InvalidInput(f"structured_outputs.{name}", f"is not one of {', '.join(STRUCTURED)}")
        if isinstance(value, str) and name == "json":
            value = _json_text(value, f"structured_outputs.{name}")
        given.append((STRUCTURED[name], f"structured_outputs.{name}", value))
    if len(given) > 1:
        raise InvalidInput(given[1][1], f"give one constraint, not {given[0][1]} and {given[1][1]}")
    for runner_field, openai_field, value in given:
        gen.input[runner_field] = value
        gen.fields[runner_field] = openai_field


def _json_text(text: str, name: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise InvalidInput(name, f"must be a JSON Schema ({err})") from None


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
        ("min_p", "min_p", _number),
        ("n", "n", _uint32),
    ):
        if body.get(openai_field) is not None:
            gen.input[runner_field] = read(body[openai_field], openai_field)
        gen.fields[runner_field] = openai_field
    stops = _stop(body.get("stop"))
    if stops:
        gen.input["stop_sequences"] = stops
    gen.fields["stop_sequences"] = "stop"
    bias = body.get("logit_bias")
    if bias:
        if not isinstance(bias, dict):
            raise InvalidInput("logit_bias", "must be an object: token id -> bias")
        gen.input["logit_bias"] = {str(k): _number(v, f"logit_bias.{k}") for k, v in bias.items()}
    ids = body.get("stop_token_ids")
    if ids:
        if not isinstance(ids, list):
            raise InvalidInput("stop_token_ids", "must be a list of token ids")
        gen.input["stop_token_ids"] = [_uint32(v, f"stop_token_ids[{i}]") for i, v in enumerate(ids)]


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
        raise InvalidInput("prompt", "must be one prompt (for several answers to it, use n)")
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
        raise InvalidInput(f"{where}.role", f"must be system, developer, user, assistant or tool, not "
                                            f"{message.get('role')!r}")
    if message.get("function_call"):
        raise InvalidInput(f"{where}.function_call", "is the old form of tool_calls; use tool_calls")
    if role == "assistant" and message.get("tool_calls"):
        return {"role": role, "content": openai_tools.call_text(message["tool_calls"], f"{where}.tool_calls")}
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
