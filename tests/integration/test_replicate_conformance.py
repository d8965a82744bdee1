"""warmfleet's REST API against Replicate's own published OpenAPI document (``tests/fixtures/replicate``,
vendored with its source and date): for every operation of that document warmfleet serves, a real gateway
is called and each response's status must be one the document gives for the operation, and its body must
validate against the document's schema for that status (``$ref``s resolved; the document's OpenAPI 3.0
``nullable`` read as JSON Schema's null). So a field Replicate's document requires, and does not allow
null for, is present and not null in ours; a field it types but does not allow null for (a prediction's
``started_at``) is left out while unknown, never null.

The document's operations warmfleet does not serve are listed in ``UNSERVED`` with the reason; a test
fails when the document has an operation in neither list, and each unserved one answers a 404 problem
saying why, never a 405 (nor a 5xx: no request reaches one). Where the document is looser than
Replicate's own Python client (``replicate`` 1.0.7, whose models need a version's ``created_at`` and
``cog_version``, an account's ``name``...), ``CLIENT_NEEDS`` tightens it, each with the client's field;
formats (date-time, uri) are checked too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import jsonschema
import pytest

from tests.integration.conftest import ECHO, user
from warmfleet.bundle import bundle_to_tempfile

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPLICATE = json.loads((FIXTURES / "replicate" / "openapi.json").read_text())

# Replicate's operations that warmfleet serves: operationId -> (method, warmfleet's path).
SERVED: dict[str, tuple[str, str]] = {
    "account.get": ("GET", "/v1/account"),
    "hardware.list": ("GET", "/v1/hardware"),
    "webhooks.default.secret.get": ("GET", "/v1/webhooks/default/secret"),
    "models.list": ("GET", "/v1/models"),
    "models.create": ("POST", "/v1/models"),
    "models.search": ("QUERY", "/v1/models"),
    "search": ("GET", "/v1/search"),
    "models.get": ("GET", "/v1/models/{owner}/{name}"),
    "models.update": ("PATCH", "/v1/models/{owner}/{name}"),
    "models.delete": ("DELETE", "/v1/models/{owner}/{name}"),
    "models.readme.get": ("GET", "/v1/models/{owner}/{name}/readme"),
    "models.examples.list": ("GET", "/v1/models/{owner}/{name}/examples"),
    "models.versions.list": ("GET", "/v1/models/{owner}/{name}/versions"),
    "models.versions.get": ("GET", "/v1/models/{owner}/{name}/versions/{id}"),
    "models.versions.delete": ("DELETE", "/v1/models/{owner}/{name}/versions/{id}"),
    "models.predictions.create": ("POST", "/v1/models/{owner}/{name}/predictions"),
    "predictions.create": ("POST", "/v1/predictions"),
    "predictions.list": ("GET", "/v1/predictions"),
    "predictions.get": ("GET", "/v1/predictions/{id}"),
    "predictions.cancel": ("POST", "/v1/predictions/{id}/cancel"),
    "deployments.list": ("GET", "/v1/deployments"),
    "deployments.create": ("POST", "/v1/deployments"),
    "deployments.get": ("GET", "/v1/deployments/{owner}/{name}"),
    "deployments.update": ("PATCH", "/v1/deployments/{owner}/{name}"),
    "deployments.delete": ("DELETE", "/v1/deployments/{owner}/{name}"),
    "deployments.predictions.create": ("POST", "/v1/deployments/{owner}/{name}/predictions"),
    "files.list": ("GET", "/v1/files"),
    "files.create": ("POST", "/v1/files"),
    "files.get": ("GET", "/v1/files/{id}"),
    "files.download": ("GET", "/v1/files/{id}/download"),
    "files.delete": ("DELETE", "/v1/files/{id}"),
}
# Replicate's operations that warmfleet does not serve, and why: each answers a 404 problem saying so
# (gateway/rest/unserved.py).
UNSERVED: dict[str, str] = {
    "trainings.create": "fine-tuning jobs that write new weights: train elsewhere, push the result (Cog)",
    "trainings.list": "no trainings run here (trainings.create)",
    "trainings.get": "no trainings run here (trainings.create)",
    "trainings.cancel": "no trainings run here (trainings.create)",
    "collections.list": "lists of models curated by Replicate's staff; a cluster has its own models only",
    "collections.get": "lists of models curated by Replicate's staff; a cluster has its own models only",
}
UNSERVED_ROUTES = {
    "trainings.create": ("POST", f"/v1/models/{ECHO}/versions/abc/trainings"),
    "trainings.list": ("GET", "/v1/trainings"), "trainings.get": ("GET", "/v1/trainings/abc"),
    "trainings.cancel": ("POST", "/v1/trainings/abc/cancel"), "collections.list": ("GET", "/v1/collections"),
    "collections.get": ("GET", "/v1/collections/image-editing"),
}
VERSION = "#/components/schemas/schemas_version_response"
PREDICTION = "#/components/schemas/schemas_prediction_response"
# Where Replicate's document requires less than Replicate's Python client (1.0.7) reads: (the schema, as a
# pointer into the document, its fields the client's model needs), and, for an object the document leaves
# untyped, the document's own schema of that object.
CLIENT_NEEDS: dict[str, list[str]] = {
    VERSION: ["id", "created_at", "cog_version", "openapi_schema"],  # replicate.version.Version
    "#/components/schemas/schemas_model_response": [  # replicate.model.Model
        "url", "owner", "name", "description", "visibility", "github_url", "paper_url", "license_url",
        "run_count", "cover_image_url", "default_example", "latest_version"],
    "#/components/schemas/schemas_deployment_response": ["owner", "name", "current_release"],
    "#/components/schemas/schemas_deployment_response/properties/current_release": [  # Deployment.Release
        "number", "model", "version", "created_at", "configuration"],
    "#/components/schemas/schemas_deployment_response/properties/current_release/properties/configuration": [
        "hardware", "min_instances", "max_instances"],
    "#/components/schemas/schemas_deployment_response/properties/current_release/properties/created_by": [
        "type", "username", "name"],  # replicate.account.Account
    "#/paths/~1account/get/responses/200/content/application~1json/schema": ["type", "username", "name"],
    "#/paths/~1hardware/get/responses/200/content/application~1json/schema/items": ["sku", "name"],
    "#/components/schemas/schemas_file_response": ["id", "name", "content_type", "size", "etag", "checksums",
                                                   "metadata", "created_at", "urls"],  # replicate.file.File
}
UNTYPED = {  # an object the document types only as "object": the document's own schema of it
    "#/components/schemas/schemas_model_response/properties/latest_version": VERSION,
    "#/components/schemas/schemas_model_response/properties/default_example": PREDICTION,
}


# Replicate's document as JSON Schema


def pointer(ref: str) -> Any:
    node: Any = REPLICATE
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def schema_at(ref: str) -> dict[str, Any]:
    """The schema at ``ref`` as JSON Schema: ``$ref``s inlined, ``nullable: true`` as "or null",
    ``CLIENT_NEEDS`` required, ``UNTYPED`` objects given their schema."""
    return _converted(pointer(ref), ref)


def _converted(node: Any, at: str) -> Any:
    if isinstance(node, list):
        return [_converted(item, f"{at}/{i}") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return schema_at(node["$ref"])
    out = {key: _converted(value, f"{at}/{key.replace('/', '~1')}") for key, value in node.items()
           if key not in ("nullable", "example", "description", "properties")}
    if "properties" in node:  # its names are fields ("description" too), each a schema
        out["properties"] = {name: _converted(schema, f"{at}/properties/{name}")
                             for name, schema in node["properties"].items()}
    if at in UNTYPED:
        out = schema_at(UNTYPED[at])
    if at in CLIENT_NEEDS:
        out["required"] = sorted({*out.get("required", []), *CLIENT_NEEDS[at]})
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """RFC 3339 with its offset (jsonschema checks date-time only with a package not installed here)."""
    if not isinstance(value, str):
        return True
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


@FORMATS.checks("uri", raises=ValueError)
def _uri(value: object) -> bool:
    if isinstance(value, str) and not (urlsplit(value).scheme and urlsplit(value).netloc):
        raise ValueError(f"{value!r} is not an absolute URI")
    return True


def operation(operation_id: str) -> tuple[str, str, dict[str, Any]]:
    """(method, Replicate's path, the operation) of an operationId of Replicate's document."""
    for path, item in REPLICATE["paths"].items():
        for method, op in item.items():
            if op["operationId"] == operation_id:
                return method, path, op
    raise KeyError(operation_id)


def validate(operation_id: str, status: int, content_type: str, raw: bytes) -> Any:
    """The body, checked against Replicate's document for ``operation_id`` answered ``status``."""
    method, path, op = operation(operation_id)
    documented_statuses = sorted(op["responses"])
    assert str(status) in op["responses"], (
        f"{operation_id}: Replicate's document has no {status} (only {documented_statuses}); {raw[:500]!r}")
    documented = op["responses"][str(status)].get("content")
    if not documented and status >= 400:  # an error the document gives no body: ours is a problem, as all are
        body = json.loads(raw)
        assert content_type == "application/problem+json" and isinstance(body.get("detail"), str), raw[:300]
        return body
    if not documented:
        assert raw == b"", f"{operation_id} {status}: Replicate's answer has no body; ours is {raw[:200]!r}"
        return None
    if "application/octet-stream" in documented:  # a file's bytes: served as its own media type
        return raw
    assert content_type in documented, f"{operation_id} {status}: {content_type} is not {sorted(documented)}"
    body = raw.decode() if content_type == "text/plain" else json.loads(raw)
    media = content_type.replace("/", "~1")
    where = path.replace("/", "~1")
    schema = schema_at(f"#/paths/{where}/{method}/responses/{status}/content/{media}/schema")
    validator = jsonschema.Draft202012Validator(schema, format_checker=FORMATS)
    errors = sorted(validator.iter_errors(body), key=str)
    assert not errors, f"{operation_id} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:300]}" for e in errors[:10])
    return body


