"""The prediction store: SQLite in WAL mode under ``$WARMFLEET_HOME``, written behind the event loop.

Saves are coalesced: ``save`` marks a prediction dirty and a single writer commits every dirty prediction
in one transaction on its own thread, so the commit rate falls as the load rises (group commit). ``flush``
waits until what was saved before it is on disk; the gateway awaits it before acknowledging anything a
client may read back later.

Beside each unfinished prediction the store keeps its task (``StoredTask``: the route and the input as
routed), written in the same commit as the prediction and deleted in the one that ends it; and beside
each ended prediction whose creator asked for a completed webhook, a due mark, until the webhook sender
says it is done (``webhook_done``). So a gateway that dies loses neither: ``open`` returns the
unfinished predictions with their tasks, to be run again, and the webhooks still due (``Reopened``).

When a commit fails (a locked database, a full disk, an I/O error) its predictions stay dirty, under any
newer save of the same prediction, and the writer tries again after a backoff (``Backoff``) until a commit
succeeds: nothing saved is dropped, and the store recovers by itself once the cause goes away. Meanwhile
``health()`` says why it cannot write, ``check_writable()`` refuses new predictions, a ``flush`` raises
``Unavailable`` after at most ``flush_timeout_s``, reads still answer (from the database and the saves not
yet on it), and ``close()`` returns in bounded time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.codec import prediction_from_json, prediction_to_json, value_from_json, value_to_json
from warmfleet.domain import TERMINAL, FileData, Prediction
from warmfleet.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_by_owner ON predictions (owner, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    input TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhooks_due (id TEXT PRIMARY KEY);
-- Only read: the tokens of a home from before accounts, which gateway/accounts.py takes up.
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

# How long the writer gathers saves before a commit when nobody waits on a flush: within it, a
# prediction that starts and ends is encoded and written once, in its final state. A flush cuts it
# short: a stream's create waits for its flush (measured: at one request at a time, each create came
# while the previous prediction's end was gathering, and its first event waited ~4 ms for it).
GATHER_S = 0.01
REMOVE_BATCH = 200  # predictions read per step of a retention sweep: bodies with files can be large
BUSY_TIMEOUT_S = 5.0  # how long a statement waits on a lock another connection holds (SQLite's busy timeout)
# How long a flush waits for its saves while the writer cannot commit them, before it raises; close waits
# as long again for the database to close.
FLUSH_TIMEOUT_S = 5.0
CANNOT_WRITE = "the prediction store cannot write"  # how every Unavailable of the store begins


@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long the writer waits before it tries a failed commit again: ``initial_s`` after the first
    failure, doubling with each failure in a row, never more than ``max_s``."""

    initial_s: float = 0.05
    max_s: float = 2.0

    def after(self, delay_s: float) -> float:
        """The wait after one more failure, when the wait before it was ``delay_s`` (0: the first)."""
        return min(self.max_s, max(self.initial_s, 2 * delay_s))


@dataclasses.dataclass(frozen=True)
class StoredTask:
    """What an unfinished prediction runs with: its route and its input as routed (defaults filled in,
    a seed drawn), kept until it ends so that a gateway that restarts can run it."""

    route: str
    input: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Reopened:
    """What ``open`` found left by the gateway before: every unfinished prediction with its task (None
    when none was kept: an input holding a secret, which is never written, or a store older than
    tasks), and the ended predictions whose completed webhook was still due."""

    unfinished: list[tuple[Prediction, StoredTask | None]]
    webhooks_due: list[Prediction]


