"""The checked-in OpenAPI document: what the builder makes, valid OpenAPI 3.1, and naming exactly the routes
the gateway's aiohttp application registers."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from schemathesis.specs.openapi.definitions import OPENAPI_31

from gateway.http import build_app
from gateway.metrics import GatewayMetrics
from gateway.rest import openapi
from gateway.rest.app import add_rest_routes
from gateway.rest.context import PUBLIC_PATHS, RestContext
from warmfleet.settings import Settings

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def app(tmp_path) -> web.Application:
    app = build_app(GatewayMetrics(controller=None), lambda: "")
    add_rest_routes(app, RestContext(settings=Settings(home=tmp_path), accounts=None, predictions=None,
                                     catalog=None, routes=None, pusher=None, controller=None, files=None,
                                     resolver=None, webhooks=None))
    return app


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route; HEAD is aiohttp's twin of each GET."""
    routes = set()
    for route in app.router.routes():
        if route.method.lower() in METHODS:
            routes.add((route.method.lower(), route.resource.canonical))
    return routes


def test_the_checked_in_document_is_what_the_builder_makes():
    assert openapi.DOCUMENT_PATH.read_text() == openapi.render(), (
        "regenerate: .venv/bin/python -m gateway.rest.openapi > gateway/rest/openapi.json")


def test_the_document_is_valid_openapi_3_1():
    doc = json.loads(openapi.DOCUMENT_PATH.read_text())
    jsonschema.Draft202012Validator(OPENAPI_31).validate(doc)
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    # Every $ref resolves.
    text = json.dumps(doc)
    for target in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = doc
        for part in target.split("/"):
            node = node[part]
    # Path parameters are declared for every {name} in a path, and only those.
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_schemathesis_loads_every_operation():
    import schemathesis

    schema = schemathesis.openapi.from_dict(json.loads(openapi.DOCUMENT_PATH.read_text()))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in schema.raw_schema["paths"].values())


def test_every_registered_route_is_documented_and_every_documented_one_registered(app):
    doc = openapi.build()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert registered(app) == documented


def test_public_paths_need_no_token_and_the_rest_need_bearer():
    doc = openapi.build()
    for path, item in doc["paths"].items():
        for operation in item.values():
            if path in PUBLIC_PATHS:
                assert operation["security"] == []
            else:
                assert "security" not in operation and "401" in operation["responses"], path
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_every_429_says_retry_after():
    doc = openapi.build()
    assert doc["components"]["responses"]["Problem429"]["headers"]["Retry-After"]["required"]
    assert doc["components"]["responses"]["Problem429"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


async def test_the_gateway_serves_the_document_without_a_token(app):
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.json() == openapi.build()
