"""The router's queues: per route, strict priority bands, and within a band a fair share of the route's
instances between accounts, weighted by the compute each prediction holds.

Within a band every account has a *virtual time*: the compute (seconds of predict time) it has been
served there. ``pop`` serves the backlogged account with the least virtual time (the oldest head first
among equals), its oldest prediction first, and advances that account by the route's cost estimate (a
moving average of the predict times its finished predictions reported). When one ends, ``done`` puts
the measured time in place of the estimate, so an account whose predictions run ten times as long gets
a tenth as many dispatches: the route is shared in time, not in count. A prediction that did not run
after all (sent back, canceled before it left, lost with its node) is refunded (``refund``).

The band's own virtual time is the start of the last prediction served. An account that becomes
backlogged starts no earlier than it: whatever it did not use while idle is not banked, so it cannot
come back and hoard the instances; and an account that flooded is never behind a newcomer by more than
what it was served last. This is start-time fair queuing (Goyal, Vin and Cheng 1996) with each
prediction's tag taken at dispatch, where its cost is best known, as Linux's CFS does with its
``min_vruntime``. Among accounts backlogged over any stretch, the compute served differs by at most
twice the largest charge (``tests/unit/test_fair_queue.py`` checks it on random histories).

A pop may be told which accounts it may serve (``admits``: the router's headroom rule, who may take the
route's last free slots, ``scheduler.policies.admits``): then the highest band with an admitted account
serves its admitted account of least virtual time, and the others keep their places and their times
(the bound above is for pops open to all: an account passed over falls behind, and is first once admitted).

Memory follows what is held: an account's record lives while it has predictions queued or running, a
band's while it has accounts, and canceled entries are compacted once they are half of a heap.

Pure: no clock, no event loop; the router calls it on its loop.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, TypeVar

DEFAULT_COST_S = 1.0  # the charge for a prediction of a route that has none measured yet: all alike
COST_SMOOTHING = 0.2  # the newest predict time's weight in a route's cost estimate (a moving average)


class Queueable(Protocol):
    """What the queue reads of an entry; ``seq`` is its place among equals, kept when it comes back."""

    prediction_id: str
    route: str
    priority: int
    seq: int
    account: str


T = TypeVar("T", bound=Queueable)


@dataclass(slots=True)
class _Account:
    """One account's share of one band: its virtual time and its queued predictions, by ``seq``."""

    vtime: float
    heap: list[tuple[int, str]] = field(default_factory=list)  # (seq, prediction id), live and dead
    queued: int = 0
    dead: int = 0
    in_flight: int = 0  # popped, not yet settled (``done``, ``refund``): its charge may still change
    stamp: int = -1  # of its one live entry in the band's ``ready`` heap; -1 while it has none


@dataclass(slots=True)
class _Band:
    """The accounts of one priority on one route."""

    vtime: float = 0.0  # the start of the last prediction served: where a newly backlogged account starts
    accounts: dict[str, _Account] = field(default_factory=dict)
    # The backlogged accounts by (virtual time, head seq); an entry is live while its stamp is its
    # account's: re-keying pushes a new one rather than searching the heap for the old.
    ready: list[tuple[float, int, int, str]] = field(default_factory=list)
    stale: int = 0  # entries of ``ready`` that are no longer live
    queued: int = 0


@dataclass(slots=True)
class _Route:
    bands: dict[int, _Band] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # -priority of each band with predictions queued


@dataclass(frozen=True, slots=True)
class _Charge:
    """What a popped prediction was charged, and to whom."""

    route: str
    priority: int
    account: str
    cost_s: float


