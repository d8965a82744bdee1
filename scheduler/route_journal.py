"""What the operator changed through the API (models created, deployments created, updated or deleted),
kept in a JSON file under the cluster's home, so that it survives `warmfleet down` and `up`.

The routes a cluster starts with come from the built-in models and the cluster config file; the journal
is laid over them: a route put through the API replaces the one of the same name, a route deleted
through the API stays deleted. The file is rewritten whole: to a temporary file, fsynced, renamed over
the journal (and the folder fsynced), the copy it replaces kept as ``.bak``. A journal that cannot be
read (torn by a disk that lied about a sync, or edited by hand) is reported, set aside and replaced by the
last good copy; the controller never fails to start over it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from warmfleet.domain import RouteSpec

log = logging.getLogger(__name__)

FORMAT = 1


class RouteJournal:
    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._backup = self._path.with_name(self._path.name + ".bak")
        self._put: dict[str, RouteSpec] = {}
        self._deleted: set[str] = set()
        self.problem = ""  # why the journal could not be read, when it could not (the backup was used)
        for path in (self._path, self._backup):
            try:
                self._put, self._deleted = _read(path)
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, KeyError, OSError) as err:  # torn, or not a journal
                self._set_aside(path, err)
                continue
            if path == self._backup:
                log.warning("routes: using the last good journal %s", path)
            return

    def _set_aside(self, path: Path, err: Exception) -> None:
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        self.problem = f"{path} could not be read ({type(err).__name__}: {err}); it is kept as {aside}"
        log.error("routes: %s", self.problem)
        os.replace(path, aside)

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
        with staging.open("w") as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._path.exists():
            os.replace(self._path, self._backup)
        os.replace(staging, self._path)
        _sync_folder(self._path.parent)


def _read(path: Path) -> tuple[dict[str, RouteSpec], set[str]]:
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a routes journal of format {FORMAT}")
    return {s["name"]: RouteSpec(**s) for s in doc.get("put", [])}, set(doc.get("deleted", []))


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a rename is an entry of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
