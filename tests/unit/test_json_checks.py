"""``check_json``: what JSON cannot carry, or no model takes, is refused where it enters, naming the
place and the rule."""

from __future__ import annotations

import pytest

from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput
from warmfleet.jsonvalues import MAX_DEPTH, MAX_INTEGER, check_json


def nested(levels: int):
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize("value, field, rule", [
    ({"delay_ms": float("nan")}, "input.delay_ms", "finite"),
    ({"x": [1, float("-inf")]}, "input.x[1]", "finite"),
    ({"seed": MAX_INTEGER + 1}, "input.seed", "within"),
    ({"seed": -MAX_INTEGER - 1}, "input.seed", "within"),
    ({"text": "a\ud800b"}, "input.text", "surrogate"),
    ({"m": {"\udfff": 1}}, "input.m (a key)", "surrogate"),
    ({"m": {1: "x"}}, "input.m", "not a string"),
    ({"deep": nested(MAX_DEPTH)}, "input.deep" + ".a" * (MAX_DEPTH - 1), "deeper"),
])
def test_a_value_json_cannot_carry_is_refused_naming_its_place(value, field, rule):
    with pytest.raises(InvalidInput) as err:
        check_json(value)
    assert err.value.field == field and rule in str(err.value)


def test_what_json_carries_passes_and_files_are_left_to_the_schema():
    check_json({"text": "héllo ☃ 🎉", "n": MAX_INTEGER, "f": -1.5e300, "b": True, "none": None,
                "list": [[1, 2], {"k": "v"}], "deep": nested(MAX_DEPTH - 1), "file": FileData(b"\x00")})
