"""Replicate's HTTP API JSON <-> the core's domain types: the REST edge's only translation layer.

Pure functions, no I/O and no web framework: request bodies and headers become the core services'
arguments (``CreateRequest``, ``Scale``...), domain objects (``Prediction``, ``CatalogEntry``,
``Deployment``, ``NodeInfo``) become Replicate's JSON objects (prediction, model, version, deployment,
hardware, pages). ``base`` is the gateway's URL as the client reached it, for the links inside those objects;
``sign`` writes the links that clients follow (``gateway.signing``: signed, so that they open without the
token; ``unsigned`` by default).

JSON values read here as they read over gRPC, where they travel as protobuf ``Value``s (``as_api_json``):
numbers are doubles, so an integral one is an int, and a NaN or an infinity is refused, naming its place.

Where Replicate's shape has a field warmfleet has no data for, it is null (a version's ``created_at``,
a model's ``github_url``) or the constant that holds here (``visibility`` "public", ``source`` "api").
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.catalog import CatalogEntry
from gateway.deployments import AUTOSCALING_FIELDS, Deployment, Scale
from gateway.predictions import MAX_WAIT_S, CreateRequest
from gateway.signing import Sign, unsigned
from warmfleet.domain import FileData, Metrics, NodeInfo, Prediction
from warmfleet.errors import InvalidInput
from warmfleet.jsonvalues import files_as_data_urls

# Body fields a create passes on to the CreateRequest fields of the same name.
PASSED_CREATE_FIELDS = ("webhook", "webhook_events_filter")
# A metric's type as the API shows it (float seconds, whole counts), in the order it has always shown them;
# its JSON name is the field's without the unit suffix (``predict_time_s`` -> ``predict_time``).
METRIC_TYPES = {
    "predict_time_s": float, "total_time_s": float, "queue_time_s": float, "input_token_count": int,
    "output_token_count": int, "time_to_first_token_s": float, "tokens_per_second": float,
    "finish_reason": str, "image_count": int, "batch_size": int, "boot_time_s": float,
}
# What a string field of the wrong type has always been told (the words of protobuf's Python runtime, which
# these fields once passed through).
WRONG_TYPE = "has the wrong type: bad argument type for built-in operation"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_NANOS = 10**9
_EPOCH = datetime(1970, 1, 1)


def is_whole_number(text: str) -> bool:
    """Whether ``text`` is ASCII digits only (a query or header value): ``str.isdigit`` is true of "²"
    and other digits that ``int`` refuses."""
    return text.isascii() and text.isdigit()


# Headers


def prefer_wait_s(header: str | None) -> float:
    """Seconds to wait from ``Prefer: wait`` (60) or ``Prefer: wait=N`` (1 to 60); 0 without it.
    Other preferences in the header (RFC 7240: comma-separated, ``;`` parameters) are left alone."""
    for preference in (header or "").split(","):
        name, has_value, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not has_value:
            return float(MAX_WAIT_S)
        value = value.strip().strip('"')
        if not is_whole_number(value) or not 1 <= int(value) <= MAX_WAIT_S:
            raise InvalidInput("Prefer", f"wait={value} is not whole seconds from 1 to {MAX_WAIT_S:g}")
        return float(value)
    return 0.0


def cancel_after_s(header: str | None) -> float:
    """Seconds from ``Cancel-After``: a duration ("30s", "5m", "1h30m", "500ms") or bare seconds ("90");
    0 without the header. The prediction is aborted if it has not started by then."""
    if header is None:
        return 0.0
    text = header.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = list(_DURATION_PART.finditer(text))
        if not parts or "".join(p.group(0) for p in parts) != text:
            raise InvalidInput("Cancel-After", f"{header!r} is not a duration such as 30s, 5m, 1h30m or 90") from None
        seconds = sum(float(p.group(1)) * _DURATION_UNIT_S[p.group(2)] for p in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidInput("Cancel-After", f"{header!r} must be a positive duration")
    return seconds


# JSON values


def as_api_json(value: Any, path: str = "value") -> Any:
    """``value`` as it reads after crossing the API as JSON (a protobuf ``Value`` over gRPC): numbers are
    doubles, so an integral one comes back an int (and an int past 2**53 loses its low digits); a tuple
    is a list; a file (``FileData``) stays where it is. ValueError names the place (``path``) of what
    JSON cannot carry: a NaN or an infinity, a number too large for a double, text that is not UTF-8."""
    if value is None or isinstance(value, (bool, FileData)):
        return value
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as err:
            raise ValueError(f"{path}: is not UTF-8 text ({err.reason})") from None
        return value
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError as err:
            raise ValueError(f"{path}: {err}") from None
        if number.is_integer():
            return int(number)
        if not math.isfinite(number):
            raise ValueError(f"{path}: {number} is not a JSON number; numbers must be finite")
        return number
    if isinstance(value, dict):
        return {key: as_api_json(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_api_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{path}: {type(value).__name__} is not JSON")


def json_input(values: dict[str, Any]) -> dict[str, Any]:
    """A create's input as the core takes it (``as_api_json``); InvalidInput names the field it refuses."""
    try:
        return as_api_json(values, "input")
    except ValueError as err:
        field, _, rule = str(err).partition(": ")
        raise InvalidInput(field, rule) from None


