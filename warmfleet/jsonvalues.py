"""JSON-shaped values to and from ``google.protobuf.Value``, shared by the gateway and the client."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2


def plain(value: Any) -> Any:
    """Struct numbers travel as doubles: integral ones come back as ints, as JSON means them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def value_to_pb(value: Any) -> struct_pb2.Value:
    """Raises ``json_format.ParseError`` for a value that is not JSON-shaped."""
    return json_format.ParseDict(value, struct_pb2.Value())


def value_from_pb(value: struct_pb2.Value) -> Any:
    """The Python value of a ``Value``; None for an unset one."""
    if value.WhichOneof("kind") is None:
        return None
    return plain(json_format.MessageToDict(value))
