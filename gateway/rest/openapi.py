"""The OpenAPI 3.1 document of the gateway's HTTP API, built here and checked in beside this module as
``openapi.json``; the gateway serves it at ``GET /openapi.json`` (no token).

Regenerate the checked-in file after changing a route or a JSON shape:

    .venv/bin/python -m gateway.rest.openapi > gateway/rest/openapi.json

``tests/unit/test_openapi.py`` fails while the two differ, and while a route the app registers is missing
from the document (or the document names one it does not register). ``tests/integration/
test_openapi_conformance.py`` runs schemathesis against a real gateway with it.

The document is built from small helpers (``obj``, ``nullable``, ``page_of``, ``problems``...) so that each
route is one call of ``op``; the objects are those of ``gateway.rest.shapes``, ``files`` and ``openai``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
PROBLEM = "application/problem+json"
JSON = "application/json"
SSE = "text/event-stream"
S = dict[str, Any]

# Schema helpers


def ref(name: str) -> S:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: S) -> S:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: S = {"type": "string"}
INTEGER: S = {"type": "integer"}
NUMBER: S = {"type": "number"}
BOOLEAN: S = {"type": "boolean"}
NULL: S = {"type": "null"}
URI: S = {"type": "string", "format": "uri"}
TIME: S = {"type": "string", "format": "date-time"}
COUNT: S = {"type": "integer", "minimum": 0}
OBJECT: S = {"type": "object"}


def obj(properties: dict[str, S], optional: tuple[str, ...] = (), description: str | None = None,
        closed: bool = False) -> S:
    """An object with ``properties``, all required but ``optional``."""
    schema: S = {"type": "object", "properties": properties,
                 "required": [name for name in properties if name not in optional]}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def array(items: S, **extra: Any) -> S:
    return {"type": "array", "items": items, **extra}


def page_of(item: str) -> S:
    return obj({"next": nullable(URI), "previous": nullable(URI), "results": array(ref(item))},
               description=f"A cursor page of {item} objects (pages only go forward: previous is null).")


STATUS = {"type": "string", "enum": ["starting", "processing", "succeeded", "failed", "canceled", "aborted"]}
WEBHOOK_EVENTS = array({"type": "string", "enum": ["start", "output", "logs", "completed"]})
MEDIA_TYPE = {"type": "string", "maxLength": 255, "pattern": "^[a-z]+/[a-z0-9.+-]+$",
              "description": "A media type, such as image/png."}
NAME_PART = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 64}
VISIBILITY = {"type": "string", "enum": ["public", "private"]}
HARDWARE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"}
LINK = {"type": "string", "format": "uri", "pattern": "^https?://[^\\s/]+\\S*$", "maxLength": 2048}
MODEL_LINKS = ("github_url", "paper_url", "license_url", "cover_image_url", "weights_url")
ROLE = {"type": "string", "enum": ["user", "priority", "admin"]}


def json_text(schema: S) -> S:
    """A string holding JSON (an SSE event's data) that ``schema`` describes."""
    return {"type": "string", "contentMediaType": JSON, "contentSchema": schema}


def sse_event(properties: dict[str, S], optional: tuple[str, ...] = ()) -> S:
    """One Server-Sent Event as a client parses it: ``event``, ``id``, ``data`` (and ``retry``)."""
    return obj({**properties, "retry": INTEGER}, optional=(*optional, "retry"))


def schemas() -> dict[str, S]:
    """The components' schemas: Replicate's objects, files, OpenAI's, and problem details."""
    prediction_urls = obj({"get": URI, "cancel": URI, "stream": URI,
                           "web": {**URI, "description": "The prediction's page in the web console."}})
    version = obj({"id": STRING, "created_at": TIME,
                   "cog_version": {"type": "string", "description": "The Cog runtime's version for a Cog "
                                   "model; warmfleet-<family> for a built-in family."},
                   "openapi_schema": obj({"openapi": STRING, "info": OBJECT, "paths": OBJECT,
                                          "components": obj({"schemas": obj({"Input": OBJECT,
                                                                             "Output": OBJECT})})})})
    sampling = {
        "max_tokens": COUNT, "max_completion_tokens": COUNT, "min_tokens": COUNT,
        "temperature": NUMBER, "top_p": NUMBER, "top_k": INTEGER, "repetition_penalty": NUMBER,
        "frequency_penalty": NUMBER, "presence_penalty": NUMBER, "seed": INTEGER,
        "stop": {"anyOf": [STRING, array(STRING)]}, "n": {"type": "integer", "const": 1},
        "stream": BOOLEAN, "stream_options": obj({"include_usage": BOOLEAN}, optional=("include_usage",)),
        "user": STRING,
    }
    usage = obj({"prompt_tokens": COUNT, "completion_tokens": COUNT, "total_tokens": COUNT})
    finish = {"type": "string", "enum": ["stop", "length"]}

    def completion(object_name: str, choice: S) -> S:
        return obj({"id": STRING, "object": {"type": "string", "const": object_name}, "created": INTEGER,
                    "model": STRING, "system_fingerprint": STRING,
                    "choices": array(choice, minItems=1, maxItems=1), "usage": ref("Usage")})

    return {
        "Prediction": obj({
            "id": STRING, "model": STRING, "version": STRING, "deployment": STRING,
            "input": {"type": "object", "description": "The input as given; files as data URLs."},
            "output": {"description": "The output's JSON value; for file outputs the list of their URLs; "
                                      "with both, {value, files}; null before there is one."},
            "logs": STRING, "error": nullable(STRING), "status": STATUS,
            "created_at": TIME, "started_at": TIME, "completed_at": TIME,
            "deadline": {**TIME, "description": "When it is aborted if not started, and canceled if still "
                         "running (Cancel-After)."},
            "urls": prediction_urls,
            "metrics": {"type": "object", "additionalProperties": {"type": ["number", "string"]},
                        "description": "predict_time, total_time (seconds), token counts, finish_reason..."},
            "data_removed": BOOLEAN, "source": {"type": "string", "const": "api"},
            "webhook": URI, "webhook_events_filter": WEBHOOK_EVENTS,
        }, optional=("deployment", "webhook", "webhook_events_filter", "started_at", "completed_at",
                     "deadline"),
            description="A time not known yet (started_at, completed_at; deadline without Cancel-After) is "
                        "left out."),
        "PredictionPage": page_of("Prediction"),
        "CreatePrediction": obj({
            "input": {"type": "object", "description": "The model's inputs; files as data:, http(s) or "
                                                       "Files API URLs."},
            "webhook": {"type": "string", "format": "uri", "pattern": "^https?://"},
            "webhook_events_filter": WEBHOOK_EVENTS,
        }, optional=("webhook", "webhook_events_filter")),
        "CreatePredictionByVersion": {"allOf": [ref("CreatePrediction"), obj({
            "version": {"type": "string", "minLength": 1,
                        "description": 'A version id, "owner/name" (its latest) or "owner/name:version".'}})]},
        "Version": version,
        "VersionPage": page_of("Version"),
        "PushedVersion": {"allOf": [ref("Version"), obj({
            "model": ref("Model"), "created_model": BOOLEAN, "new_version": BOOLEAN})]},
        "Model": obj({
            "url": URI, "owner": STRING, "name": STRING, "description": STRING, "visibility": VISIBILITY,
            "github_url": nullable(URI), "paper_url": nullable(URI), "license_url": nullable(URI),
            "run_count": COUNT, "cover_image_url": nullable(URI), "default_example": nullable(OBJECT),
            "latest_version": {**nullable(ref("Version")), "description": "null until a version is pushed"},
            "runner": {"type": "string", "description": 'Its runner family; "" before it has a version.'},
            "id": {"type": "string", "description": "owner/name (OpenAI's model id)"},
            "object": {"type": "string", "const": "model"},
            "created": {"type": "integer",
                        "description": "When the model was made (unix seconds): its oldest version's time"},
            "owned_by": STRING,
        }, description="Replicate's model, and OpenAI's (id, object, created, owned_by)."),
        "ModelPage": page_of("Model"),
        "ModelList": {"allOf": [ref("ModelPage"), obj({
            "object": {"type": "string", "const": "list"}, "data": array(ref("Model"))})],
            "description": "Replicate's page of models and OpenAI's list of them (data: the same models)."},
        "CreateModel": obj({
            "owner": NAME_PART, "name": NAME_PART, "visibility": VISIBILITY,
            "hardware": {**HARDWARE, "description": "The SKU its instances need (GET /v1/hardware), or any."},
            "description": STRING, **{link: LINK for link in MODEL_LINKS},
        }, optional=("description", *MODEL_LINKS)),
        "UpdateModel": obj({"description": STRING, "readme": STRING, "visibility": VISIBILITY,
                            **{link: {"anyOf": [LINK, {"type": "string", "const": ""}]}
                               for link in MODEL_LINKS}},
                           optional=("description", "readme", "visibility", *MODEL_LINKS),
                           description="What to change; an empty string removes a link or the readme."),
        "SearchResults": obj({
            "query": STRING,
            "models": array(obj({"model": ref("Model"), "metadata": obj({
                "generated_description": NULL, "tags": array(STRING), "score": NUMBER})})),
            "collections": {"type": "array", "maxItems": 0}, "pages": {"type": "array", "maxItems": 0},
        }),
        "Deployment": obj({
            "owner": STRING, "name": STRING, "target_instances": COUNT,
            "current_release": obj({
                "number": COUNT, "model": STRING, "version": STRING, "created_at": TIME,
                "created_by": {**ref("AccountRef"),
                               "description": "Who made the release (left out: the configuration's)."},
                "configuration": obj({"hardware": {**HARDWARE, "description": "any: no SKU asked for"},
                                      "min_instances": COUNT, "max_instances": COUNT,
                                      "autoscaling": {"type": "object", "additionalProperties": NUMBER}}),
            }, optional=("created_by",)),
        }),
        "DeploymentPage": page_of("Deployment"),
        "Autoscaling": {"type": "object", "additionalProperties": NUMBER,
                        "description": "Autoscaling settings by name (target_ongoing_requests, "
                                       "upscale_delay_s, downscale_delay_s, scale_to_zero_delay_s...)."},
        "CreateDeployment": obj({
            "name": {**NAME_PART, "description": 'A name (put under the caller) or "owner/name".'},
            "model": {"type": "string", "minLength": 1}, "version": STRING, "hardware": STRING,
            "min_instances": {"type": "integer", "minimum": 0, "maximum": 64},
            "max_instances": {"type": "integer", "minimum": 0, "maximum": 64},
            "autoscaling": ref("Autoscaling"),
        }, optional=("version", "hardware", "min_instances", "max_instances", "autoscaling")),
        "UpdateDeployment": obj({
            "version": STRING, "hardware": STRING,
            "min_instances": {"type": "integer", "minimum": 0, "maximum": 64},
            "max_instances": {"type": "integer", "minimum": 0, "maximum": 64},
            "autoscaling": ref("Autoscaling"),
        }, optional=("version", "hardware", "min_instances", "max_instances", "autoscaling")),
        "Hardware": obj({"sku": STRING, "name": STRING}),
        "AccountRef": obj({"type": {"type": "string", "enum": ["user", "organization"]}, "username": STRING,
                           "name": STRING}),
        "Account": {"allOf": [ref("AccountRef"), obj({"id": STRING, "organizations": array(STRING)})]},
        "Token": obj({"id": STRING, "account": STRING, "account_id": STRING, "name": STRING, "role": ROLE,
                      "created_at": TIME, "last_used_at": nullable(TIME), "revoked_at": nullable(TIME)},
                     description="An access token, less its text."),
        "NewToken": obj({"token": {"type": "string", "description": "The token's text, shown only this once."},
                         "id": STRING, "account": STRING, "account_id": STRING, "name": STRING, "role": ROLE,
                         "created_at": TIME, "last_used_at": NULL, "revoked_at": NULL}),
        "TokenList": obj({"results": array(ref("Token"))}),
        "CreateToken": obj({"name": {**NAME_PART, "description": "What the token is for (laptop, ci...)."},
                            "role": ROLE, "account": {**NAME_PART, "description": "A user account's name "
                                                      "(an admin's to choose); default: the caller's own."}},
                           optional=("role", "account")),
        "WebhookSecret": obj({"key": {"type": "string", "pattern": "^whsec_"}}),
        "File": obj({
            "id": STRING, "name": STRING, "content_type": STRING, "size": COUNT, "etag": STRING,
            "checksums": obj({"sha256": STRING, "md5": STRING}), "metadata": OBJECT, "created_at": TIME,
            "expires_at": nullable(TIME), "urls": obj({"get": URI, "download": URI}),
        }),
        "FilePage": page_of("File"),
        "CreateFile": obj({
            "content": {"type": "string", "contentMediaType": "application/octet-stream",
                        "maxLength": 4096},
            "filename": {"type": "string", "maxLength": 255}, "type": MEDIA_TYPE,
            "metadata": {"type": "string", "description": "A JSON object, as text."},
        }, optional=("filename", "type", "metadata"), closed=True),
        "ChatMessage": obj({
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [STRING, array(obj({"type": {"type": "string", "const": "text"},
                                                     "text": STRING}))]},
        }),
        "ChatCompletionRequest": obj({"model": {"type": "string", "minLength": 1},
                                      "messages": array(ref("ChatMessage"), minItems=1), **sampling},
                                     optional=tuple(sampling)),
        "CompletionRequest": obj({"model": {"type": "string", "minLength": 1},
                                  "prompt": {"anyOf": [STRING, array(STRING, minItems=1, maxItems=1)]},
                                  **sampling}, optional=tuple(sampling)),
        "Usage": usage,
        "ChatCompletion": completion("chat.completion", obj({
            "index": INTEGER, "logprobs": NULL, "finish_reason": finish,
            "message": obj({"role": {"type": "string", "const": "assistant"}, "content": STRING,
                            "refusal": NULL})})),
        "Completion": completion("text_completion", obj({"index": INTEGER, "text": STRING, "logprobs": NULL,
                                                         "finish_reason": finish})),
        "PredictionEvent": {"oneOf": [
            sse_event({"event": {"type": "string", "enum": ["output", "logs", "error"]},
                       "id": {"type": "string", "pattern": "^[0-9]+$"}, "data": STRING}),
            sse_event({"event": {"type": "string", "const": "done"},
                       "id": {"type": "string", "pattern": "^[0-9]+$"},
                       "data": json_text(obj({"reason": {"type": "string",
                                                         "enum": ["error", "canceled", "aborted"]}},
                                             optional=("reason",), closed=True))}),
        ], "description": "output (a text chunk), logs, error, then done ({} or {\"reason\": ...})."},
        "CompletionChunk": obj({
            "id": STRING, "object": {"type": "string", "enum": ["chat.completion.chunk", "text_completion"]},
            "created": INTEGER, "model": STRING, "usage": nullable(ref("Usage")),
            "choices": array(obj({"index": INTEGER, "logprobs": NULL, "finish_reason": nullable(finish),
                                  "delta": obj({"role": {"type": "string", "const": "assistant"},
                                                "content": STRING}, optional=("role", "content")),
                                  "text": STRING}, optional=("delta", "text")), maxItems=1),
        }, optional=("usage",)),
        "CompletionEvent": sse_event({"event": {"type": "string", "const": "message"}, "data": {"anyOf": [
            {"type": "string", "const": "[DONE]"},
            json_text({"anyOf": [ref("CompletionChunk"), obj({"error": ref("OpenAIError")})]})]}},
            optional=("event",)),
        "OpenAIError": obj({"message": STRING, "type": STRING, "param": nullable(STRING), "code": STRING}),
        "Problem": obj({
            "type": URI, "title": STRING, "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": STRING,
            "field": {"type": "string", "description": "The request field that broke a rule (422)."},
            "error": ref("OpenAIError"),
        }, optional=("field", "error"), description="RFC 7807 problem details (the OpenAI routes add "
                                                    "OpenAI's error object as error)."),
        "Health": obj({"status": {"type": "string", "enum": ["serving", "not serving"]}}),
    }


