"""Every gRPC method of the gateway against requests Hypothesis builds from the method's own descriptor:
each field set or not, numbers at their extremes and NaN or infinite, odd Unicode, long strings, unknown
enum values, large and nested Struct values, oneofs set over each other. The gateway answers each one
with a status that is the caller's (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL or UNKNOWN.

Bounded by count (``EXAMPLES`` a method). The methods that change the shared cluster (creating,
updating or deleting models and deployments, pushing, draining a node) are left out; their inputs are
the unit tests'. Predictions the fuzzer created are canceled at the end. The gateway has a home of its
own; the calls are made from a thread with the synchronous client, while the gateway serves on the
test's event loop."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import grpc
import pytest
from google.protobuf import message_factory, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.server import SERVICE_NAMES
from tests.integration.conftest import ECHO, LLM, NARROW, RunningGateway
from warmfleet.v1 import cluster_pb2, deployments_pb2, models_pb2, predictions_pb2  # noqa: F401 - descriptors

pytestmark = pytest.mark.integration

EXAMPLES = 25
LEFT_OUT = {"CreateModel", "DeleteModel", "PushVersion", "DeleteVersion", "CreateDeployment",
            "UpdateDeployment", "DeleteDeployment", "DrainNode"}
CALLER_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.DEADLINE_EXCEEDED}  # a stream read until the fuzzer's own timeout
NAMES = st.sampled_from([ECHO, LLM, NARROW, "warmfleet/none", "", "a/b/c", "../etc", "warmfleet/echo@0123"])
ODD_TEXT = st.sampled_from(["", "\x00", "é", "🎉" * 50, "a" * 20_000, "\u202e", "null", "NaN", "-1", "1e999"])
NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324])

JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=20) | ODD_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | ODD_TEXT, inner,
                                                                 max_size=4),
    max_leaves=30)


def _scalar(field) -> st.SearchStrategy:
    t = field.type
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return NUMBERS if t == F.TYPE_DOUBLE else st.floats(width=32, allow_nan=True, allow_infinity=True)
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return st.integers(-2**31, 2**31 - 1)
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return st.integers(-2**63, 2**63 - 1)
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_ENUM:  # proto3 enums are open: an unknown number is valid on the wire
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(-5, 1000)
    names = ("model", "version", "deployment", "name", "id", "node_id")
    return (NAMES if field.name in names else st.text(max_size=30)) | ODD_TEXT


@st.composite
def messages(draw, descriptor, depth: int = 0):
    """A message of ``descriptor`` with any of its fields set, recursively (to depth 3)."""
    msg = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for k in draw(st.lists(_scalar(key), max_size=3)):
                if value.message_type is not None:
                    getattr(msg, field.name)[k].CopyFrom(draw(_submessage(value.message_type, depth)))
                else:
                    getattr(msg, field.name)[k] = draw(_scalar(value))
            continue
        if field.is_repeated:
            items = draw(st.lists(_value(field, depth), max_size=3))
            target = getattr(msg, field.name)
            for item in items:
                target.add().CopyFrom(item) if field.message_type is not None else target.append(item)
            continue
        value = draw(_value(field, depth))
        if field.message_type is not None:
            getattr(msg, field.name).CopyFrom(value)
        else:
            setattr(msg, field.name, value)
    return msg


def _value(field, depth: int) -> st.SearchStrategy:
    return _submessage(field.message_type, depth) if field.message_type is not None else _scalar(field)


def _submessage(descriptor, depth: int) -> st.SearchStrategy:
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(st.text(max_size=8), JSON, max_size=5).map(_struct)
    if descriptor.full_name == "google.protobuf.Value":
        return JSON.map(_value_pb)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.integers(-2**40, 2**40).map(lambda s: timestamp_pb2.Timestamp(seconds=s))
    if depth >= 3:
        return st.just(message_factory.GetMessageClass(descriptor)())
    return messages(descriptor, depth + 1)


def _struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for k, v in value.items():
        out.fields[k].CopyFrom(_value_pb(v))
    return out


def _value_pb(value) -> struct_pb2.Value:
    pb = struct_pb2.Value()
    if value is None:
        pb.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        pb.bool_value = value
    elif isinstance(value, float):
        pb.number_value = value
    elif isinstance(value, str):
        pb.string_value = value
    elif isinstance(value, list):
        pb.list_value.values.extend(_value_pb(v) for v in value)
    else:
        pb.struct_value.CopyFrom(_struct(value))
    return pb


def fuzz(target: str, token: str, examples: int = EXAMPLES) -> Counter:
    """Call every method not left out with ``examples`` generated requests; the codes seen, by method."""
    seen: Counter = Counter()
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        for service_name in SERVICE_NAMES:
            service = predictions_pb2.DESCRIPTOR.pool.FindServiceByName(service_name)
            for method in service.methods:
                if method.name in LEFT_OUT:
                    continue
                seen.update(_fuzz_method(channel, service, method, metadata, examples))
    return seen


def _fuzz_method(channel, service, method, metadata, examples: int) -> Counter:
    path = f"/{service.full_name}/{method.name}"
    reply_class = message_factory.GetMessageClass(method.output_type)
    kwargs = dict(request_serializer=lambda m: m.SerializeToString(), response_deserializer=reply_class.FromString)
    call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(path, **kwargs)
    codes: Counter = Counter()

    @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(messages(method.input_type))
    def one(request) -> None:
        if hasattr(request, "wait_s"):
            request.wait_s = 0.0 if not math.isfinite(request.wait_s) or request.wait_s > 1 else request.wait_s
        try:
            if method.server_streaming:
                for _ in call(request, metadata=metadata, timeout=2.0):
                    pass
            else:
                call(request, metadata=metadata, timeout=10.0)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            assert code in CALLER_CODES, f"{path}: {code.name} {err.details()} for {request}"
        codes[(method.name, code.name)] += 1

    one()
    return codes


async def test_no_generated_request_of_any_method_gets_internal_or_unknown(controller, tmp_path):
    gw = RunningGateway(tmp_path, controller)
    api = await gw.start()
    try:
        seen = await asyncio.to_thread(fuzz, f"127.0.0.1:{gw.gateway.port}", api.token)
        print(sorted(seen.items()))
        methods = {m for m, _ in seen}
        assert len(methods) >= 15 and sum(seen.values()) >= 200  # a method with no fields has one request
        assert any(code != "OK" for _, code in seen) and any(code == "OK" for _, code in seen)
    finally:
        page = await api.predictions.ListPredictions(predictions_pb2.ListPredictionsRequest(page_size=1000),
                                                     metadata=api.md)
        for pred in page.predictions:  # what the fuzzer started: nothing of it keeps running
            await api.predictions.CancelPrediction(predictions_pb2.CancelPredictionRequest(id=pred.id),
                                                   metadata=api.md)
        await gw.stop()