# Create


def input_of(body: Any) -> dict[str, Any]:
    """The ``input`` object of a create body; 422 naming what is missing or not an object."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object such as {\"input\": {...}}")
    value = body.get("input")
    if not isinstance(value, dict):
        raise InvalidInput("input", "is required: a JSON object of the model's inputs")
    return value


def target_of(body: dict[str, Any]) -> dict[str, str]:
    """``POST /v1/predictions`` names its target in ``version``: a version id, "owner/name" (the model's
    latest) or "owner/name:version"."""
    version = body.get("version")
    if not isinstance(version, str) or not version:
        raise InvalidInput("version", "is required: a version id, \"owner/name\" or \"owner/name:version\"")
    model, colon, version_id = version.partition(":")
    if colon:
        return {"model": model, "version": version_id}
    return {"model": version} if "/" in version else {"version": version}


def mentions_url(value: Any) -> bool:
    """Whether any string in ``value`` could name a file (a data: or http(s): URL): only such an input
    needs its version's schema to resolve its files."""
    if isinstance(value, str):
        return value[:5].lower() == "data:" or value[:7].lower() == "http://" or value[:8].lower() == "https://"
    if isinstance(value, dict):
        return any(mentions_url(v) for v in value.values())
    if isinstance(value, list):
        return any(mentions_url(v) for v in value)
    return False


def create_request(body: dict[str, Any], input: dict[str, Any], *, wait_s: float, deadline_s: float,
                   model: str = "", version: str = "", deployment: str = "") -> CreateRequest:
    """The core's create call: the passed-on body fields, ``input`` (files in it as ``FileData``) in the
    generic JSON form, the target, the wait and the deadline."""
    req = CreateRequest(input={}, model=model, version=version, deployment=deployment, wait_s=wait_s,
                        deadline_s=deadline_s)
    if body.get("webhook") is not None:
        req.webhook = _text(body["webhook"], "webhook")
    events = body.get("webhook_events_filter")
    if events is not None:
        if not isinstance(events, list):
            raise InvalidInput("webhook_events_filter",
                               f"has the wrong type: expected a list, got {type(events).__name__}")
        req.webhook_events_filter = [_text(e, "webhook_events_filter") for e in events]
    req.input = json_input(input)
    return req


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(field, WRONG_TYPE)
    try:
        value.encode()
    except UnicodeEncodeError as err:
        raise InvalidInput(field, f"has the wrong type: {err}") from None
    return value


# Predictions


def rfc3339(t: float | None) -> str | None:
    """Seconds since the epoch as RFC 3339 in UTC, to the nanosecond, with 0, 3, 6 or 9 fractional digits as
    protobuf's Timestamp writes it ("2024-05-01T12:00:00.123Z"); None for None."""
    if t is None:
        return None
    seconds, nanos = divmod(int(t * 1e9), _NANOS)
    text = (_EPOCH + timedelta(seconds=seconds)).isoformat()
    if nanos == 0:
        return text + "Z"
    if nanos % 10**6 == 0:
        return f"{text}.{nanos // 10**6:03d}Z"
    if nanos % 10**3 == 0:
        return f"{text}.{nanos // 10**3:06d}Z"
    return f"{text}.{nanos:09d}Z"


def epoch_seconds(t: float) -> int:
    """The whole seconds of a time (as ``rfc3339`` counts them)."""
    return int(t * 1e9) // _NANOS