# Responses and parameters


PROBLEM_TEXT = {
    400: "Bad request", 401: "No token, or one the cluster does not know",
    403: "The token may not do this, or a signed link does not match the URL or has expired",
    404: "Not found (or not the caller's)", 405: "Method not allowed", 406: "Not acceptable",
    409: "Conflict (exists already, or not in a state that allows it)", 413: "Payload too large",
    422: "Invalid input; field names the field", 429: "Rate limited, or the queue is full",
    503: "Unavailable",
}


def problems(*statuses: int) -> dict[str, S]:
    return {str(status): {"$ref": f"#/components/responses/Problem{status}"} for status in statuses}


def problem_responses() -> dict[str, S]:
    responses = {}
    for status, text in PROBLEM_TEXT.items():
        response: S = {"description": text, "content": {PROBLEM: {"schema": ref("Problem")}}}
        if status == 429:
            response["headers"] = {"Retry-After": {"required": True, "description": "Seconds to wait.",
                                                   "schema": {"type": "integer", "minimum": 0}}}
        responses[f"Problem{status}"] = response
    return responses


def json_ok(schema: S, description: str = "OK", status: int = 200, **headers: S) -> dict[str, S]:
    response: S = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return {str(status): response}


def no_content(description: str = "Deleted") -> dict[str, S]:
    return {"204": {"description": description}}


