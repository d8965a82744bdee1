"""Replicate's HTTP API JSON <-> warmfleet.v1 messages: the REST edge's only translation layer.

Pure functions, no I/O and no web framework: request bodies and headers become request messages, reply
messages become Replicate's JSON objects (prediction, model, version, deployment, hardware, pages).
``base`` is the gateway's URL as the client reached it, for the links inside those objects.

Where Replicate's shape has a field warmfleet has no data for, it is null (a version's ``created_at``,
a model's ``github_url``) or the constant that holds here (``visibility`` "public", ``source`` "api").
"""

from __future__ import annotations

import json
import re
from datetime import timezone
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.grpc import convert
from gateway.predictions import MAX_WAIT_S
from warmfleet.domain import Prediction
from warmfleet.errors import InvalidInput
from warmfleet.jsonvalues import files_as_data_urls, value_from_pb
from warmfleet.v1 import cluster_pb2, deployments_pb2, models_pb2, predictions_pb2, types_pb2

STATUS_NAMES = {
    types_pb2.STATUS_STARTING: "starting",
    types_pb2.STATUS_PROCESSING: "processing",
    types_pb2.STATUS_SUCCEEDED: "succeeded",
    types_pb2.STATUS_FAILED: "failed",
    types_pb2.STATUS_CANCELED: "canceled",
    types_pb2.STATUS_ABORTED: "aborted",
}
# Body fields a create passes on to CreatePredictionRequest fields of the same name, where the proto has them.
PASSED_CREATE_FIELDS = ("webhook", "webhook_events_filter")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


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
        if not value.isdigit() or not 1 <= int(value) <= MAX_WAIT_S:
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
                   model: str = "", version: str = "", deployment: str = ""
                   ) -> predictions_pb2.CreatePredictionRequest:
    """The create message: ``input`` (files in it as ``FileData``) in the generic JSON form, the target,
    the wait and the deadline, and the passed-on body fields."""
    try:
        json_input = convert.input_to_pb(input, "json")
    except json_format.ParseError as err:
        raise InvalidInput("input", f"is not JSON-shaped: {err}") from None
    pb = predictions_pb2.CreatePredictionRequest(
        model=model, version=version, deployment=deployment, wait_s=wait_s, deadline_s=deadline_s,
        input=json_input)
    for name in PASSED_CREATE_FIELDS:
        if body.get(name) is not None:
            _set_passed_field(pb, name, body[name])
    return pb


def _set_passed_field(pb: Message, name: str, value: Any) -> None:
    fd = pb.DESCRIPTOR.fields_by_name.get(name)
    if fd is None:
        raise InvalidInput(name, "is not served by this gateway")
    try:
        if fd.is_repeated:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            getattr(pb, name).extend(value)
        else:
            setattr(pb, name, value)
    except (TypeError, ValueError) as err:
        raise InvalidInput(name, f"has the wrong type: {err}") from None


# Predictions


def timestamp(pb: Message, name: str) -> str | None:
    """A Timestamp field as RFC 3339 in UTC ("2024-05-01T12:00:00.123Z"); None when unset."""
    return getattr(pb, name).ToJsonString() if pb.HasField(name) else None


def prediction_urls(base: str, prediction_id: str) -> dict[str, str]:
    get = f"{base}/v1/predictions/{prediction_id}"
    return {"get": get, "cancel": f"{get}/cancel", "stream": f"{get}/stream"}


def output_file_url(base: str, prediction_id: str, index: int) -> str:
    return f"{base}/v1/predictions/{prediction_id}/output/{index}"


def prediction_json(pb: types_pb2.Prediction, base: str) -> dict[str, Any]:
    """A prediction as Replicate's prediction object."""
    out: dict[str, Any] = {
        "id": pb.id, "model": pb.model, "version": pb.version, "input": input_json(pb.input),
        "output": output_json(pb, base), "logs": pb.logs, "error": pb.error or None,
        "status": STATUS_NAMES.get(pb.status, "starting"), "created_at": timestamp(pb, "created_at"),
        "started_at": timestamp(pb, "started_at"), "completed_at": timestamp(pb, "completed_at"),
        "urls": prediction_urls(base, pb.id), "metrics": metrics_json(pb.metrics),
        "data_removed": pb.data_removed, "source": "api",
    }
    if pb.deployment:
        out["deployment"] = pb.deployment
    for name in PASSED_CREATE_FIELDS:
        value = getattr(pb, name, None)
        if value:
            out[name] = list(value) if not isinstance(value, str) else value
    return out



def domain_prediction_json(pred: Prediction, base: str) -> dict[str, Any]:
    """A domain prediction as the REST API renders it (a webhook's body is exactly what GET answers)."""
    return prediction_json(convert.prediction_to_pb(pred), base)

def input_json(pb: types_pb2.PredictionInput) -> dict[str, Any]:
    """The input as given, in JSON: typed forms as their fields, files as data URLs."""
    if pb.WhichOneof("kind") is None:
        return {}
    values, _ = convert.input_from_pb(pb)
    return files_as_data_urls(values)


def output_json(pb: types_pb2.Prediction, base: str) -> Any:
    """The output as Replicate gives it: the JSON value; for file outputs (images) the list of their URLs
    under the gateway; with both, ``{"value": ..., "files": [...]}``; null before there is one."""
    if not pb.HasField("output"):
        return None
    value = value_from_pb(pb.output.value) if pb.output.HasField("value") else None
    urls = [output_file_url(base, pb.id, i) for i in range(len(pb.output.files))]
    if not urls:
        return value
    return urls if value is None else {"value": value, "files": urls}


