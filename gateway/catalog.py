"""The models this gateway can route to, with their compiled input validators.

A version's time is when it was pushed (``RouteSpec.created_at``); a version the configuration made has
none, and shows when this gateway first listed it (``CatalogEntry.listed_at``: its start, for the models
it starts with). A model created with no version yet (``RouteSpec.has_version`` false) is listed, has no
versions, and is refused for predictions until a push gives it one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable

from runners.registry import runner_class
from runners.schema import InputValidator
from warmfleet.domain import RouteSpec
from warmfleet.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from gateway.auth import Principal


@dataclass(frozen=True)
class CatalogEntry:
    spec: RouteSpec
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    validator: InputValidator | None  # None for a model with no version yet
    listed_at: float = 0.0  # when this gateway first listed this version (seconds since the epoch)

    @property
    def created_at(self) -> float:
        """When its version was made: pushed, or (one the configuration made) first listed here."""
        return self.spec.created_at or self.listed_at


class ModelCatalog:
    """Routes by name (models and deployments), with each version's compiled validator, built once per
    version and shared by the routes that serve it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """``clock``: the wall clock, for when a version is first listed."""
        self._by_name: dict[str, CatalogEntry] = {}
        self._by_version: dict[str, CatalogEntry] = {}  # a model's own route first, else any
        self._clock = clock

    def update(self, specs: Iterable[RouteSpec]) -> None:
        by_name: dict[str, CatalogEntry] = {}
        by_version: dict[str, CatalogEntry] = {}
        known = {e.spec.version: e for e in self._by_name.values()}
        for spec in specs:
            if not spec.has_version:
                by_name[spec.name] = CatalogEntry(spec, {}, {}, None, spec.created_at)
                continue
            compiled = known.get(spec.version) or by_version.get(spec.version) or self._compile(spec)
            entry = replace(compiled, spec=spec)
            by_name[spec.name] = entry
            held = by_version.get(spec.version)
            if held is None or _rank(spec) < _rank(held.spec):
                by_version[spec.version] = entry
        self._by_name, self._by_version = by_name, by_version

    def _compile(self, spec: RouteSpec) -> CatalogEntry:
        cls = runner_class(spec.runner)
        schema = cls.input_schema(spec)
        return CatalogEntry(spec, schema, cls.output_schema(spec),
                            InputValidator(schema, check=partial(cls.check_input, spec)), self._clock())

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._by_name.values(), key=lambda e: e.spec.name)

    def models(self) -> list[CatalogEntry]:
        """Each model's own route (deployments and version routes left out)."""
        return [e for e in self.entries() if _rank(e.spec) == 0]

    def versions(self, model: str) -> list[CatalogEntry]:
        """Every version of ``model`` the cluster serves, newest first: its latest (its own route) and
        the earlier ones (their version routes); none for a model with no version yet."""
        own = self.by_name(model)
        earlier = [e for e in self._by_name.values() if e.spec.version_of == model]
        mine = [own] if own.spec.has_version else []
        return mine + sorted(earlier, key=lambda e: (-e.spec.created_at, e.spec.version))

    def model_created_at(self, model: str) -> float:
        """When ``model`` was made, as the API shows it: its oldest version's time (for a model with no
        version yet, its creation's)."""
        own = self.by_name(model)
        return min((e.created_at for e in self.versions(model)), default=own.created_at)

    def version_of(self, model: str, version: str) -> CatalogEntry:
        for entry in self.versions(model):
            if entry.spec.version == version:
                return entry
        raise NotFound(f"version {version!r} of {model} not found; `warmfleet versions {model}` lists them")

    def deployments(self) -> list[CatalogEntry]:
        return [e for e in self.entries() if e.spec.is_deployment]

    def has_route(self, name: str) -> bool:
        return name in self._by_name

    def has_deployment(self, name: str) -> bool:
        return name in self._by_name and self._by_name[name].spec.is_deployment

    def by_name(self, name: str) -> CatalogEntry:
        entry = self._by_name.get(name)
        if entry is None or _rank(entry.spec) != 0:
            raise model_not_found(name)
        return entry

    def deployment(self, name: str) -> CatalogEntry:
        entry = self._by_name.get(name)
        if entry is None or not entry.spec.is_deployment:
            raise NotFound(f"deployment {name!r} not found; `warmfleet deployments list` shows them")
        return entry

    # As a caller sees them: a private model is another caller's secret, so it is not found at all.

    def visible_models(self, principal: Principal) -> list[CatalogEntry]:
        """``models``, those the caller may see (public, theirs, or any for an admin)."""
        return [e for e in self.models() if principal.may_see(e.spec)]

    def visible(self, principal: Principal, name: str) -> CatalogEntry:
        """``by_name``, if the caller may see the model; else NotFound, as if it did not exist."""
        entry = self.by_name(name)
        if not principal.may_see(entry.spec):
            raise model_not_found(entry.spec.model_name)
        return entry

    def visible_versions(self, principal: Principal, model: str) -> list[CatalogEntry]:
        """``versions`` of a model the caller may see."""
        self.visible(principal, model)
        return self.versions(model)

    def visible_version(self, principal: Principal, model: str, version: str) -> CatalogEntry:
        """``version_of`` a model the caller may see."""
        self.visible(principal, model)
        return self.version_of(model, version)

    def resolve(self, model: str, version: str, deployment: str) -> CatalogEntry:
        """The route a create request targets: a deployment, else a version, else a model's latest."""
        if deployment:
            return self.deployment(deployment)
        if version:
            entry = self._by_version.get(version)
            if entry is None:
                raise NotFound(f"version {version!r} is not served; deploy it, or name the model")
            return entry
        if not model:
            raise InvalidInput("model", "is required (or version, or deployment)")
        entry = self.by_name(model)
        if not entry.spec.has_version:
            raise InvalidInput("model", f"{model} has no version yet; push one (`warmfleet push DIR {model}` "
                                        f"or POST /v1/models/{model}/versions) before running it")
        return entry


def model_not_found(name: str) -> NotFound:
    """The one answer for a model that does not exist, or that the caller may not see."""
    return NotFound(f"model {name!r} not found; `warmfleet models list` shows what is served")


def _rank(spec: RouteSpec) -> int:
    """Which route a prediction pinned to a version goes to, of those that serve it: the model's own
    first, then the version's own route, then a deployment."""
    return 2 if spec.is_deployment else 1 if spec.is_version_route else 0
