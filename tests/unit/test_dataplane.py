"""The data plane's frames and their codec: each frame comes back as it went, of its own type; bytes that
are not a frame, or a frame of no known kind, are refused with ``UnknownFrame``, never passed on."""

from __future__ import annotations

import pickle

import pytest

from warmfleet import dataplane
from warmfleet.dataplane import Ack, Cancel, Events, Hello, Submit, UnknownFrame, Welcome
from warmfleet.domain import (
    FileData, Finished, LogLine, Output, OutputChunk, Rejected, Started, Status, Task, TaskEvent,
)

FRAMES = [
    Hello("router-1"),
    Hello("router-1", resume=True, after_seq=41),
    Ack(41),
    Welcome(17, {"p1": "i1", "p2": ""}),
    Submit([Task("p1", "echo-1", {"text": "hi", "n": [1, 2.5, None]}), Task("p2", "echo-1", {})]),
    Cancel(["p1", "p2"]),
    Events([
        TaskEvent("p1", Started(1.0)),
        TaskEvent("p1", LogLine("loading")),
        TaskEvent("p1", OutputChunk("tok", joinable=False)),
        TaskEvent("p1", OutputChunk(file=FileData(b"\x89PNG", "image/png"))),
        TaskEvent("p1", Finished(Status.SUCCEEDED, 1.0, 2.0, Output("ok"))),
        TaskEvent("p2", Rejected("instance echo-1 is draining", True)),
    ], seq=42, applied=17),
    Events([], seq=43, applied=18),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f"{type(f).__name__}-{FRAMES.index(f)}")
def test_a_frame_decodes_to_an_equal_frame_of_its_own_type(frame):
    decoded = dataplane.decode(dataplane.encode(frame))

    assert type(decoded) is type(frame)
    assert decoded == frame


def test_the_wire_form_is_a_tag_and_the_payload():
    # The wire is what the agent and the router of one cluster both read: changing it is a protocol
    # change, so this pins it.
    assert pickle.loads(dataplane.encode(Cancel(["p1"]))) == ("cancel", ["p1"])
    assert pickle.loads(dataplane.encode(Ack(5))) == ("ack", 5)
    assert pickle.loads(dataplane.encode(Welcome(3, {}))) == ("welcome", (3, {}))
    assert pickle.loads(dataplane.encode(Hello("r"))) == ("hello", ("r", False, 0))
    assert pickle.loads(dataplane.encode(Events([], 7, 3))) == ("events", ([], 7, 3))


def test_the_ends_can_match_on_the_frame_types():
    match dataplane.decode(dataplane.encode(Submit([Task("p1", "i1", {})]))):
        case Submit(tasks):
            assert [t.prediction_id for t in tasks] == ["p1"]
        case other:
            pytest.fail(f"decoded as {other!r}")


def test_frames_are_frozen():
    with pytest.raises(AttributeError):
        Hello("r").router_id = "other"  # type: ignore[misc]


def test_encoding_what_is_not_a_frame_is_refused():
    with pytest.raises(UnknownFrame, match="not a data plane frame: tuple"):
        dataplane.encode(("submit", []))  # type: ignore[arg-type]


@pytest.mark.parametrize("data, says", [
    (pickle.dumps(("bogus", 1)), "tag 'bogus'"),
    (pickle.dumps(("submit", [], "extra")), "tag 'submit'"),
    (pickle.dumps(("events", ([], 1))), "tag 'events'"),  # a field missing
    (pickle.dumps(("hello", "r")), "tag 'hello'"),  # the Hello of a router before sessions resumed
    (pickle.dumps(("events", [TaskEvent("p1", Started(1.0))])), "tag 'events'"),  # unnumbered Events
    (pickle.dumps([TaskEvent("p1", Started(1.0))]), "list"),  # the agent's frame before Events existed
    (pickle.dumps(42), "int"),
    (b"not a pickle", "undecodable"),
    (b"", "undecodable"),
])
def test_decoding_what_is_not_a_frame_raises_unknown_frame_naming_it(data, says):
    with pytest.raises(UnknownFrame, match=says):
        dataplane.decode(data)
