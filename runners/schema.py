"""Checking an input against a runner's JSON Schema, with errors that name the field and the rule."""

from __future__ import annotations

import copy
import secrets
from typing import Any, Callable

import fastjsonschema
import jsonschema
from jsonschema import Draft7Validator

from runners.images import IMAGE_MEDIA_TYPE, probe_image
from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput

# Files travel as bytes. In a schema, a file input is a string with format "uri" (as in Replicate's
# schemas); a file given for any other field is refused, naming the field.
FILE_FORMAT = "uri"
SECRET_MASK = "**********"  # how Cog shows a Secret's value


class InputValidator:
    """A compiled input schema: ``validate`` returns the input with defaults filled in.

    Valid input (the hot path) is checked by code fastjsonschema generates from the schema, ~20x faster
    than jsonschema; only when it fails does jsonschema find the most relevant error, for its message.
    Both read the schema as JSON Schema draft 7, the newest draft fastjsonschema knows, so that they
    never disagree on which keywords count.
    """

    def __init__(self, schema: dict[str, Any], check: Callable[[dict[str, Any]], None] | None = None) -> None:
        Draft7Validator.check_schema(schema)
        self._validator = Draft7Validator(schema)
        self._fast = fastjsonschema.compile(schema, use_default=False)
        self._schema = schema
        self._check = check  # the runner's rules across fields, after the schema's
        self._defaults = {
            name: prop["default"]
            for name, prop in schema.get("properties", {}).items()
            if "default" in prop
        }
        # Inputs never shown back (JSON Schema's writeOnly; Cog's Secret): masked where they are stored.
        self._secrets = tuple(name for name, prop in schema.get("properties", {}).items() if prop.get("writeOnly"))
        self._seed = _seed_range(schema.get("properties", {}).get("seed"))

    def redact(self, input: dict[str, Any]) -> dict[str, Any]:
        """``input`` as it may be stored and shown: each secret's value masked."""
        present = [name for name in self._secrets if input.get(name) is not None]
        if not present:
            return input
        return {**input, **{name: SECRET_MASK for name in present}}

    def fix_seed(self, filled: dict[str, Any]) -> int | None:
        """Draw the seed of an input that has an integer ``seed`` (the image and language families',
        and a Cog model's by convention) and was given none, and set it in ``filled`` (``validate``'s
        result): so a run of it again, after an infrastructure failure, gives the same output. Returns
        the seed drawn; None when it was given, or the schema has none."""
        if self._seed is None or filled.get("seed") is not None:
            return None
        low, high = self._seed
        filled["seed"] = seed = low + secrets.randbelow(high - low + 1)
        return seed

    def validate(self, input: dict[str, Any]) -> dict[str, Any]:
        checked = self._files_as_uris(input)
        try:
            self._fast(checked)
        except fastjsonschema.JsonSchemaException:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(checked))
            if error is not None:
                raise InvalidInput(_field_of(error), error.message) from None
        filled = {k: copy.deepcopy(v) for k, v in self._defaults.items() if k not in input}
        filled.update(input)
        if self._check is not None:
            self._check(filled)
        return filled


    def _files_as_uris(self, input: dict[str, Any]) -> dict[str, Any]:
        """The input with each file replaced by a stand-in URI, so the schema checks the rest of it."""
        if not any(isinstance(v, (FileData, list, dict)) for v in input.values()):
            return input  # the hot path: flat inputs without files
        return _replace_files(input, self._schema, "input")


def _replace_files(value: Any, schema: dict[str, Any], path: str) -> Any:
    """``value`` with every file swapped for a URI, where the schema at its place takes a file (a string
    of format "uri"); a file anywhere else is refused, naming its place."""
    if isinstance(value, FileData):
        if schema.get("format") != FILE_FORMAT:
            raise InvalidInput(path, "expected a value, got a file; this field takes no file")
        if schema.get("contentMediaType") == IMAGE_MEDIA_TYPE:
            probe_image(value, path)  # header only: a bad image is refused before it is queued
        return f"file:///{value.name or path}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _replace_files(v, props.get(k, {}), f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items", {})
        return [_replace_files(v, items, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


MAX_DRAWN_SEED = 2**32 - 1  # the most a drawn seed may be when the schema sets no maximum (numpy's bound)


def _seed_range(prop: dict[str, Any] | None) -> tuple[int, int] | None:
    """The range a seed may be drawn from: the ``seed`` property's, when it is an integer."""
    if not isinstance(prop, dict):
        return None
    kinds = prop.get("type")
    if kinds != "integer" and not (isinstance(kinds, list) and "integer" in kinds):
        return None
    low = max(0, int(prop.get("minimum", 0)))
    high = int(prop.get("maximum", MAX_DRAWN_SEED))
    return (low, high) if low <= high else None


def _field_of(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            path += f".{extra[0]}"
    elif error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        if missing:
            path += f".{missing[0]}"
    return "input" + path