# A real gateway, called as Replicate's documented calls do


@dataclass
class Caller:
    """Calls the gateway, and validates each answer as the Replicate operation it is."""

    http: aiohttp.ClientSession
    api: Any
    tmp_path: Path
    checked: list[str] = field(default_factory=list)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api.token}"}

    async def new_user(self, prefix: str) -> tuple[str, dict[str, str]]:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        return name, {"Authorization": f"Bearer {(await user(self.api, name)).token}"}

    async def call(self, operation_id: str, method: str, url: str, headers: dict[str, str], *,
                   status: int | None = None, **kwargs: Any) -> Any:
        async with self.http.request(method, url, headers=headers, **kwargs) as resp:
            raw = await resp.read()
            got, content_type = resp.status, resp.content_type if raw else ""
        if status is not None:
            assert got == status, (operation_id, got, raw[:500])
        body = validate(operation_id, got, content_type, raw)
        self.checked.append(operation_id)
        return body

    async def model(self, headers: dict[str, str], owner: str, **fields: Any) -> dict[str, Any]:
        """A new model (Replicate's "create a model"), validated as ``models.create``."""
        body = {"owner": owner, "name": f"m-{uuid.uuid4().hex[:6]}", "visibility": "public",
                "hardware": "cpu", **fields}
        return await self.call("models.create", "POST", "/v1/models", headers, status=201, json=body)

    async def prediction(self, operation_id: str = "models.predictions.create",
                         url: str = f"/v1/models/{ECHO}/predictions", headers: dict[str, str] | None = None,
                         wait: bool = True, **body: Any) -> dict[str, Any]:
        """A prediction made by ``operation_id`` at ``url`` (by default: of echo, with Prefer: wait)."""
        body.setdefault("input", {"text": "hello"})
        sent = {**(headers or self.admin), **({"Prefer": "wait=30"} if wait else {})}
        return await self.call(operation_id, "POST", url, sent, status=201, json=body)

    async def deployment(self) -> dict[str, Any]:
        body = {"name": f"conf-{uuid.uuid4().hex[:6]}", "model": ECHO, "version": await self.echo_version(),
                "hardware": "cpu", "min_instances": 0, "max_instances": 1}
        return await self.call("deployments.create", "POST", "/v1/deployments", self.admin, status=200,
                               json=body)

    async def echo_version(self) -> str:
        echo = await self.call("models.get", "GET", f"/v1/models/{ECHO}", self.admin)
        return echo["latest_version"]["id"]

    async def upload(self, headers: dict[str, str]) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("content", b"hello, file", filename="hello.txt", content_type="text/plain")
        form.add_field("metadata", json.dumps({"purpose": "conformance"}))
        return await self.call("files.create", "POST", "/v1/files", headers, status=201, data=form)


