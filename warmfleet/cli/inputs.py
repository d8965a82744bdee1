"""Reading a prediction's input from the command line: ``-i key=value`` and ``-i key=@path``, as Cog's CLI
reads them; shared by `warmfleet predict` and `warmfleet bench`."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Any

import click

from warmfleet.client import File


def parse_input_value(text: str) -> Any:
    """A -i value, like cog's CLI: "@path" reads a file (as a file input); JSON if it parses (numbers,
    true/false, null, lists, objects, quoted strings); otherwise the text itself as a string.
    NaN and Infinity stay strings: they are not JSON."""
    if text.startswith("@"):
        return read_input_file(Path(text[1:]))
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_input_file(path: Path) -> File:
    data = path.expanduser().read_bytes()
    return File(data, mimetypes.guess_type(path.name)[0] or "", path.name)


def parse_input(text: str) -> tuple[str, Any]:
    """One -i option, "key=value", as (key, value); ValueError says what is wrong."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ValueError(f"expected key=value, got {text!r}")
    if not key.strip():
        raise ValueError(f"missing the key before '=' in {text!r}")
    try:
        return key.strip(), parse_input_value(raw)
    except OSError as err:
        raise ValueError(f"cannot read {raw[1:]!r} for {key.strip()!r}: {err.strerror or err}") from err


class InputParam(click.ParamType):
    """A click parameter type for -i: "key=value" or "key=@path"."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_input(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def inputs_to_dict(ctx: click.Context, param: click.Parameter, pairs: tuple[tuple[str, Any], ...]
                   ) -> dict[str, Any]:
    """Collect -i options into the input dict; a key given twice is a usage error."""
    values: dict[str, Any] = {}
    for key, value in pairs:
        if key in values:
            raise click.BadParameter(f"{key!r} is given twice", ctx, param)
        values[key] = value
    return values
