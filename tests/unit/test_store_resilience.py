"""The prediction store when SQLite cannot write. Real faults where SQLite makes them cheaply: a database
file capped at its size is full for real (SQLITE_FULL), and another connection's write lock makes it
locked for real (SQLITE_BUSY). Where a count must be exact, a real connection fails its commits on cue.
The tests wait on the store's own signals (its health changes, its flushes), never on a sleep."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.store import Backoff, PredictionStore, StoreHealth
from warmfleet.domain import Prediction, Status
from warmfleet.errors import Unavailable

FAST = Backoff(initial_s=0.001, max_s=0.004)  # retries within milliseconds, so a recovery is quick
BOUND_S = 10.0  # what a test waits for a signal at most: a store that hangs fails it instead of hanging


class Crash(BaseException):
    """Escapes the writer's error handling (as a bug in it would), so the writer task ends."""


class ScriptedConnection(sqlite3.Connection):
    """A real connection whose writes the test steers, all on the store's own thread:

    - at BEGIN it counts the attempt and, while ``full``, caps the file at its current size, so that the
      write fails with SQLite's own SQLITE_FULL;
    - at COMMIT it sets ``at_commit``, waits for ``gate`` when one is set, then raises ``fail_with`` while
      ``failures_left`` is above 0 (counting it down)."""

    attempts = 0
    full = False
    failures_left = 0
    fail_with: BaseException = sqlite3.OperationalError("disk I/O error")
    gate: threading.Event | None = None
    at_commit: threading.Event

    def execute(self, sql, *args):
        if sql == "BEGIN":
            self.attempts += 1
            pages = super().execute("PRAGMA page_count").fetchone()[0] if self.full else 1 << 30
            super().execute(f"PRAGMA max_page_count = {pages}")
        elif sql == "COMMIT":
            self.at_commit.set()
            if self.gate is not None:
                self.gate.wait(BOUND_S)
            if self.failures_left > 0:
                self.failures_left -= 1
                raise self.fail_with
        return super().execute(sql, *args)


@pytest.fixture
async def open_store(tmp_path):
    """Opens a store whose connection is a ``ScriptedConnection`` (returned with it); closes it at the end.
    ``busy_timeout_s`` is the connection's wait on another's lock."""
    opened: list[PredictionStore] = []

    async def open_(busy_timeout_s: float = 5.0, **options) -> tuple[PredictionStore, ScriptedConnection]:
        connections: list[ScriptedConnection] = []

        def connect(path: Path) -> sqlite3.Connection:
            db = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None,
                                 factory=ScriptedConnection)
            db.at_commit = threading.Event()
            connections.append(db)
            return db

        store = PredictionStore(tmp_path / "home" / "predictions.sqlite3", connect=connect,
                                backoff=options.pop("backoff", FAST), **options)
        await store.open()
        opened.append(store)
        return store, connections[0]

    yield open_
    for store in opened:
        await asyncio.wait_for(store.close(), BOUND_S)


def _prediction(pid: str, status: Status = Status.STARTING, created_at: float = 1.0, **fields) -> Prediction:
    fields.setdefault("input", {"text": pid})
    return Prediction(id=pid, model="acme/echo", version="v1", owner="alice", created_at=created_at,
                      status=status, **fields)


def _on_disk(store: PredictionStore) -> dict[str, str]:
    """Each prediction's status as the file holds it, read through a connection of the test's own."""
    with sqlite3.connect(store.path) as db:
        return dict(db.execute("SELECT id, status FROM predictions").fetchall())


async def _failing(store: PredictionStore) -> StoreHealth:
    return await asyncio.wait_for(store.wait_health(False), BOUND_S)


async def _recovered(store: PredictionStore) -> StoreHealth:
    return await asyncio.wait_for(store.wait_health(True), BOUND_S)


def test_the_backoff_doubles_from_its_first_wait_up_to_its_cap():
    backoff, delay, waits = Backoff(), 0.0, []
    for _ in range(8):
        delay = backoff.after(delay)
        waits.append(delay)
    assert waits == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


async def test_a_writer_that_fails_three_commits_recovers_and_writes_every_latest_state(open_store):
    store, db = await open_store()
    db.failures_left = 3
    failing = asyncio.create_task(store.wait_health(False))
    store.save(_prediction("p1"))
    store.save(_prediction("p2"))
    store.save(_prediction("p1", Status.PROCESSING))
    await asyncio.wait_for(store.flush(), BOUND_S)  # waits through the three failures: none reaches it

    seen = await failing
    assert (seen.ok, seen.reason, seen.failures, seen.pending) == (False, "disk I/O error", 1, 2)
    assert db.attempts == 4 and db.failures_left == 0
    now = store.health()
    assert (now.ok, now.reason, now.failures, now.pending) == (True, "", 0, 0)
    assert now.since >= seen.since
    assert _on_disk(store) == {"p1": "processing", "p2": "starting"}

    store.save(_prediction("p1", Status.SUCCEEDED))  # the rolled-back transactions left the connection usable
    store.save(_prediction("p2", Status.FAILED))
    await store.flush()
    assert _on_disk(store) == {"p1": "succeeded", "p2": "failed"}
    assert db.attempts == 5


