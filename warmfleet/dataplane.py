"""The data plane between a router and a node agent: one bidirectional gRPC stream per (router, agent).

Why not Ray actor calls: one costs 1.1-1.5 ms round trip on this hardware (measured, see bench/), and a
prediction needs a trip out and a trip back, which alone is over the latency budget. Ray still places
the agents, carries every control call (load, unload, info), and detects their death; predictions and
their events travel on this stream.

The frames are the dataclasses below. Router to agent (``ToAgent``): ``Hello`` first, then ``Submit``,
``Cancel`` and ``Ack`` in any order. Agent to router (``ToRouter``): ``Welcome`` first, then ``Events``.
The router's end is ``scheduler.data_channel``, the agent's ``node.data_server``; both match on these types.

A session survives the loss of its stream. Both directions are numbered per router, so that a router
that reconnects (``Hello`` with ``resume``) loses and repeats nothing:
- agent to router: each ``Events`` frame has a ``seq`` (1, 2, ... over all of the router's sessions with
  this agent). The agent keeps each frame until the router's ``Ack`` says it has it, and replays those
  after the router's ``after_seq`` when it reconnects; the router drops a frame whose seq it has had.
- router to agent: the ``Submit`` and ``Cancel`` frames count (1, 2, ...; the count is implicit: the
  stream keeps their order). The agent says how many it has applied (``Welcome.applied``, and on every
  ``Events`` frame); the router keeps the frames after that count and sends them again on a new stream.

A router that restarts (a new process of the same router id: a gateway's id is kept in its home) says
``Hello`` without ``resume``: the agent keeps what it holds for that id, the tasks still running and the
events not acknowledged, numbers those events again from 1 for the new process, and names the tasks in
its ``Welcome`` (``held``), so the new process takes them up where the old one left them.

On the wire a frame is the pickle of ``(tag, payload)`` (pickle, as Ray's own transport uses, because
the payloads are domain objects), so the stream is for the cluster's own processes only: the agent binds
to its node's address and refuses a session without the cluster secret (which travels only inside Ray).
The payload is the frame's one field, or the tuple of its fields. The tuple, not the dataclass, is what
gets pickled: a pickled dataclass (or NamedTuple) names its class and is rebuilt through ``__reduce__``,
which made a one-event frame 50-80% dearer to encode and decode (measured: 7 us as a tuple, 11-13 us as a
dataclass); the tuple costs the same as the untyped frames did, plus about half a microsecond to build
the frame object. ``decode`` raises ``UnknownFrame`` for anything but a frame of this module.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Callable

from warmfleet.domain import Task, TaskEvent

SERVICE = "warmfleet.internal.NodeData"
SESSION = "Session"  # the one method: a stream of ToAgent frames in, of ToRouter frames out
METHOD = f"/{SERVICE}/{SESSION}"
SECRET_HEADER = "x-warmfleet-cluster-secret"
# A stream that carries nothing is checked this often (HTTP/2 pings, both ends), and given up this long
# after an unanswered ping: a dead peer or a silent network is noticed in seconds, not at TCP's minutes.
KEEPALIVE_MS = 2000
KEEPALIVE_TIMEOUT_MS = 3000
_MESSAGE_OPTIONS = [("grpc.max_receive_message_length", 512 * 1024 * 1024),  # images ride in frames
                    ("grpc.max_send_message_length", 512 * 1024 * 1024)]
_KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", KEEPALIVE_MS),
                      ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                      # Any ping unanswered this long ends the connection: one already on its way (gRPC's
                      # own, to size its windows) holds the keepalive ping back, and would otherwise wait
                      # a minute for its answer.
                      ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                      ("grpc.keepalive_permit_without_calls", 1),
                      ("grpc.http2.max_pings_without_data", 0)]  # a silent stream is pinged without end
# The router's channel.
CHANNEL_OPTIONS = _MESSAGE_OPTIONS + _KEEPALIVE_OPTIONS
# The agent's server: it pings too, and takes the router's pings (by default a server allows one ping in
# five minutes on a silent stream and hangs up on a peer that sends more).
SERVER_OPTIONS = _MESSAGE_OPTIONS + _KEEPALIVE_OPTIONS + [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ("grpc.http2.max_ping_strikes", 0)]


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of a session: which router speaks. The agent streams that router's events back.

    ``resume``: the router spoke to this agent before (the stream broke): the agent continues that
    session, replaying the ``Events`` after ``after_seq`` (the last one the router had), or refuses with
    DATA_LOSS when it no longer holds them. Without it (a router process's first session), both counts
    start again, and what the agent held for the router id (an earlier process's tasks and events) is
    kept for this one: its events are replayed from the start, renumbered."""

    router_id: str
    resume: bool = False
    after_seq: int = 0