def path_param(name: str, schema: S, example: Any = None, description: str | None = None) -> S:
    param: S = {"name": name, "in": "path", "required": True, "schema": schema}
    if example is not None:
        param["example"] = example
    if description:
        param["description"] = description
    return param


def header(name: str, schema: S, description: str) -> S:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def query(name: str, schema: S, description: str, required: bool = False) -> S:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


OWNER = path_param("owner", NAME_PART, "warmfleet")
NAME = path_param("name", NAME_PART, "echo")
ID_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 64}
PREDICTION_ID = path_param("id", ID_SCHEMA, description="A prediction's id.")
VERSION_ID = path_param("id", {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 64},
                        description="A version id.")
FILE_ID = path_param("id", ID_SCHEMA, description="A file's id.")
CURSOR = query("cursor", {"type": "string", "maxLength": 256}, "A page's cursor, from a page's next URL.")
PREFER = header("Prefer", {"type": "string", "pattern": "^wait(=([1-9]|[1-5][0-9]|60))?$"},
                "wait (60 s) or wait=N (1-60 s): answer with the finished prediction, or the unfinished "
                "one when the wait passes.")
CANCEL_AFTER = header("Cancel-After", {"type": "string", "pattern": "^(([1-9][0-9]{0,5}(ms|s|m|h))+|[1-9][0-9]{0,5})$"},
                      "A deadline such as 30s, 5m, 1h30m, 500ms, or bare seconds (90): the prediction is "
                      "aborted if it has not started by then, and canceled if it is still running then.")
