"""The prediction service's side of crash safety, on a real store (SQLite in a temporary folder), a real
router and fake nodes: the seed is fixed at create and kept with the task, a re-run is logged, counted
and streams nothing twice, what a restart finds without a task ends failed saying why, and creates are
refused while the store cannot write."""

from __future__ import annotations

import asyncio

import pytest

from gateway.auth import Principal, Role
from gateway.catalog import ModelCatalog
from gateway.events import EventHub
from gateway.metrics import PredictionMetrics
from gateway.predictions import NOT_KEPT, CreateRequest, PredictionService
from gateway.store import PredictionStore, StoredTask
from scheduler.router import Router, Unfinished
from tests.unit.fakes import FakeNodeData, instance, settle, table, wait_until
from warmfleet.domain import Completed, Finished, Output, OutputChunk, Prediction, RouteSpec, Started, Status, TaskEvent
from warmfleet.errors import Unavailable

LLM = "acme/llm"
ALICE = Principal("acct_alice", "alice", Role.USER)


@pytest.fixture
async def cluster(tmp_path):
    """A prediction service over a real store and router; node A serves LLM (from revision 1)."""
    store = PredictionStore(tmp_path / "predictions.sqlite3")
    await store.open()
    catalog = ModelCatalog()
    catalog.update([RouteSpec(name=LLM, runner="llm", weights="/models/none")])
    metrics = PredictionMetrics()
    hub = EventHub()
    service: list[PredictionService] = []
    router = Router("gateway-1", lambda pid, body: service[0].on_task_event(pid, body), 100)
    service.append(PredictionService(store, router, catalog, hub, metrics=metrics))
    node = FakeNodeData("A")
    router.update_table(table(1, [instance("i1", LLM, "A", 4)], node))
    yield service[0], store, router, node, metrics
    await router.close()
    await store.close()


async def test_a_seed_is_drawn_at_create_logged_routed_and_kept_with_the_task(cluster):
    service, store, _, node, _ = cluster
    drawn = await service.create(ALICE, CreateRequest(input={"prompt": "hi"}, model=LLM))
    given = await service.create(ALICE, CreateRequest(input={"prompt": "hi", "seed": 42}, model=LLM))
    await node.wait_submitted(2)

    [first, second] = [t.input for batch in node.submits for t in batch]
    seed = first["seed"]
    assert isinstance(seed, int) and 0 <= seed <= 2**63 - 1
    assert drawn.logs[-1] == f"Using seed: {seed}" and "seed" not in drawn.input  # the input as given
    assert second["seed"] == 42 and not any(line.startswith("Using seed") for line in given.logs)
    await store.flush()
    await store.close()
    reopened = PredictionStore(store.path)
    kept = {p.id: task for p, task in (await reopened.open()).unfinished}
    await reopened.close()
    assert kept[drawn.id] == StoredTask(LLM, first) and kept[given.id].input["seed"] == 42


async def test_a_rerun_is_logged_counted_and_streams_only_what_the_first_run_had_not(cluster):
    service, _, router, a, metrics = cluster
    pred = await service.create(ALICE, CreateRequest(input={"prompt": "hi"}, model=LLM))
    events = await service.follow(ALICE, pred.id)
    await a.wait_submitted(1)
    a.push(TaskEvent(pred.id, Started(1.0)), TaskEvent(pred.id, OutputChunk("Hel")),
           TaskEvent(pred.id, OutputChunk("lo")))
    await wait_until(lambda: pred.status is Status.PROCESSING and len(service._hub.published(pred.id)) >= 3,
                     a.changed)

    a.lose()
    await wait_until(lambda: pred.attempt == 2, a.changed)
    assert pred.status is Status.STARTING
    assert pred.logs[-1] == "node A was lost while it ran: running it again (attempt 2)"
    assert metrics._models[LLM].reruns == 1

    b = FakeNodeData("B")
    router.update_table(table(2, [instance("i2", LLM, "B", 4)], b))
    await b.wait_submitted(1)
    [task] = b.submits[0]
    assert task.input == a.submits[0][0].input  # the same seed: the same tokens
    b.push(TaskEvent(pred.id, Started(2.0)), TaskEvent(pred.id, OutputChunk("He")),
           TaskEvent(pred.id, OutputChunk("llo, w")), TaskEvent(pred.id, OutputChunk("orld")))
    b.finish(pred.id, value="Hello, world")

    chunks = []
    async for event in events:
        if isinstance(event.body, OutputChunk):
            chunks.append(event.body.value)
        if isinstance(event.body, Completed):
            done = event.body.prediction
    assert chunks == ["Hel", "lo", ", w", "orld"]  # the re-run's first five characters were streamed
    assert done.status is Status.SUCCEEDED and done.attempt == 2


