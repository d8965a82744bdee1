"""Checking an input against a runner's JSON Schema, with errors that name the field and the rule."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput

# Files travel as bytes; in the schema they are strings with format "uri" (as in Replicate's schemas).
_TYPES = Draft202012Validator.TYPE_CHECKER.redefine(
    "string", lambda checker, value: isinstance(value, (str, FileData))
)
_Validator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)


class InputValidator:
    """A compiled input schema: ``validate`` returns the input with defaults filled in."""

    def __init__(self, schema: dict[str, Any]) -> None:
        Draft202012Validator.check_schema(schema)
        self._validator = _Validator(schema)
        self._defaults = {
            name: prop["default"]
            for name, prop in schema.get("properties", {}).items()
            if "default" in prop
        }

    def validate(self, input: dict[str, Any]) -> dict[str, Any]:
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(input))
        if error is not None:
            raise InvalidInput(_field_of(error), error.message) from None
        filled = {k: copy.deepcopy(v) for k, v in self._defaults.items() if k not in input}
        filled.update(input)
        return filled


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