def prediction_urls(base: str, prediction_id: str, owner: str = "", sign: Sign = unsigned) -> dict[str, str]:
    """A prediction's ``urls``. ``get`` and ``stream`` are written by ``sign`` for ``owner`` (an account
    id); ``cancel`` changes the prediction, so it stays a URL for the token only."""
    get = f"/v1/predictions/{prediction_id}"
    return {"get": base + sign(get, owner), "cancel": f"{base}{get}/cancel",
            "stream": base + sign(f"{get}/stream", owner)}


def output_file_url(base: str, prediction_id: str, index: int, owner: str = "", sign: Sign = unsigned) -> str:
    return base + sign(f"/v1/predictions/{prediction_id}/output/{index}", owner)


def prediction_json(pred: Prediction, base: str, sign: Sign = unsigned) -> dict[str, Any]:
    """A prediction as Replicate's prediction object: what GET answers, and a webhook's body; its links
    written by ``sign`` for the prediction's owner."""
    out: dict[str, Any] = {
        "id": pred.id, "model": pred.model, "version": pred.version, "input": files_as_data_urls(pred.input),
        "output": output_json(pred, base, sign), "logs": "\n".join(pred.logs), "error": pred.error or None,
        "status": pred.status.value, "created_at": rfc3339(pred.created_at),
        "started_at": rfc3339(pred.started_at), "completed_at": rfc3339(pred.completed_at),
        "urls": prediction_urls(base, pred.id, pred.owner, sign), "metrics": metrics_json(pred.metrics),
        "data_removed": pred.data_removed, "source": "api",
    }
    if pred.deployment:
        out["deployment"] = pred.deployment
    for name in PASSED_CREATE_FIELDS:
        value = getattr(pred, name)
        if value:
            out[name] = list(value) if not isinstance(value, str) else value
    return out


domain_prediction_json = prediction_json  # the name the webhook sender is given it by (gateway.server)


def output_json(pred: Prediction, base: str, sign: Sign = unsigned) -> Any:
    """The output as Replicate gives it: the JSON value; for file outputs (images) the list of their URLs
    under the gateway; with both, ``{"value": ..., "files": [...]}``; null before there is one."""
    if pred.output is None:
        return None
    value = as_api_json(pred.output.value)
    urls = [output_file_url(base, pred.id, i, pred.owner, sign) for i in range(len(pred.output.files))]
    if not urls:
        return value
    return urls if value is None else {"value": value, "files": urls}


def metrics_json(metrics: Metrics) -> dict[str, Any]:
    """Replicate's metric names (``predict_time_s`` -> ``predict_time``), those that apply; a model's own
    figures (``custom``) beside ours, as Replicate shows them."""
    named = {}
    for name, kind in METRIC_TYPES.items():
        value = getattr(metrics, name)
        if value is not None and value != "":
            named[name.removesuffix("_s")] = kind(value)
    return {**{name: float(value) for name, value in metrics.custom.items()}, **named}


def file_name(f: FileData) -> str | None:
    """A file's name when it is safe to put in a header as it is."""
    return f.name if _SAFE_FILE_NAME.match(f.name) else None


def page(results: list[Any], next_url: str | None = None) -> dict[str, Any]:
    """Replicate's cursor page. Pages only go forward here: ``previous`` is null."""
    return {"next": next_url, "previous": None, "results": results}


# Models and versions


def split_name(name: str) -> tuple[str, str]:
    owner, _, short = name.partition("/")
    return owner, short


def openapi_schema(input_schema: dict[str, Any], output_schema: dict[str, Any]) -> dict[str, Any]:
    """A version's schema in the OpenAPI layout Replicate's clients read (``components.schemas``).
    An output of files only (JSON type null) is, over REST, the list of their URLs."""
    if output_schema.get("type") == "null":
        output_schema = {"type": "array", "items": {"type": "string", "format": "uri"},
                         "description": output_schema.get("description", "URLs of the output files.")}
    return {
        "openapi": "3.0.2", "info": {"title": "warmfleet", "version": "1"}, "paths": {},
        "components": {"schemas": {"Input": {"title": "Input", **input_schema},
                                   "Output": {"title": "Output", **output_schema}}},
    }


