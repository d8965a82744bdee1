"""API changes to the served routes survive a restart: laid over the routes a cluster starts with."""

from __future__ import annotations

from scheduler.route_journal import RouteJournal
from warmfleet.domain import RouteSpec

START = [RouteSpec("warmfleet/echo", "echo"), RouteSpec("acme/chat", "llm", "/m/chat")]


def test_puts_replace_or_add_and_deletes_stay_deleted_across_a_reopen(tmp_path):
    journal = RouteJournal(tmp_path / "routes.json")
    assert journal.apply(START) == START  # no file yet: nothing changes
    prod = RouteSpec("acme/chat-prod", "llm", "/m/chat", model="acme/chat", release=3, min_instances=0,
                     max_instances=4, autoscaling={"target_ongoing_requests": 2.0})
    journal.put(prod)
    journal.put(RouteSpec("acme/chat", "llm", "/m/chat-v2"))
    journal.delete("warmfleet/echo")

    again = RouteJournal(tmp_path / "routes.json").apply(START)

    assert [r.name for r in again] == ["acme/chat", "acme/chat-prod"]
    assert again[0].weights == "/m/chat-v2"
    assert again[1] == prod  # every field, the release included


def test_a_route_put_again_after_a_delete_is_back(tmp_path):
    journal = RouteJournal(tmp_path / "routes.json")
    journal.delete("warmfleet/echo")
    journal.put(RouteSpec("warmfleet/echo", "echo", options={"max_concurrency": 2}))
    [echo, _] = RouteJournal(tmp_path / "routes.json").apply(START)
    assert echo.options == {"max_concurrency": 2}


def test_a_torn_journal_is_reported_set_aside_and_the_last_good_copy_used(tmp_path, caplog):
    path = tmp_path / "routes.json"
    journal = RouteJournal(path)
    journal.put(RouteSpec("acme/one", "echo"))
    journal.put(RouteSpec("acme/two", "echo"))  # the copy with only acme/one is now routes.json.bak
    path.write_text(path.read_text()[:40])  # torn mid-write

    again = RouteJournal(path)

    assert [r.name for r in again.apply([])] == ["acme/one"]
    assert "could not be read" in again.problem and "routes.json" in again.problem
    assert any("could not be read" in r.getMessage() for r in caplog.records)
    assert [p.name for p in tmp_path.glob("routes.json.unreadable-*")]  # kept for the operator
    again.put(RouteSpec("acme/three", "echo"))  # and it writes on from what it has
    assert [r.name for r in RouteJournal(path).apply([])] == ["acme/one", "acme/three"]


def test_a_journal_with_no_good_copy_starts_empty_and_says_why(tmp_path):
    path = tmp_path / "routes.json"
    path.write_text('{"format": 99, "put": []}')
    journal = RouteJournal(path)
    assert journal.apply(START) == START
    assert "format 1" in journal.problem


def test_every_write_leaves_a_readable_journal_and_its_previous_copy(tmp_path):
    path = tmp_path / "routes.json"
    journal = RouteJournal(path)
    for n in range(3):
        journal.put(RouteSpec(f"acme/m{n}", "echo"))
        assert not path.with_suffix(".tmp").exists()
        assert [r.name for r in RouteJournal(path).apply([])] == [f"acme/m{k}" for k in range(n + 1)]
    assert len(RouteJournal(path.with_name("routes.json.bak")).apply([])) == 2
