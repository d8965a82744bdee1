"""The prediction store on a real SQLite file in a temporary directory."""

from __future__ import annotations

import asyncio
import base64
import sqlite3

import pytest

from gateway.store import PredictionStore, StoredTask
from warmfleet.domain import FileData, Metrics, Output, Prediction, Status
from warmfleet.errors import InvalidInput

PNG = FileData(b"\x89PNG\r\n\x1a\n\x00\xff binary", "image/png", "in.png", 64, 32)


@pytest.fixture
async def open_store(tmp_path):
    """Opens stores on files under tmp_path; closes whatever is still open at the end."""
    opened: list[PredictionStore] = []

    async def open_(name: str = "predictions.sqlite3") -> PredictionStore:
        store = PredictionStore(tmp_path / "home" / name)
        await store.open()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        if store._db is not None and not store._exec._shutdown:
            await store.close()


def _prediction(pid: str, owner: str = "alice", created_at: float = 1.0, status: Status = Status.SUCCEEDED,
                **fields) -> Prediction:
    fields.setdefault("input", {"text": pid})
    return Prediction(id=pid, model="acme/echo", version="v1", owner=owner, created_at=created_at,
                      status=status, **fields)


async def test_a_prediction_with_files_round_trips_through_the_file(open_store, tmp_path):
    store = await open_store()
    pred = _prediction(
        "p1",
        input={"image": PNG, "masks": [PNG, FileData(b"", "image/png")], "nested": {"n": 1, "s": "x"}},
        input_kind="image_generation", deployment="prod", logs=["step 1", "step 2"],
        output=Output(value={"caption": "a cat", "thumb": PNG}, files=[PNG, FileData(b"\x00\x01")]),
        error="", started_at=2.5, completed_at=3.25, deadline_at=9.0, priority=3,
        metrics=Metrics(predict_time_s=0.75, total_time_s=2.25, queue_time_s=1.5, output_token_count=7),
    )
    store.save(pred)
    await store.flush()
    await store.close()

    reopened = await open_store()
    got = await reopened.get("p1")
    assert got == pred
    assert got is not pred
    assert isinstance(got.input["masks"][0], FileData) and got.input["masks"][0].data == PNG.data
    assert await reopened.get("missing") is None


async def test_a_json_input_that_looks_like_the_file_tag_round_trips(open_store):
    store = await open_store()
    pred = _prediction("p1", input={"options": {"$file": "literally a key a client chose"}})
    store.save(pred)
    await store.flush()
    await store.close()

    assert await (await open_store()).get("p1") == pred


async def test_flush_means_the_saves_before_it_are_committed(open_store, tmp_path):
    store = await open_store()
    store.save(_prediction("p1", status=Status.STARTING))
    store.save(_prediction("p1", status=Status.PROCESSING))  # coalesced: the latest version wins
    store.save(_prediction("p2"))
    await store.flush()

    with sqlite3.connect(tmp_path / "home" / "predictions.sqlite3") as db:
        rows = dict(db.execute("SELECT id, status FROM predictions").fetchall())
    assert rows == {"p1": "processing", "p2": "succeeded"}


