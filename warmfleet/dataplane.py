"""The data plane between a router and a node agent: one bidirectional gRPC stream per (router, agent).

Why not Ray actor calls: one costs 1.1-1.5 ms round trip on this hardware (measured, see bench/), and a
prediction needs a trip out and a trip back, which alone is over the latency budget. Ray still places
the agents, carries every control call (load, unload, info), and detects their death; predictions and
their events travel on this stream.

Frames are pickled domain objects (as Ray's own transport does), so the stream is for the cluster's own
processes only: the agent binds to its node's address and refuses a session without the cluster secret
(which travels only inside Ray). Router to agent: ``("hello", router_id)`` first, then
``("submit", [Task])`` and ``("cancel", [prediction_id])``. Agent to router: lists of ``TaskEvent``.
"""

from __future__ import annotations

import pickle
from typing import Any

METHOD = "/warmfleet.internal.NodeData/Session"
SECRET_HEADER = "x-warmfleet-cluster-secret"
# Inputs and outputs can carry images: allow large frames.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 512 * 1024 * 1024),
                   ("grpc.max_send_message_length", 512 * 1024 * 1024)]


def encode(frame: Any) -> bytes:
    return pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> Any:
    return pickle.loads(data)