@dataclass(frozen=True, slots=True)
class Submit:
    """Tasks for the agent to start (``NodeAgent.submit``); one it cannot start comes back ``Rejected``."""

    tasks: list[Task]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Predictions for the agent to stop; each ends with a CANCELED ``Finished`` event."""

    prediction_ids: list[str]


@dataclass(frozen=True, slots=True)
class Ack:
    """The router has every ``Events`` frame up to ``seq``: the agent may forget them. Sent now and
    then (not per frame); a lost one costs only a longer replay."""

    seq: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """The agent's answer to ``Hello``: how many of the router's ``Submit`` and ``Cancel`` frames it has
    applied over all their sessions (the router sends the ones after that again, in order), and what it
    holds of the router's predictions: prediction id -> the instance running it ("" for one that ended
    and whose events wait in the outbox). A router that restarted learns here which of its predictions
    are still alive on this agent, and takes them up again."""

    applied: int
    held: dict[str, str]


@dataclass(frozen=True, slots=True)
class Events:
    """A batch of events of this router's tasks, in the order the agent's outbox took them: the
    ``seq``-th batch for this router, sent when the agent had applied ``applied`` of its frames."""

    events: list[TaskEvent]
    seq: int
    applied: int


ToAgent = Hello | Submit | Cancel | Ack
ToRouter = Welcome | Events
Frame = ToAgent | ToRouter


class UnknownFrame(ValueError):
    """Bytes that are not a frame of this module (a peer of another version, or not a peer at all), or a
    frame that does not go in the direction it came."""


# The tags are the wire names of the frames: renaming a class keeps the wire as it is; changing a tag
# or a frame's fields is a protocol change, both ends at once.
_FRAME_OF: dict[str, type] = {"hello": Hello, "submit": Submit, "cancel": Cancel, "ack": Ack,
                              "welcome": Welcome, "events": Events}


def _builder(cls: type) -> Callable[[Any], Frame]:
    """How a frame is rebuilt from its payload: its one field, or the tuple of its fields."""
    if len(fields(cls)) == 1:
        return cls

    def build(payload: Any) -> Frame:
        if type(payload) is not tuple:  # not any iterable: a string would spread into fields
            raise TypeError(f"the payload of {cls.__name__} is a tuple of its fields")
        return cls(*payload)

    return build


_WIRE_OF: dict[type, tuple[str, attrgetter]] = {
    cls: (tag, attrgetter(*(f.name for f in fields(cls)))) for tag, cls in _FRAME_OF.items()}
_BUILD: dict[str, Callable[[Any], Frame]] = {tag: _builder(cls) for tag, cls in _FRAME_OF.items()}


def encode(frame: Frame) -> bytes:
    wire = _WIRE_OF.get(type(frame))
    if wire is None:
        raise UnknownFrame(f"not a data plane frame: {type(frame).__name__}")
    tag, payload = wire
    return pickle.dumps((tag, payload(frame)), protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Frame:
    try:
        tag, payload = pickle.loads(data)
        return _BUILD[tag](payload)
    except (KeyError, TypeError, ValueError) as err:  # a tag not listed, or not a (tag, payload) pair
        raise UnknownFrame(f"an unknown data plane frame ({len(data)} bytes): {_describe(data)}") from err
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise UnknownFrame(f"an undecodable data plane frame ({len(data)} bytes): {err}") from err


def _describe(data: bytes) -> str:
    """What the frame holds, for the error: its tag when it has one, else its type."""
    try:
        obj = pickle.loads(data)
    except Exception as err:  # noqa: BLE001 - only for the message
        return repr(err)
    if isinstance(obj, tuple) and obj and isinstance(obj[0], str):
        return f"tag {obj[0][:40]!r}"
    return type(obj).__name__
