"""A Cog predictor's OpenAPI document, as ``cog build`` writes ``.cog/openapi_schema.json`` (Cog's Go
generator, ``pkg/schema/openapi_spec.go``), built from what Cog's own inspector found
(``cog._inspector.create_predictor``), and the self-contained JSON Schemas of its Input and Output that the
gateway validates against.

The inspector runs the predictor's module, so it sees what Cog's runtime sees; the Go generator parses the
source instead. The few places where the two cannot agree are noted where they are handled.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import os
from collections.abc import Callable
from enum import Enum
from typing import Any

import cog
from cog import _adt as adt
from cog.types import Secret

OPENAPI_VERSION = "3.0.2"
DRAFT7 = "http://json-schema.org/draft-07/schema#"
REF_PREFIX = "#/components/schemas/"
STATUSES = ["starting", "processing", "succeeded", "canceled", "failed"]

_NULLABLE = (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
_NO_DEFAULT = object()
_COMPOSITE_KEYS = ("allOf", "anyOf", "oneOf", "enum", "const")


def openapi_schema(info: adt.PredictorInfo) -> dict[str, Any]:
    """The OpenAPI 3.0.2 document Cog writes for ``info``'s predictor: its Input (with one enum component per
    input that has choices), its Output, and Cog's fixed request, response, status and error schemas."""
    input_schema, enums = _input_schema(info.inputs)
    # One dict, filled in Cog's order: a later key replaces an earlier one's value in place, as Go's
    # ordered map does (an input named "Status" loses its enum to the Status component, as in Cog).
    schemas: dict[str, Any] = {"Input": input_schema, "Output": _output_schema(info.output)}
    schemas.update(enums)
    schemas.update(_fixed_components())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Cog", "version": cog.__version__},
        "paths": _paths(),
        "components": {"schemas": schemas},
    }


def input_json_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's Input as a self-contained JSON Schema (draft 7): every ``$ref`` inlined, OpenAPI's
    ``nullable`` written as a ``null`` type, and unknown fields refused."""
    schema = _json_schema(doc, "Input")
    schema["additionalProperties"] = False
    return schema


def output_json_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's Output as a self-contained JSON Schema (draft 7)."""
    return _json_schema(doc, "Output")


def _title_case(name: str) -> str:
    """``segmented_image`` -> ``Segmented Image``, as Cog's ``TitleCase``: only each word's first letter
    changes (``str.title`` would also lower the rest, ``image_URL`` -> ``Image Url``)."""
    return " ".join(word[:1].upper() + word[1:] for word in name.split("_"))


# --- Input -----------------------------------------------------------------------------------------------


def _input_schema(inputs: dict[str, adt.InputField]) -> tuple[dict[str, Any], dict[str, Any]]:
    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required: list[str] = []
    for name, field in inputs.items():
        properties[name] = _input_property(field)
        if field.choices:
            enums[name] = _enum_schema(field)
        if _is_required(field):
            required.append(name)
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _input_property(field: adt.InputField) -> dict[str, Any]:
    prop: dict[str, Any] = {"x-order": field.order}
    if field.choices:
        # Cog names the enum component after the input as written, and gives the property neither title
        # nor type: both live on the component.
        prop["allOf"] = [{"$ref": REF_PREFIX + field.name}]
    else:
        prop["title"] = _title_case(field.name)
        prop.update(_field_type_schema(field.type))
    default = _default(field)
    if default is not _NO_DEFAULT:
        prop["default"] = default
    if _is_nullable(field):
        prop["nullable"] = True
    prop.update(_constraints(field))
    return prop


def _field_type_schema(ft: adt.FieldType) -> dict[str, Any]:
    schema = ft.json_type()
    if ft.union_variants is not None and ft.repetition is adt.Repetition.OPTIONAL:
        # Cog marks each member of a nullable union nullable too, not only the union.
        for variant in schema["anyOf"]:
            variant["nullable"] = True
    return schema


