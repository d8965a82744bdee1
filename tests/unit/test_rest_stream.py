"""The SSE wire format of ``urls.stream``: event names, ids, multi-line data, the end, the headers read."""

from __future__ import annotations

import pytest

from gateway.rest.stream import _accepts_event_stream, _last_event_id, event_frames, sse_event
from warmfleet.domain import (
    Completed, FileData, LogLine, Output, OutputChunk, Prediction, PredictionEvent, ProgressUpdate, Status,
)
from warmfleet.errors import InvalidInput


def _ended(status: Status, output: str | None = None, error: str = "") -> Completed:
    pred = Prediction(id="p1", model="acme/echo", version="v1", input={}, owner="alice", created_at=1.0,
                      status=status, error=error, output=None if output is None else Output(value=output))
    return Completed(pred)


def _parse(frames: list[bytes]) -> list[dict]:
    """What an EventSource client makes of the frames: name, id and data (data lines joined by \\n)."""
    events = []
    for frame in b"".join(frames).decode().split("\n\n")[:-1]:
        event = {"data": []}
        for line in frame.split("\n"):
            name, _, value = line.partition(": ")
            event.setdefault(name, value) if name != "data" else event["data"].append(value)
        event["data"] = "\n".join(event["data"])
        events.append(event)
    return events


def test_a_text_chunk_is_an_output_event_with_the_seq_as_id():
    assert sse_event("output", " world", 7) == b"event: output\nid: 7\ndata:  world\n\n"
    [event] = _parse(event_frames(PredictionEvent("p1", 7, OutputChunk(value=" world")), False))
    assert event == {"event": "output", "id": "7", "data": " world"}


@pytest.mark.parametrize("text", ["two\nlines", "crlf\r\nand cr\rend", "\n", "trailing\n", ""])
def test_multi_line_data_goes_as_several_data_lines_and_comes_back_whole(text):
    [event] = _parse([sse_event("output", text, 1)])
    assert event["data"] == text.replace("\r\n", "\n").replace("\r", "\n")


def test_logs_are_logs_events_and_other_values_are_json():
    frames = event_frames(PredictionEvent("p1", 2, LogLine("loading")), False)
    frames += event_frames(PredictionEvent("p1", 3, OutputChunk(value={"n": 1})), False)
    assert [(e["event"], e["data"]) for e in _parse(frames)] == [("logs", "loading"), ("output", '{"n":1}')]


def test_status_progress_and_files_are_not_streamed():
    for body in (Status.PROCESSING, ProgressUpdate(1, 4), OutputChunk(file=FileData(b"x", "image/png"))):
        assert event_frames(PredictionEvent("p1", 1, body), False) == []


@pytest.mark.parametrize("status, done", [
    (Status.SUCCEEDED, "{}"), (Status.CANCELED, '{"reason":"canceled"}'),
    (Status.ABORTED, '{"reason":"aborted"}'),
])
def test_done_says_why_a_prediction_did_not_succeed(status, done):
    events = _parse(event_frames(PredictionEvent("p1", 9, _ended(status)), False))
    assert events == [{"event": "done", "id": "9", "data": done}]


def test_a_failed_prediction_ends_with_error_then_done():
    failed = _ended(Status.FAILED, error="out of memory")
    events = _parse(event_frames(PredictionEvent("p1", 4, failed), True))
    assert [(e["event"], e["data"]) for e in events] == [
        ("error", "out of memory"), ("done", '{"reason":"error"}')]


def test_an_output_that_never_came_in_chunks_is_sent_whole_before_done():
    event = PredictionEvent("p1", 1, _ended(Status.SUCCEEDED, output="all at once"))
    assert [(e["event"], e["data"]) for e in _parse(event_frames(event, True))] == [
        ("output", "all at once"), ("done", "{}")]
    assert [e["event"] for e in _parse(event_frames(event, False))] == ["done"]


@pytest.mark.parametrize("accept, ok", [
    ("", True), ("text/event-stream", True), ("*/*", True), ("text/*", True),
    ("application/json, text/event-stream;q=0.5", True), ("application/json", False),
    ("text/event-stream;q=0", False),
])
def test_accept(accept, ok):
    assert _accepts_event_stream(accept) is ok


def test_last_event_id_is_the_seq_to_resume_after():
    assert _last_event_id(None) == 0 and _last_event_id(" 12 ") == 12
    for bad in ("abc", "-1", "1690212292:0"):
        with pytest.raises(InvalidInput) as err:
            _last_event_id(bad)
        assert err.value.field == "Last-Event-ID"
