"""What the operator changed through the API (models created, deployments created, updated or deleted),
kept in a JSON file under the cluster's home, so that it survives `warmfleet down` and `up`.

The routes a cluster starts with come from the built-in models and the cluster config file; the journal
is laid over them: a route put through the API replaces the one of the same name, a route deleted
through the API stays deleted. The file is rewritten whole (to a temporary file, then renamed), so a
crash leaves the old or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from warmfleet.domain import RouteSpec

FORMAT = 1


class RouteJournal:
    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._put: dict[str, RouteSpec] = {}
        self._deleted: set[str] = set()
        if self._path.exists():
            doc = json.loads(self._path.read_text())
            self._put = {s["name"]: RouteSpec(**s) for s in doc.get("put", [])}
            self._deleted = set(doc.get("deleted", []))

    def apply(self, routes: list[RouteSpec]) -> list[RouteSpec]:
        """``routes`` with the journal's changes on top, in the original order, new routes last."""
        by_name = {r.name: r for r in routes if r.name not in self._deleted}
        by_name.update(self._put)
        ordered = [by_name.pop(r.name) for r in routes if r.name in by_name]
        return ordered + list(by_name.values())

    def put(self, spec: RouteSpec) -> None:
        self._put[spec.name] = spec
        self._deleted.discard(spec.name)
        self._write()

    def delete(self, name: str) -> None:
        self._put.pop(name, None)
        self._deleted.add(name)
        self._write()

    def _write(self) -> None:
        doc = {"format": FORMAT, "put": [dataclasses.asdict(s) for s in self._put.values()],
               "deleted": sorted(self._deleted)}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        staging = self._path.with_suffix(".tmp")
        staging.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(staging, self._path)
