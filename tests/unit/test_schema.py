"""Input validation against a runner's JSON Schema: defaults, errors that name the field, files."""

from __future__ import annotations

import jsonschema
import pytest

from runners.echo import EchoRunner
from runners.schema import InputValidator
from warmfleet.domain import FileData, RouteSpec
from warmfleet.errors import InvalidInput

IMAGE = FileData(b"\x89PNG...", "image/png", "cat.png")


@pytest.fixture
def echo() -> InputValidator:
    return InputValidator(EchoRunner.input_schema(RouteSpec("acme/echo", "echo")))


def _field(validator: InputValidator, input: dict) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        validator.validate(input)
    return err.value


def test_defaults_are_filled_and_given_values_kept(echo):
    assert echo.validate({"text": "hi"}) == {"text": "hi", "delay_ms": 0, "chunks": 1}
    assert echo.validate({"text": "hi", "chunks": 3}) == {"text": "hi", "delay_ms": 0, "chunks": 3}


def test_validate_returns_a_new_dict_and_leaves_the_input_alone(echo):
    given = {"text": "hi"}
    filled = echo.validate(given)
    assert given == {"text": "hi"} and filled is not given


def test_a_mutable_default_is_copied_for_each_input():
    v = InputValidator({"type": "object", "properties": {"stop": {"type": "array", "default": ["\n"]}}})
    first = v.validate({})
    first["stop"].append("END")
    assert v.validate({}) == {"stop": ["\n"]}


@pytest.mark.parametrize("input, field, words", [
    ({"text": "hi", "delay_ms": -1}, "input.delay_ms", "minimum"),
    ({"text": "hi", "delay_ms": 60_001}, "input.delay_ms", "maximum"),
    ({"text": "hi", "delay_ms": "soon"}, "input.delay_ms", "integer"),
    ({"text": "hi", "chunks": 0}, "input.chunks", "minimum"),
    ({"text": 5}, "input.text", "string"),
    ({}, "input.text", "required"),
    ({"delay_ms": 5}, "input.text", "required"),
    ({"text": "hi", "colour": "red"}, "input.colour", "colour"),
])
def test_an_error_names_the_field_and_the_rule(echo, input, field, words):
    err = _field(echo, input)
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert words in err.rule or words in str(err)


def test_an_error_inside_an_array_names_the_index():
    v = InputValidator({"type": "object", "properties": {
        "units": {"type": "array", "items": {"type": "object", "properties": {"scale": {"type": "number"}}}},
    }})
    assert _field(v, {"units": [{"scale": 1.0}, {"scale": "big"}]}).field == "input.units[1].scale"


def test_a_file_is_accepted_for_a_uri_string_and_passed_through_as_bytes():
    v = InputValidator({"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "uri"}, "prompt": {"type": "string", "default": ""},
    }})
    filled = v.validate({"image": IMAGE})
    assert filled == {"image": IMAGE, "prompt": ""}
    assert filled["image"] is IMAGE


def test_a_file_for_a_field_that_takes_no_file_is_refused_naming_it(echo):
    err = _field(echo, {"text": IMAGE})
    assert err.field == "input.text"
    assert "file" in err.rule


def test_the_rest_of_the_input_is_still_checked_when_a_file_is_given():
    v = InputValidator({"type": "object", "additionalProperties": False, "properties": {
        "image": {"type": "string", "format": "uri"}, "strength": {"type": "number", "maximum": 1},
    }})
    assert _field(v, {"image": IMAGE, "strength": 2}).field == "input.strength"
    assert _field(v, {"image": IMAGE, "extra": 1}).field == "input.extra"


def test_files_in_an_array_of_uri_strings_are_accepted():
    v = InputValidator({"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "uri"}},
    }})
    assert v.validate({"images": [IMAGE, IMAGE]}) == {"images": [IMAGE, IMAGE]}


def test_an_invalid_schema_is_refused_when_compiled():
    with pytest.raises(jsonschema.exceptions.SchemaError):
        InputValidator({"type": "object", "properties": {"x": {"type": "strnig"}}})


@pytest.mark.parametrize("seed, low, high", [
    ({"type": "integer", "minimum": 0, "maximum": 9}, 0, 9),
    ({"type": "integer"}, 0, 2**32 - 1),  # a Cog model's Optional[int] seed: no bounds in its schema
    ({"type": ["integer", "null"], "minimum": -5, "maximum": 3}, 0, 3),  # never a negative draw
])
def test_a_seed_is_drawn_within_the_schemas_bounds_when_none_is_given(seed, low, high):
    validator = InputValidator({"type": "object", "properties": {"seed": seed, "x": {"type": "string"}}})
    filled = validator.validate({"x": "a"})
    drawn = validator.fix_seed(filled)
    assert drawn is not None and low <= drawn <= high and filled["seed"] == drawn
    given = validator.validate({"x": "a", "seed": 2})
    assert validator.fix_seed(given) is None and given["seed"] == 2


def test_no_seed_is_drawn_for_a_schema_without_an_integer_seed():
    for props in ({"x": {"type": "string"}}, {"seed": {"type": "string"}}):
        validator = InputValidator({"type": "object", "properties": props})
        filled = validator.validate({})
        assert validator.fix_seed(filled) is None and "seed" not in filled