LAST_EVENT_ID = header("Last-Event-ID", {"type": "string", "pattern": "^[0-9]{1,9}$"},
                       "The id of the last event received: the stream resumes after it.")
# The query of a signed link (gateway/signing.py): the URLs a response gives to follow (urls.get and
# urls.stream, output files, a file's urls) carry it, and open without the token until they expire.
SIGNED_LINK = (
    query("owner", {"type": "string", "maxLength": 64}, "A signed link's owner (an account id). With "
          "expires and signature, and no Authorization header, the link opens this URL as its owner; a "
          "link that does not match this URL, or has expired, is 403. With a token they are ignored."),
    query("expires", {"type": "integer", "minimum": 0}, "When a signed link expires (unix seconds)."),
    query("signature", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
          "A signed link's signature: hex HMAC-SHA256 of the path, the owner and expires."),
)
PUBLIC: list[S] = []
ECHO_INPUT: S = {"input": {"text": "hello"}}  # the examples name the models every warmfleet cluster serves
LLM = "warmfleet/tiny-llama"


def op(operation_id: str, summary: str, tag: str, responses: dict[str, S], params: tuple[S, ...] = (),
       body: S | None = None, security: list[S] | None = None, errors: tuple[int, ...] = (401,)) -> S:
    """One operation: its responses, then problem details for ``errors``."""
    operation: S = {"operationId": operation_id, "summary": summary, "tags": [tag],
                    "responses": {**responses, **problems(*errors)}}
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        operation["requestBody"] = body
    if security is not None:
        operation["security"] = security
    return operation


