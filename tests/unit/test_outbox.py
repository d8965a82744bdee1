"""Coalescing of streamed text in the agent's outbox."""

from __future__ import annotations

from node.outbox import coalesce
from warmfleet.domain import FileData, LogLine, OutputChunk, Started, TaskEvent


def chunk(pid: str, text: str) -> TaskEvent:
    return TaskEvent(pid, OutputChunk(value=text))


def test_adjacent_text_of_one_prediction_merges_and_order_is_kept_per_prediction():
    events = [TaskEvent("a", Started(1.0)), chunk("a", "he"), chunk("b", "x"), chunk("a", "llo"),
              chunk("b", "y"), TaskEvent("a", LogLine("note")), chunk("a", "!")]
    merged = coalesce(events)
    per = {pid: [e.body for e in merged if e.prediction_id == pid] for pid in "ab"}
    assert per["a"] == [Started(1.0), OutputChunk("hello"), LogLine("note"), OutputChunk("!")]
    assert per["b"] == [OutputChunk("xy")]


def test_file_and_non_text_chunks_are_never_merged():
    image = FileData(b"png", "image/png")
    events = [chunk("a", "x"), TaskEvent("a", OutputChunk(file=image)), chunk("a", "y"),
              TaskEvent("a", OutputChunk(value={"k": 1})), TaskEvent("a", OutputChunk(value={"k": 2}))]
    assert [e.body for e in coalesce(events)] == [e.body for e in events]


def test_text_survives_merging_exactly():
    pieces = ["日", "本", "語", " ", "🙂"] * 20
    merged = coalesce([chunk("a", p) for p in pieces])
    assert len(merged) == 1 and merged[0].body.value == "".join(pieces)