class _Beside:
    """The rows kept beside the predictions (the tasks and the due webhooks), as they wait for a commit:
    ``rows`` says what the next commit writes for a batch of predictions, ``committed`` what it did."""

    def __init__(self) -> None:
        self.tasks: dict[str, StoredTask] = {}  # saved, not yet on disk
        self.on_disk: set[str] = set()  # predictions whose task row is on disk
        self.webhooks_sent: set[str] = set()  # due marks to delete

    def rows(self, batch: dict[str, Prediction]) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
        """Tasks to insert, tasks to delete, due webhooks to insert, due webhooks to delete."""
        put, gone, due = [], [], []
        for pid, pred in batch.items():
            if pred.status.is_terminal:
                if pid in self.on_disk:
                    gone.append((pid,))
                if pred.webhook and "completed" in (pred.webhook_events_filter or ("completed",)):
                    due.append((pid,))
            elif (task := self.tasks.get(pid)) is not None:
                put.append((pid, task.route, value_to_json(task.input)))
        return put, gone, due, [(pid,) for pid in self.webhooks_sent]

    def committed(self, batch: dict[str, Prediction], sent: list[tuple]) -> None:
        for pid, pred in batch.items():
            if pred.status.is_terminal:
                self.on_disk.discard(pid)
                self.tasks.pop(pid, None)
            elif self.tasks.pop(pid, None) is not None:
                self.on_disk.add(pid)
        self.webhooks_sent.difference_update(pid for (pid,) in sent)


@dataclasses.dataclass(frozen=True)
class StoreHealth:
    """What ``PredictionStore.health()`` reports, for the gateway's health check.

    ``ok``: the store can write (no commit has failed since the last that succeeded, and it is open).
    ``reason``: why it cannot, "" when ok: SQLite's message ("database or disk is full", "database is
    locked"), "it is closed", "it is not open", "its writer stopped (...)". ``since``: when this state
    began, on the store's clock (``time.time`` unless injected): the first failure of a run of them, or
    the commit that recovered. ``pending``: predictions saved but not yet on disk. ``failures``: failed
    commits in a row (0 when ok)."""

    ok: bool
    reason: str
    since: float
    pending: int
    failures: int = 0


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """The store's connection by default: shared with its writer thread, in autocommit mode (the store
    issues BEGIN and COMMIT itself)."""
    return sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)