def json_body(schema: S, example: Any = None) -> S:
    media: S = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {JSON: media}}


def links(operations: dict[str, str], **parameters: str) -> S:
    """Links from a response to ``operations`` (link name -> operationId), passing ``parameters``."""
    return {name: {"operationId": operation_id, "parameters": parameters}
            for name, operation_id in operations.items()}


PREDICTION_LINKS = links({"GetPrediction": "getPrediction", "CancelPrediction": "cancelPrediction",
                          "StreamPrediction": "streamPrediction"}, id="$response.body#/id")
FILE_LINKS = links({"GetFile": "getFile", "DownloadFile": "downloadFile", "DeleteFile": "deleteFile"},
                   id="$response.body#/id")


def create_prediction(operation_id: str, summary: str, target: tuple[S, ...], body: str, example: S) -> S:
    created = json_ok(ref("Prediction"), "The prediction (finished, with Prefer: wait, if it finished in time)",
                      201, Location={"description": "The prediction's URL", "schema": URI})
    created["201"]["links"] = PREDICTION_LINKS
    return op(operation_id, summary, "predictions", created, (*target, PREFER, CANCEL_AFTER),
              json_body(ref(body), example), errors=(401, 403, 404, 409, 422, 429, 503))


def completion_op(operation_id: str, summary: str, request: str, answer: str, example: S) -> S:
    ok = {"200": {"description": f"The {answer}; with stream: true, Server-Sent Events: data: <chunk> "
                                 "lines, then data: [DONE]",
                  "content": {JSON: {"schema": ref(answer)}, SSE: {"schema": ref("CompletionEvent")}}}}
    return op(operation_id, summary, "openai", ok, body=json_body(ref(request), example),
              errors=(401, 403, 404, 409, 422, 429, 503))


