"""Predictions to and from JSON for the store. Files are kept as base64 inside the JSON document."""

from __future__ import annotations

import base64
import dataclasses
import orjson
from typing import Any

from warmfleet.domain import FileData, Metrics, Output, Prediction, Status

_FILE_TAG = "$file"
_FIELDS = [f.name for f in dataclasses.fields(Prediction)]


# A client's own keys that start with "$" get one more "$", so that "$file" can only be ours.


def _escape(key: str) -> str:
    return "$" + key if key.startswith("$") else key


def _unescape(key: str) -> str:
    return key[1:] if key.startswith("$") else key


def _encode(value: Any) -> Any:
    if isinstance(value, FileData):
        fields = dataclasses.asdict(value)
        fields["data"] = base64.b64encode(value.data).decode()
        return {_FILE_TAG: fields}
    if isinstance(value, dict):
        return {_escape(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _FILE_TAG in value:
            fields = dict(value[_FILE_TAG])
            fields["data"] = base64.b64decode(fields["data"])
            return FileData(**fields)
        return {_unescape(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def prediction_to_json(p: Prediction) -> str:
    doc = {f: getattr(p, f) for f in _FIELDS}
    doc["status"] = p.status.value
    doc["input"] = _encode(p.input)
    doc["metrics"] = vars(p.metrics)
    doc["output"] = None if p.output is None else {"value": _encode(p.output.value),
                                                   "files": _encode(p.output.files)}
    return orjson.dumps(doc).decode()


def prediction_from_json(text: str) -> Prediction:
    doc = orjson.loads(text)
    doc["status"] = Status(doc["status"])
    doc["input"] = _decode(doc["input"])
    doc["metrics"] = Metrics(**doc["metrics"])
    out = doc["output"]
    doc["output"] = None if out is None else Output(value=_decode(out["value"]), files=_decode(out["files"]))
    return Prediction(**doc)


def value_to_json(value: Any) -> str:
    """A JSON value that may hold files (a prediction's input as routed), for the store."""
    return orjson.dumps(_encode(value)).decode()


def value_from_json(text: str) -> Any:
    return _decode(orjson.loads(text))
