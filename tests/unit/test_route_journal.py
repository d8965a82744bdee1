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