class _Health:
    """The store's state as ``StoreHealth`` reports it, and the events that wake whoever waits for one."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.failure = "it is not open"  # why the store cannot write; "" while it can
        self.failures = 0  # failed commits in a row
        self.since = clock()
        self._events = {True: asyncio.Event(), False: asyncio.Event()}  # each set while in its state
        self._entered = {False: self.now(0)}  # the health as each state began
        self._events[False].set()

    def now(self, pending: int) -> StoreHealth:
        return StoreHealth(not self.failure, self.failure, self.since, pending, self.failures)

    def enter(self, failure: str, pending: int, failed_commit: bool = False) -> None:
        """Record the state: "" (the store can write) or why it cannot; wakes whoever waits for it."""
        ok, was_ok = not failure, not self.failure
        self.failures = 0 if ok else self.failures + failed_commit
        self.failure = failure
        if ok != was_ok:
            self.since = self._clock()
            self._entered[ok] = self.now(pending)
            self._events[was_ok].clear()
            self._events[ok].set()

    async def wait(self, ok: bool) -> StoreHealth:
        await self._events[ok].wait()
        return self._entered[ok]


class PredictionStore:
    """The predictions (and the API tokens) of one gateway, in one SQLite file.

    ``connect`` opens the connection (``connect_sqlite`` by default; tests pass one that fails on cue),
    ``backoff`` paces the retries of a failed commit, ``flush_timeout_s`` bounds how long a flush waits
    while the writer cannot commit, and ``clock`` stamps the changes of ``health()``."""

    def __init__(self, path: Path, *, connect: Callable[[Path], sqlite3.Connection] = connect_sqlite,
                 backoff: Backoff = Backoff(), flush_timeout_s: float = FLUSH_TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._connect = connect
        self._backoff = backoff
        self._flush_timeout_s = flush_timeout_s
        self._clock = clock
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="wf-store")
        self._db: sqlite3.Connection | None = None
        self._dirty: dict[str, Prediction] = {}
        self._inflight: dict[str, Prediction] = {}  # the batch the writer is committing
        self._saved = 0  # generation of the latest save
        self._committed = 0  # generation of the latest commit
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None  # set by a flush: the writer stops gathering
        self._writer: asyncio.Task | None = None
        self._closed = False
        self._health = _Health(clock)
        self._beside = _Beside()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    async def open(self) -> Reopened:
        """Open (creating) the database; returns what the gateway before left unfinished or due."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recovered = await self._run(self._open)
        self._wake, self._hurry = asyncio.Event(), asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._writer.add_done_callback(self._writer_ended)
        self._health.enter("", 0)
        return recovered

    def _open(self) -> int:
        db = self._connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        _add_data_removed(db)
        self._db = db
        rows = db.execute(
            "SELECT p.body, t.route, t.input FROM predictions p LEFT JOIN tasks t ON t.id = p.id "
            "WHERE p.status NOT IN (%s) ORDER BY p.created_at, p.id" % ",".join("?" * len(TERMINAL)),
            [s.value for s in TERMINAL]).fetchall()
        unfinished = [(prediction_from_json(body), StoredTask(route, value_from_json(data)) if route else None)
                      for body, route, data in rows]
        self._beside.on_disk = {p.id for p, task in unfinished if task is not None}
        due = db.execute("SELECT p.body FROM webhooks_due w JOIN predictions p ON p.id = w.id "
                         "ORDER BY p.created_at").fetchall()
        return Reopened(unfinished, [prediction_from_json(body) for (body,) in due])

    async def close(self) -> int:
        """Write what is pending, stop the writer and close the database; returns how many saved
        predictions it could not write (0 unless the writer was failing; they are logged).

        Always returns, even while the writer is failing or backing off: it waits at most
        ``flush_timeout_s`` for the pending saves, and as long again for the database to close."""
        if self._closed:
            return self.health().pending
        try:
            await self.flush()
        except Unavailable as err:
            unwritten = sorted(self._pending())
            log.error("%s; closing with %d saved predictions not written: %s%s", err, len(unwritten),
                      ", ".join(unwritten[:20]), ", ..." if len(unwritten) > 20 else "")
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()  # at once, also mid-backoff; a commit under way ends on its thread
            await asyncio.wait({self._writer})
        unwritten = self.health().pending
        self._health.enter("it is closed", unwritten)
        closed = True
        if self._db is not None:
            closing = asyncio.get_running_loop().run_in_executor(self._exec, self._db.close)
            done, _ = await asyncio.wait({closing}, timeout=self._flush_timeout_s)
            closed = bool(done)
            if not closed:
                log.error("the prediction store's database did not close within %g s", self._flush_timeout_s)
        self._exec.shutdown(wait=closed)
        return unwritten

    # Health

    def health(self) -> StoreHealth:
        """Whether the store can write now, why not, since when, and how many saves wait (``StoreHealth``).
        Cheap and synchronous: the gateway's health check reads it on every probe."""
        return self._health.now(len(self._dirty.keys() | self._inflight.keys()))

    async def wait_health(self, ok: bool) -> StoreHealth:
        """Wait until the store can write (``ok=True``) or cannot (``ok=False``), returning at once if it
        already is; returns its health as of the change (it may have changed again since). For a health
        check that follows the store instead of polling it, and for tests."""
        return await self._health.wait(ok)

    def check_writable(self) -> None:
        """Raise ``Unavailable`` naming the cause ("the prediction store cannot write: database or disk is
        full") while the store cannot write: its last commit failed and the writer is retrying, or it is
        closed. Call it before accepting a new prediction, so that a create is refused up front (503)
        rather than accepted and then not written; the store accepts again once a commit succeeds.
        Updates to predictions already accepted are still saved (and kept until they are written)."""
        if self._health.failure:
            raise self._unavailable()

    def _unavailable(self, otherwise: str = "") -> Unavailable:
        return Unavailable(f"{CANNOT_WRITE}: {self._health.failure or otherwise}")

    def _writer_ended(self, task: asyncio.Task) -> None:
        """A writer that is gone leaves nothing waiting on it: its waiters get the error, health says so."""
        if task.cancelled():
            self._health.enter("it is closed", self.health().pending)
        else:
            err = task.exception()
            log.error("the prediction store's writer stopped", exc_info=err)
            self._health.enter(f"its writer stopped ({_describe(err)})", self.health().pending)
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(self._unavailable())
        self._waiters = []

    # Writes

    def save(self, prediction: Prediction, task: StoredTask | None = None) -> None:
        """Mark a prediction to be written (with its ``task``, kept beside it until it ends); returns at
        once. It stays pending until a commit succeeds."""
        self._dirty[prediction.id] = prediction
        if task is not None:
            self._beside.tasks[prediction.id] = task
        self._saved += 1
        self._wake.set()

    def webhook_done(self, prediction_id: str) -> None:
        """The completed webhook of a prediction went out (or was given up on): it is no longer due."""
        self._beside.webhooks_sent.add(prediction_id)
        self._saved += 1  # a flush waits for it too
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every save made before this call is committed.

        Raises ``Unavailable`` naming the cause when they are not on disk within ``flush_timeout_s`` (the
        writer cannot commit: a full disk, a locked database...) or the writer is gone (closed, stopped).
        The saves stay pending either way: the writer keeps retrying them."""
        target = self._saved
        if self._committed >= target:
            return
        if self._writer is None or self._writer.done():
            raise self._unavailable("it is not open")
        waiter = (target, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._wake.set()
        self._hurry.set()
        await asyncio.wait({waiter[1]}, timeout=self._flush_timeout_s)
        if waiter[1].done():
            return waiter[1].result()
        self._waiters.remove(waiter)
        raise self._unavailable(f"its saves were not on disk within {self._flush_timeout_s:g} s")

    async def _write_loop(self) -> None:
        delay_s = 0.0  # the backoff before the next attempt: 0 while commits succeed
        while True:
            await self._wake.wait()
            if delay_s:
                await asyncio.sleep(delay_s)  # backing off: saves gather meanwhile, and flushes wait
            elif not self._waiters:
                await self._gather()
            self._wake.clear()
            if await self._commit_dirty():
                delay_s = 0.0
            else:
                delay_s = self._backoff.after(delay_s)
                self._wake.set()  # try again even if nothing more is saved

    async def _gather(self) -> None:
        """Let saves gather for up to ``GATHER_S``, unless a flush comes to wait for them."""
        self._hurry.clear()
        try:
            await asyncio.wait_for(self._hurry.wait(), GATHER_S)
        except TimeoutError:
            pass

    async def _commit_dirty(self) -> bool:
        """Commit every dirty prediction in one transaction; whether it did. When it did not, they stay
        dirty, each under any newer save of it made meanwhile, and the health says why."""
        batch, self._dirty = self._dirty, {}
        self._inflight = batch
        generation = self._saved
        beside = self._beside.rows(batch)
        try:
            await self._run(self._write, _encode(batch), *beside)
        except Exception as err:  # noqa: BLE001 - the writer outlives any error: it logs it and retries
            self._dirty = {**batch, **self._dirty}
            self._commit_failed(err)
            return False
        except BaseException:  # closing mid-commit: whether it landed is unknown, so it stays pending
            self._dirty = {**batch, **self._dirty}
            raise
        finally:
            self._inflight = {}
        self._beside.committed(batch, beside[3])
        self._committed = generation
        if self._health.failure:
            log.warning("the prediction store writes again, after %d failed commits over %.1f s",
                        self._health.failures, self._clock() - self._health.since)
        self._health.enter("", self.health().pending)
        self._release_waiters(generation)
        return True

    def _commit_failed(self, err: Exception) -> None:
        reason = _describe(err)
        if reason != self._health.failure:  # logged as it starts failing and as the cause changes, not per try
            log.warning("the prediction store cannot write (%s): %d saved predictions wait; retrying every "
                        "%g s at most", reason, len(self._dirty), self._backoff.max_s,
                        exc_info=None if isinstance(err, sqlite3.Error) else err)
        self._health.enter(reason, self.health().pending, failed_commit=True)

    def _release_waiters(self, generation: int) -> None:
        still = []
        for target, fut in self._waiters:
            if target <= generation:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((target, fut))
        self._waiters = still

    def _write(self, rows: list[tuple], *beside: list[tuple]) -> None:
        _upsert(self._db, rows, *beside)

    # Reads: from the database and the saves not yet on it, so they answer while the writer fails.

    def _pending(self) -> dict[str, Prediction]:
        """The saves not known to be on disk: the batch being committed, under the newer dirty ones."""
        return {**self._inflight, **self._dirty}

    def _pending_one(self, prediction_id: str) -> Prediction | None:
        pending = self._dirty.get(prediction_id)
        return pending if pending is not None else self._inflight.get(prediction_id)

    async def get(self, prediction_id: str) -> Prediction | None:
        """A prediction: its latest save when that is not on disk yet, else the database's; None if unknown."""
        pending = self._pending_one(prediction_id)
        if pending is not None:
            return pending
        # Neither dirty nor in flight: it is on disk (or unknown), whatever the writer does meanwhile.
        row = await self._run(
            lambda: self._db.execute("SELECT body FROM predictions WHERE id = ?", (prediction_id,)).fetchone())
        return prediction_from_json(row[0]) if row else None

    async def list(self, owner: str | None, limit: int, cursor: str, created_after: float | None = None,
                   created_before: float | None = None) -> tuple[list[Prediction], str]:
        """A page of predictions, newest first (all owners when ``owner`` is None), and the next cursor;
        only those created at or after ``created_after`` and before ``created_before`` when given.

        The page merges the database's rows with the saves not yet on it (a prediction's ``created_at``
        and ``id``, the order's key, never change), so it neither waits for the writer nor misses them."""
        after = _decode_cursor(cursor) if cursor else None
        if created_before is not None:  # before it: below the key (created_before, ""), as a cursor is
            after = min(after, (created_before, "")) if after is not None else (created_before, "")
        since = float("-inf") if created_after is None else created_after
        rows = await self._run(_select_page, self._db, owner, after, limit + 1, since)
        # The saves are read after the rows: a batch committed after the rows were read is still in
        # ``_inflight`` here (this task resumes before the writer's, its read having finished first).
        found = {p.id: p for p in (prediction_from_json(body) for (body,) in rows)}
        found.update((p.id, p) for p in self._pending().values()
                     if (owner is None or p.owner == owner) and (after is None or _page_key(p) < after)
                     and p.created_at >= since)
        ordered = sorted(found.values(), key=_page_key, reverse=True)
        page = ordered[:limit]
        next_cursor = _encode_cursor(page[-1]) if len(ordered) > limit else ""
        return page, next_cursor

    # Retention

    async def remove_data(self, completed_before: float) -> int:
        """Remove the input files and the output of every prediction that completed before
        ``completed_before`` (``without_data``), and mark it ``data_removed``; returns how many.

        A prediction saved again while a sweep strips it would be written back whole; only creating and
        completing one save it, so a completed prediction is not saved again. Raises ``Unavailable``
        (from ``flush``) while the store cannot write; the next sweep tries again."""
        await self.flush()
        return await self._run(_remove_data, self._db, completed_before)

    # Tokens of a home from before accounts (gateway/accounts.py takes them up once)

    async def legacy_tokens(self) -> list[tuple[str, str, str]]:
        """The (hash, name, role) of each token kept here before tokens belonged to accounts."""
        return await self._run(lambda: self._db.execute("SELECT hash, name, role FROM tokens").fetchall())