def metrics_json(pb: types_pb2.PredictionMetrics) -> dict[str, Any]:
    """Replicate's metric names: the proto's without their unit suffix (``predict_time_s`` -> ``predict_time``)."""
    named = {fd.name.removesuffix("_s"): value for fd, value in pb.ListFields() if fd.name != "custom"}
    return {**dict(pb.custom), **named}  # a model's own figures beside ours, as Replicate shows them


def file_name(f: types_pb2.File) -> str | None:
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


def version_json(pb: models_pb2.Version) -> dict[str, Any]:
    """Replicate's version: id, created_at, cog_version and the OpenAPI schema (a pushed model's is
    Cog's own document; the built-in families' is made from their input and output schemas)."""
    openapi = json.loads(pb.openapi_schema_json) if pb.openapi_schema_json else openapi_schema(
        json.loads(pb.input_schema_json or "{}"), json.loads(pb.output_schema_json or "{}"))
    created = pb.created_at.ToDatetime(tzinfo=timezone.utc).isoformat() if pb.HasField("created_at") else None
    return {"id": pb.id, "created_at": created, "cog_version": pb.cog_version or None, "openapi_schema": openapi}


def latest_version_json(pb: models_pb2.Model) -> dict[str, Any]:
    """A model's latest version (from what an older gateway's Model carries, when it has no whole one)."""
    if pb.HasField("latest_version"):
        return version_json(pb.latest_version)
    return version_json(models_pb2.Version(id=pb.version, input_schema_json=pb.input_schema_json,
                                           output_schema_json=pb.output_schema_json))


def model_json(pb: models_pb2.Model, base: str) -> dict[str, Any]:
    owner, name = split_name(pb.name)
    return {
        "url": f"{base}/v1/models/{pb.name}", "owner": owner, "name": name, "description": pb.description,
        "visibility": pb.visibility or "public", "github_url": None, "paper_url": None, "license_url": None,
        "run_count": 0, "cover_image_url": None, "default_example": None,
        "latest_version": latest_version_json(pb), "runner": pb.runner,
    }


# Deployments


def deployment_json(pb: deployments_pb2.Deployment) -> dict[str, Any]:
    owner, name = split_name(pb.name)
    return {
        "owner": owner, "name": name,
        "current_release": {
            "number": pb.current_release, "model": pb.model, "version": pb.version, "created_at": None,
            "configuration": {
                "hardware": pb.hardware or None, "min_instances": pb.min_instances,
                "max_instances": pb.max_instances,
                "autoscaling": {fd.name: v for fd, v in pb.autoscaling.ListFields()},
            },
        },
        "target_instances": pb.target_instances,
    }


def deployment_create_request(body: Any, owner: str) -> deployments_pb2.CreateDeploymentRequest:
    """Replicate's create body: ``name`` (a plain name is put under the caller, "owner/name" is kept),
    ``model``, ``version``, ``hardware``, ``min_instances``, ``max_instances``; and ``autoscaling``."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    name = _string(body, "name", required=True)
    pb = deployments_pb2.CreateDeploymentRequest(
        name=name if "/" in name else f"{owner}/{name}", model=_string(body, "model", required=True),
        version=_string(body, "version"), hardware=_string(body, "hardware"),
        min_instances=_count(body, "min_instances") or 0, autoscaling=_autoscaling(body))
    if body.get("max_instances") is not None:
        pb.max_instances = _count(body, "max_instances")
    return pb


def deployment_update_request(name: str, body: Any) -> deployments_pb2.UpdateDeploymentRequest:
    """Replicate's update body: any of ``version``, ``hardware``, ``min_instances``, ``max_instances``
    (and ``autoscaling``); what is left out keeps its value."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    pb = deployments_pb2.UpdateDeploymentRequest(name=name, autoscaling=_autoscaling(body))
    for field in ("version", "hardware"):
        if body.get(field) is not None:
            setattr(pb, field, _string(body, field))
    for field in ("min_instances", "max_instances"):
        if body.get(field) is not None:
            setattr(pb, field, _count(body, field))
    return pb


def _string(body: dict[str, Any], field: str, required: bool = False) -> str:
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidInput(field, "is required: a string" if required else "must be a string")
    return value


def _count(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InvalidInput(field, "must be a whole number, 0 or more")
    return value


def _autoscaling(body: dict[str, Any]) -> deployments_pb2.Autoscaling:
    value = body.get("autoscaling") or {}
    if not isinstance(value, dict):
        raise InvalidInput("autoscaling", "must be an object of autoscaling settings")
    pb = deployments_pb2.Autoscaling()
    for name, setting in value.items():
        if name not in convert.AUTOSCALING_FIELDS:
            raise InvalidInput(f"autoscaling.{name}", f"is not one of {', '.join(convert.AUTOSCALING_FIELDS)}")
        if isinstance(setting, bool) or not isinstance(setting, (int, float)):
            raise InvalidInput(f"autoscaling.{name}", "must be a number")
        setattr(pb, name, float(setting))
    return pb


# Hardware and account


def hardware_json(nodes: list[cluster_pb2.Node]) -> list[dict[str, str]]:
    """The hardware SKUs the cluster's nodes offer, each once: ``{sku, name}``."""
    names: dict[str, str] = {}
    for node in nodes:
        if node.hardware and node.hardware not in names:
            names[node.hardware] = "CPU" if node.hardware == "cpu" else (node.accelerator or node.hardware)
    return [{"sku": sku, "name": names[sku]} for sku in sorted(names)]


def account_json(username: str) -> dict[str, Any]:
    """The caller's account: a token's name is its user name."""
    return {"type": "user", "username": username, "name": username, "github_url": None}
