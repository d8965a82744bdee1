"""Replicate's models API in the core, on a real ``Controller`` (fake agents, no Ray): a model created with
no version yet (listed, refused for predictions, filled by a push), a model's update, who made a
deployment's release and when, the time a configured version shows, and the prediction store's
``created_after``/``created_before`` filters."""

from __future__ import annotations

import pytest

from gateway.auth import Principal, Role
from gateway.catalog import ModelCatalog
from gateway.deployments import ModelChanges, RouteService, Scale
from gateway.store import PredictionStore
from scheduler.controller import Controller
from tests.unit.test_cog_versions import BUILTIN, D1, D2, OneNode, pushed
from warmfleet.domain import Prediction, RouteSpec, Status, version_route_name
from warmfleet.errors import AlreadyExists, InvalidInput, PermissionDenied

ALICE = Principal("acct_alice", "alice", Role.USER, frozenset({"acme"}))
BOB = Principal("acct_bob", "bob", Role.USER)
ADMIN = Principal("acct_admin", "admin", Role.ADMIN)
MODEL = "alice/hot-dog"


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def cluster():
    """A controller serving one built-in model (no instances), a catalog and a route service, both on a
    clock the test moves."""
    controller = Controller([RouteSpec(BUILTIN, "echo", min_instances=0)], OneNode(), clock=lambda: 100.0,
                            autoscale_interval_s=3600, membership_interval_s=None)
    await controller.start()
    clock = Clock(1_000.0)
    catalog = ModelCatalog(clock=clock)
    catalog.update(await controller.models())
    yield controller, catalog, RouteService(controller, catalog, clock=clock), clock
    await controller.stop()


def empty_model(name: str = MODEL, owner: str = "alice", **fields) -> RouteSpec:
    """What Replicate's "create a model" body makes (``shapes.model_create``)."""
    return RouteSpec(name, "", owner=owner, min_instances=0, **{"visibility": "public", **fields})


# A model with no version yet


async def test_a_model_created_with_no_version_is_listed_and_refused_for_predictions(cluster):
    controller, catalog, routes, clock = cluster
    entry = await routes.create_empty_model_as(ALICE, empty_model(hardware="cpu", about={"readme": "# Hi"}))
    assert (entry.spec.runner, entry.spec.version, entry.spec.created_at) == ("", "", 1_000.0)
    assert MODEL in [e.spec.name for e in catalog.visible_models(BOB)]  # public
    assert catalog.versions(MODEL) == [] and catalog.model_created_at(MODEL) == 1_000.0
    with pytest.raises(InvalidInput) as err:
        catalog.resolve(MODEL, "", "")
    assert err.value.field == "model" and "has no version yet" in err.value.rule
    with pytest.raises(InvalidInput, match="no version yet"):
        await routes.create_deployment("alice/prod", MODEL, "", Scale())
    assert [s for s in await controller.models() if s.name == MODEL][0].min_instances == 0


async def test_a_model_goes_under_a_namespace_of_the_callers_only(cluster):
    _, catalog, routes, _ = cluster
    with pytest.raises(PermissionDenied, match="under acme or alice"):
        await routes.create_empty_model_as(ALICE, empty_model("bob/mine", owner="bob"))
    shared = await routes.create_empty_model_as(ALICE, empty_model("acme/shared", owner="acme"))  # her org
    theirs = await routes.create_empty_model_as(ADMIN, empty_model("bob/theirs", owner="bob"))
    assert (shared.spec.owner, theirs.spec.owner) == ("acme", "bob")
    await routes.create_empty_model_as(ALICE, empty_model())
    with pytest.raises(AlreadyExists):
        await routes.create_empty_model_as(ALICE, empty_model())
    with pytest.raises(AlreadyExists):  # a configured model's name too
        await routes.create_empty_model_as(ADMIN, empty_model(BUILTIN, owner="acme"))