_BESIDE_SQL = ("INSERT OR REPLACE INTO tasks (id, route, input) VALUES (?, ?, ?)",
               "DELETE FROM tasks WHERE id = ?",
               "INSERT OR IGNORE INTO webhooks_due (id) VALUES (?)",
               "DELETE FROM webhooks_due WHERE id = ?")


def _upsert(db: sqlite3.Connection, rows: list[tuple], *beside: list[tuple]) -> None:
    """Insert or replace ``rows`` (``_row``'s), and write the rows kept beside them (``_Beside.rows``:
    in that order, so a webhook sent before its mark was written leaves none), in one transaction,
    rolled back if it fails."""
    if not rows and not any(beside):
        return
    db.execute("BEGIN")
    try:
        db.executemany(
            "INSERT INTO predictions (id, owner, created_at, status, body, data_removed) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
            "body = excluded.body, data_removed = excluded.data_removed",
            rows,
        )
        for sql, args in zip(_BESIDE_SQL, beside):
            if args:
                db.executemany(sql, args)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite rolls some failures back itself (a full disk), not all
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _select_page(db: sqlite3.Connection, owner: str | None, after: tuple[float, str] | None,
                 count: int, since: float = float("-inf")) -> list[tuple]:
    where, args = [], []
    if owner is not None:
        where.append("owner = ?")
        args.append(owner)
    if since != float("-inf"):
        where.append("created_at >= ?")
        args.append(since)
    if after is not None:
        where.append("(created_at, id) < (?, ?)")
        args += list(after)
    sql = "SELECT body FROM predictions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
    args.append(count)
    return db.execute(sql, args).fetchall()


