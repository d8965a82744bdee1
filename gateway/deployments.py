"""Models and deployments as the operator changes them: the checks, then one call to the controller.

Both are routes to the controller (``RouteSpec``): a model's own route carries the model's name; a
deployment is a route of its own naming the model and version it serves. The controller rolls a new
version out on a route without dropping a prediction and scales each route; this module only decides
what the new route is, and refuses what would be wrong, naming the field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from gateway.catalog import CatalogEntry, ModelCatalog
from runners.registry import runner_class
from scheduler.autoscaling import scaling_config
from scheduler.ports import ControllerClient
from warmfleet.domain import RouteSpec, version_route_name
from warmfleet.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied, WarmfleetError

if TYPE_CHECKING:
    from gateway.auth import Principal

NAME_RULE = "must be owner/name: letters, digits, '-', '_' or '.', one '/'"
# The autoscaler's knobs a create or update may set (``RouteSpec.autoscaling``), in the order they are kept.
AUTOSCALING_FIELDS = ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s",
                      "scale_to_zero_delay_s")


@dataclass(frozen=True)
class Scale:
    """The sizing fields of a create or update; None keeps the current value (or the default)."""

    min_instances: int | None = None
    max_instances: int | None = None
    autoscaling: dict[str, float] | None = None
    hardware: str | None = None


@dataclass(frozen=True)
class Deployment:
    """A deployment as it is now: its route, how many instances the autoscaler wants for it, and when its
    current release was made (the spec's time; for one the configuration made, when this gateway first
    listed it; 0: not known)."""

    spec: RouteSpec
    target_instances: int
    released_at: float = 0.0


@dataclass(frozen=True)
class ModelChanges:
    """What an update of a model sets (Replicate's ``models.update``); None keeps the current value. ``about``
    holds the links and readme to set (``RouteSpec.about``'s names), an empty string removing one."""

    description: str | None = None
    visibility: str | None = None
    about: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushResult:
    """What a push made: the model's route (the pushed version its latest) and the version's spec."""

    spec: RouteSpec
    version: RouteSpec
    created_model: bool
    new_version: bool


class RouteService:
    def __init__(self, controller: ControllerClient, catalog: ModelCatalog,
                 changed: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``changed`` brings the gateway up to the controller's new state after a change (its catalog
        and its router's table), so the next prediction sees the route as it is now; by default only
        the catalog follows. ``clock``: the wall clock, for when a model or a release is made."""
        self._controller = controller
        self._catalog = catalog
        self._changed = changed or self._follow_catalog
        self._clock = clock

    async def _follow_catalog(self) -> None:
        self._catalog.update(await self._controller.models())

    # Models

    async def create_model(self, spec: RouteSpec) -> RouteSpec:
        check_name("name", spec.name)  # a deployment's name is refused by the controller (AlreadyExists)
        _check_runner(spec)
        return await self._put(spec)

    async def delete_model(self, name: str) -> RouteSpec:
        entry = self._catalog.by_name(name)
        users = [e.spec.name for e in self._catalog.deployments() if e.spec.model == name]
        if users:
            raise InvalidInput("name", f"deployments serve {name}: {', '.join(users)}; delete them first")
        for earlier in self._catalog.versions(name)[1:]:
            await self._controller.delete_route(earlier.spec.name)
        return await self._delete(entry.spec.name)

    # Versions (pushed models)

    def check_may_push(self, model: str, owner: str, is_admin: bool) -> None:
        """A push goes to a new model, or to one the pusher owns (an admin may push to any pushed model)."""
        if not self._catalog.has_route(model):
            return
        if self._catalog.has_deployment(model):
            raise InvalidInput("model", f"{model!r} is a deployment; push to the model it serves")
        current = self._catalog.by_name(model).spec
        if current.runner not in ("cog", ""):  # a pushed model, or one created with no version yet
            raise InvalidInput("model", f"{model} is a {current.runner} model of the cluster's configuration; "
                                        "push to a new name")
        if not is_admin and current.owner != owner:
            raise PermissionDenied(f"{model} belongs to {current.owner or 'the cluster'}; "
                                   "push to a model of yours")

    async def push_version(self, spec: RouteSpec) -> PushResult:
        """Make ``spec`` (a pushed version) its model's latest. The previous latest keeps serving
        predictions pinned to it from its own version route, from zero instances; identical content is
        the version that exists."""
        if not self._catalog.has_route(spec.name):
            created = await self._put(spec)
            return PushResult(created, created, created_model=True, new_version=True)
        current = self._catalog.by_name(spec.name).spec
        if not current.has_version:  # its first version: the model keeps what its creation said of it
            first = replace(current, runner=spec.runner, weights=spec.weights, options=spec.options,
                            version_id=spec.version_id, created_at=spec.created_at,
                            hardware=spec.hardware or current.hardware,
                            description=spec.description or current.description)
            first = await self._put(first)
            return PushResult(first, first, created_model=False, new_version=True)
        for entry in self._catalog.versions(spec.name):
            if entry.spec.version == spec.version:
                return PushResult(current, entry.spec, created_model=False, new_version=False)
        earlier = replace(current, name=version_route_name(current.name, current.version),
                          version_of=current.name, min_instances=0)
        latest = replace(current, runner=spec.runner, weights=spec.weights, options=spec.options,
                         version_id=spec.version_id, created_at=spec.created_at, hardware=spec.hardware,
                         description=spec.description or current.description)
        await self._controller.put_route(earlier)
        latest = await self._put(latest)
        return PushResult(latest, latest, created_model=False, new_version=True)

    async def delete_version(self, model: str, version: str) -> RouteSpec:
        """Delete a version: refused while a deployment serves it, or when it is the model's only one.
        Deleting the latest makes the newest earlier version the latest."""
        entry = self._catalog.version_of(model, version)
        users = [e.spec.name for e in self._catalog.deployments()
                 if e.spec.model == model and e.spec.version == version]
        if users:
            raise FailedPrecondition(f"version {version} of {model} is served by deployment(s) "
                                     f"{', '.join(users)}; update them to another version first")
        versions = self._catalog.versions(model)
        if not entry.spec.is_version_route:
            if len(versions) == 1:
                raise FailedPrecondition(f"{version} is the only version of {model}; "
                                         "delete the model instead")
            successor = versions[1].spec
            await self._put(replace(entry.spec, runner=successor.runner, weights=successor.weights,
                                    options=successor.options, version_id=successor.version_id,
                                    created_at=successor.created_at, hardware=successor.hardware))
            await self._delete(successor.name)
        else:
            await self._delete(entry.spec.name)
        return entry.spec

    # Deployments

    async def create_deployment(self, name: str, model: str, version: str, scale: Scale, by: str = ""
                                ) -> RouteSpec:
        """A new deployment of ``model``'s ``version`` (its latest when ""): its first release, made by the
        account ``by`` (its name)."""
        check_name("name", name)
        base = await self._version_of(model, version)
        spec = replace(base, name=name, model=model, version_of="", release=0, min_instances=0,
                       max_instances=None, autoscaling={}, hardware=base.hardware, about={},
                       released_at=self._clock(), released_by=by)
        return await self._put(_scaled(spec, scale, creating=True), new=True)  # taken: the controller says

    async def update_deployment(self, name: str, version: str | None, scale: Scale, by: str = ""
                                ) -> RouteSpec:
        """A new release of the deployment, made by the account ``by``."""
        current = self._catalog.deployment(name).spec
        spec = replace(current, released_at=self._clock(), released_by=by)
        if version is not None and version != current.version:
            new = await self._version_of(current.model, version)
            spec = replace(spec, runner=new.runner, weights=new.weights, options=new.options,
                           description=new.description, version_id=new.version_id, created_at=new.created_at)
        return await self._put(_scaled(spec, scale, creating=False))

    async def delete_deployment(self, name: str) -> RouteSpec:
        return await self._delete(self._catalog.deployment(name).spec.name)

    async def deployment(self, name: str) -> Deployment:
        return await self._with_target(self._catalog.deployment(name).spec)

    async def _with_target(self, spec: RouteSpec) -> Deployment:
        known = self._catalog.has_deployment(spec.name)
        listed = self._catalog.deployment(spec.name).listed_at if known else 0.0
        target = (await self._controller.scaling()).get(spec.name, 0)
        return Deployment(spec, target, spec.released_at or listed)

    async def deployments(self) -> list[Deployment]:
        targets = await self._controller.scaling()
        return [Deployment(e.spec, targets.get(e.spec.name, 0), e.spec.released_at or e.listed_at)
                for e in self._catalog.deployments()]

    # As a caller asks: the edges (gRPC, REST) call these, so the access rules are here, once. Changing a
    # model takes an admin or the owner of a pushed model; a model the caller may not see is not found.

    async def create_model_as(self, principal: Principal, spec: RouteSpec) -> CatalogEntry:
        _require_admin(principal)
        return self._catalog.by_name((await self.create_model(spec)).name)

    async def create_empty_model_as(self, principal: Principal, spec: RouteSpec) -> CatalogEntry:
        """Create a model with no version yet (Replicate's "create a model"; a push fills it) under one of
        the caller's namespaces (any, for an admin). A name taken is ``AlreadyExists``."""
        check_name("name", spec.name)
        if not principal.may_write(spec.owner):
            raise PermissionDenied(f"owner: {spec.owner!r} is not a namespace of yours; create the model "
                                   f"under {' or '.join(sorted(principal.namespaces))}")
        spec = replace(spec, runner="", weights="", options={}, version_id="", min_instances=0,
                       max_instances=None, created_at=self._clock())
        return self._catalog.by_name((await self._put(spec, new=True)).name)

    async def update_model_as(self, principal: Principal, name: str, changes: ModelChanges) -> CatalogEntry:
        """Change what a model says of itself (description, links, readme, visibility); its earlier
        versions' routes take its visibility too. Takes an admin, or a member of its namespace."""
        entry = self._catalog.visible(principal, name)
        _check_may_change(principal, entry)
        about = {key: value for key, value in {**entry.spec.about, **changes.about}.items() if value}
        kept = {"description": changes.description, "visibility": changes.visibility}
        spec = replace(entry.spec, about=about, **{k: v for k, v in kept.items() if v is not None})
        if spec.visibility != entry.spec.visibility:
            for earlier in self._catalog.versions(name):
                if earlier.spec.is_version_route:
                    await self._controller.put_route(replace(earlier.spec, visibility=spec.visibility))
        return self._catalog.by_name((await self._put(spec)).name)

    async def delete_model_as(self, principal: Principal, name: str) -> CatalogEntry:
        """Delete a model the caller may change; returns it as it was."""
        entry = self._catalog.visible(principal, name)
        _check_may_change(principal, entry)
        await self.delete_model(name)
        return entry

    async def delete_version_as(self, principal: Principal, model: str, version: str) -> CatalogEntry:
        """Delete a version of a model the caller may change; returns the version as it was."""
        _check_may_change(principal, self._catalog.visible(principal, model))
        entry = self._catalog.version_of(model, version)
        await self.delete_version(model, version)
        return entry

    async def create_deployment_as(self, principal: Principal, name: str, model: str, version: str,
                                   scale: Scale) -> Deployment:
        _require_admin(principal)
        spec = await self.create_deployment(name, model, version, scale, principal.name)
        return await self._with_target(spec)

    async def update_deployment_as(self, principal: Principal, name: str, version: str | None,
                                   scale: Scale) -> Deployment:
        _require_admin(principal)
        return await self._with_target(await self.update_deployment(name, version, scale, principal.name))

    async def delete_deployment_as(self, principal: Principal, name: str) -> Deployment:
        """Delete a deployment; returns it as it was, with no instance wanted any more."""
        _require_admin(principal)
        return Deployment(await self.delete_deployment(name), 0)

    # Shared

    async def _version_of(self, model: str, version: str) -> RouteSpec:
        own = self._catalog.by_name(model).spec
        if not own.has_version:
            raise InvalidInput("model", f"{model} has no version yet; push one before deploying it")
        if not version or version == own.version:
            return own
        if own.runner == "cog":  # pushed versions: the ones the model has now (not those deleted)
            return self._catalog.version_of(model, version).spec
        spec = await self._controller.version(version)
        if spec is None or spec.model_name != model:
            raise NotFound(f"version {version!r} of {model} not found")
        return spec

    async def _put(self, spec: RouteSpec, new: bool = False) -> RouteSpec:
        try:
            scaling_config(spec)
        except (TypeError, ValueError) as err:
            raise InvalidInput(_field_of(err), str(err)) from None
        spec = await self._controller.put_route(spec, new)
        await self._changed()
        return spec

    async def _delete(self, name: str) -> RouteSpec:
        spec = await self._controller.delete_route(name)
        if spec is None:
            raise NotFound(f"{name!r} not found")
        await self._changed()
        return spec


def _scaled(spec: RouteSpec, scale: Scale, creating: bool) -> RouteSpec:
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


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied("this call needs an admin token")


def _check_may_change(principal: Principal, entry: CatalogEntry) -> None:
    """Changing a model takes an admin, or a member of the namespace that owns a pushed model (the user,
    or a member of the organization)."""
    spec = entry.spec
    if not (spec.owner and principal.may_write(spec.owner)) and not principal.is_admin:
        raise PermissionDenied(f"only {spec.owner or 'an admin'} may change {spec.model_name}")


def check_name(field: str, name: str) -> None:
    owner, _, rest = name.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not owner or not rest or "/" in rest or not set(owner + rest) <= allowed:
        raise InvalidInput(field, f"{NAME_RULE}; got {name!r}")


def _check_runner(spec: RouteSpec) -> None:
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
