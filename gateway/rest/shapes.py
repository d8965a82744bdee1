"""Replicate's HTTP API JSON <-> the core's domain types: the REST edge's only translation layer.

Pure functions, no I/O and no web framework: request bodies and headers become the core services'
arguments (``CreateRequest``, ``Scale``...), domain objects (``Prediction``, ``CatalogEntry``,
``Deployment``, ``NodeInfo``) become Replicate's JSON objects (prediction, model, version, deployment,
hardware, pages). ``base`` is the gateway's URL as the client reached it, for the links inside those objects;
``sign`` writes the links that clients follow (``gateway.signing``: signed, so that they open without the
token; ``unsigned`` by default).

JSON values read here as they read over gRPC, where they travel as protobuf ``Value``s (``as_api_json``):
numbers are doubles, so an integral one is an int, and a NaN or an infinity is refused, naming its place.

The shapes are checked against Replicate's published OpenAPI document (``tests/fixtures/replicate``,
``tests/integration/test_replicate_conformance.py``): a field is null only where that document allows
null, and a field it does not allow null for is left out while it has no value (a prediction's
``started_at``, ``completed_at`` and ``deadline``; an account's ``github_url``). Where warmfleet has no
data of Replicate's kind, a documented constant holds: ``run_count`` 0, a built-in
family's ``cog_version`` "warmfleet-<family>", a configured version's ``created_at`` the time this gateway
first listed it, and hardware "any" for a route that asks for no SKU (any node).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.catalog import CatalogEntry
from gateway.deployments import AUTOSCALING_FIELDS, Deployment, ModelChanges, Scale
from gateway.predictions import MAX_WAIT_S, CreateRequest
from gateway.signing import Sign, unsigned
from warmfleet.domain import FileData, Metrics, NodeInfo, Prediction, RouteSpec
from warmfleet.errors import InvalidInput
from warmfleet.jsonvalues import files_as_data_urls

# Body fields a create passes on to the CreateRequest fields of the same name.
PASSED_CREATE_FIELDS = ("webhook", "webhook_events_filter")
# A metric's type as the API shows it (float seconds, whole counts), in the order it has always shown them;
# its JSON name is the field's without the unit suffix (``predict_time_s`` -> ``predict_time``).
METRIC_TYPES = {
    "predict_time_s": float, "total_time_s": float, "queue_time_s": float, "input_token_count": int,
    "cached_input_token_count": int, "output_token_count": int, "time_to_first_token_s": float, "tokens_per_second": float,
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


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str, field: str) -> float:
    """An RFC 3339 date-time ("2025-01-01T00:00:00Z", "2025-01-01T02:00:00.5+02:00") as seconds since the
    epoch; InvalidInput naming ``field`` for anything else (a date alone, a time without its offset)."""
    parsed = None
    if _RFC3339.match(text):
        try:
            parsed = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        except ValueError:
            pass  # a 13th month, a 25th hour...
    if parsed is None:
        raise InvalidInput(field, f"must be an RFC 3339 date-time such as 2025-01-01T00:00:00Z; "
                                  f"got {text[:64]!r}")
    return parsed.timestamp()


def epoch_seconds(t: float) -> int:
    """The whole seconds of a time (as ``rfc3339`` counts them)."""
    return int(t * 1e9) // _NANOS


def prediction_urls(base: str, prediction_id: str, owner: str = "", sign: Sign = unsigned) -> dict[str, str]:
    """A prediction's ``urls``. ``get`` and ``stream`` are written by ``sign`` for ``owner`` (an account
    id); ``cancel`` changes the prediction, so it stays a URL for the token only."""
    get = f"/v1/predictions/{prediction_id}"
    return {"get": base + sign(get, owner), "cancel": f"{base}{get}/cancel",
            "stream": base + sign(f"{get}/stream", owner), "web": prediction_page_url(base, prediction_id)}


def prediction_page_url(base: str, prediction_id: str) -> str:
    """A prediction's page in the gateway's web console (Replicate's ``urls.web``):
    ``{base}/predictions/{id}``."""
    return f"{base}/predictions/{prediction_id}"


def output_file_url(base: str, prediction_id: str, index: int, owner: str = "", sign: Sign = unsigned) -> str:
    """The URL of an output file under the gateway (``GET /v1/predictions/{id}/output/{index}``), written
    by ``sign`` for ``owner``."""
    return base + sign(f"/v1/predictions/{prediction_id}/output/{index}", owner)


def prediction_json(pred: Prediction, base: str, sign: Sign = unsigned) -> dict[str, Any]:
    """A prediction as Replicate's prediction object: what GET answers, and a webhook's body; its links
    written by ``sign`` for the prediction's owner."""
    out: dict[str, Any] = {
        "id": pred.id, "model": pred.model, "version": pred.version, "input": files_as_data_urls(pred.input),
        "output": output_json(pred, base, sign), "logs": "\n".join(pred.logs), "error": pred.error or None,
        "status": pred.status.value, "created_at": rfc3339(pred.created_at),
        "urls": prediction_urls(base, pred.id, pred.owner, sign), "metrics": metrics_json(pred.metrics),
        "data_removed": pred.data_removed, "source": pred.source,
    }
    # Times Replicate's document has no null for: left out until they are known.
    for name, t in (("started_at", pred.started_at), ("completed_at", pred.completed_at),
                    ("deadline", pred.deadline_at)):
        if t is not None:
            out[name] = rfc3339(t)
    if pred.deployment:
        out["deployment"] = pred.deployment
    for name in PASSED_CREATE_FIELDS:
        value = getattr(pred, name)
        if value:
            out[name] = list(value) if not isinstance(value, str) else value
    return out


def output_json(pred: Prediction, base: str, sign: Sign = unsigned, inline_max_bytes: int = 0) -> Any:
    """The output as Replicate gives it: the JSON value; for file outputs (images) the list of their URLs
    under the gateway, or of their data URLs where ``inlines_files`` says so; with both,
    ``{"value": ..., "files": [...]}``; null before there is one."""
    if pred.output is None:
        return None
    value = as_api_json(pred.output.value)
    files = pred.output.files
    if not files:
        return value
    if inlines_files(files, base, inline_max_bytes):
        shown = files_as_data_urls(files)
    else:
        shown = [output_file_url(base, pred.id, i, pred.owner, sign) for i in range(len(files))]
    return shown if value is None else {"value": value, "files": shown}


# Outputs inline: Replicate's Python client opens only https: and data: outputs as files (``FileOutput``),
# so on a plain-http gateway small outputs come as data URLs that it opens without the gateway; over https
# the (signed) URLs open as they are, and stay.


def output_files(pred: Prediction) -> list[FileData]:
    """A prediction's output files (none before it has an output)."""
    return pred.output.files if pred.output is not None else []


def inlines_files(files: list[FileData], base: str, inline_max_bytes: int) -> bool:
    """Whether an output's ``files`` are shown as data URLs: on a gateway reached over plain http
    (``base``), when there are some and they come to ``inline_max_bytes`` or less in all (their bytes:
    the base64 text is 4/3 of that). 0 never inlines; over https their URLs stay."""
    total = sum(len(f.data) for f in files)
    return bool(files) and inline_max_bytes > 0 and base.startswith("http://") and total <= inline_max_bytes


def prediction_response(pred: Prediction, base: str, sign: Sign = unsigned, inline_max_bytes: int = 0
                        ) -> dict[str, Any]:
    """A prediction as the REST routes answer it and its webhooks carry it: ``prediction_json``, with its
    output's files inline where ``inlines_files`` says so."""
    shown = prediction_json(pred, base, sign)
    if inlines_files(output_files(pred), base, inline_max_bytes):
        shown["output"] = output_json(pred, base, sign, inline_max_bytes)
    return shown


def predictions_response(preds: list[Prediction], base: str, sign: Sign = unsigned, inline_max_bytes: int = 0
                         ) -> list[dict[str, Any]]:
    """A page of predictions (``prediction_response``) whose inline files share one budget, so that a page
    carries at most ``inline_max_bytes`` inline: in page order (newest first), a prediction's files are
    inline when they fit in what the ones before left; the others show their URLs."""
    shown, left = [], inline_max_bytes
    for pred in preds:
        files = output_files(pred)
        inline = inlines_files(files, base, left)
        shown.append(prediction_response(pred, base, sign, left if inline else 0))
        left -= sum(len(f.data) for f in files) if inline else 0
    return shown


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
    Cog's own document; the built-in families' is made from their input and output schemas).
    ``created_at`` is when it was pushed (``CatalogEntry.created_at``: for a version the configuration
    made, when this gateway first listed it); ``cog_version`` is the Cog runtime's version for a Cog model,
    and "warmfleet-<family>" for a built-in family (``builtin_cog_version``)."""
    spec = entry.spec
    cog_openapi = spec.options.get("openapi_schema") if spec.runner == "cog" else None
    openapi = cog_openapi or openapi_schema(entry.input_schema, entry.output_schema)
    cog_version = str(spec.options.get("cog_version", "")) if cog_openapi else ""
    return {"id": spec.version, "created_at": iso_microseconds(entry.created_at),
            "cog_version": cog_version or builtin_cog_version(spec.runner), "openapi_schema": openapi}


def builtin_cog_version(runner: str) -> str:
    """What a version of a built-in family (echo, llm, diffusion, upscale) shows as its ``cog_version``: no
    Cog runtime runs it, so the family's name: "warmfleet-llm"."""
    return f"warmfleet-{runner}"


