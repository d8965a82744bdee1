"""The prediction store: SQLite in WAL mode under ``$WARMFLEET_HOME``, written behind the event loop.

Saves are coalesced: ``save`` marks a prediction dirty and a single writer commits every dirty prediction
in one transaction on its own thread, so the commit rate falls as the load rises (group commit). ``flush``
waits until what was saved before it is on disk; the gateway awaits it before acknowledging anything a
client may read back later. On open, predictions left in flight by a gateway that died are marked failed.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.codec import prediction_from_json, prediction_to_json
from warmfleet.domain import TERMINAL, FileData, Prediction, Status
from warmfleet.errors import InvalidInput

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
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

# How long the writer gathers saves before a commit when nobody waits on a flush: within it, a
# prediction that starts and ends is encoded and written once, in its final state.
GATHER_S = 0.01
RESTART_REASON = "the gateway stopped while the prediction was in flight; run it again"
REMOVE_BATCH = 200  # predictions read per step of a retention sweep: bodies with files can be large


class PredictionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._exec = ThreadPoolExecutor(1, thread_name_prefix="wf-store")
        self._db: sqlite3.Connection | None = None
        self._dirty: dict[str, Prediction] = {}
        self._saved = 0  # generation of the latest save
        self._committed = 0  # generation of the latest commit
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    async def open(self) -> int:
        """Open (creating) the database; returns how many in-flight predictions were marked failed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recovered = await self._run(self._open)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        return recovered

    def _open(self) -> int:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        _add_data_removed(db)
        self._db = db
        rows = db.execute(
            "SELECT body FROM predictions WHERE status NOT IN (%s)" % ",".join("?" * len(TERMINAL)),
            [s.value for s in TERMINAL],
        ).fetchall()
        now = time.time()
        fixed = []
        for (body,) in rows:
            p = prediction_from_json(body)
            p.status, p.error, p.completed_at = Status.FAILED, RESTART_REASON, now
            fixed.append(p)
        self._write([_row(p) for p in fixed])
        return len(fixed)

    async def close(self) -> None:
        await self.flush()
        if self._writer:
            self._writer.cancel()
        await self._run(self._db.close) if self._db else None
        self._exec.shutdown(wait=True)

    # Writes

    def save(self, prediction: Prediction) -> None:
        """Mark a prediction to be written; returns at once."""
        self._dirty[prediction.id] = prediction
        self._saved += 1
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every save made before this call is committed."""
        target = self._saved
        if self._committed >= target:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        self._wake.set()
        await fut

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._waiters:
                await asyncio.sleep(GATHER_S)
            self._wake.clear()
            batch, self._dirty = self._dirty, {}
            generation = self._saved
            rows = [_row(p) for p in batch.values()]
            await self._run(self._write, rows)
            self._committed = generation
            still = []
            for target, fut in self._waiters:
                if target <= generation:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((target, fut))
            self._waiters = still

    def _write(self, rows: list[tuple]) -> None:
        if not rows:
            return
        db = self._db
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO predictions (id, owner, created_at, status, body, data_removed) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
            "body = excluded.body, data_removed = excluded.data_removed",
            rows,
        )
        db.execute("COMMIT")

    # Reads

    async def get(self, prediction_id: str) -> Prediction | None:
        pending = self._dirty.get(prediction_id)
        if pending is not None:
            return pending
        row = await self._run(
            lambda: self._db.execute("SELECT body FROM predictions WHERE id = ?", (prediction_id,)).fetchone())
        return prediction_from_json(row[0]) if row else None

    async def list(self, owner: str | None, limit: int, cursor: str) -> tuple[list[Prediction], str]:
        """A page of predictions, newest first (all owners when ``owner`` is None), and the next cursor."""
        await self.flush()
        where, args = [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if cursor:
            created_at, last_id = _decode_cursor(cursor)
            where.append("(created_at, id) < (?, ?)")
            args += [created_at, last_id]
        sql = "SELECT body FROM predictions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall())
        page = [prediction_from_json(r[0]) for r in rows[:limit]]
        next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else ""
        return page, next_cursor

    # Retention

    async def remove_data(self, completed_before: float) -> int:
        """Remove the input files and the output of every prediction that completed before
        ``completed_before`` (``without_data``), and mark it ``data_removed``; returns how many.

        A prediction saved again while a sweep strips it would be written back whole; only creating and
        completing one save it, so a completed prediction is not saved again."""
        await self.flush()
        return await self._run(self._remove_data, completed_before)

    def _remove_data(self, completed_before: float) -> int:
        terminal = [s.value for s in TERMINAL]
        after: tuple[float, str] = (float("-inf"), "")
        removed = 0
        while True:
            rows = self._db.execute(
                "SELECT created_at, id, body FROM predictions WHERE data_removed = 0 AND created_at < ? "
                "AND (created_at, id) > (?, ?) AND status IN (%s) ORDER BY created_at, id LIMIT ?"
                % ",".join("?" * len(terminal)),
                [completed_before, *after, *terminal, REMOVE_BATCH]).fetchall()
            if not rows:
                return removed
            after = rows[-1][:2]
            done = [p for p in (prediction_from_json(body) for _, _, body in rows)
                    if p.completed_at is not None and p.completed_at < completed_before]
            self._write([_row(without_data(p)) for p in done])
            removed += len(done)

    # Tokens

    async def add_token(self, token_hash: str, name: str, role: str) -> None:
        await self._run(lambda: self._db.execute(
            "INSERT INTO tokens (hash, name, role, created_at) VALUES (?, ?, ?, ?)",
            (token_hash, name, role, time.time())))

    async def tokens(self) -> list[tuple[str, str, str]]:
        return await self._run(lambda: self._db.execute("SELECT hash, name, role FROM tokens").fetchall())


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
