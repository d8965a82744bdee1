"""A version's Run form, from its input schema (JSON Schema), and the submitted form back to an input.

Nothing here is written per model: every family's schema and a pushed Cog model's (Cog's, with its
``$ref`` inlined at push: ``allOf`` of one schema, ``nullable`` as a ``null`` type, ``x-order``) become the
same ``Field`` list. ``fields_of`` reads a schema; ``input_of`` turns what a browser posts (every value a
string, files as ``Upload``) into the JSON input the core validates: an empty field is left out, so that
the schema's default applies, and only what cannot be parsed at all (a number that is not one, JSON that is
not JSON) is refused here, naming the field; every rule of the schema is the core's validator's.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import orjson

from warmfleet.errors import InvalidInput

# Names of string fields that take a long text (a textarea, not one line).
LONG_TEXT = re.compile(r"prompt|text|content|message|description|caption", re.IGNORECASE)
LONG_TEXT_MIN_LENGTH = 1000  # a string allowed longer than this is a textarea too
FILE_FORMAT = "uri"
MAX_SLIDER_SPAN = 1_000_000  # a wider range (a seed's) gets a number box alone


@dataclass(frozen=True)
class Upload:
    """A file a browser sent in a form field."""

    data: bytes
    content_type: str = ""
    filename: str = ""

    def data_url(self) -> str:
        kind = self.content_type or "application/octet-stream"
        return f"data:{kind};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True)
class Field:
    """One input of a Run form. ``kind``: text, textarea, integer, number, select, checkbox, file,
    lines (an array of strings, one a line), numbers (an array of numbers, one a line), objects (an array of objects: ``items`` are its fields),
    object (one object: ``items`` are its fields, named "outpaint.left"), json (anything else, as JSON)."""

    name: str
    kind: str
    label: str
    help: str = ""
    required: bool = False
    default: Any = None
    options: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    accept: str = ""
    max_items: int | None = None
    items: tuple[Field, ...] = field(default_factory=tuple)

    @property
    def has_range(self) -> bool:
        """Whether it is a number with both ends, and not so far apart (a seed's) that a slider could not
        point at one value: a slider beside its box."""
        return (
            self.kind in ("integer", "number")
            and self.minimum is not None
            and self.maximum is not None
            and self.maximum - self.minimum <= MAX_SLIDER_SPAN
        )


def flatten(prop: Mapping[str, Any]) -> dict[str, Any]:
    """A property's schema with the wrappers Cog's schemas use taken off: ``allOf`` of one schema
    merged in, a ``type`` list or an ``anyOf`` with ``null`` read as the other type."""
    out = {k: v for k, v in prop.items() if k != "allOf"}
    for part in prop.get("allOf", []):
        if isinstance(part, Mapping):
            out = {**flatten(part), **out}
    kind = out.get("type")
    if isinstance(kind, list):
        others = [t for t in kind if t != "null"]
        out["type"] = others[0] if len(others) == 1 else kind
    choices = [s for s in out.get("anyOf", []) if isinstance(s, Mapping) and s.get("type") != "null"]
    if "anyOf" in out and len(choices) == 1 and "type" not in out:
        out = {**{k: v for k, v in out.items() if k != "anyOf"}, **flatten(choices[0])}
    return out


def fields_of(schema: Mapping[str, Any]) -> list[Field]:
    """The Run form's fields for an input schema, in ``x-order`` where the schema gives one, else in the
    schema's order."""
    props = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    order = sorted(
        props, key=lambda n: props[n].get("x-order", math.inf) if isinstance(props[n], Mapping) else math.inf
    )
    return [
        field_of(name, props[name], name in required) for name in order if isinstance(props[name], Mapping)
    ]


def field_of(name: str, prop: Mapping[str, Any], required: bool = False) -> Field:
    """One property's field (``name`` is its form name, a path for an array's item: "controlnets.0.image")."""
    s = flatten(prop)
    label = str(s.get("title") or name.rsplit(".", 1)[-1].replace("_", " ").capitalize())
    base = dict(
        name=name,
        label=label,
        help=str(s.get("description") or ""),
        required=required,
        default=s.get("default"),
    )
    kind = s.get("type")
    if "enum" in s:
        return Field(kind="select", options=tuple(s["enum"]), **base)
    if kind == "boolean":
        return Field(kind="checkbox", **base)
    if kind in ("integer", "number"):
        return _number(kind, s, base)
    if kind == "string":
        if s.get("format") == FILE_FORMAT:
            return Field(kind="file", accept=str(s.get("contentMediaType") or ""), **base)
        long = LONG_TEXT.search(name) or (s.get("maxLength") or 0) > LONG_TEXT_MIN_LENGTH
        return Field(kind="textarea" if long else "text", **base)
    if kind == "array":
        items = flatten(s.get("items") or {})
        if items.get("type") == "object" or "properties" in items:
            inner = [
                field_of(f"{name}.{{i}}.{n}", p, n in set(items.get("required") or ()))
                for n, p in (items.get("properties") or {}).items()
                if isinstance(p, Mapping)
            ]
            return Field(kind="objects", items=tuple(inner), max_items=s.get("maxItems"), **base)
        if items.get("type") == "string" and items.get("format") != FILE_FORMAT:
            return Field(kind="lines", **base)
        if items.get("type") in ("integer", "number"):
            return Field(kind="numbers", **base)
    if kind == "object" and isinstance(s.get("properties"), Mapping):
        inner = set(s.get("required") or ())
        return Field(kind="object", items=tuple(field_of(f"{name}.{n}", p, n in inner)
                                                for n, p in s["properties"].items() if isinstance(p, Mapping)),
                     **base)
    return Field(kind="json", **base)


def _number(kind: str, s: Mapping[str, Any], base: dict[str, Any]) -> Field:
    low = s.get("minimum", s.get("exclusiveMinimum"))
    high = s.get("maximum", s.get("exclusiveMaximum"))
    if s.get("multipleOf"):
        step = s["multipleOf"]
    elif kind == "integer":
        step = 1
    elif low is not None and high is not None:
        step = (high - low) / 100
    else:
        step = None
    return Field(kind=kind, minimum=low, maximum=high, step=step, **base)


# The submitted form back to an input


FormValues = Mapping[str, Sequence["str | Upload"]]


def input_of(fields: Sequence[Field], form: FormValues) -> dict[str, Any]:
    """The prediction input a submitted Run form gives: each field's value, parsed by its kind; empty
    ones left out (the schema's default applies)."""
    out: dict[str, Any] = {}
    for f in fields:
        value = _value(f, f.name, form)
        if value is not None:
            out[f.name.rsplit(".", 1)[-1]] = value
    return out


def _value(f: Field, name: str, form: FormValues) -> Any:
    sent = list(form.get(name, ()))
    if f.kind == "objects":
        return _objects(f, name, form)
    if f.kind == "object":
        # Left out while every field holds its default (the form shows defaults): an optional object,
        # such as outpaint, is sent only when the user changed something in it.
        value = _fields(f.items, form, name)
        defaults = {item.name.rsplit(".", 1)[-1]: item.default for item in f.items if item.default is not None}
        return None if value is None or value == defaults else value
    if f.kind == "file":
        upload = next((v for v in sent if isinstance(v, Upload) and v.data), None)
        if upload is not None:
            return upload.data_url()
    texts = [v for v in sent if isinstance(v, str)]
    if f.kind == "checkbox":
        return None if not texts else texts[-1] == "true"  # a hidden "false" comes before the box
    text = texts[-1].strip() if texts else ""
    if not text:
        return None
    return _PARSERS.get(f.kind, _as_text)(_path(name), text)


def _objects(f: Field, name: str, form: FormValues) -> list[dict[str, Any]] | None:
    """An array of objects from its rows' fields ("controlnets.0.image", ...): rows in index order, a row
    whose fields are all empty left out (a checkbox alone does not make a row)."""
    indices = sorted(
        {int(m.group(1)) for key in form for m in [re.match(re.escape(name) + r"\.(\d+)\.", key)] if m}
    )
    rows = []
    for i in indices:
        row = _fields(f.items, form, f"{name}.{i}")
        if row is not None:
            rows.append(row)
    return rows or None


def _fields(items: Sequence[Field], form: FormValues, prefix: str) -> dict[str, Any] | None:
    """An object from its fields' values (an array's row: ``prefix`` "controlnets.0"; one object's:
    "outpaint"); None when they are all empty (a checkbox alone does not make one)."""
    out, filled = {}, False
    for item in items:
        item_name = prefix + "." + item.name.rsplit(".", 1)[-1]
        value = _value(item, item_name, form)
        if value is not None:
            out[item_name.rsplit(".", 1)[-1]] = value
            filled = filled or item.kind != "checkbox"
    return out if filled else None


def _path(name: str) -> str:
    """A form name as the validator names the field ("controlnets.0.image" is input.controlnets[0].image)."""
    return "input." + re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name)


