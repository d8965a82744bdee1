"""The models this gateway can route to, with their compiled input validators."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable

from runners.registry import runner_class
from runners.schema import InputValidator
from warmfleet.domain import ModelSpec
from warmfleet.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class CatalogEntry:
    spec: ModelSpec
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    validator: InputValidator


class ModelCatalog:
    def __init__(self) -> None:
        self._by_name: dict[str, CatalogEntry] = {}
        self._by_version: dict[str, CatalogEntry] = {}

    def update(self, specs: Iterable[ModelSpec]) -> None:
        by_name, by_version = {}, {}
        for spec in specs:
            entry = self._by_version.get(spec.version)
            if entry is None:
                cls = runner_class(spec.runner)
                schema = cls.input_schema(spec)
                validator = InputValidator(schema, check=partial(cls.check_input, spec))
                entry = CatalogEntry(spec, schema, cls.output_schema(spec), validator)
            by_name[spec.name] = entry
            by_version[spec.version] = entry
        self._by_name, self._by_version = by_name, by_version

    def entries(self) -> list[CatalogEntry]:
        return sorted(self._by_name.values(), key=lambda e: e.spec.name)

    def by_name(self, name: str) -> CatalogEntry:
        entry = self._by_name.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} not found; `warmfleet models list` shows what is served")
        return entry

    def resolve(self, model: str, version: str, deployment: str) -> CatalogEntry:
        """The entry a create request targets: a version beats a model name."""
        if deployment:
            raise InvalidInput("deployment", "deployments are not served by this cluster yet; use model")
        if version:
            entry = self._by_version.get(version)
            if entry is None:
                raise NotFound(f"version {version!r} not found")
            return entry
        if not model:
            raise InvalidInput("model", "is required (or version)")
        return self.by_name(model)
