"""Models and deployments as the operator changes them: the checks, then one call to the controller.

Both are routes to the controller (``ModelSpec``): a model's own route carries the model's name; a
deployment is a route of its own naming the model and version it serves. The controller rolls a new
version out on a route without dropping a prediction and scales each route; this module only decides
what the new route is, and refuses what would be wrong, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gateway.catalog import ModelCatalog
from runners.registry import runner_class
from scheduler.controller import scaling_config
from scheduler.ports import ControllerClient
from warmfleet.domain import ModelSpec
from warmfleet.errors import AlreadyExists, InvalidInput, NotFound, WarmfleetError

NAME_RULE = "must be owner/name: letters, digits, '-', '_' or '.', one '/'"


@dataclass(frozen=True)
class Scale:
    """The sizing fields of a create or update; None keeps the current value (or the default)."""

    min_instances: int | None = None
    max_instances: int | None = None
    autoscaling: dict[str, float] | None = None
    hardware: str | None = None


class RouteService:
    def __init__(self, controller: ControllerClient, catalog: ModelCatalog) -> None:
        self._controller = controller
        self._catalog = catalog

    # Models

    async def create_model(self, spec: ModelSpec) -> ModelSpec:
        _check_name("name", spec.name)
        if self._catalog.has_deployment(spec.name):
            raise AlreadyExists(f"{spec.name!r} is a deployment's name")
        _check_runner(spec)
        return await self._put(spec)

    async def delete_model(self, name: str) -> ModelSpec:
        entry = self._catalog.by_name(name)
        users = [e.spec.name for e in self._catalog.deployments() if e.spec.model == name]
        if users:
            raise InvalidInput("name", f"deployments serve {name}: {', '.join(users)}; delete them first")
        return await self._delete(entry.spec.name)

    # Deployments

    async def create_deployment(self, name: str, model: str, version: str, scale: Scale) -> ModelSpec:
        _check_name("name", name)
        if self._catalog.has_route(name):
            raise AlreadyExists(f"{name!r} is taken (by a model or deployment)")
        base = await self._version_of(model, version)
        spec = replace(base, name=name, model=model, release=0, min_instances=0, max_instances=None,
                       autoscaling={}, hardware="")
        return await self._put(_scaled(spec, scale, creating=True))

    async def update_deployment(self, name: str, version: str | None, scale: Scale) -> ModelSpec:
        current = self._catalog.deployment(name).spec
        spec = current
        if version is not None and version != current.version:
            new = await self._version_of(current.model, version)
            spec = replace(current, runner=new.runner, weights=new.weights, options=new.options,
                           description=new.description)
        return await self._put(_scaled(spec, scale, creating=False))

    async def delete_deployment(self, name: str) -> ModelSpec:
        return await self._delete(self._catalog.deployment(name).spec.name)

    # Shared

    async def _version_of(self, model: str, version: str) -> ModelSpec:
        own = self._catalog.by_name(model).spec
        if not version or version == own.version:
            return own
        spec = await self._controller.version(version)
        if spec is None or spec.model_name != model:
            raise NotFound(f"version {version!r} of {model} not found")
        return spec

    async def _put(self, spec: ModelSpec) -> ModelSpec:
        try:
            scaling_config(spec)
        except (TypeError, ValueError) as err:
            raise InvalidInput(_field_of(err), str(err)) from None
        spec = await self._controller.put_route(spec)
        self._catalog.update(await self._controller.models())
        return spec

    async def _delete(self, name: str) -> ModelSpec:
        spec = await self._controller.delete_route(name)
        if spec is None:
            raise NotFound(f"{name!r} not found")
        self._catalog.update(await self._controller.models())
        return spec


def _scaled(spec: ModelSpec, scale: Scale, creating: bool) -> ModelSpec:
    changes: dict[str, Any] = {}
    if scale.min_instances is not None:
        changes["min_instances"] = scale.min_instances
    if scale.max_instances is not None:
        changes["max_instances"] = scale.max_instances
    elif creating:
        changes["max_instances"] = None
    if scale.autoscaling:
        changes["autoscaling"] = {**spec.autoscaling, **scale.autoscaling}
    if scale.hardware is not None:
        changes["hardware"] = scale.hardware
    return replace(spec, **changes)


def _check_name(field: str, name: str) -> None:
    owner, _, rest = name.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not owner or not rest or "/" in rest or not set(owner + rest) <= allowed:
        raise InvalidInput(field, f"{NAME_RULE}; got {name!r}")


def _check_runner(spec: ModelSpec) -> None:
    cls = runner_class(spec.runner)  # InvalidInput("runner", ...) naming the known families
    try:
        cls.input_schema(spec)
    except WarmfleetError:
        raise
    except Exception as err:  # noqa: BLE001 - a runner refusing its options says why
        raise InvalidInput("options", str(err)) from err


def _field_of(err: Exception) -> str:
    head = str(err).split(":", 1)[0].strip()
    return head if head.isidentifier() else "autoscaling"
