"""The desired state: every route the controller serves, each in one record.

A route is what a prediction names: a model (its latest version), one of its versions pinned by id, or a
deployment (a name of its own with a fixed version and its own scaling). ``Route`` holds all the
controller keeps for one (its spec, its scaling knobs and state, its last load failure, when it was last
busy), so adding or deleting a route is one change, never several dicts kept in step by hand.
``Routes`` is the set of them, with every version ever served and the journal they are kept in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

from scheduler.autoscaling import AutoscalingConfig, ScalingState, scaling_config
from scheduler.route_journal import RouteJournal
from warmfleet.domain import RouteSpec
from warmfleet.errors import AlreadyExists

# The longest a route waits before its next load after failures (it backs off 2, 4, 8 ... s up to this).
MAX_RETRY_DELAY_S = 60.0


@dataclass
class Route:
    spec: RouteSpec
    config: AutoscalingConfig
    target: int  # instances the autoscaler last decided on
    scaling: ScalingState = field(default_factory=ScalingState)
    failures: int = 0  # instance loads failed in a row
    last_error: str = ""  # why the last one failed: predictions waiting with nowhere to go fail with it
    retry_at: float = float("-inf")  # no new load before (back-off after failures)
    last_busy: float = 0.0  # when it last had ongoing predictions (placement evicts the idlest first)

    @property
    def name(self) -> str:
        return self.spec.name

    def failed(self, error: str, now: float) -> None:
        """An instance could not be had: say why, and back off before the next try."""
        self.failures += 1
        self.last_error = error
        self.retry_at = now + min(MAX_RETRY_DELAY_S, 2.0 ** self.failures)

    def loaded(self) -> None:
        self.failures, self.last_error, self.retry_at = 0, "", float("-inf")


class Routes:
    def __init__(self, specs: list[RouteSpec], journal: RouteJournal | None = None) -> None:
        """``journal``: where changes made through the API are kept, and laid over ``specs`` here. A spec
        with a bad knob raises ValueError naming it."""
        self._journal = journal
        if journal is not None:
            specs = journal.apply(specs)
        self._routes = {s.name: Route(s, scaling_config(s), s.min_instances) for s in specs}
        self._versions = {s.version: s for s in specs}  # every version served, by id

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def get(self, name: str) -> Route | None:
        return self._routes.get(name)

    def specs(self) -> list[RouteSpec]:
        return [r.spec for r in self._routes.values()]

    def version(self, version_id: str) -> RouteSpec | None:
        return self._versions.get(version_id)

    def minimum(self, name: str) -> int:
        """The instances the route keeps at the least (0 for a route that is gone)."""
        route = self._routes.get(name)
        return route.spec.min_instances if route else 0

    def load_failures(self) -> dict[str, str]:
        return {r.name: r.last_error for r in self._routes.values() if r.failures}

    def put(self, spec: RouteSpec, new: bool) -> Route:
        """Serve ``spec`` under its name: a new route or an update of one (a deployment counts its releases).
        Raises ValueError for a bad knob and ``AlreadyExists`` for a name taken (with ``new``, or by the
        other kind), before anything changes."""
        config = scaling_config(spec)
        previous = self._routes.get(spec.name)
        if previous is not None and (new or previous.spec.is_deployment != spec.is_deployment):
            kind = "a deployment" if previous.spec.is_deployment else "a model"
            raise AlreadyExists(f"{spec.name!r} is taken (by {kind})")
        if spec.is_deployment:
            spec = replace(spec, release=previous.spec.release + 1 if previous else 1)
        if self._journal is not None:
            self._journal.put(spec)
        self._versions[spec.version] = spec
        if previous is None:
            route = self._routes[spec.name] = Route(spec, config, spec.min_instances)
            return route
        if previous.spec.version != spec.version:
            previous.loaded()  # a new version gets its own tries
        previous.spec, previous.config = spec, config
        previous.target = config.clamp(previous.target)
        return previous

    def delete(self, name: str) -> RouteSpec | None:
        route = self._routes.pop(name, None)
        if route is None:
            return None
        if self._journal is not None:
            self._journal.delete(name)
        return route.spec

    def mark_busy(self, ongoing: dict[str, int], now: float) -> None:
        for name, count in ongoing.items():
            route = self._routes.get(name)
            if count and route is not None:
                route.last_busy = now