async def test_a_flush_does_not_wait_for_the_writer_to_finish_gathering(open_store, tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.store.GATHER_S", 3600.0)
    store = await open_store()
    store.save(_prediction("p1"))  # nobody waits for it: the writer gathers more saves before committing
    for _ in range(20):
        await asyncio.sleep(0)  # the writer wakes and begins to gather
    assert store.health().pending == 1
    store.save(_prediction("p2"))
    await asyncio.wait_for(store.flush(), 30.0)  # not an hour

    with sqlite3.connect(tmp_path / "home" / "predictions.sqlite3") as db:
        assert {row[0] for row in db.execute("SELECT id FROM predictions")} == {"p1", "p2"}


async def test_get_sees_a_save_before_it_is_flushed(open_store):
    store = await open_store()
    pred = _prediction("p1", status=Status.PROCESSING)
    store.save(pred)
    assert (await store.get("p1")).status is Status.PROCESSING


async def _all_pages(store: PredictionStore, owner: str | None, limit: int) -> list[list[str]]:
    pages, cursor = [], ""
    while True:
        page, cursor = await store.list(owner, limit, cursor)
        pages.append([p.id for p in page])
        if not cursor:
            return pages
        assert len(pages) < 100, "the cursors never ended"


@pytest.mark.parametrize("limit", [1, 3, 4, 7, 50])
async def test_list_pages_are_newest_first_and_cover_every_row_exactly_once(open_store, limit):
    store = await open_store()
    preds = [
        # Several predictions share a created_at, so pages must break ties by id, not by time alone.
        _prediction(f"id{n:02d}", owner="alice" if n % 3 else "bob", created_at=1000.0 + n // 4 + 0.1)
        for n in range(23)
    ]
    for pred in reversed(preds):  # the insertion order must not matter
        store.save(pred)

    for owner in (None, "alice", "bob"):
        mine = [p for p in preds if owner is None or p.owner == owner]
        expected = [p.id for p in sorted(mine, key=lambda p: (p.created_at, p.id), reverse=True)]
        pages = await _all_pages(store, owner, limit)
        assert [pid for page in pages for pid in page] == expected
        assert all(len(page) == limit for page in pages[:-1])
        assert 0 < len(pages[-1]) <= limit


async def test_list_of_an_owner_with_nothing_is_one_empty_page(open_store):
    store = await open_store()
    store.save(_prediction("p1", owner="alice"))
    assert await store.list("carol", 10, "") == ([], "")


@pytest.mark.parametrize("cursor", [
    "not base64 !!",
    base64.urlsafe_b64encode(b"no separator").decode(),
    base64.urlsafe_b64encode(b"yesterday|p1").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe|p1").decode(),
])
async def test_a_bad_cursor_is_invalid_input_naming_cursor(open_store, cursor):
    store = await open_store()
    store.save(_prediction("p1"))
    with pytest.raises(InvalidInput) as err:
        await store.list(None, 10, cursor)
    assert err.value.field == "cursor"
    assert "cursor" in str(err.value)


async def test_reopening_returns_what_was_left_unfinished_with_its_task_and_changes_nothing(open_store):
    store = await open_store()
    queued = StoredTask("acme/echo", {"text": "q", "image": PNG, "seed": 7})
    store.save(_prediction("starting", created_at=1.0, status=Status.STARTING), queued)
    store.save(_prediction("processing", created_at=2.0, status=Status.PROCESSING, started_at=5.0),
               StoredTask("acme/echo", {"text": "p"}))
    store.save(_prediction("secret", created_at=3.0, status=Status.STARTING))  # no task kept
    done = _prediction("done", status=Status.SUCCEEDED, output=Output(value="hi"), completed_at=6.0)
    store.save(done)
    await store.close()

    third = PredictionStore(store.path)
    back = await third.open()
    assert [(p.id, p.status, t) for p, t in back.unfinished] == [
        ("starting", Status.STARTING, queued),
        ("processing", Status.PROCESSING, StoredTask("acme/echo", {"text": "p"})),
        ("secret", Status.STARTING, None)]
    assert back.unfinished[0][1].input["image"].data == PNG.data
    assert back.unfinished[1][0].started_at == 5.0
    assert await third.get("done") == done and back.webhooks_due == []
    await third.close()


async def test_a_task_is_deleted_in_the_commit_that_ends_its_prediction(open_store):
    store = await open_store()
    pred = _prediction("p1", status=Status.STARTING)
    store.save(pred, StoredTask("acme/echo", {"text": "p1"}))
    store.save(_prediction("fast", status=Status.STARTING), StoredTask("acme/echo", {"text": "fast"}))
    await store.flush()
    assert _rows(store, "tasks") == [("fast",), ("p1",)]

    pred.status, pred.completed_at = Status.SUCCEEDED, 2.0
    store.save(pred)
    await store.flush()
    assert _rows(store, "tasks") == [("fast",)]
    await store.close()
    again = PredictionStore(store.path)
    assert [p.id for p, _ in (await again.open()).unfinished] == ["fast"]
    await again.close()


async def test_a_completed_webhook_stays_due_across_a_restart_until_it_is_done(open_store):
    store = await open_store()
    hooked = _prediction("hooked", webhook="https://example.com/h", completed_at=2.0)
    store.save(hooked)
    store.save(_prediction("starts-only", webhook="https://example.com/h", webhook_events_filter=["start"]))
    store.save(_prediction("plain"))
    store.save(_prediction("running", status=Status.PROCESSING, webhook="https://example.com/h"))
    await store.close()

    again = PredictionStore(store.path)
    assert [p.id for p in (await again.open()).webhooks_due] == ["hooked"]
    again.webhook_done("hooked")
    await again.flush()
    await again.close()
    third = PredictionStore(store.path)
    assert (await third.open()).webhooks_due == []
    await third.close()


def _rows(store: PredictionStore, table: str) -> list[tuple]:
    with sqlite3.connect(store.path) as db:
        return sorted(db.execute(f"SELECT id FROM {table}").fetchall())
