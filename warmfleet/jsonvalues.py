"""JSON-shaped values to and from ``google.protobuf.Value``, shared by the gateway and the client."""

from __future__ import annotations

import base64
import re
from typing import Any, Callable

from google.protobuf import json_format, struct_pb2

from warmfleet.errors import InvalidInput

MAX_DEPTH = 64  # objects and arrays nested in one value: more is no model's input, and costs the stack
MAX_INTEGER = 2**63 - 1  # the widest integer every part of the cluster keeps exactly (the store's JSON)


def check_json(value: Any, path: str = "input", depth: int = 0) -> None:
    """Refuse what JSON cannot carry, or no model takes, before it goes anywhere, naming its place and
    the rule (``InvalidInput``): a number that is NaN or infinite, an integer beyond +-(2^63-1), a string
    that is not valid Unicode (a lone surrogate), a non-string key, nesting deeper than ``MAX_DEPTH``.
    Whatever else an input holds (a file) is left to its schema."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(path, "is not valid Unicode (it holds a lone surrogate)") from None
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_INTEGER <= value <= MAX_INTEGER:
            raise InvalidInput(path, f"must be an integer within +-{MAX_INTEGER}")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInput(path, "must be a finite number (not NaN or infinity)")
    elif isinstance(value, (dict, list, tuple)):
        if depth >= MAX_DEPTH:
            raise InvalidInput(path, f"nests objects and arrays deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidInput(path, f"has a key that is not a string: {key!r}")
                check_json(key, f"{path} (a key)", depth)
                check_json(item, f"{path}.{key}", depth + 1)
        else:
            for i, item in enumerate(value):
                check_json(item, f"{path}[{i}]", depth + 1)


def plain(value: Any) -> Any:
    """Struct numbers travel as doubles: integral ones come back as ints, as JSON means them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# Values are walked by hand: json_format's general message machinery costs several times as much, and
# every prediction's input and output pass through here. The results are json_format's own.

def value_to_pb(value: Any) -> struct_pb2.Value:
    """Raises ``json_format.ParseError`` for a value that is not JSON-shaped."""
    pb = struct_pb2.Value()
    _fill(pb, value, "value")
    return pb


def _fill(pb: struct_pb2.Value, value: Any, path: str) -> None:
    if value is None:
        pb.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        pb.bool_value = value
    elif isinstance(value, (int, float)):
        try:
            pb.number_value = value
        except (OverflowError, TypeError, ValueError) as err:
            raise json_format.ParseError(f"{path}: {err}") from None
    elif isinstance(value, str):
        pb.string_value = value
    elif isinstance(value, dict):
        struct = pb.struct_value
        struct.SetInParent()
        for key, item in value.items():
            if not isinstance(key, str):
                raise json_format.ParseError(f"{path}: a key must be a string, got {key!r}")
            _fill(struct.fields[key], item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        items = pb.list_value
        items.SetInParent()
        for i, item in enumerate(value):
            _fill(items.values.add(), item, f"{path}[{i}]")
    else:
        raise json_format.ParseError(f"{path}: {type(value).__name__} is not JSON")


def value_from_pb(value: struct_pb2.Value, path: str = "value") -> Any:
    """The Python value of a ``Value``; None for an unset one. Integral numbers come back as ints (as JSON
    means them). Raises ``ValueError`` naming the place of a NaN or an infinity, which JSON has not."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_from_pb(value.struct_value, path)
    if kind == "list_value":
        return [value_from_pb(v, f"{path}[{i}]") for i, v in enumerate(value.list_value.values)]
    if kind == "number_value":
        number = value.number_value
        if number.is_integer():
            return int(number)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{path}: {number} is not a JSON number; numbers must be finite")
        return number
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def struct_from_pb(struct: struct_pb2.Struct, path: str = "value") -> dict[str, Any]:
    return {key: value_from_pb(item, f"{path}.{key}") for key, item in struct.fields.items()}


# Files inside JSON inputs. The JSON input form carries files beside the JSON fields, keyed by the
# place they go: a top-level name ("image") or a path into nested objects and arrays
# ("controlnets[0].image"). ``split_files`` takes them out of a value; ``place_files`` puts them back.

MAX_LIST_INDEX = 1000
_PATH_PART = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def split_files(values: dict[str, Any], as_file: Callable[[Any], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` without its files (a nested file leaves null in its place, so that list positions
    stay), and the files by path. ``as_file`` is called once per value: the file it is, or None."""
    files: dict[str, Any] = {}

    def walk(value: Any, path: str) -> Any:
        file = as_file(value)
        if file is not None:
            files[path] = file
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    rest = {name: walk(value, name) for name, value in values.items()}
    return {name: v for name, v in rest.items() if name not in files}, files  # no null for a top-level file


def parse_path(path: str) -> list[str | int]:
    """"controlnets[0].image" -> ["controlnets", 0, "image"]; ValueError for anything else."""
    parts: list[str | int] = []
    at = 0
    while at < len(path):
        match = _PATH_PART.match(path, at)
        if match is None or (at == 0 and path.startswith((".", "["))):
            raise ValueError(f"{path!r} is not a field path such as image or controlnets[0].image")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        at = match.end()
    if not parts:
        raise ValueError("an empty field path")
    return parts


def place_files(values: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each file put at its path, creating the objects and list slots on the way.
    ValueError names a path that is malformed or that crosses a value of another shape."""
    # In path order, numerically by index, so that [2] comes before [10] and fills its slot first.
    for path, file in sorted(files.items(), key=lambda item: [(isinstance(p, str), p) for p in parse_path(item[0])]):
        parts = parse_path(path)
        node: Any = values
        for part, following in zip(parts, parts[1:] + [None]):
            if isinstance(part, int) and isinstance(node, list) and part <= min(len(node), MAX_LIST_INDEX):
                if part == len(node):
                    node.append(None)
            elif not (isinstance(part, str) and isinstance(node, dict)):
                raise ValueError(f"file path {path!r} does not fit the shape of the other fields")
            if following is None:
                node[part] = file
            else:
                if (node[part] if isinstance(node, list) else node.get(part)) is None:
                    node[part] = [] if isinstance(following, int) else {}
                node = node[part]
    return values


def files_as_data_urls(value: Any) -> Any:
    """``value`` with every file in it (anything with ``data`` bytes and a ``content_type``: the domain's
    ``FileData``) as a base64 data URL, at any depth."""
    if isinstance(value, dict):
        return {k: files_as_data_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [files_as_data_urls(v) for v in value]
    if isinstance(getattr(value, "data", None), bytes) and hasattr(value, "content_type"):
        media_type = value.content_type or "application/octet-stream"
        return f"data:{media_type};base64,{base64.b64encode(value.data).decode()}"
    return value
