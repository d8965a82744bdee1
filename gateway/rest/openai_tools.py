"""OpenAI's ``tools`` and ``tool_choice`` on the chat route, as Llama 3.1 calls tools.

A Llama 3.1 model is shown its tools by its chat template (the ``tools`` input of the ``llm`` runner;
the template writes them into the prompt) and answers a call as one JSON object,
``{"name": <function>, "parameters": {<arguments>}}``. So:

- ``tool_choice`` "none": the tools are shown, the answer is not constrained and is never read as a
  call (OpenAI's meaning).
- "auto" (the default with tools): the answer is either a well-formed call of one of the tools or text
  that does not begin with "{" (a Lark grammar, ``grammar`` input), so a call the model begins always
  parses; the model chooses which.
- "required": the answer is a call of one of the tools (a JSON Schema ``anyOf``, ``json_schema`` input);
  a named function, ``{"type": "function", "function": {"name": ...}}``: a call of that one.

``tool_calls_of`` reads an answer back: a JSON object naming one of the tools is OpenAI's ``tool_calls``
(one call, its arguments as a JSON string, a fresh ``call_`` id), with ``finish_reason`` "tool_calls".
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

from warmfleet.errors import InvalidInput

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function's name
MAX_TOOLS = 128
# Compact JSON in calls, as in the structured outputs (``runners/llm/constraints.JSON_OPTIONS``).
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def functions_of(tools: Any) -> list[dict[str, Any]]:
    """The request's ``tools`` as the chat template takes them (OpenAI's shape, checked)."""
    if not isinstance(tools, list) or not tools or len(tools) > MAX_TOOLS:
        raise InvalidInput("tools", f"must be a list of 1 to {MAX_TOOLS} tools")
    out, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidInput(where, 'must be {"type": "function", "function": {...}}')
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidInput(f"{where}.function.name", "must be 1 to 64 letters, digits, '_' or '-'")
        if name in names:
            raise InvalidInput(f"{where}.function.name", f"{name!r} is already the name of another tool")
        names.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidInput(f"{where}.function.parameters", "must be a JSON Schema object")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise InvalidInput(f"{where}.function.description", "must be a string")
        out.append({"type": "function", "function": {"name": name, "description": description,
                                                     "parameters": parameters}})
    return out


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["name", "parameters"],
            "properties": {"name": {"const": function["name"]}, "parameters": function["parameters"]}}


def constraint_of(functions: list[dict[str, Any]], choice: Any) -> dict[str, Any]:
    """The ``llm`` input that holds the answer to ``tool_choice`` ({} for "none")."""
    if choice is None or choice == "auto":
        calls = {"anyOf": [_call_schema(f["function"]) for f in functions], "x-guidance": COMPACT}
        return {"grammar": "start: call | text\ncall: %json " + orjson.dumps(calls).decode()
                           + "\ntext: /[^{\\s][\\s\\S]*/"}
    if choice == "none":
        return {}
    if choice == "required":
        return {"json_schema": {"anyOf": [_call_schema(f["function"]) for f in functions], "x-guidance": COMPACT}}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [f for f in functions if f["function"]["name"] == name]
        if not chosen:
            raise InvalidInput("tool_choice.function.name", f"{name!r} is not one of the tools")
        return {"json_schema": {**_call_schema(chosen[0]["function"]), "x-guidance": COMPACT}}
    raise InvalidInput("tool_choice", 'must be "none", "auto", "required" or {"type": "function", '
                                      '"function": {"name": ...}}')


def tool_calls_of(text: str, functions: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """OpenAI's ``tool_calls`` for an answer that is a call of one of ``functions``; None for text."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        call = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    names = {f["function"]["name"] for f in functions}
    if not isinstance(call, dict) or call.get("name") not in names:
        return None
    arguments = call.get("parameters", call.get("arguments", {}))
    return [{"id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": call["name"], "arguments": orjson.dumps(arguments).decode()}}]


def call_text(tool_calls: Any, where: str) -> str:
    """An assistant message's ``tool_calls`` as the model wrote them (for a conversation sent back)."""
    if not isinstance(tool_calls, list) or len(tool_calls) != 1:
        raise InvalidInput(where, "must be a list of one call (Llama 3.1 makes one call per turn)")
    function = tool_calls[0].get("function") if isinstance(tool_calls[0], dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidInput(f"{where}[0].function", "must have a name and arguments")
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"{where}[0].function.arguments", f"must be a JSON string ({err})") from None
    return orjson.dumps({"name": function["name"], "parameters": arguments}).decode()