def _remove_data(db: sqlite3.Connection, completed_before: float) -> int:
    terminal = [s.value for s in TERMINAL]
    after: tuple[float, str] = (float("-inf"), "")
    removed = 0
    while True:
        rows = db.execute(
            "SELECT created_at, id, body FROM predictions WHERE data_removed = 0 AND created_at < ? "
            "AND (created_at, id) > (?, ?) AND status IN (%s) ORDER BY created_at, id LIMIT ?"
            % ",".join("?" * len(terminal)),
            [completed_before, *after, *terminal, REMOVE_BATCH]).fetchall()
        if not rows:
            return removed
        after = rows[-1][:2]
        done = [p for p in (prediction_from_json(body) for _, _, body in rows)
                if p.completed_at is not None and p.completed_at < completed_before]
        _upsert(db, [_row(without_data(p)) for p in done])
        removed += len(done)


def _encode(batch: dict[str, Prediction]) -> list[tuple]:
    rows = []
    for p in batch.values():
        try:
            rows.append(_row(p))
        except Exception:  # a prediction that cannot be encoded must not keep every other one off the disk
            log.exception("prediction %s cannot be encoded, so it is not written", p.id)
    return rows


def _describe(err: BaseException) -> str:
    """The cause as a client may read it: SQLite's own message, or the error's class and text."""
    if isinstance(err, sqlite3.Error) and str(err):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _page_key(p: Prediction) -> tuple[float, str]:
    return (p.created_at, p.id)