def iso_microseconds(t: float) -> str:
    """A time in UTC, to the microsecond (toward zero), as Python's ``isoformat`` writes it
    ("2024-05-01T12:00:00.500000+00:00"): a version's time, as it has always been written."""
    seconds, nanos = divmod(int(t * 1e9), _NANOS)
    delta = timedelta(seconds=seconds, microseconds=nanos // 1000)
    return (_EPOCH.replace(tzinfo=timezone.utc) + delta).isoformat()


# A model's links and readme (``RouteSpec.about``): what a create or an update may set, by Replicate's names.
MODEL_LINKS = ("github_url", "paper_url", "license_url", "cover_image_url", "weights_url")
MODEL_ABOUT = (*MODEL_LINKS, "readme")
VISIBILITIES = ("public", "private")
_HARDWARE_SKU = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# What the API shows as the hardware of a route that asks for none (its instances go on any node), and
# takes back for it.
ANY_HARDWARE = "any"


def model_json(entry: CatalogEntry, base: str, created_at: float | None = None) -> dict[str, Any]:
    """Replicate's model object, which is also OpenAI's (``id`` "owner/name", ``object`` "model", ``created``
    in unix seconds, ``owned_by`` the owner), so that both clients read one ``GET /v1/models``.
    ``created_at``: when the model was made (``ModelCatalog.model_created_at``; by default its latest
    version's time). ``latest_version`` is null for a model with no version yet."""
    spec = entry.spec
    owner, name = split_name(spec.name)
    links = {key: spec.about.get(key) or None for key in MODEL_LINKS if key != "weights_url"}
    return {
        "url": f"{base}/v1/models/{spec.name}", "owner": owner, "name": name, "description": spec.description,
        "visibility": spec.visibility or "public", **links, "run_count": 0, "default_example": None,
        "latest_version": version_json(entry) if spec.has_version else None, "runner": spec.runner,
        "id": spec.name, "object": "model", "created": epoch_seconds(created_at or entry.created_at),
        "owned_by": owner,
    }


def models_page(models: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models`` for both official clients: Replicate's page (``results``, ``next``, ``previous``)
    and OpenAI's list (``object`` "list", ``data``) of the same model objects (``model_json``)."""
    return {**page(models), "object": "list", "data": models}


def model_create(body: Any) -> RouteSpec:
    """Replicate's "create a model" body (``owner``, ``name``, ``visibility`` and ``hardware`` required;
    ``description`` and the links optional) as the spec of a model with no version yet."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    owner, name = _string(body, "owner", required=True), _string(body, "name", required=True)
    visibility = _string(body, "visibility", required=True)
    if visibility not in VISIBILITIES:
        raise InvalidInput("visibility", "must be 'public' or 'private'")
    about = {key: _link(body, key) for key in MODEL_LINKS if body.get(key) is not None}
    return RouteSpec(name=f"{owner}/{name}", runner="", description=_string(body, "description"),
                     min_instances=0, owner=owner, visibility=visibility, about=about,
                     hardware=_hardware(body, "hardware", required=True))


def model_update(body: Any) -> ModelChanges:
    """Replicate's update of a model (``description``, ``readme``, the links; and ``visibility``): what the
    body names is set, an empty string removing a link or the readme."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    about = {key: _link(body, key) if key in MODEL_LINKS else _string(body, key)
             for key in MODEL_ABOUT if body.get(key) is not None}
    visibility = _string(body, "visibility") if body.get("visibility") is not None else None
    if visibility is not None and visibility not in VISIBILITIES:
        raise InvalidInput("visibility", "must be 'public' or 'private'")
    description = _string(body, "description") if body.get("description") is not None else None
    return ModelChanges(description=description, visibility=visibility, about=about)


def _link(body: dict[str, Any], field: str) -> str:
    value = _string(body, field)
    if value and not re.match(r"^https?://[^\s/]+\S*$", value):
        raise InvalidInput(field, f"must be an http(s) URL; got {value[:80]!r}")
    return value


def _hardware(body: dict[str, Any], field: str, required: bool = False) -> str:
    """A hardware SKU from a body ("cpu", "gpu-nvidia-h100-80gb", "gpu" for any GPU); ``ANY_HARDWARE``
    (asks for none: any node) is ""."""
    value = _string(body, field, required=required)
    if value and not _HARDWARE_SKU.match(value):
        raise InvalidInput(field, "must be a hardware SKU such as cpu or gpu-nvidia-h100-80gb (GET "
                                  f"/v1/hardware lists the cluster's), or {ANY_HARDWARE}")
    return "" if value == ANY_HARDWARE else value


def search_json(query: str, models: list[tuple[dict[str, Any], float]]) -> dict[str, Any]:
    """Replicate's search answer: each model found (``model_json``) with its ``metadata`` (its relevance
    ``score``; no generated description or tags here), and no collections or pages (warmfleet has none)."""
    found = [{"model": model, "metadata": {"generated_description": None, "tags": [], "score": score}}
             for model, score in models]
    return {"query": query, "models": found, "collections": [], "pages": []}


def search_score(query: str, entry: CatalogEntry) -> float:
    """How well a model matches a text query: each of the query's words counts 3 when it is the model's
    name (or "owner/name"), 2 when it is in the name, and 1 more when it is in its description or readme;
    0 when a word is found nowhere (it is not a match)."""
    spec = entry.spec
    name, text = spec.name.lower(), f"{spec.description} {spec.about.get('readme', '')}".lower()
    score = 0.0
    for word in query.lower().split():
        in_name = 3.0 if word in (name, split_name(name)[1]) else 2.0 if word in name else 0.0
        found = in_name + 1.0 * (word in text)
        if not found:
            return 0.0
        score += found
    return score


# Deployments


def deployment_json(deployment: Deployment) -> dict[str, Any]:
    """Replicate's deployment: its ``current_release`` (number, model, version, when and by whom it was
    made, and its ``configuration``: hardware, min_instances, max_instances; and warmfleet's autoscaling
    knobs), and the instances the autoscaler wants now. ``created_by`` is left out for a release the
    configuration made (no account made it); the hardware of one that asks for none is ``ANY_HARDWARE``."""
    spec = deployment.spec
    owner, name = split_name(spec.name)
    autoscaling = {knob: float(spec.autoscaling[knob]) for knob in AUTOSCALING_FIELDS
                   if spec.autoscaling.get(knob) is not None}
    release: dict[str, Any] = {
        "number": spec.release, "model": spec.model, "version": spec.version,
        "created_at": rfc3339(deployment.released_at),
        "configuration": {
            "hardware": spec.hardware or ANY_HARDWARE, "min_instances": spec.min_instances,
            "max_instances": spec.most_instances, "autoscaling": autoscaling,
        },
    }
    if spec.released_by:
        release["created_by"] = account_json("user", spec.released_by)  # tokens belong to users only
    return {"owner": owner, "name": name, "current_release": release,
            "target_instances": deployment.target_instances}


def deployment_create(body: Any, owner: str) -> tuple[str, str, str, Scale]:
    """Replicate's create body (``name``: a plain name is put under the caller, "owner/name" is kept;
    ``model``, ``version``, ``hardware``, ``min_instances``, ``max_instances``; and ``autoscaling``) as
    ``RouteService.create_deployment``'s name, model, version and scale."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    name = _string(body, "name", required=True)
    model = _string(body, "model", required=True)
    version, hardware = _string(body, "version"), _hardware(body, "hardware")
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
    version = _string(body, "version") if body.get("version") is not None else None
    hardware = _hardware(body, "hardware") if body.get("hardware") is not None else None
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


def account_json(kind: str, name: str) -> dict[str, str]:
    """An account as Replicate shapes it (``type`` "user" or "organization", ``username``, ``name``); its
    ``github_url`` and ``avatar_url``, which warmfleet has not and Replicate's document has no null for,
    are left out."""
    return {"type": kind, "username": name, "name": name}
