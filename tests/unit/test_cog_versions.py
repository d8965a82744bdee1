"""Pushed versions of users' Cog models, through ``RouteService`` and the catalog on a real ``Controller``
(fake agents, no Ray): a push makes its model's latest and keeps the previous one on a version route;
ownership decides who may push; a version a deployment serves cannot be deleted."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from gateway.catalog import ModelCatalog
from gateway.deployments import RouteService, Scale
from runners.cog.schema import input_json_schema
from scheduler.controller import Controller
from scheduler.placement import hardware_matches
from tests.unit.fakes import FakeNodeControl
from warmfleet.domain import RouteSpec, version_route_name
from warmfleet.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound, PermissionDenied

MODEL = "alice/styler"
BUILTIN = "acme/echo"
OPENAPI = {"components": {"schemas": {
    "Input": {"type": "object", "properties": {"x": {"type": "integer", "title": "X", "x-order": 0}}},
    "Output": {"type": "string"}}}}


def digest(n: int) -> str:
    return hashlib.sha256(f"bundle {n}".encode()).hexdigest()


D1, D2, D3 = digest(1), digest(2), digest(3)


def pushed(version: str, created_at: float, owner: str = "alice", name: str = MODEL) -> RouteSpec:
    """A version as a push makes it (``gateway.push``): private, no instance until asked for."""
    return RouteSpec(name, "cog", options={"bundle": version, "openapi_schema": OPENAPI}, min_instances=0,
                     version_id=version, created_at=created_at, owner=owner, visibility="private")


class OneNode:
    """A provisioner with one fake agent that never leaves."""

    def __init__(self) -> None:
        self._waiting = [FakeNodeControl("node-1")]

    async def provision(self) -> list[FakeNodeControl]:
        joined, self._waiting = self._waiting, []
        return joined

    async def departed(self) -> set[str]:
        return set()

    async def release(self, node_id: str) -> None:
        raise AssertionError("no node leaves in these tests")


@pytest.fixture
async def cluster():
    """A controller serving one built-in model (no instances), the catalog and the route service."""
    controller = Controller([RouteSpec(BUILTIN, "echo", min_instances=0)], OneNode(), clock=lambda: 100.0,
                            autoscale_interval_s=3600, membership_interval_s=None)
    await controller.start()
    catalog = ModelCatalog()
    catalog.update(await controller.models())
    yield controller, catalog, RouteService(controller, catalog)
    await controller.stop()


def names(entries) -> list[str]:
    return [e.spec.name for e in entries]


def test_the_minimal_cog_document_has_the_input_the_catalog_compiles():
    assert input_json_schema(OPENAPI)["properties"]["x"]["type"] == "integer"


# Pushing


async def test_a_first_push_creates_a_private_model_owned_by_the_pusher(cluster):
    controller, catalog, routes = cluster
    result = await routes.push_version(pushed(D1, 1.0))
    assert (result.created_model, result.new_version) == (True, True)
    own = catalog.by_name(MODEL).spec
    assert (own.owner, own.visibility, own.version, own.runner) == ("alice", "private", D1, "cog")
    assert MODEL in {m.name for m in await controller.models()}


async def test_a_new_digest_becomes_the_latest_and_the_previous_one_a_version_route(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    result = await routes.push_version(pushed(D2, 2.0, owner="admin"))
    assert (result.created_model, result.new_version, result.spec.version) == (False, True, D2)
    assert [e.spec.version for e in catalog.versions(MODEL)] == [D2, D1]
    earlier = catalog.versions(MODEL)[1].spec
    assert earlier.name == version_route_name(MODEL, D1)
    assert (earlier.version_of, earlier.min_instances) == (MODEL, 0)
    assert catalog.by_name(MODEL).spec.owner == "alice"  # the model keeps its owner
    assert catalog.resolve("", D1, "").spec.name == version_route_name(MODEL, D1)
    assert catalog.resolve("", D2, "").spec.name == MODEL
    assert names(catalog.models()) == sorted([BUILTIN, MODEL])


async def test_versions_are_newest_first(cluster):
    _, catalog, routes = cluster
    for n, version in enumerate((D1, D2, D3)):
        await routes.push_version(pushed(version, float(n)))
    assert [e.spec.version for e in catalog.versions(MODEL)] == [D3, D2, D1]
    assert catalog.version_of(MODEL, D2).spec.name == version_route_name(MODEL, D2)


@pytest.mark.parametrize("again", [D2, D1], ids=["the-latest", "an-earlier-one"])
async def test_pushing_a_digest_the_model_has_changes_nothing(cluster, again):
    controller, _, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.push_version(pushed(D2, 2.0))
    before = await controller.models()
    result = await routes.push_version(pushed(again, 3.0))
    assert (result.created_model, result.new_version, result.version.version) == (False, False, again)
    assert result.spec.version == D2
    assert await controller.models() == before


# Who may push


async def test_only_the_owner_or_an_admin_may_push_to_a_pushed_model(cluster):
    _, _, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    with pytest.raises(PermissionDenied, match="belongs to alice"):
        routes.check_may_push(MODEL, "bob", is_admin=False)
    assert routes.check_may_push(MODEL, "bob", is_admin=True) is None
    assert routes.check_may_push(MODEL, "alice", is_admin=False) is None
    assert routes.check_may_push("bob/new", "bob", is_admin=False) is None


async def test_no_one_may_push_to_a_built_in_model_or_a_deployment(cluster):
    _, _, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.create_deployment("alice/prod", MODEL, D1, Scale())
    for name in (BUILTIN, "alice/prod"):
        with pytest.raises(InvalidInput) as caught:
            routes.check_may_push(name, "alice", is_admin=True)
        assert caught.value.field == "model"


# Deleting versions


async def test_a_version_a_deployment_serves_cannot_be_deleted(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.push_version(pushed(D2, 2.0))
    await routes.create_deployment("alice/prod", MODEL, D1, Scale())
    with pytest.raises(FailedPrecondition, match="alice/prod"):
        await routes.delete_version(MODEL, D1)
    assert [e.spec.version for e in catalog.versions(MODEL)] == [D2, D1]
    assert catalog.resolve("", D1, "").spec.name == version_route_name(MODEL, D1)  # not the deployment


async def test_the_only_version_cannot_be_deleted(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    with pytest.raises(FailedPrecondition, match="only version"):
        await routes.delete_version(MODEL, D1)
    assert catalog.by_name(MODEL).spec.version == D1


async def test_deleting_an_earlier_version_removes_its_route(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.push_version(pushed(D2, 2.0))
    deleted = await routes.delete_version(MODEL, D1)
    assert deleted.version == D1
    assert [e.spec.version for e in catalog.versions(MODEL)] == [D2]
    assert not catalog.has_route(version_route_name(MODEL, D1))
    with pytest.raises(NotFound):
        catalog.resolve("", D1, "")


async def test_deleting_the_latest_makes_the_previous_one_the_latest(cluster):
    _, catalog, routes = cluster
    for n, version in enumerate((D1, D2, D3)):
        await routes.push_version(pushed(version, float(n)))
    await routes.delete_version(MODEL, D3)
    own = catalog.by_name(MODEL).spec
    assert (own.version, own.options["bundle"], own.created_at, own.owner) == (D2, D2, 1.0, "alice")
    assert [e.spec.version for e in catalog.versions(MODEL)] == [D2, D1]
    assert not catalog.has_route(version_route_name(MODEL, D2))
    assert catalog.resolve("", D2, "").spec.name == MODEL
    with pytest.raises(NotFound):
        catalog.resolve("", D3, "")


async def test_a_deleted_version_cannot_be_deployed(cluster):
    _, _, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.push_version(pushed(D2, 2.0))
    await routes.delete_version(MODEL, D1)
    with pytest.raises(NotFound):
        await routes.create_deployment("alice/prod", MODEL, D1, Scale())


# Deployments of pushed versions


async def test_a_deployment_of_an_earlier_version_serves_that_version(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.push_version(pushed(D2, 2.0))
    spec = await routes.create_deployment("alice/prod", MODEL, D1, Scale())
    assert (spec.version, spec.model, spec.version_of, spec.release) == (D1, MODEL, "", 1)
    assert catalog.deployment("alice/prod").spec.options["bundle"] == D1


async def test_updating_a_deployment_to_another_pushed_version_changes_its_version(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.create_deployment("alice/prod", MODEL, D1, Scale())
    await routes.push_version(pushed(D2, 2.0))
    updated = await routes.update_deployment("alice/prod", D2, Scale())
    assert (updated.version, updated.release) == (D2, 2)
    deployed = catalog.deployment("alice/prod").spec
    assert (deployed.version, deployed.options["bundle"]) == (D2, D2)
    back = await routes.update_deployment("alice/prod", D1, Scale())
    assert (back.version, back.release) == (D1, 3)


async def test_a_deployment_cannot_take_a_version_of_another_model(cluster):
    _, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.push_version(pushed(D3, 3.0, owner="bob", name="bob/other"))
    await routes.create_deployment("alice/prod", MODEL, D1, Scale())
    with pytest.raises(NotFound):
        await routes.update_deployment("alice/prod", D3, Scale())
    assert catalog.deployment("alice/prod").spec.version == D1


# Hardware


@pytest.mark.parametrize(("wanted", "node", "matches"), [
    ("gpu", "gpu-nvidia-h100-80gb", True),
    ("gpu", "cpu", False),
    ("gpu", "gpu", True),
    ("gpu-nvidia-h100-80gb", "gpu-nvidia-h100-80gb", True),
    ("gpu-nvidia-h100-80gb", "gpu-nvidia-a100-40gb", False),
    ("cpu", "gpu-nvidia-h100-80gb", False),
])
def test_hardware_matches_the_same_sku_or_any_gpu_for_gpu(wanted, node, matches):
    assert hardware_matches(wanted, node) is matches


async def test_the_controller_owns_names_a_second_create_and_a_model_over_a_deployment_are_taken(cluster):
    controller, catalog, routes = cluster
    await routes.push_version(pushed(D1, 1.0))
    await routes.create_deployment("alice/prod", MODEL, D1, Scale())
    # What a second gateway sends when its catalog has not seen the first create yet:
    racing = replace(catalog.deployment("alice/prod").spec, min_instances=1)
    with pytest.raises(AlreadyExists, match="alice/prod"):
        await controller.put_route(racing, new=True)
    with pytest.raises(AlreadyExists, match="taken \\(by a deployment\\)"):
        await controller.put_route(RouteSpec("alice/prod", "echo"))
    assert catalog.deployment("alice/prod").spec.min_instances == 0  # the first create stands
