"""A Cog predictor's OpenAPI document, as Cog writes it at ``cog build``: one-behaviour fixture predictors are
inspected by the real ``runners.cog.inspect`` in a subprocess and the document checked field by field
against Cog's rules (``docs/python.md``, ``pkg/schema/openapi_spec.go``); then the Input's JSON Schema is
checked by the validators the gateway uses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cog
import pytest
from jsonschema import Draft7Validator

from runners.cog.schema import input_json_schema, output_json_schema
from runners.schema import InputValidator
from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]
INSPECT_TIMEOUT_S = 60
HEADER = """\
from typing import Iterator, Optional

import pydantic
from cog import BaseModel, BaseRunner, ConcatenateIterator, Input, Path, Secret
"""


def predictor(params: str, returns: str = "str", prelude: str = "") -> str:
    """The source of a predict.py whose ``Predictor.run`` takes ``params`` and returns ``returns``."""
    return (
        HEADER + textwrap.dedent(prelude)
        + f"\n\nclass Predictor(BaseRunner):\n    def run(self, {params}) -> {returns}:\n"
        + "        raise NotImplementedError\n"
    )


def run_inspect(bundle: Path, ref: str = "predict.py:Predictor") -> tuple[int, dict[str, Any], str]:
    """Exit status, the one JSON line of stdout, and stderr of ``python -m runners.cog.inspect``."""
    proc = subprocess.run(
        [sys.executable, "-m", "runners.cog.inspect", str(bundle), ref], check=False,
        cwd=REPO, capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r}; stderr: {proc.stderr}"
    return proc.returncode, json.loads(lines[0]), proc.stderr


def write_bundle(root: Path, source: str, file: str = "predict.py") -> Path:
    (root / file).parent.mkdir(parents=True, exist_ok=True)
    (root / file).write_text(source)
    return root


@pytest.fixture(scope="module")
def openapi(tmp_path_factory) -> Callable[[str], dict[str, Any]]:
    """Inspects a predictor source (once per module for each source) and returns its OpenAPI document."""
    cache: dict[str, dict[str, Any]] = {}

    def inspect(source: str) -> dict[str, Any]:
        if source not in cache:
            status, answer, stderr = run_inspect(write_bundle(tmp_path_factory.mktemp("bundle"), source))
            assert status == 0, f"{answer}\n{stderr}"
            cache[source] = answer["openapi"]
        return cache[source]

    return inspect


def schemas(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["components"]["schemas"]


def props(doc: dict[str, Any]) -> dict[str, Any]:
    return schemas(doc)["Input"]["properties"]


STRINGS = predictor(
    'bare: str, text: str = Input(description="The text"), greeting: str = Input(default="hello"), '
    'image_URL: str = "https://example.com/a.png"'
)
NONE_DEFAULT = predictor("seed: int = Input(default=None), label: Optional[str] = Input(default=None)")
BOUNDED = predictor(
    "count: int = Input(default=5, ge=1, le=10), temperature: float = Input(default=0.5, ge=0.0, le=1.0)"
)
CHOICES_STR = predictor('color: str = Input(choices=["red", "green"], default="red", description="Hue")')
CHOICES_INT = predictor("size: int = Input(choices=[256, 512])")
REGEX = predictor('code: str = Input(regex=r"^[a-z]+$")')
LENGTHS = predictor("name: str = Input(min_length=2, max_length=5)")
BOOL = predictor("flag: bool = False")
PATH_INPUT = predictor('image: Path = Input(description="An image")')
SECRET = predictor('api_key: Secret = Input(description="The key")')
OPTIONAL = predictor("prompt: Optional[str] = Input(default=None)")
UNION = predictor("value: str | float | None = Input(default=None)")
LIST_STR = predictor("words: list[str]")
LIST_PATH = predictor("files: list[Path]")
DEPRECATED = predictor('old: str = Input(default="x", deprecated=True)')


# --- the document ----------------------------------------------------------------------------------------


def test_the_document_is_openapi_3_0_2_titled_cog_with_cogs_version(openapi):
    doc = openapi(STRINGS)
    assert doc["openapi"] == "3.0.2"
    assert doc["info"] == {"title": "Cog", "version": cog.__version__}


def test_the_paths_are_cogs_root_health_check_predictions_and_cancel(openapi):
    paths = openapi(STRINGS)["paths"]
    assert list(paths) == ["/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"]
    post = paths["/predictions"]["post"]
    assert post["operationId"] == "predict_predictions_post"
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictionRequest"}
    assert post["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/HTTPValidationError"}
    cancel = paths["/predictions/{prediction_id}/cancel"]["post"]
    assert cancel["parameters"][0]["name"] == "prediction_id" and cancel["parameters"][0]["in"] == "path"


def test_request_and_response_point_at_input_and_output_and_status_lists_cogs_states(openapi):
    found = schemas(openapi(STRINGS))
    assert found["PredictionRequest"]["properties"]["input"] == {"$ref": "#/components/schemas/Input"}
    response = found["PredictionResponse"]["properties"]
    assert response["output"] == {"$ref": "#/components/schemas/Output"}
    assert response["created_at"] == {"title": "Created At", "type": "string", "format": "date-time"}
    assert found["Status"]["enum"] == ["starting", "processing", "succeeded", "canceled", "failed"]
    assert found["ValidationError"]["required"] == ["loc", "msg", "type"]


# --- inputs ----------------------------------------------------------------------------------------------


def test_a_string_input_has_a_title_case_title_its_order_and_its_description(openapi):
    found = props(openapi(STRINGS))
    assert found["text"] == {"x-order": 1, "title": "Text", "type": "string", "description": "The text"}
    assert [p["x-order"] for p in found.values()] == [0, 1, 2, 3]


def test_title_case_only_raises_each_words_first_letter(openapi):
    assert props(openapi(STRINGS))["image_URL"]["title"] == "Image URL"  # str.title() would say "Image Url"


def test_defaults_from_input_and_from_plain_python_are_written_and_make_the_input_optional(openapi):
    doc = openapi(STRINGS)
    assert props(doc)["greeting"]["default"] == "hello"
    assert props(doc)["image_URL"]["default"] == "https://example.com/a.png"
    assert "default" not in props(doc)["text"]
    assert schemas(doc)["Input"]["required"] == ["bare", "text"]


def test_a_none_default_on_a_non_optional_type_is_no_default_but_on_optional_it_is_null(openapi):
    doc = openapi(NONE_DEFAULT)
    assert "default" not in props(doc)["seed"]
    assert props(doc)["label"]["default"] is None and "default" in props(doc)["label"]
    assert schemas(doc)["Input"]["required"] == ["seed"]


def test_ge_and_le_become_minimum_and_maximum(openapi):
    found = props(openapi(BOUNDED))
    count = found["count"]
    assert (count["type"], count["minimum"], count["maximum"]) == ("integer", 1, 10)
    assert found["count"]["default"] == 5 and isinstance(found["count"]["default"], int)
    assert (found["temperature"]["type"], found["temperature"]["minimum"]) == ("number", 0.0)
    assert found["temperature"]["maximum"] == 1.0 and found["temperature"]["default"] == 0.5


def test_string_choices_refer_to_an_enum_component_named_after_the_input(openapi):
    doc = openapi(CHOICES_STR)
    assert props(doc)["color"] == {
        "x-order": 0, "allOf": [{"$ref": "#/components/schemas/color"}],
        "default": "red", "description": "Hue",
    }
    assert schemas(doc)["color"] == {
        "title": "color", "description": "An enumeration.", "enum": ["red", "green"], "type": "string",
    }
    assert "required" not in schemas(doc)["Input"]


def test_integer_choices_make_an_integer_enum(openapi):
    doc = openapi(CHOICES_INT)
    assert schemas(doc)["size"]["enum"] == [256, 512] and schemas(doc)["size"]["type"] == "integer"
    assert schemas(doc)["Input"]["required"] == ["size"]


def test_regex_becomes_pattern(openapi):
    assert props(openapi(REGEX))["code"]["pattern"] == "^[a-z]+$"


def test_min_and_max_length_become_min_length_and_max_length(openapi):
    found = props(openapi(LENGTHS))["name"]
    assert (found["minLength"], found["maxLength"]) == (2, 5)


def test_a_bool_is_a_boolean_with_its_default(openapi):
    found = props(openapi(BOOL))["flag"]
    assert found["type"] == "boolean" and found["default"] is False


def test_a_path_input_is_a_uri_string(openapi):
    doc = openapi(PATH_INPUT)
    assert props(doc)["image"] == {
        "x-order": 0, "title": "Image", "type": "string", "format": "uri", "description": "An image",
    }
    assert schemas(doc)["Input"]["required"] == ["image"]


def test_a_secret_is_a_write_only_password_marked_as_a_cog_secret(openapi):
    found = props(openapi(SECRET))["api_key"]
    assert (found["type"], found["format"], found["writeOnly"], found["x-cog-secret"]) == (
        "string", "password", True, True)
    assert found["title"] == "Api Key"


def test_an_optional_input_is_nullable_and_not_required(openapi):
    doc = openapi(OPTIONAL)
    assert props(doc)["prompt"]["type"] == "string" and props(doc)["prompt"]["nullable"] is True
    assert "required" not in schemas(doc)["Input"]


def test_a_nullable_union_marks_every_member_nullable(openapi):
    found = props(openapi(UNION))["value"]
    assert found["anyOf"] == [{"type": "string", "nullable": True}, {"type": "number", "nullable": True}]
    assert found["nullable"] is True


def test_lists_are_arrays_of_their_items(openapi):
    assert props(openapi(LIST_STR))["words"]["type"] == "array"
    assert props(openapi(LIST_STR))["words"]["items"] == {"type": "string"}
    assert props(openapi(LIST_PATH))["files"]["items"] == {"type": "string", "format": "uri"}
    assert schemas(openapi(LIST_PATH))["Input"]["required"] == ["files"]


def test_a_deprecated_input_says_so(openapi):
    assert props(openapi(DEPRECATED))["old"]["deprecated"] is True
    assert "deprecated" not in props(openapi(STRINGS))["text"]


# --- outputs ---------------------------------------------------------------------------------------------


def output_of(openapi, returns: str, prelude: str = "") -> dict[str, Any]:
    return schemas(openapi(predictor("", returns, prelude)))["Output"]


def test_a_str_output(openapi):
    assert output_of(openapi, "str") == {"title": "Output", "type": "string"}


def test_a_path_output_is_a_uri_string(openapi):
    assert output_of(openapi, "Path") == {"title": "Output", "type": "string", "format": "uri"}


def test_a_list_of_paths_is_an_array_that_is_not_an_iterator(openapi):
    found = output_of(openapi, "list[Path]")
    assert found == {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


def test_an_iterator_is_an_array_marked_iterator(openapi):
    found = output_of(openapi, "Iterator[str]")
    assert (found["type"], found["items"]) == ("array", {"type": "string"})
    assert found["x-cog-array-type"] == "iterator"
    assert "x-cog-array-display" not in found


def test_a_concatenate_iterator_is_also_displayed_concatenated(openapi):
    found = output_of(openapi, "ConcatenateIterator[str]")
    assert (found["x-cog-array-type"], found["x-cog-array-display"]) == ("iterator", "concatenate")


COG_MODEL = """
class Result(BaseModel):
    text: str
    score_value: float
    image: Optional[Path]