def _bound(value: float | None, field: adt.InputField) -> float | int | None:
    """The inspector gives ge/le as floats; an integer input's bound is written as the integer it is (so
    an error says "the maximum of 5", as Cog's own document does)."""
    if value is not None and field.type.primitive is adt.PrimitiveType.INTEGER and float(value).is_integer():
        return int(value)
    return value


def _constraints(field: adt.InputField) -> dict[str, Any]:
    found = {
        "description": field.description,
        "minimum": _bound(field.ge, field),
        "maximum": _bound(field.le, field),
        "minLength": field.min_length,
        "maxLength": field.max_length,
        "pattern": field.regex,
        "deprecated": True if field.deprecated else None,
    }
    return {key: value for key, value in found.items() if value is not None}


def _enum_schema(field: adt.InputField) -> dict[str, Any]:
    return {
        "title": field.name,
        "description": "An enumeration.",
        "enum": [_json_value(choice) for choice in (field.choices or [])],
        "type": field.type.primitive.json_type().get("type") or "string",
    }


def _is_nullable(field: adt.InputField) -> bool:
    return field.type.repetition in _NULLABLE


def _default(field: adt.InputField) -> Any:
    """The input's default as JSON, or ``_NO_DEFAULT``.

    The inspector keeps ``None`` both for "no default" and for ``default=None``, which Cog's generator tells
    apart. As in Cog, ``None`` on a field that is not nullable is no default (``seed: int =
    Input(default=None)`` is required); on a nullable field it is taken as ``default=None``, written ``null``.
    """
    value = field.default
    if isinstance(value, dataclasses.Field):
        value = _field_default(value)
    if value is None:
        return None if _is_nullable(field) else _NO_DEFAULT
    if value is _NO_DEFAULT:
        return value
    return _json_value(value)


def _field_default(value: dataclasses.Field[Any]) -> Any:
    if value.default_factory is not dataclasses.MISSING:
        return value.default_factory()
    if value.default is not dataclasses.MISSING:
        return value.default
    return _NO_DEFAULT


def _is_required(field: adt.InputField) -> bool:
    # Cog also requires a nullable union without a default; here its None is always taken as default=None.
    return _default(field) is _NO_DEFAULT and not _is_nullable(field)


def _json_value(value: Any) -> Any:
    """A normalized input value (a ``cog.Path``, a ``Secret``, an enum member) as the literal it came from."""
    if isinstance(value, Secret):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return str(value)  # a URLPath's str is its URL
    if isinstance(value, io.IOBase):
        return _file_url(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(item) for item in value]
    return value


def _file_url(value: io.IOBase) -> str:
    try:
        # A URLFile proxies attribute reads to the download, so read its URL without triggering one.
        return object.__getattribute__(value, "__url__")
    except AttributeError:
        raise ValueError("a File input's default must be an http(s) URL to be written into the schema "
                         "(a data: URI is read into memory by cog); use a Path input") from None


# --- Output ----------------------------------------------------------------------------------------------


def _output_schema(output: adt.OutputType) -> dict[str, Any]:
    if output.kind is adt.OutputKind.SINGLE and not isinstance(output.type, adt.PrimitiveType):
        # ``-> Any``: the inspector's placeholder type gives no schema; Cog writes an opaque object.
        return {"title": "Output", "type": "object"}
    schema = output.json_type()
    for name, prop in schema.get("properties", {}).items():
        prop["title"] = _title_case(name)
    return schema


# --- Cog's fixed parts -----------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF_PREFIX + name}


def _fixed_components() -> dict[str, Any]:
    return {
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {"id": {"title": "Id", "type": "string"}, "input": _ref("Input")},
        },
        "PredictionResponse": _response_schema(),
        "Status": {
            "title": "Status", "description": "An enumeration.", "enum": list(STATUSES), "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {"detail": {"title": "Detail", "type": "array", "items": _ref("ValidationError")}},
        },
        "ValidationError": _validation_error_schema(),
    }