def version_json(entry: CatalogEntry) -> dict[str, Any]:
    """Replicate's version: id, created_at, cog_version and the OpenAPI schema (a pushed model's is
    Cog's own document; the built-in families' is made from their input and output schemas)."""
    spec = entry.spec
    cog_openapi = spec.options.get("openapi_schema") if spec.runner == "cog" else None
    openapi = cog_openapi or openapi_schema(entry.input_schema, entry.output_schema)
    created = None
    if spec.created_at:  # to the microsecond, toward zero
        seconds, nanos = divmod(int(spec.created_at * 1e9), _NANOS)
        delta = timedelta(seconds=seconds, microseconds=nanos // 1000)
        created = (_EPOCH.replace(tzinfo=timezone.utc) + delta).isoformat()
    cog_version = str(spec.options.get("cog_version", "")) if cog_openapi else ""
    return {"id": spec.version, "created_at": created, "cog_version": cog_version or None,
            "openapi_schema": openapi}


def model_json(entry: CatalogEntry, base: str) -> dict[str, Any]:
    spec = entry.spec
    owner, name = split_name(spec.name)
    return {
        "url": f"{base}/v1/models/{spec.name}", "owner": owner, "name": name, "description": spec.description,
        "visibility": spec.visibility or "public", "github_url": None, "paper_url": None, "license_url": None,
        "run_count": 0, "cover_image_url": None, "default_example": None,
        "latest_version": version_json(entry), "runner": spec.runner,
    }


# Deployments


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    spec = deployment.spec
    owner, name = split_name(spec.name)
    autoscaling = {knob: float(spec.autoscaling[knob]) for knob in AUTOSCALING_FIELDS
                   if spec.autoscaling.get(knob) is not None}
    return {
        "owner": owner, "name": name,
        "current_release": {
            "number": spec.release, "model": spec.model, "version": spec.version, "created_at": None,
            "configuration": {
                "hardware": spec.hardware or None, "min_instances": spec.min_instances,
                "max_instances": spec.most_instances, "autoscaling": autoscaling,
            },
        },
        "target_instances": deployment.target_instances,
    }


def deployment_create(body: Any, owner: str) -> tuple[str, str, str, Scale]:
    """Replicate's create body (``name``: a plain name is put under the caller, "owner/name" is kept;
    ``model``, ``version``, ``hardware``, ``min_instances``, ``max_instances``; and ``autoscaling``) as
    ``RouteService.create_deployment``'s name, model, version and scale."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    name = _string(body, "name", required=True)
    model = _string(body, "model", required=True)
    version, hardware = _string(body, "version"), _string(body, "hardware")
    min_instances = _count(body, "min_instances") or 0
    autoscaling = _autoscaling(body)
    scale = Scale(min_instances, _count(body, "max_instances"), autoscaling, hardware)
    return name if "/" in name else f"{owner}/{name}", model, version, scale


def deployment_update(body: Any) -> tuple[str | None, Scale]:
    """Replicate's update body: any of ``version``, ``hardware``, ``min_instances``, ``max_instances``
    (and ``autoscaling``); what is left out keeps its value (None). As ``RouteService.update_deployment``'s
    version and scale."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    autoscaling = _autoscaling(body)
    version, hardware = (_string(body, f) if body.get(f) is not None else None
                         for f in ("version", "hardware"))
    min_instances, max_instances = (_count(body, f) for f in ("min_instances", "max_instances"))
    return version, Scale(min_instances, max_instances, autoscaling, hardware)


def _string(body: dict[str, Any], field: str, required: bool = False) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidInput(field, "is required: a string" if required else "must be a string")
    return _text(value, field)


def _count(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InvalidInput(field, "must be a whole number, 0 or more")
    return value


def _autoscaling(body: dict[str, Any]) -> dict[str, float]:
    """The ``autoscaling`` object's knobs, as numbers, in ``AUTOSCALING_FIELDS`` order."""
    value = body.get("autoscaling") or {}
    if not isinstance(value, dict):
        raise InvalidInput("autoscaling", "must be an object of autoscaling settings")
    for name, setting in value.items():
        if name not in AUTOSCALING_FIELDS:
            raise InvalidInput(f"autoscaling.{name}", f"is not one of {', '.join(AUTOSCALING_FIELDS)}")
        if isinstance(setting, bool) or not isinstance(setting, (int, float)):
            raise InvalidInput(f"autoscaling.{name}", "must be a number")
    return {name: float(value[name]) for name in AUTOSCALING_FIELDS if name in value}


# Hardware and account


def hardware_json(nodes: list[NodeInfo]) -> list[dict[str, str]]:
    """The hardware SKUs the cluster's nodes offer, each once: ``{sku, name}``."""
    names: dict[str, str] = {}
    for node in nodes:
        if node.hardware and node.hardware not in names:
            names[node.hardware] = "CPU" if node.hardware == "cpu" else (node.accelerator or node.hardware)
    return [{"sku": sku, "name": names[sku]} for sku in sorted(names)]