async def test_a_push_gives_the_model_its_first_version_keeping_what_its_creation_said(cluster):
    controller, catalog, routes, _ = cluster
    await routes.create_empty_model_as(ALICE, empty_model(hardware="cpu", description="Finds hot dogs",
                                                          about={"github_url": "https://github.com/a/b"}))
    with pytest.raises(PermissionDenied):
        routes.check_may_push(MODEL, "bob", is_admin=False)
    routes.check_may_push(MODEL, "alice", is_admin=False)
    result = await routes.push_version(pushed(D1, created_at=2_000.0, name=MODEL))
    assert result.new_version and not result.created_model
    spec = catalog.by_name(MODEL).spec
    assert (spec.runner, spec.version, spec.created_at) == ("cog", D1, 2_000.0)
    # Its creation said public, cpu, a description and a link; the push (private, "" hardware) keeps them.
    assert (spec.visibility, spec.hardware, spec.description, spec.about) == (
        "public", "cpu", "Finds hot dogs", {"github_url": "https://github.com/a/b"})
    assert [e.spec.version for e in catalog.versions(MODEL)] == [D1]  # no version route for "no version"
    assert not any(s.is_version_route for s in await controller.models())
    assert catalog.resolve(MODEL, "", "").spec.version == D1
    assert catalog.model_created_at(MODEL) == 2_000.0  # its oldest version's time


# Updates of a model


async def test_an_update_sets_the_description_links_and_visibility_of_every_version(cluster):
    controller, catalog, routes, _ = cluster
    await routes.push_version(pushed(D1, created_at=1.0))
    await routes.push_version(pushed(D2, created_at=2.0))
    changes = ModelChanges(description="now public", visibility="public",
                           about={"paper_url": "https://arxiv.org/abs/1", "readme": "# R"})
    entry = await routes.update_model_as(ALICE, "alice/styler", changes)
    assert (entry.spec.description, entry.spec.visibility) == ("now public", "public")
    assert entry.spec.about == {"paper_url": "https://arxiv.org/abs/1", "readme": "# R"}
    earlier = next(s for s in await controller.models() if s.name == version_route_name("alice/styler", D1))
    assert earlier.visibility == "public"  # a prediction pinned to the earlier version sees it public too
    removed = await routes.update_model_as(ALICE, "alice/styler", ModelChanges(about={"readme": ""}))
    assert removed.spec.about == {"paper_url": "https://arxiv.org/abs/1"} and removed.spec.version == D2


async def test_only_its_namespace_or_an_admin_may_update_a_model(cluster):
    _, _, routes, _ = cluster
    await routes.create_empty_model_as(ALICE, empty_model())
    with pytest.raises(PermissionDenied):
        await routes.update_model_as(BOB, MODEL, ModelChanges(description="mine now"))
    with pytest.raises(PermissionDenied):  # a configured model is the operator's
        await routes.update_model_as(ALICE, BUILTIN, ModelChanges(description="x"))
    changed = await routes.update_model_as(ADMIN, BUILTIN, ModelChanges(description="x"))
    assert changed.spec.description == "x"


# Times


async def test_a_release_records_who_made_it_and_when(cluster):
    _, catalog, routes, clock = cluster
    created = await routes.create_deployment_as(ADMIN, "admin/prod", BUILTIN, "", Scale())
    assert (created.spec.released_by, created.released_at, created.spec.release) == ("admin", 1_000.0, 1)
    clock.now = 1_050.0
    updated = await routes.update_deployment_as(ADMIN, "admin/prod", None, Scale(max_instances=2))
    assert (updated.released_at, updated.spec.release) == (1_050.0, 2)
    assert [d.released_at for d in await routes.deployments()] == [1_050.0]


async def test_a_configured_version_shows_when_the_gateway_first_listed_it(cluster):
    controller, catalog, _, clock = cluster
    assert catalog.by_name(BUILTIN).created_at == 1_000.0  # the catalog's first update
    clock.now = 5_000.0
    catalog.update(await controller.models())
    assert catalog.by_name(BUILTIN).created_at == 1_000.0  # the same version: the same time


# The prediction store's time filters


async def test_the_list_filters_by_creation_time_at_or_after_and_before(tmp_path):
    store = PredictionStore(tmp_path / "predictions.sqlite3")
    await store.open()
    try:
        for i in range(6):  # created at 10, 11, ... 15; the last three not flushed (pending saves)
            store.save(Prediction(f"p{i}", "acme/echo", "v1", {}, "alice", 10.0 + i, status=Status.SUCCEEDED))
            if i == 2:
                await store.flush()
        page, cursor = await store.list(None, 100, "", created_after=11.0, created_before=14.0)
        assert [p.id for p in page] == ["p3", "p2", "p1"] and cursor == ""
        first, cursor = await store.list(None, 2, "", created_after=11.0, created_before=14.0)
        rest, end = await store.list(None, 2, cursor, created_after=11.0, created_before=14.0)
        assert [p.id for p in first + rest] == ["p3", "p2", "p1"] and end == ""
        assert [p.id for p in (await store.list(None, 100, "", created_before=10.0))[0]] == []
    finally:
        await store.close()
