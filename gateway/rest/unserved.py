"""REST routes: what Replicate's HTTP API has and a self-hosted cluster does not, answered 404 with a
problem that says why, never a 405 on a route Replicate documents. A 404, not a 501: no request to the
gateway reaches a 5xx (DESIGN.md), and for this cluster the resource is not there at all.

- Trainings (``GET /v1/trainings``, ``GET /v1/trainings/{id}``, ``POST /v1/trainings/{id}/cancel``,
  ``POST /v1/models/{owner}/{name}/versions/{id}/trainings``): fine-tuning jobs that write new weights are
  not a thing warmfleet runs; push the trained model as a Cog model instead (``warmfleet push``).
- Collections (``GET /v1/collections``, ``GET /v1/collections/{slug}``): lists of models curated by
  Replicate's staff; a cluster's own models are ``GET /v1/models`` and ``GET /v1/search``.

``tests/integration/test_replicate_conformance.py`` keeps the list of Replicate's operations not served,
and why, beside these routes.
"""

from __future__ import annotations

from aiohttp import web

from gateway.rest.context import problem

TRAININGS = ("trainings (fine-tuning jobs that write new weights) are Replicate's, and warmfleet does not "
             "run them; train elsewhere and push the result as a Cog model (`warmfleet push DIR OWNER/NAME`)")
COLLECTIONS = ("collections are lists of models curated by Replicate's staff; a warmfleet cluster has none: "
               "GET /v1/models lists its models and GET /v1/search?query=... searches them")


def _unserved(detail: str):
    async def handler(request: web.Request) -> web.Response:
        return problem(404, "Not Found", detail)

    return handler


def register(app: web.Application) -> None:
    """Add this module's routes to the app."""
    trainings, collections = _unserved(TRAININGS), _unserved(COLLECTIONS)
    app.router.add_get("/v1/trainings", trainings)
    app.router.add_get("/v1/trainings/{id}", trainings)
    app.router.add_post("/v1/trainings/{id}/cancel", trainings)
    app.router.add_post("/v1/models/{owner}/{name}/versions/{id}/trainings", trainings)
    app.router.add_get("/v1/collections", collections)
    app.router.add_get("/v1/collections/{slug}", collections)