async def test_what_a_restart_finds_without_its_task_ends_failed_saying_why(cluster):
    service, store, _, _, _ = cluster
    kept = Prediction(id="kept", model=LLM, version="v", input={"prompt": "a"}, owner=ALICE.account, created_at=1.0,
                      status=Status.PROCESSING, started_at=2.0, attempt=1)
    secret = Prediction(id="secret", model=LLM, version="v", input={"prompt": "b"}, owner=ALICE.account,
                        created_at=1.5)

    taken = service.recover([(kept, StoredTask(LLM, {"prompt": "a", "seed": 1})), (secret, None)])

    assert taken == [Unfinished("kept", LLM, {"prompt": "a", "seed": 1}, started=True, attempt=1,
                                account=ALICE.account)]
    failed = await service.get(ALICE, "secret")
    assert failed.status is Status.FAILED and failed.error == NOT_KEPT
    assert (await service.get(ALICE, "kept")).status is Status.PROCESSING


async def test_creates_are_refused_while_the_store_cannot_write_and_nothing_is_queued(cluster):
    service, store, router, node, _ = cluster
    await store.close()
    with pytest.raises(Unavailable, match="the prediction store cannot write: it is closed"):
        await service.create(ALICE, CreateRequest(input={"prompt": "hi"}, model=LLM))
    assert router.queue_length(LLM) == 0 and node.submits == [] and service.active_count() == 0


async def test_two_creates_at_once_with_one_client_id_make_one_prediction_and_one_queue_entry(cluster):
    service, _, router, node, _ = cluster
    request = CreateRequest(input={"prompt": "hi", "seed": 3}, model=LLM, id="my-id")

    first, second = await asyncio.gather(service.create(ALICE, request), service.create(ALICE, request))

    assert first is second and service.active_count() == 1
    await node.wait_submitted(1)
    await settle()
    assert node.submitted_ids == ["my-id"] and router.queue_length(LLM) == 0
    assert router.footprint()["running"] == 1


async def test_create_and_follow_streams_every_event_of_a_prediction_that_ends_before_create_returns(
        cluster, monkeypatch):
    # create_and_follow awaits the store's flush before it answers; a fast prediction can run and end in
    # that time. Its stream must still carry its chunks, not only its end.
    service, store, _, node, _ = cluster
    flush = store.flush

    async def slow_flush() -> None:
        await node.wait_submitted(1)
        [task] = node.submits[0]
        node.push(TaskEvent(task.prediction_id, Started(1.0)), TaskEvent(task.prediction_id, OutputChunk("Hel")),
                  TaskEvent(task.prediction_id, OutputChunk("lo")),
                  TaskEvent(task.prediction_id, Finished(Status.SUCCEEDED, 1.0, 2.0, Output("Hello"))))
        await wait_until(lambda: not service._hub.is_open(task.prediction_id), node.changed)
        await flush()

    monkeypatch.setattr(store, "flush", slow_flush)
    pred, events = await service.create_and_follow(ALICE, CreateRequest(input={"prompt": "hi"}, model=LLM))
    bodies = [e.body async for e in events]
    assert [b.value for b in bodies if isinstance(b, OutputChunk)] == ["Hel", "lo"]
    assert isinstance(bodies[-1], Completed) and bodies[-1].prediction.output.value == "Hello"
    assert pred.status is Status.SUCCEEDED