class FairQueues(Generic[T]):
    """The queued predictions of every route, served by priority, then fairly between accounts."""

    def __init__(self, default_cost_s: float = DEFAULT_COST_S, smoothing: float = COST_SMOOTHING) -> None:
        self._routes: dict[str, _Route] = {}
        self._items: dict[str, T] = {}
        self.lengths: dict[str, int] = {}  # route -> predictions queued (read on the hot path)
        self._charges: dict[str, _Charge] = {}
        self._costs: dict[str, float] = {}  # route -> its cost estimate, in seconds
        self._default_cost_s = default_cost_s
        self._smoothing = smoothing
        self._stamps = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def length(self, route: str) -> int:
        return self.lengths.get(route, 0)

    def routes(self) -> list[str]:
        return list(self._routes)

    def counts(self) -> dict[str, int]:
        return {route: n for route, n in self.lengths.items() if n}

    def entries(self) -> int:
        """Heap entries of predictions, live and dead."""
        return sum(len(a.heap) for r in self._routes.values() for b in r.bands.values()
                   for a in b.accounts.values())

    def footprint(self) -> dict[str, int]:
        """The sizes of what it holds: all 0 once nothing is queued or running."""
        bands = [b for r in self._routes.values() for b in r.bands.values()]
        return {"queued": len(self._items), "heap_entries": self.entries(),
                "accounts": sum(len(b.accounts) for b in bands),
                "ready_entries": sum(len(b.ready) for b in bands), "charges": len(self._charges)}

    def items(self) -> list[T]:
        return list(self._items.values())

    def estimate(self, route: str) -> float:
        """What the next prediction of ``route`` is charged: its recent predict times' moving average."""
        return self._costs.get(route, self._default_cost_s)

    def observe(self, route: str, predict_time_s: float) -> None:
        """A prediction of ``route`` ran ``predict_time_s``: fold it into the route's estimate."""
        if not math.isfinite(predict_time_s) or predict_time_s < 0:
            return
        before = self._costs.get(route)
        self._costs[route] = predict_time_s if before is None else (
            before + self._smoothing * (predict_time_s - before))

    # Queueing

    def push(self, item: T) -> None:
        """Queue ``item`` in its band and account, by ``seq`` there: one that comes back keeps its place."""
        pid = item.prediction_id
        self._items[pid] = item
        route = self._routes.get(item.route)
        if route is None:
            route = self._routes[item.route] = _Route()
        band = route.bands.get(item.priority)
        if band is None:
            band = route.bands[item.priority] = _Band()
        account = band.accounts.get(item.account)
        if account is None:
            account = band.accounts[item.account] = _Account(band.vtime)
        elif not account.queued:  # no credit for the time it had nothing queued
            account.vtime = max(account.vtime, band.vtime)
        heapq.heappush(account.heap, (item.seq, pid))
        account.queued += 1
        if account.stamp < 0 or account.heap[0][1] == pid:  # newly backlogged, or a new head: re-key
            self._list(band, item.account, account)
        band.queued += 1
        if band.queued == 1:
            heapq.heappush(route.order, -item.priority)
        self.lengths[item.route] = self.lengths.get(item.route, 0) + 1

    def pop(self, route: str, admits: Callable[[str], bool] | None = None) -> T | None:
        """The next prediction of ``route`` to run, charged to its account at the route's estimate until
        it is settled (``done``, ``refund``); None when none is queued.

        With ``admits``, only an account it admits is served (the router's headroom rule: who may take
        the route's last free slots): the highest band with one, and its admitted account of least
        virtual time; the others keep their places. None when no queued prediction's account is."""
        queue = self._routes.get(route)
        if queue is None or not queue.order:
            return None
        if admits is None:
            priority = -queue.order[0]
            band = queue.bands[priority]
            name = _pop_head(band)
        elif (found := _first_admitted(queue, admits)) is not None:
            priority, name = found
            band = queue.bands[priority]
        else:
            return None
        account = band.accounts[name]
        account.stamp = -1
        _, pid = heapq.heappop(account.heap)  # the head is live: dead ones are cleared as they surface
        item = self._items.pop(pid)
        cost = self.estimate(route)
        band.vtime = max(band.vtime, account.vtime)
        account.vtime += cost
        account.in_flight += 1
        self._charges[pid] = _Charge(route, priority, name, cost)
        self._left(route, queue, priority, band, name, account)
        return item

    def remove(self, prediction_id: str) -> T | None:
        """Take a prediction out of the queue, wherever it is in it; None if it is not queued."""
        item = self._items.pop(prediction_id, None)
        if item is None:
            return None
        queue = self._routes[item.route]
        band = queue.bands[item.priority]
        account = band.accounts[item.account]
        was_head = account.heap[0][1] == prediction_id
        account.dead += 1
        if was_head:  # the next one's seq is its key now
            self._unlist(band, account)
        self._left(item.route, queue, item.priority, band, item.account, account)
        return item

    def done(self, prediction_id: str, predict_time_s: float | None) -> None:
        """A popped prediction ran: ``predict_time_s`` replaces its estimated charge, and feeds the
        route's estimate; None (not measured) leaves the estimate charged."""
        charge = self._charges.pop(prediction_id, None)
        if charge is None:  # never popped here (taken over from a restarted router), or settled already
            return
        used = charge.cost_s
        if predict_time_s is not None and math.isfinite(predict_time_s):
            used = max(0.0, predict_time_s)
            self.observe(charge.route, used)
        self._settle(charge, used)

    def refund(self, prediction_id: str) -> None:
        """A popped prediction did not run after all (its instance turned it away, it could not be sent,
        it was canceled before it left, its node was lost): its account gets back what it was charged."""
        charge = self._charges.pop(prediction_id, None)
        if charge is not None:
            self._settle(charge, 0.0)

    def drain(self, route: str) -> list[T]:
        """Every prediction queued for ``route``, out of the queue and uncharged, in the order they would
        have run; the route is forgotten."""
        taken = []
        while (item := self.pop(route)) is not None:
            self.refund(item.prediction_id)
            taken.append(item)
        self.forget(route)
        return taken

    def forget(self, route: str) -> None:
        """Drop the records of a route with nothing queued (one that is gone, or failed). A route keeps
        them otherwise: creating them anew for every burst would cost the hot path."""
        if not self.lengths.get(route):
            self._routes.pop(route, None)
            self.lengths.pop(route, None)
            self._costs.pop(route, None)

    # Bookkeeping

    def _left(self, route: str, queue: _Route, priority: int, band: _Band, name: str,
              account: _Account) -> None:
        """An entry left ``account`` (popped or removed): count it, compact or re-list what remains."""
        account.queued -= 1
        band.queued -= 1
        self.lengths[route] -= 1
        if not account.queued:
            account.heap.clear()
            account.dead = 0
            self._unlist(band, account)
            self._drop_if_idle(queue, priority, band, name, account)
        else:
            if account.dead * 2 > len(account.heap):
                account.heap[:] = [e for e in account.heap if self._live(e)]
                heapq.heapify(account.heap)
                account.dead = 0
            while not self._live(account.heap[0]):  # so that the head is live, and its seq the key
                heapq.heappop(account.heap)
                account.dead -= 1
            if account.stamp < 0:
                self._list(band, name, account)
        if not band.queued:
            _drop_order(queue.order, priority)
            band.ready.clear()  # stale entries only, now
            band.stale = 0

    def _settle(self, charge: _Charge, used_s: float) -> None:
        """Put what a prediction used in place of what its account was charged for it."""
        queue = self._routes.get(charge.route)
        band = queue.bands.get(charge.priority) if queue else None
        account = band.accounts.get(charge.account) if band else None
        if account is None:  # its route was forgotten meanwhile
            return
        account.in_flight -= 1
        account.vtime += used_s - charge.cost_s
        if account.stamp >= 0:  # backlogged: its key changed
            self._list(band, charge.account, account)
        self._drop_if_idle(queue, charge.priority, band, charge.account, account)

    def _live(self, entry: tuple[int, str]) -> bool:
        item = self._items.get(entry[1])
        return item is not None and item.seq == entry[0]

    def _list(self, band: _Band, name: str, account: _Account) -> None:
        """Give ``account`` one live entry in the band's ready heap, at its current key."""
        self._unlist(band, account)
        account.stamp = next(self._stamps)
        heapq.heappush(band.ready, (account.vtime, account.heap[0][0], account.stamp, name))
        if band.stale * 2 > len(band.ready):
            band.ready[:] = [e for e in band.ready
                             if (a := band.accounts.get(e[3])) is not None and a.stamp == e[2]]
            heapq.heapify(band.ready)
            band.stale = 0

    @staticmethod
    def _unlist(band: _Band, account: _Account) -> None:
        """Make ``account``'s entry in the band's ready heap stale, if it has one."""
        if account.stamp >= 0:
            band.stale += 1
            account.stamp = -1

    def _drop_if_idle(self, queue: _Route, priority: int, band: _Band, name: str, account: _Account) -> None:
        """An account with nothing queued or running has no record; nor a band without accounts."""
        if account.queued or account.in_flight:
            return
        del band.accounts[name]
        if not band.accounts:
            del queue.bands[priority]
            band.ready.clear()


def _pop_head(band: _Band) -> str:
    """Take the band's next account (least virtual time, oldest head) off its ready heap."""
    while True:
        _, _, stamp, name = heapq.heappop(band.ready)
        account = band.accounts.get(name)
        if account is not None and account.stamp == stamp:
            return name
        band.stale -= 1


def _first_admitted(queue: _Route, admits: Callable[[str], bool]) -> tuple[int, str] | None:
    """The band and account to serve among those ``admits``: the highest band with one, in its ready
    order. Its entry is left in the heap, stale (the account is unlisted): no other entry moves."""
    for negative in sorted(queue.order):
        band = queue.bands[-negative]
        for _, _, stamp, name in sorted(band.ready):
            account = band.accounts.get(name)
            if account is not None and account.stamp == stamp and admits(name):
                band.stale += 1
                return -negative, name
    return None


def _drop_order(order: list[int], priority: int) -> None:
    """Take the band of ``priority`` out of a route's band heap (it is usually the top: O(log n))."""
    if order[0] == -priority:
        heapq.heappop(order)
    else:
        order.remove(-priority)
        heapq.heapify(order)