"""
PYDANTIC_MODEL = """
class Result(pydantic.BaseModel):
    name: str
    tags: list[str]
    note: Optional[str] = None
"""


def test_a_cog_base_model_is_an_object_titled_output_with_its_required_fields(openapi):
    found = output_of(openapi, "Result", COG_MODEL)
    assert (found["title"], found["type"], found["required"]) == ("Output", "object", ["text", "score_value"])
    assert found["properties"]["score_value"] == {"type": "number", "title": "Score Value"}
    image = found["properties"]["image"]
    assert image == {"type": "string", "format": "uri", "nullable": True, "title": "Image"}


def test_a_pydantic_base_model_is_an_object_too(openapi):
    found = output_of(openapi, "Result", PYDANTIC_MODEL)
    assert (found["title"], found["type"], found["required"]) == ("Output", "object", ["name", "tags"])
    assert found["properties"]["tags"] == {"type": "array", "items": {"type": "string"}, "title": "Tags"}
    assert found["properties"]["note"]["nullable"] is True


# --- the inspect process ---------------------------------------------------------------------------------


def test_a_predictor_in_a_subfolder_is_imported_as_a_package_module(tmp_path):
    write_bundle(tmp_path, "LABEL = 'from a helper'\n", "src/helpers.py")
    source = predictor('label: str = Input(default=LABEL)', prelude="from src.helpers import LABEL\n")
    bundle = write_bundle(tmp_path, source, "src/predict.py")
    status, answer, _ = run_inspect(bundle, "src/predict.py:Predictor")
    assert status == 0, answer
    assert props(answer["openapi"])["label"]["default"] == "from a helper"


def test_prints_while_importing_go_to_stderr_not_into_the_json_line(tmp_path):
    # Python's print, and a write to fd 1 as a C library would make it.
    noisy = "print('noise on import')\nimport os\nos.write(1, b'raw noise\\n')\n"
    source = predictor("x: str", prelude=noisy)
    status, answer, stderr = run_inspect(write_bundle(tmp_path, source))
    assert status == 0 and "openapi" in answer
    assert "noise on import" in stderr and "raw noise" in stderr


def test_an_import_error_exits_1_with_a_traceback_naming_the_missing_module(tmp_path):
    source = predictor("x: str", prelude="import warmfleet_no_such_module\n")
    status, answer, _ = run_inspect(write_bundle(tmp_path, source))
    assert status == 1
    assert answer["error"].startswith("ModuleNotFoundError") and "warmfleet_no_such_module" in answer["error"]
    assert "warmfleet_no_such_module" in answer["traceback"] and "Traceback" in answer["traceback"]


def test_a_file_without_the_named_class_says_which_it_has(tmp_path):
    source = predictor("x: str").replace("class Predictor", "class Runner")
    status, answer, _ = run_inspect(write_bundle(tmp_path, source))
    assert status == 1
    assert "no class or function named 'Predictor'" in answer["error"] and "Runner" in answer["error"]


def test_a_ref_that_is_not_file_colon_name_is_refused(tmp_path):
    status, answer, _ = run_inspect(write_bundle(tmp_path, predictor("x: str")), "predict.py")
    assert status == 1 and 'FILE.py:NAME' in answer["error"]


# --- JSON Schema for the gateway -------------------------------------------------------------------------

VALIDATED = predictor(
    "image: Path, count: int = Input(default=1, ge=1, le=10), "
    'color: str = Input(choices=["red", "green"], default="red"), '
    'code: str = Input(default="abc", regex=r"^[a-z]+$"), '
    'tag: Optional[str] = Input(default=None, choices=["a", "b"]), '
    "maybe: Optional[int] = Input(default=None), value: str | float | None = Input(default=None), "
    "api_key: Secret = Input(default='k')"
)
URL = "https://example.com/cat.png"


@pytest.fixture
def input_schema(openapi) -> dict[str, Any]:
    return input_json_schema(openapi(VALIDATED))


def errors(schema: dict[str, Any], instance: dict[str, Any]) -> set[str]:
    return {error.validator for error in Draft7Validator(schema).iter_errors(instance)}


def test_the_input_schema_is_self_contained_draft_7(input_schema):
    Draft7Validator.check_schema(input_schema)
    text = json.dumps(input_schema)
    assert '"$ref"' not in text and '"components"' not in text and '"nullable"' not in text
    assert input_schema["additionalProperties"] is False
    assert input_schema["properties"]["image"]["format"] == "uri"


@pytest.mark.parametrize("instance", [
    {"image": URL},
    {"image": URL, "count": 10, "color": "green", "code": "xyz", "tag": "b", "maybe": 3, "value": "s"},
    {"image": URL, "tag": None, "maybe": None, "value": None},
    {"image": URL, "value": 1.5},
])
def test_valid_inputs_pass(input_schema, instance):
    assert errors(input_schema, instance) == set()


@pytest.mark.parametrize("instance, rule", [
    ({"image": URL, "count": 11}, "maximum"),
    ({"image": URL, "count": 0}, "minimum"),
    ({"image": URL, "color": "blue"}, "enum"),
    ({"image": URL, "code": "ABC"}, "pattern"),
    ({"image": URL, "count": "3"}, "type"),
    ({"image": URL, "extra": 1}, "additionalProperties"),
    ({"count": 1}, "required"),
])
def test_inputs_breaking_a_rule_are_refused_by_that_rule(input_schema, instance, rule):
    assert rule in errors(input_schema, instance)


@pytest.mark.parametrize("instance", [{"image": URL, "tag": "c"}, {"image": URL, "value": [1]}])
def test_nullable_choices_and_unions_still_refuse_other_values(input_schema, instance):
    assert errors(input_schema, instance)


def test_the_gateways_validator_compiles_it_fills_defaults_and_names_the_field(input_schema):
    validator = InputValidator(input_schema)
    filled = validator.validate({"image": FileData(b"png", "image/png", "cat.png")})
    assert (filled["count"], filled["color"], filled["code"], filled["api_key"]) == (1, "red", "abc", "k")
    with pytest.raises(InvalidInput) as err:
        validator.validate({"image": URL, "count": 11})
    assert err.value.field == "input.count"


def test_the_output_schema_turns_nullable_fields_into_null_types(openapi):
    schema = output_json_schema(openapi(predictor("", "Result", COG_MODEL)))
    Draft7Validator.check_schema(schema)
    assert schema["properties"]["image"]["type"] == ["string", "null"]
    assert errors(schema, {"text": "a", "score_value": 1.0, "image": None}) == set()
    assert "required" in errors(schema, {"score_value": 1.0, "image": None})