def form_name(error_field: str) -> str:
    """The form field an ``InvalidInput.field`` names ("input.controlnets[0].image" is
    "controlnets.0.image"); "" when it names no input field."""
    if not error_field.startswith("input."):
        return ""
    return re.sub(r"\[(\d+)\]", r".\1", error_field[len("input.") :])


def _as_text(path: str, text: str) -> str:
    return text


def _as_integer(path: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise InvalidInput(path, f"must be a whole number; got {text[:40]!r}") from None
        if not number.is_integer():
            raise InvalidInput(path, f"must be a whole number; got {text[:40]!r}") from None
        return int(number)


def _as_number(path: str, text: str) -> float | int:
    try:
        number = float(text)
    except ValueError:
        raise InvalidInput(path, f"must be a number; got {text[:40]!r}") from None
    if not math.isfinite(number):
        raise InvalidInput(path, f"must be a finite number; got {text[:40]!r}")
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _as_lines(path: str, text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _as_numbers(path: str, text: str) -> list[float | int]:
    """One number a line ("stop_token_ids": 128001, 128009)."""
    out = []
    for i, line in enumerate(line for line in text.splitlines() if line.strip()):
        try:
            value = orjson.loads(line.strip())
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{path}[{i}]", f"must be a number, one a line; got {line.strip()[:20]!r}")
        out.append(value)
    return out


def _as_json(path: str, text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise InvalidInput(path, f"must be JSON: {err}") from None


def _as_choice(path: str, text: str) -> Any:
    """A select's option as its JSON value (options are written as JSON, so a number stays one)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


_PARSERS = {
    "integer": _as_integer,
    "number": _as_number,
    "lines": _as_lines,
    "numbers": _as_numbers,
    "json": _as_json,
    "select": _as_choice,
}