@pytest.fixture
async def caller(running, tmp_path):
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.gateway.http_port}") as http:
        yield Caller(http, running.api, tmp_path)


Scenario = Callable[[Caller], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(*operation_ids: str) -> Callable[[Scenario], Scenario]:
    """The calls that exercise ``operation_ids`` (each validated, with whatever else they call)."""
    def register(fn: Scenario) -> Scenario:
        for operation_id in operation_ids:
            SCENARIOS[operation_id] = fn
        return fn
    return register


@scenario("account.get", "webhooks.default.secret.get")
async def account_and_secret(c: Caller) -> None:
    name, headers = await c.new_user("conf")
    account = await c.call("account.get", "GET", "/v1/account", headers, status=200)
    assert (account["type"], account["username"], account["name"]) == ("user", name, name)
    secret = await c.call("webhooks.default.secret.get", "GET", "/v1/webhooks/default/secret", headers,
                          status=200)
    assert secret["key"].startswith("whsec_")


@scenario("hardware.list")
async def hardware(c: Caller) -> None:
    listed = await c.call("hardware.list", "GET", "/v1/hardware", c.admin, status=200)
    assert "cpu" in [h["sku"] for h in listed]


@scenario("models.list", "models.get")
async def models_list_and_get(c: Caller) -> None:
    owner, headers = await c.new_user("conf")
    made = await c.model(headers, owner)  # one with no version yet, beside the built-in ones
    try:
        for query in ("", "?sort_by=model_created_at&sort_direction=asc"):
            listed = await c.call("models.list", "GET", f"/v1/models{query}", headers, status=200)
            names = [f"{m['owner']}/{m['name']}" for m in listed["results"]]
            assert ECHO in names and made["id"] in names and listed["data"] == listed["results"]
        echo = await c.call("models.get", "GET", f"/v1/models/{ECHO}", headers, status=200)
        assert echo["latest_version"]["cog_version"] == "warmfleet-echo"
        empty = await c.call("models.get", "GET", f"/v1/models/{made['id']}", headers, status=200)
        assert empty["latest_version"] is None
    finally:
        await c.call("models.delete", "DELETE", f"/v1/models/{made['id']}", headers, status=204)


@scenario("models.create", "models.update", "models.readme.get", "models.delete")
async def models_create_update_delete(c: Caller) -> None:
    owner, headers = await c.new_user("conf")
    made = await c.model(headers, owner, description="Detect hot dogs in images",
                         github_url="https://github.com/alice/hot-dog-detector")
    assert (made["github_url"], made["latest_version"], made["owner"]) == (
        "https://github.com/alice/hot-dog-detector", None, owner)
    url = f"/v1/models/{made['id']}"
    await c.call("models.readme.get", "GET", f"{url}/readme", headers, status=404)
    paper = "https://arxiv.org/abs/2504.17639"
    changed = await c.call("models.update", "PATCH", url, headers, status=200, json={  # Replicate's example
        "description": "Hot dog or not", "readme": "# Hot Dog Detector\n\n🌭", "paper_url": paper,
        "weights_url": "https://huggingface.co/alice/hot-dog-detector",
        "license_url": "https://choosealicense.com/licenses/mit/"})
    assert (changed["description"], changed["paper_url"]) == ("Hot dog or not", paper)
    readme = await c.call("models.readme.get", "GET", f"{url}/readme", headers, status=200)
    assert readme == "# Hot Dog Detector\n\n🌭"
    await c.call("models.delete", "DELETE", url, headers, status=204)
    async with c.http.get(url, headers=headers) as resp:
        assert resp.status == 404


@scenario("models.search", "search")
async def model_search(c: Caller) -> None:
    text = {**c.admin, "Content-Type": "text/plain"}  # as Replicate's client sends it
    found = await c.call("models.search", "QUERY", "/v1/models", text, status=200, data="echo")
    assert ECHO in [m["id"] for m in found["results"]]
    searched = await c.call("search", "GET", "/v1/search?query=echo&limit=5", c.admin, status=200)
    assert searched["models"][0]["model"]["id"] == ECHO and searched["query"] == "echo"


@scenario("models.examples.list", "models.versions.list", "models.versions.get")
async def versions_and_examples(c: Caller) -> None:
    version = await c.echo_version()
    listed = await c.call("models.versions.list", "GET", f"/v1/models/{ECHO}/versions", c.admin, status=200)
    assert [v["id"] for v in listed["results"]] == [version]
    got = await c.call("models.versions.get", "GET", f"/v1/models/{ECHO}/versions/{version}", c.admin,
                       status=200)
    assert got["id"] == version and got["openapi_schema"]["components"]["schemas"]["Input"]
    examples = await c.call("models.examples.list", "GET", f"/v1/models/{ECHO}/examples", c.admin, status=200)
    assert examples["results"] == []


async def push_versioned(c: Caller, headers: dict[str, str], model: str, value: str) -> str:
    """Push the ``versioned`` Cog fixture, answering ``value``, to ``model`` over REST: its version id."""
    directory = c.tmp_path / value
    shutil.copytree(FIXTURES / "cog" / "versioned", directory)
    source = directory / "predict.py"
    source.write_text(source.read_text().replace('VERSION = "one"', f'VERSION = "{value}"'))
    path, digest, _ = bundle_to_tempfile(directory)
    try:
        async with c.http.post(f"/v1/models/{model}/versions", data=path.read_bytes(), headers={
                **headers, "Content-Type": "application/octet-stream", "X-Bundle-Digest": digest}) as resp:
            assert resp.status == 201, await resp.text()
    finally:
        path.unlink()
    return digest


@scenario("models.versions.delete")
async def versions_of_a_pushed_model(c: Caller) -> None:
    owner, headers = await c.new_user("conf")
    made = await c.model(headers, owner, visibility="private")
    try:
        one = await push_versioned(c, headers, made["id"], "one")  # the model created empty takes its first
        two = await push_versioned(c, headers, made["id"], "two")
        model = await c.call("models.get", "GET", f"/v1/models/{made['id']}", headers, status=200)
        assert (model["latest_version"]["id"], model["visibility"]) == (two, "private")
        assert re.match(r"^\d+\.\d+", model["latest_version"]["cog_version"])  # the Cog runtime's
        versions = f"/v1/models/{made['id']}/versions"
        listed = await c.call("models.versions.list", "GET", versions, headers, status=200)
        assert [v["id"] for v in listed["results"]] == [two, one]
        await c.call("models.versions.delete", "DELETE", f"{versions}/{one}", headers, status=202)
        left = await c.call("models.versions.list", "GET", versions, headers, status=200)
        assert [v["id"] for v in left["results"]] == [two]
    finally:
        await c.call("models.delete", "DELETE", f"/v1/models/{made['id']}", headers, status=204)


@scenario("models.predictions.create", "predictions.create", "predictions.get")
async def predictions_create_and_get(c: Caller) -> None:
    by_model = await c.prediction(input={"text": "by model"}, headers=None)
    assert (by_model["status"], by_model["output"], by_model["source"]) == ("succeeded", "by model", "api")
    assert by_model["urls"]["web"].endswith(f"/predictions/{by_model['id']}")
    by_version = await c.prediction("predictions.create", "/v1/predictions", version=await c.echo_version(),
                                    input={"text": "by version"})
    got = await c.call("predictions.get", "GET", f"/v1/predictions/{by_version['id']}", c.admin, status=200)
    assert (got["output"], got["model"]) == ("by version", ECHO) and "predict_time" in got["metrics"]


@scenario("predictions.list")
async def predictions_list(c: Caller) -> None:
    _, headers = await c.new_user("conf")
    made = [await c.prediction(headers=headers, input={"text": f"n{i}"}) for i in range(3)]
    listed = await c.call("predictions.list", "GET", "/v1/predictions", headers, status=200)
    assert [p["id"] for p in listed["results"]] == [p["id"] for p in made[::-1]]
    after = made[1]["created_at"]  # at or after the second, before the third: the second only
    before = made[2]["created_at"]
    query = f"?created_after={after}&created_before={before}"
    window = await c.call("predictions.list", "GET", f"/v1/predictions{query}", headers, status=200)
    assert [p["id"] for p in window["results"]] == [made[1]["id"]]
    web = await c.call("predictions.list", "GET", "/v1/predictions?source=web", headers, status=200)
    assert web["results"] == []
    async with c.http.get("/v1/predictions?created_after=yesterday", headers=headers) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 422 and problem["field"] == "created_after", problem


@scenario("predictions.cancel")
async def predictions_cancel(c: Caller) -> None:
    pred = await c.prediction(input={"text": "slow", "delay_ms": 30_000}, wait=False,
                              headers={**c.admin, "Cancel-After": "5m"})
    assert "deadline" in pred  # Cancel-After set one
    url = f"/v1/predictions/{pred['id']}"
    canceled = await c.call("predictions.cancel", "POST", f"{url}/cancel", c.admin, status=200)
    assert canceled["id"] == pred["id"]
    async with asyncio.timeout(15):
        while (await c.call("predictions.get", "GET", url, c.admin))["status"] != "canceled":
            await asyncio.sleep(0.05)


@scenario("deployments.create", "deployments.get", "deployments.list", "deployments.update",
          "deployments.delete", "deployments.predictions.create")
async def deployments(c: Caller) -> None:
    made = await c.deployment()
    name = f"{made['owner']}/{made['name']}"
    try:
        release = made["current_release"]
        assert release["number"] == 1 and release["created_by"]["username"] == "admin"
        assert release["configuration"]["hardware"] == "cpu"
        assert await c.call("deployments.get", "GET", f"/v1/deployments/{name}", c.admin, status=200) == made
        listed = await c.call("deployments.list", "GET", "/v1/deployments", c.admin, status=200)
        assert name in [f"{d['owner']}/{d['name']}" for d in listed["results"]]
        updated = await c.call("deployments.update", "PATCH", f"/v1/deployments/{name}", c.admin, status=200,
                               json={"max_instances": 2, "hardware": "any"})
        now = updated["current_release"]
        assert (now["number"], now["configuration"]["hardware"]) == (2, "any")
        assert updated["current_release"]["created_at"] >= release["created_at"]
        pred = await c.prediction("deployments.predictions.create", f"/v1/deployments/{name}/predictions",
                                  input={"text": "by deployment"})
        assert (pred["status"], pred["deployment"], pred["output"]) == ("succeeded", name, "by deployment")
    finally:
        await c.call("deployments.delete", "DELETE", f"/v1/deployments/{name}", c.admin, status=204)


@scenario("files.create", "files.list", "files.get", "files.download", "files.delete")
async def files(c: Caller) -> None:
    _, headers = await c.new_user("conf")
    made = await c.upload(headers)
    listed = await c.call("files.list", "GET", "/v1/files", headers, status=200)
    assert made["id"] in [f["id"] for f in listed["results"]]
    assert (await c.call("files.get", "GET", f"/v1/files/{made['id']}", headers, status=200))["size"] == 11
    data = await c.call("files.download", "GET", made["urls"]["download"], {}, status=200)  # a signed link
    assert data == b"hello, file"
    await c.call("files.delete", "DELETE", f"/v1/files/{made['id']}", headers, status=204)
    problem = await c.call("files.get", "GET", f"/v1/files/{made['id']}", headers, status=404)
    assert made["id"] in problem["detail"]


# The tests


def test_every_operation_of_replicates_document_is_served_or_listed_as_not_and_why():
    documented = {op["operationId"] for item in REPLICATE["paths"].values() for op in item.values()}
    assert set(SERVED) & set(UNSERVED) == set()
    assert documented - set(SERVED) - set(UNSERVED) == set(), "an operation of Replicate's in neither list"
    assert (set(SERVED) | set(UNSERVED)) - documented == set(), "listed, and not in Replicate's document"
    assert set(SCENARIOS) == set(SERVED) and set(UNSERVED_ROUTES) == set(UNSERVED)
    for operation_id, (method, ours) in SERVED.items():  # the same route: its method, its path's shape
        theirs_method, theirs, _ = operation(operation_id)
        assert method.lower() == theirs_method
        assert re.sub(r"{\w+}", "{}", "/v1" + theirs) == re.sub(r"{\w+}", "{}", ours), operation_id


def test_the_vendored_document_is_replicates_as_fetched():
    readme = (FIXTURES / "replicate" / "README.md").read_text()
    commit = re.search(r"\b[0-9a-f]{40}\b", readme)
    assert commit and "tryAGI/Replicate" in readme and "src/libs/Replicate/openapi.json" in readme
    digest = hashlib.sha256((FIXTURES / "replicate" / "openapi.json").read_bytes()).hexdigest()
    assert digest in readme, "the document differs from the one the README notes"
    assert REPLICATE["info"]["title"] == "Replicate HTTP API"
    assert REPLICATE["servers"][0]["url"] == "https://api.replicate.com/v1"


def test_the_schemas_read_nullable_as_null_and_need_what_replicates_client_needs():
    version = schema_at(VERSION)
    good = {"id": "v", "created_at": "2024-05-01T12:00:00Z", "cog_version": "0.16.0", "openapi_schema": {}}
    checker = jsonschema.Draft202012Validator(version, format_checker=FORMATS)
    assert checker.is_valid(good) and checker.is_valid({**good, "cog_version": None, "openapi_schema": None})
    for bad in ({**good, "created_at": None}, {k: v for k, v in good.items() if k != "cog_version"},
                {**good, "created_at": "yesterday"}):
        assert not checker.is_valid(bad), bad
    model = jsonschema.Draft202012Validator(schema_at("#/components/schemas/schemas_model_response"))
    shown = {"url": "u", "owner": "o", "name": "n", "description": None, "visibility": "public",
             "github_url": None, "paper_url": None, "license_url": None, "run_count": 0,
             "cover_image_url": None, "default_example": None, "latest_version": None}
    assert model.is_valid(shown) and model.is_valid({**shown, "latest_version": good})
    # What a user found: a latest_version with created_at null, which Replicate's client refuses.
    assert not model.is_valid({**shown, "latest_version": {**good, "created_at": None}})


@pytest.mark.parametrize("operation_id", sorted(SERVED))
async def test_each_served_operation_answers_as_replicates_document_says(caller, operation_id):
    await SCENARIOS[operation_id](caller)
    assert operation_id in caller.checked, f"the scenario for {operation_id} never called it"


@pytest.mark.parametrize("operation_id", sorted(UNSERVED))
async def test_each_unserved_operation_is_a_404_problem_saying_why(caller, operation_id):
    method, path = UNSERVED_ROUTES[operation_id]
    async with caller.http.request(method, path, headers=caller.admin) as resp:
        problem = await resp.json(content_type=None)
        assert resp.status == 404 and resp.content_type == "application/problem+json", problem
    assert problem["status"] == 404 and operation_id.split(".")[0] in problem["detail"]  # names what is not


async def test_the_model_list_is_also_openais(caller):
    listed = await caller.call("models.list", "GET", "/v1/models", caller.admin, status=200)
    openai_model = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
        "owned_by": {"type": "string"}}}
    jsonschema.validate(listed, {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": openai_model, "minItems": 1}}})
    now = datetime.now(timezone.utc)
    for model in listed["data"]:
        assert model["id"] == f"{model['owner']}/{model['name']}" and model["owned_by"] == model["owner"]
        assert now - timedelta(days=1) < datetime.fromtimestamp(model["created"], timezone.utc) <= now
