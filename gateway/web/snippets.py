"""The code a Run page shows for the same input: cURL, Python (Replicate's client and warmfleet's
``Client``), Node.js (fetch) and grpcurl. Each reads the token from ``$WARMFLEET_TOKEN`` (never the
signed-in one: a page is not where a secret goes) and works as pasted against this gateway.

A file input is written as the data URL it was (as pasted, it runs again) unless it is too long to
read on a page, where it becomes a placeholder URL to replace."""

from __future__ import annotations

import json
import shlex
from typing import Any

from warmfleet.domain import FileData

MAX_VALUE_CHARS = 2000  # a value longer than this (a data URL) is a placeholder in the snippets
PLACEHOLDER = "https://example.com/your-file.png"


def shown_input(input: dict[str, Any]) -> dict[str, Any]:
    """``input`` as JSON a snippet can carry: files (bytes) and long strings as a placeholder URL."""

    def walk(value: Any) -> Any:
        if isinstance(value, FileData) or (isinstance(value, str) and len(value) > MAX_VALUE_CHARS):
            return PLACEHOLDER
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(input)


def snippets(base: str, grpc_target: str, model: str, input: dict[str, Any]) -> dict[str, str]:
    """Tab name to code, for running ``model`` on ``input`` at the gateway ``base`` (its HTTP URL)."""
    data = shown_input(input)
    body = json.dumps({"input": data}, ensure_ascii=False)
    pretty = json.dumps(data, indent=4, ensure_ascii=False)
    py = _python_literal(data)
    grpc_body = json.dumps({"model": model, "wait_s": 60, "input": {"json": {"fields": data}}})
    return {
        "cURL": (
            f"curl -s -X POST {shlex.quote(f'{base}/v1/models/{model}/predictions')} \\\n"
            f'  -H "Authorization: Bearer $WARMFLEET_TOKEN" \\\n'
            f"  -H 'Content-Type: application/json' \\\n  -H 'Prefer: wait' \\\n"
            f"  -d {shlex.quote(body)}"
        ),
        "Python (replicate)": (
            f"import os\n\nimport replicate\n\n"
            f'client = replicate.Client(api_token=os.environ["WARMFLEET_TOKEN"], '
            f"base_url={base!r})\noutput = client.run(\n    {model!r},\n"
            f"    input={py},\n)\nprint(output)"
        ),
        "Python (warmfleet)": (
            f"from warmfleet import Client\n\n"
            f"client = Client({grpc_target!r})  # the token: $WARMFLEET_TOKEN\n"
            f"output = client.run(\n    {model!r},\n    input={py},\n)\nprint(output)"
        ),
        "Node.js": (
            f"const response = await fetch({json.dumps(f'{base}/v1/models/{model}/predictions')}, {{\n"
            f'  method: "POST",\n  headers: {{\n'
            f"    Authorization: `Bearer ${{process.env.WARMFLEET_TOKEN}}`,\n"
            f'    "Content-Type": "application/json",\n    Prefer: "wait",\n  }},\n'
            f"  body: JSON.stringify({{ input: {_indent(pretty, 2)} }}),\n}});\n"
            f"const prediction = await response.json();\nconsole.log(prediction.output);"
        ),
        "grpcurl": (
            f'grpcurl -plaintext -H "authorization: Bearer $WARMFLEET_TOKEN" \\\n'
            f"  -d {shlex.quote(grpc_body)} \\\n"
            f"  {grpc_target} warmfleet.v1.Predictions/CreatePrediction"
        ),
    }


def _python_literal(value: Any) -> str:
    """JSON as a Python literal (true/false/null as True/False/None), indented under ``input=``."""
    text = repr(value)
    return text if len(text) < 80 else _pretty_python(value, 1)


def _pretty_python(value: Any, depth: int = 0) -> str:
    pad = "    " * (depth + 1)
    if isinstance(value, dict) and value:
        inner = ",\n".join(f"{pad}{k!r}: {_pretty_python(v, depth + 1)}" for k, v in value.items())
        return "{\n" + inner + ",\n" + "    " * depth + "}"
    if isinstance(value, list) and value:
        inner = ",\n".join(f"{pad}{_pretty_python(v, depth + 1)}" for v in value)
        return "[\n" + inner + ",\n" + "    " * depth + "]"
    return repr(value)


def _indent(text: str, spaces: int) -> str:
    return text.replace("\n", "\n" + " " * spaces)