def _row(p: Prediction) -> tuple:
    return (p.id, p.owner, p.created_at, p.status.value, prediction_to_json(p), int(p.data_removed))


def _add_data_removed(db: sqlite3.Connection) -> None:
    """The ``data_removed`` column (added to stores made before it), and an index of the predictions that
    still hold data, which is all a retention sweep reads."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(predictions)")}
    if "data_removed" not in columns:
        db.execute("ALTER TABLE predictions ADD COLUMN data_removed INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX IF NOT EXISTS predictions_with_data ON predictions (created_at, id) "
               "WHERE data_removed = 0")


def without_data(p: Prediction) -> Prediction:
    """``p`` as retention leaves it: no output, and no file in its input (a file or a data URL becomes
    null); the rest of the input, the logs, the error and the metrics stay."""
    return dataclasses.replace(p, input=_without_files(p.input), output=None, data_removed=True)


def _without_files(value: Any) -> Any:
    if isinstance(value, FileData) or (isinstance(value, str) and value[:5].lower() == "data:"):
        return None
    if isinstance(value, dict):
        return {k: _without_files(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_files(v) for v in value]
    return value


def _encode_cursor(p: Prediction) -> str:
    return base64.urlsafe_b64encode(f"{p.created_at!r}|{p.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(created_at), last_id
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput("cursor", "is not a cursor this server returned") from err