def paths() -> dict[str, dict[str, S]]:
    model, deployment = (OWNER, NAME), (OWNER, NAME)
    binary = {"description": "The file's bytes", "content": {"*/*": {}}}
    sse = {"description": "Server-Sent Events: output (text chunks), logs, error, done ({} or "
                          '{"reason": ...}), each with an id; a comment line every 15 s',
           "content": {SSE: {"schema": ref("PredictionEvent")}}}
    return {
        "/v1/predictions": {
            "post": create_prediction("createPrediction", "Create a prediction of a version", (),
                                      "CreatePredictionByVersion", {"version": "warmfleet/echo", **ECHO_INPUT}),
            "get": op("listPredictions", "List the caller's predictions, newest first", "predictions",
                      json_ok(ref("PredictionPage")),
                      (CURSOR, query("page_size", {"type": "integer", "minimum": 1, "maximum": 1000},
                                     "Predictions a page (1-1000)."),
                       query("created_after", TIME, "Only those created at or after this time (RFC 3339)."),
                       query("created_before", TIME, "Only those created before this time (RFC 3339)."),
                       query("source", {"type": "string", "enum": ["api", "web"]},
                             "How they were made: api (every prediction here), web (none yet).")),
                      errors=(401, 422)),
        },
        "/v1/predictions/{id}": {"get": op("getPrediction", "Get a prediction", "predictions",
                                           json_ok(ref("Prediction")), (PREDICTION_ID, *SIGNED_LINK),
                                           errors=(401, 403, 404))},
        "/v1/predictions/{id}/cancel": {"post": op(
            "cancelPrediction", "Cancel a prediction", "predictions", json_ok(ref("Prediction")),
            (PREDICTION_ID,), errors=(401, 404, 409))},
        "/v1/predictions/{id}/stream": {"get": op(
            "streamPrediction", "Follow a prediction as Server-Sent Events", "predictions", {"200": sse},
            (PREDICTION_ID, LAST_EVENT_ID, *SIGNED_LINK), errors=(401, 403, 404, 406, 422))},
        "/v1/predictions/{id}/output/{index}": {"get": op(
            "getPredictionOutputFile", "Download an output file of a prediction (its owner's)", "predictions",
            {"200": binary}, (PREDICTION_ID, path_param("index", COUNT, 0), *SIGNED_LINK),
            errors=(401, 403, 404))},
        "/v1/models/{owner}/{name}/predictions": {"post": create_prediction(
            "createModelPrediction", "Create a prediction of a model's latest version", model,
            "CreatePrediction", ECHO_INPUT)},
        "/v1/deployments/{owner}/{name}/predictions": {"post": create_prediction(
            "createDeploymentPrediction", "Create a prediction of a deployment", deployment,
            "CreatePrediction", ECHO_INPUT)},
        "/v1/models": {
            "get": op("listModels", "List the models (Replicate's page and OpenAI's list in one body). "
                      "QUERY /v1/models, with the words as a text body, searches them", "models",
                      json_ok(ref("ModelList")),
                      (query("sort_by", {"type": "string", "enum": ["latest_version_created_at",
                                                                    "model_created_at"]}, "The order."),
                       query("sort_direction", {"type": "string", "enum": ["desc", "asc"]}, "desc or asc.")),
                      errors=(401, 422)),
            "post": op("createModel", "Create a model with no version yet, under a namespace of the caller's "
                       "(a push gives it one)", "models", json_ok(ref("Model"), "Created", 201),
                       body=json_body(ref("CreateModel"), {"owner": "alice", "name": "hot-dog-detector",
                                                           "visibility": "public", "hardware": "cpu"}),
                       errors=(401, 403, 409, 422)),
        },
        "/v1/search": {"get": op(
            "search", "Search the models by text", "models", json_ok(ref("SearchResults")),
            (query("query", {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "\\S"},
                   "The words to search for.", required=True),
             query("limit", {"type": "integer", "minimum": 1, "maximum": 50}, "Most models (1-50, 20).")),
            errors=(401, 422))},
        "/v1/models/{owner}/{name}": {
            "get": op("getModel", "Get a model", "models", json_ok(ref("Model")), model, errors=(401, 404)),
            "patch": op("updateModel", "Change a model's description, links, readme or visibility (an admin, "
                        "or its namespace's)", "models", json_ok(ref("Model")), model,
                        json_body(ref("UpdateModel")), errors=(401, 403, 404, 409, 422)),
            "delete": op("deleteModel", "Delete a model (admin)", "models", no_content(), model,
                         errors=(401, 403, 404, 409)),
        },
        "/v1/models/{owner}/{name}/readme": {"get": op(
            "getModelReadme", "A model's readme", "models",
            {"200": {"description": "The readme", "content": {"text/plain": {"schema": STRING}}}}, model,
            errors=(401, 404))},
        "/v1/models/{owner}/{name}/examples": {"get": op(
            "listModelExamples", "A model's example predictions (warmfleet keeps none: an empty page)",
            "models", json_ok(ref("PredictionPage")), model, errors=(401, 404))},
        "/v1/models/{owner}/{name}/versions": {
            "get": op("listModelVersions", "List a model's versions, newest first", "models",
                      json_ok(ref("VersionPage")), model, errors=(401, 404)),
            "post": op("pushModelVersion", "Push a Cog model (its bundle, as `warmfleet push` makes it) as a "
                       "new version; creates the model if it does not exist", "models",
                       {**json_ok(ref("PushedVersion"), "A new version", 201),
                        **json_ok(ref("PushedVersion"), "This content is a version already")},
                       (*model, header("X-Bundle-Digest", {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                       "The bundle's SHA-256 (hex): the push fails if the bytes differ.")),
                       {"required": True, "description": "The bundle: a tar, as `warmfleet push` makes it",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       errors=(401, 403, 409, 422)),
        },
        "/v1/models/{owner}/{name}/versions/{id}": {
            "get": op("getModelVersion", "Get a model's version", "models", json_ok(ref("Version")),
                      (*model, VERSION_ID), errors=(401, 404)),
            "delete": op("deleteModelVersion", "Delete a version (refused while a deployment serves it)",
                         "models", {"202": {"description": "Deleted"}}, (*model, VERSION_ID),
                         errors=(401, 403, 404, 409)),
        },
        "/v1/deployments": {
            "get": op("listDeployments", "List the deployments", "deployments", json_ok(ref("DeploymentPage"))),
            "post": op("createDeployment", "Create a deployment (admin)", "deployments",
                       json_ok(ref("Deployment"), "Created (200, as Replicate answers)"),
                       body=json_body(ref("CreateDeployment")),
                       errors=(401, 403, 404, 409, 422, 503)),
        },
        "/v1/deployments/{owner}/{name}": {
            "get": op("getDeployment", "Get a deployment", "deployments", json_ok(ref("Deployment")),
                      deployment, errors=(401, 404)),
            "patch": op("updateDeployment", "Update a deployment (admin)", "deployments",
                        json_ok(ref("Deployment")), deployment, json_body(ref("UpdateDeployment")),
                        errors=(401, 403, 404, 409, 422, 503)),
            "delete": op("deleteDeployment", "Delete a deployment (admin)", "deployments", no_content(),
                         deployment, errors=(401, 403, 404, 409)),
        },
        "/v1/hardware": {"get": op("listHardware", "List the cluster's hardware SKUs", "cluster",
                                   json_ok(array(ref("Hardware"))))},
        "/v1/account": {"get": op("getAccount", "Who the token is", "accounts", json_ok(ref("Account")))},
        "/v1/tokens": {
            "get": op("listTokens", "The caller's tokens (an admin's: every account's, or one's)", "accounts",
                      json_ok(ref("TokenList")), (query("account", NAME_PART, "An account's name (admin)."),),
                      errors=(401, 404, 422)),
            "post": op("createToken", "Create a token (its text is shown once)", "accounts",
                       json_ok(ref("NewToken"), "Created", 201), body=json_body(ref("CreateToken")),
                       errors=(401, 403, 404, 422)),
        },
        "/v1/tokens/{id}": {"delete": op(
            "revokeToken", "Revoke a token: refused from its next call on", "accounts", json_ok(ref("Token")),
            (path_param("id", {"type": "string", "maxLength": 64}, "tok_0123456789abcdef"),),
            errors=(401, 404))},
        "/v1/webhooks/default/secret": {"get": op(
            "getWebhookSecret", "The caller's webhook signing secret", "predictions",
            json_ok(ref("WebhookSecret")))},
        "/v1/files": {
            "post": op("createFile", "Upload a file (multipart content, or the raw body)", "files",
                       {"201": {**json_ok(ref("File"), "Created", 201)["201"], "links": FILE_LINKS}},
                       body={"required": True, "content": {
                           "multipart/form-data": {"schema": ref("CreateFile")},
                           "application/octet-stream": {"schema": {"type": "string", "maxLength": 4096}}}},
                       errors=(401, 413, 422)),
            "get": op("listFiles", "List the caller's files, newest first", "files", json_ok(ref("FilePage")),
                      (CURSOR,), errors=(401, 422)),
        },
        "/v1/files/{id}": {
            "get": op("getFile", "Get a file", "files", json_ok(ref("File")), (FILE_ID, *SIGNED_LINK),
                      errors=(401, 403, 404)),
            "delete": op("deleteFile", "Delete a file", "files", no_content(), (FILE_ID,), errors=(401, 404)),
        },
        "/v1/files/{id}/download": {"get": op("downloadFile", "Download a file's bytes", "files",
                                              {"200": binary}, (FILE_ID, *SIGNED_LINK),
                                              errors=(401, 403, 404))},
        "/v1/chat/completions": {"post": completion_op(
            "createChatCompletion", "OpenAI-compatible chat completion (llm models)", "ChatCompletionRequest",
            "ChatCompletion", {"model": LLM, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})},
        "/v1/completions": {"post": completion_op(
            "createCompletion", "OpenAI-compatible completion (llm models)", "CompletionRequest", "Completion",
            {"model": LLM, "prompt": "Once upon a time", "max_tokens": 8})},
        **unserved_paths(),
        "/healthz": {"get": op("health", "Whether the gateway serves", "operations",
                               {**json_ok(ref("Health")),
                                "503": {"description": "Stopping",
                                        "content": {JSON: {"schema": ref("Health")}}}},
                               security=PUBLIC, errors=())},
        "/metrics": {"get": op("metrics", "Prometheus metrics", "operations",
                               {"200": {"description": "The exposition (text or OpenMetrics)",
                                        "content": {"text/plain": {"schema": STRING},
                                                    "application/openmetrics-text": {"schema": STRING}}}},
                               security=PUBLIC, errors=())},
        "/openapi.json": {"get": op("openapi", "This document", "operations", json_ok(OBJECT), security=PUBLIC,
                                    errors=())},
    }


def unserved_paths() -> dict[str, dict[str, S]]:
    """Replicate's trainings and collections: documented routes that answer 404, saying why
    (``gateway.rest.unserved``)."""
    def unserved(operation_id: str, what: str, *params: S) -> S:
        return op(operation_id, f"{what}: Replicate's, not served here (404, saying why)", "unserved", {},
                  params, errors=(401, 404))

    training, slug = path_param("id", ID_SCHEMA), path_param("slug", NAME_PART, "image-editing")
    return {
        "/v1/trainings": {"get": unserved("listTrainings", "Trainings")},
        "/v1/trainings/{id}": {"get": unserved("getTraining", "A training", training)},
        "/v1/trainings/{id}/cancel": {"post": unserved("cancelTraining", "Cancel a training", training)},
        "/v1/models/{owner}/{name}/versions/{id}/trainings": {"post": unserved(
            "createTraining", "Create a training", OWNER, NAME, VERSION_ID)},
        "/v1/collections": {"get": unserved("listCollections", "Collections")},
        "/v1/collections/{slug}": {"get": unserved("getCollection", "A collection", slug)},
    }


def build() -> S:
    """The whole document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "warmfleet HTTP API", "version": "1",
            "description": "The warmfleet gateway over HTTP: Replicate's HTTP API (v1) shapes, Server-Sent "
                           "Events, signed webhooks, the Files API, and OpenAI-compatible completions. Errors "
                           "are RFC 7807 problem details (application/problem+json).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("predictions", "models", "deployments", "files", "openai",
                                             "accounts", "cluster", "operations", "unserved")],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "Authorization: Bearer <token>. Replicate's older form, Authorization: "
                               "Token <token>, is read the same. The links a response gives to follow "
                               "(urls.get, urls.stream, output files, a file's urls) are signed "
                               "(owner, expires, signature in the query) and open without it."}},
            "schemas": schemas(),
            "responses": problem_responses(),
        },
    }


def render() -> str:
    """The document as the checked-in file holds it."""
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


@cache
def served() -> bytes:
    """The checked-in document's bytes, read once."""
    return DOCUMENT_PATH.read_bytes()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=served(), content_type=JSON)


def register(app: web.Application) -> None:
    """Add ``GET /openapi.json`` (public: ``PUBLIC_PATHS``)."""
    app.router.add_get("/openapi.json", openapi_json)


if __name__ == "__main__":
    print(render(), end="")