def _response_schema() -> dict[str, Any]:
    def text(title: str, **extra: str) -> dict[str, str]:
        return {"title": title, "type": "string", **extra}

    return {
        "title": "PredictionResponse",
        "type": "object",
        "properties": {
            "input": _ref("Input"),
            "output": _ref("Output"),
            "id": text("Id"),
            "version": text("Version"),
            "created_at": text("Created At", format="date-time"),
            "started_at": text("Started At", format="date-time"),
            "completed_at": text("Completed At", format="date-time"),
            "status": text("Status"),
            "error": text("Error"),
            "logs": text("Logs"),
            "metrics": {"title": "Metrics", "type": "object"},
        },
    }


def _validation_error_schema() -> dict[str, Any]:
    return {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }


def _json_response(schema: dict[str, Any], description: str = "Successful Response") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _validation_response() -> dict[str, Any]:
    return _json_response(_ref("HTTPValidationError"), "Validation Error")


def _paths() -> dict[str, Any]:
    return {
        "/": {
            "get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _json_response({})}},
        },
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": _json_response({})},
            }
        },
        "/predictions": {
            "post": {
                "summary": "Predict",
                "description": "Run a single prediction on the model",
                "operationId": "predict_predictions_post",
                "requestBody": {"content": {"application/json": {"schema": _ref("PredictionRequest")}}},
                "responses": {
                    "200": _json_response(_ref("PredictionResponse")),
                    "422": _validation_response(),
                },
            }
        },
        "/predictions/{prediction_id}/cancel": {
            "post": {
                "summary": "Cancel",
                "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [{
                    "required": True,
                    "schema": {"title": "Prediction Id", "type": "string"},
                    "name": "prediction_id",
                    "in": "path",
                }],
                "responses": {"200": _json_response({}), "422": _validation_response()},
            }
        },
    }


# --- OpenAPI 3.0 -> JSON Schema draft 7 ------------------------------------------------------------------


def _json_schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    schemas = doc["components"]["schemas"]
    resolved = _inline_refs(copy.deepcopy(schemas[name]), schemas, (name,))
    return {"$schema": DRAFT7, **_nullable_to_null(resolved)}


def _map_subschemas(schema: Any, fn: Callable[[Any], Any]) -> Any:
    """``schema`` with ``fn`` applied to each subschema directly under it. Only keywords that hold schemas
    are walked, so a ``default`` or ``enum`` value that happens to look like a schema is left alone."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = fn(out[key])
    if isinstance(out.get("items"), list):
        out["items"] = [fn(s) for s in out["items"]]
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [fn(s) for s in out[key]]
    for key in ("properties", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: fn(s) for k, s in out[key].items()}
    return out


def _inline_refs(schema: Any, schemas: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        target = ref.removeprefix(REF_PREFIX)
        if not ref.startswith(REF_PREFIX) or target not in schemas:
            raise ValueError(f"schema reference {ref!r} does not name a component of the document")
        if target in seen:
            raise ValueError(f"schema reference {ref!r} is circular; it cannot be inlined")
        # Keywords beside a $ref are ignored by OpenAPI 3.0 and by draft 7 alike, so the target replaces it.
        return _inline_refs(copy.deepcopy(schemas[target]), schemas, (*seen, target))
    return _map_subschemas(schema, lambda sub: _inline_refs(sub, schemas, seen))


def _nullable_to_null(schema: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as draft 7 says it: ``null`` added to the type, or, where the type is
    given by a composition (choices' ``allOf``), the composition or ``null``."""
    out = _map_subschemas(schema, _nullable_to_null)
    if not isinstance(out, dict) or not out.pop("nullable", False):
        return out
    if "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types if "null" in types else [*types, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    composite = {key: out.pop(key) for key in _COMPOSITE_KEYS if key in out}
    if list(composite) == ["anyOf"]:
        # A nullable union's members are nullable too, so one of them already takes null.
        members = composite["anyOf"]
        out["anyOf"] = members if any(_takes_null(m) for m in members) else [*members, {"type": "null"}]
    elif composite:
        out["anyOf"] = [composite, {"type": "null"}]
    return out


def _takes_null(schema: Any) -> bool:
    types = schema.get("type") if isinstance(schema, dict) else None
    return types == "null" or (isinstance(types, list) and "null" in types)