async def test_a_save_made_while_a_commit_fails_wins_over_the_failed_batch(open_store):
    store, db = await open_store()
    db.failures_left, db.gate = 1, threading.Event()
    store.save(_prediction("p1", Status.STARTING))
    store.save(_prediction("p2", Status.STARTING))
    await asyncio.wait_for(asyncio.to_thread(db.at_commit.wait, BOUND_S), BOUND_S)  # the commit is held

    store.save(_prediction("p1", Status.SUCCEEDED))  # newer than the copy in the commit about to fail
    assert (await store.get("p1")).status is Status.SUCCEEDED
    assert (await store.get("p2")).status is Status.STARTING  # in the held commit, not on disk yet
    db.gate.set()
    await asyncio.wait_for(store.flush(), BOUND_S)

    assert _on_disk(store) == {"p1": "succeeded", "p2": "starting"}
    assert db.attempts == 2


async def test_a_full_disk_refuses_creates_and_fails_flushes_in_bounded_time_while_reads_answer(open_store):
    store, db = await open_store(flush_timeout_s=0.2)
    store.save(old := _prediction("old", Status.SUCCEEDED, created_at=1.0))
    await store.flush()
    db.full = True
    big = _prediction("big", created_at=2.0, input={"text": "x" * 200_000})  # needs pages the cap forbids
    store.save(big)
    seen = await _failing(store)
    assert seen.reason == "database or disk is full"  # SQLite's own message, for real

    cause = "the prediction store cannot write: database or disk is full"
    with pytest.raises(Unavailable, match=f"^{cause}$"):
        store.check_writable()
    started = time.monotonic()
    with pytest.raises(Unavailable, match=f"^{cause}$"):
        await asyncio.wait_for(store.flush(), BOUND_S)
    assert 0.19 <= time.monotonic() - started < BOUND_S  # it waited for the writer, then gave up
    health = store.health()
    assert (health.ok, health.reason, health.pending) == (False, "database or disk is full", 1)
    assert health.failures >= 1 and health.since == seen.since

    assert await store.get("old") == old  # from the file: reads work while writes fail
    assert await store.get("big") is big  # from the saves not yet written
    assert [p.id for p in (await store.list(None, 10, ""))[0]] == ["big", "old"]
    assert _on_disk(store) == {"old": "succeeded"}

    db.full = False  # space again: the writer's next try succeeds, with no call from anyone
    back = await _recovered(store)
    assert (back.ok, back.reason, back.failures) == (True, "", 0) and back.since >= seen.since
    assert store.check_writable() is None
    await store.flush()
    assert _on_disk(store) == {"old": "succeeded", "big": "starting"}


async def test_a_database_locked_by_another_writer_recovers_when_the_lock_goes(open_store):
    store, _ = await open_store(busy_timeout_s=0.0)
    store.save(_prediction("p1", Status.SUCCEEDED))
    await store.flush()
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        store.save(_prediction("p2", created_at=2.0))
        assert (await _failing(store)).reason == "database is locked"
        with pytest.raises(Unavailable, match="^the prediction store cannot write: database is locked$"):
            store.check_writable()
        page, cursor = await store.list(None, 1, "")
        assert [p.id for p in page] == ["p2"]
        assert [p.id for p in (await store.list(None, 1, cursor))[0]] == ["p1"]  # the second from the file
    finally:
        other.execute("ROLLBACK")
        other.close()
    await _recovered(store)
    store.check_writable()
    await store.flush()
    assert _on_disk(store) == {"p1": "succeeded", "p2": "starting"}


async def test_close_returns_at_once_while_the_writer_backs_off_and_reports_what_it_did_not_write(open_store):
    store, db = await open_store(backoff=Backoff(initial_s=60.0, max_s=60.0), flush_timeout_s=0.2)
    db.failures_left = 1_000_000
    store.save(_prediction("p1"))
    store.save(_prediction("p2"))
    await _failing(store)  # the writer now waits a minute before its next try

    started = time.monotonic()
    assert await asyncio.wait_for(store.close(), BOUND_S) == 2
    assert time.monotonic() - started < BOUND_S
    assert db.attempts == 1  # it backed off: no second try before it was closed
    health = store.health()
    assert (health.ok, health.reason, health.pending) == (False, "it is closed", 2)
    with pytest.raises(Unavailable, match="^the prediction store cannot write: it is closed$"):
        store.check_writable()
    assert await store.close() == 2  # a second close returns too


async def test_a_writer_that_stops_fails_its_waiters_instead_of_leaving_them_waiting(open_store):
    store, db = await open_store(flush_timeout_s=BOUND_S)
    db.failures_left, db.fail_with = 1, Crash("boom")
    store.save(_prediction("p1"))
    cause = r"^the prediction store cannot write: its writer stopped \(Crash: boom\)$"
    with pytest.raises(Unavailable, match=cause):
        await asyncio.wait_for(store.flush(), BOUND_S)  # well before its own timeout: the writer is gone
    health = store.health()
    assert (health.ok, health.pending) == (False, 1)
    with pytest.raises(Unavailable, match=cause):
        store.check_writable()
    store.save(_prediction("p2"))
    with pytest.raises(Unavailable, match=cause):
        await store.flush()  # at once: nothing is left to write it
    assert await asyncio.wait_for(store.close(), BOUND_S) == 2
