"""Conversions between warmfleet.v1 protobuf messages and domain types: the gRPC edge's only
translation layer (``x_from_pb`` / ``x_to_pb``)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.accounts import Account, TokenInfo
from gateway.catalog import CatalogEntry
from gateway.deployments import AUTOSCALING_FIELDS, Deployment
from gateway.predictions import CreateRequest
from warmfleet.domain import (
    Completed, FileData, InstanceInfo, LogLine, Metrics, RouteSpec, NodeInfo, Output, OutputChunk, Prediction,
    PredictionEvent, ProgressUpdate, Status,
)
from warmfleet.errors import InvalidInput
from warmfleet.jsonvalues import place_files, split_files, struct_from_pb, value_to_pb
from warmfleet.v1 import accounts_pb2, cluster_pb2, deployments_pb2, models_pb2, predictions_pb2, types_pb2

STATUS_TO_PB = {
    Status.STARTING: types_pb2.STATUS_STARTING,
    Status.PROCESSING: types_pb2.STATUS_PROCESSING,
    Status.SUCCEEDED: types_pb2.STATUS_SUCCEEDED,
    Status.FAILED: types_pb2.STATUS_FAILED,
    Status.CANCELED: types_pb2.STATUS_CANCELED,
    Status.ABORTED: types_pb2.STATUS_ABORTED,
}

# Which field of PredictionInput carries each typed input form.
_TYPED_INPUTS = {
    "echo": types_pb2.EchoInput,
    "text_generation": types_pb2.TextGenerationInput,
    "image_generation": types_pb2.ImageGenerationInput,
    "upscale": types_pb2.UpscaleInput,
}


# Files


def file_from_pb(f: types_pb2.File) -> FileData:
    return FileData(f.data, f.content_type, f.name, f.width, f.height)


def file_to_pb(f: FileData) -> types_pb2.File:
    return types_pb2.File(data=f.data, content_type=f.content_type, name=f.name, width=f.width,
                          height=f.height)


# Inputs


def _message_to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        out[fd.name] = _field_from_pb(fd, value)
    return out


def _field_from_pb(fd, value):
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return dict(value)
    if fd.is_repeated:
        return [_one_from_pb(fd, v) for v in value]
    return _one_from_pb(fd, value)


def _one_from_pb(fd, value):
    if fd.message_type is None:
        return value
    if fd.message_type.full_name == "warmfleet.v1.File":
        return file_from_pb(value)
    if fd.message_type.full_name == "google.protobuf.Struct":
        return json_format.MessageToDict(value)
    return _message_to_dict(value)


def _dict_to_message(values: dict[str, Any], cls: type[Message]) -> Message:
    msg = cls()
    for name, value in values.items():
        fd = cls.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:
            continue
        if fd.message_type is None:
            if fd.is_repeated:
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        elif fd.message_type.full_name == "warmfleet.v1.File":
            getattr(msg, name).CopyFrom(file_to_pb(value))
        elif fd.message_type.GetOptions().map_entry:
            getattr(msg, name).update(value)
        elif fd.message_type.full_name == "google.protobuf.Struct":
            for one in value if fd.is_repeated else [value]:
                (getattr(msg, name).add() if fd.is_repeated else getattr(msg, name)).update(one)
        elif fd.is_repeated:
            getattr(msg, name).extend(_dict_to_message(v, GetMessageClass(fd.message_type)) for v in value)
        else:
            getattr(msg, name).CopyFrom(_dict_to_message(value, GetMessageClass(fd.message_type)))
    return msg


def input_from_pb(pb: types_pb2.PredictionInput) -> tuple[dict[str, Any], str]:
    """The input as a dict (files as ``FileData``) and the name of the form it came in."""
    kind = pb.WhichOneof("kind")
    if kind is None:
        raise InvalidInput("input", "is required: set one of json, echo, text_generation, ...")
    if kind == "json":
        try:
            values = struct_from_pb(pb.json.fields, "input")
        except ValueError as err:
            field, _, rule = str(err).partition(": ")
            raise InvalidInput(field, rule) from None
        try:
            return place_files(values, {path: file_from_pb(f) for path, f in pb.json.files.items()}), kind
        except ValueError as err:
            raise InvalidInput("input.files", str(err)) from None
    return _message_to_dict(getattr(pb, kind)), kind


def input_to_pb(values: dict[str, Any], kind: str) -> types_pb2.PredictionInput:
    if kind in _TYPED_INPUTS:
        return types_pb2.PredictionInput(**{kind: _dict_to_message(values, _TYPED_INPUTS[kind])})
    rest, files = split_files(values, lambda v: v if isinstance(v, FileData) else None)
    struct = json_format.ParseDict(rest, struct_pb2.Struct())
    return types_pb2.PredictionInput(json=types_pb2.JsonInput(
        fields=struct, files={path: file_to_pb(f) for path, f in files.items()}))


def create_from_pb(req: predictions_pb2.CreatePredictionRequest) -> CreateRequest:
    values, kind = input_from_pb(req.input)
    return CreateRequest(
        input=values, input_kind=kind, model=req.model, version=req.version, deployment=req.deployment,
        wait_s=req.wait_s, id=req.id, deadline_s=req.deadline_s, priority=req.priority,
        webhook=req.webhook, webhook_events_filter=list(req.webhook_events_filter),
    )


# Predictions


def _metrics_to_pb(m: Metrics) -> types_pb2.PredictionMetrics:
    return types_pb2.PredictionMetrics(**{k: v for k, v in vars(m).items() if v is not None})


def output_to_pb(output: Output) -> types_pb2.PredictionOutput:
    pb = types_pb2.PredictionOutput(files=[file_to_pb(f) for f in output.files])
    if output.value is not None:
        pb.value.CopyFrom(value_to_pb(output.value))
    return pb


def prediction_to_pb(p: Prediction) -> types_pb2.Prediction:
    pb = types_pb2.Prediction(
        id=p.id, model=p.model, version=p.version, deployment=p.deployment,
        input=input_to_pb(p.input, p.input_kind), logs="\n".join(p.logs), error=p.error,
        error_code=p.error_code, error_field=p.error_field,
        status=STATUS_TO_PB[p.status], metrics=_metrics_to_pb(p.metrics), owner=p.owner,
        webhook=p.webhook, webhook_events_filter=p.webhook_events_filter, data_removed=p.data_removed,
        attempt=p.attempt,
    )
    if p.output is not None:
        pb.output.CopyFrom(output_to_pb(p.output))
    pb.created_at.FromNanoseconds(int(p.created_at * 1e9))
    if p.started_at is not None:
        pb.started_at.FromNanoseconds(int(p.started_at * 1e9))
    if p.completed_at is not None:
        pb.completed_at.FromNanoseconds(int(p.completed_at * 1e9))
    return pb


def event_to_pb(e: PredictionEvent) -> types_pb2.PredictionEvent:
    pb = types_pb2.PredictionEvent(prediction_id=e.prediction_id, seq=e.seq)
    body = e.body
    if isinstance(body, Status):
        pb.status = STATUS_TO_PB[body]
    elif isinstance(body, LogLine):
        pb.log = body.text
    elif isinstance(body, OutputChunk):
        if body.value is not None:
            pb.output.value.CopyFrom(value_to_pb(body.value))
        if body.file is not None:
            pb.output.file.CopyFrom(file_to_pb(body.file))
        pb.output.SetInParent()
    elif isinstance(body, ProgressUpdate):
        pb.progress.CopyFrom(types_pb2.Progress(step=body.step, total=body.total, eta_s=body.eta_s))
    elif isinstance(body, Completed):
        pb.completed.CopyFrom(prediction_to_pb(body.prediction))
    return pb


# Cluster


def node_to_pb(n: NodeInfo) -> cluster_pb2.Node:
    return cluster_pb2.Node(
        id=n.id, ray_node_id=n.ray_node_id, address=n.address, accelerator=n.accelerator,
        memory_total_bytes=n.memory_total_bytes, memory_used_bytes=n.memory_used_bytes,
        utilization_percent=n.utilization_percent, metrics_note=n.metrics_note,
        instance_count=n.instance_count, hardware=n.hardware, gpu_index=n.gpu_index, gpu_uuid=n.gpu_uuid,
        temperature_c=n.temperature_c, power_w=n.power_w,
    )


def instance_to_pb(i: InstanceInfo) -> cluster_pb2.Instance:
    return cluster_pb2.Instance(
        id=i.id, model=i.model, version=i.version, node_id=i.node_id, state=i.state,
        in_flight=i.in_flight, max_concurrency=i.max_concurrency, memory_bytes=i.memory_bytes,
    )


# Models and deployments


def autoscaling_from_pb(pb: deployments_pb2.Autoscaling) -> dict[str, float]:
    return {name: getattr(pb, name) for name in AUTOSCALING_FIELDS if pb.HasField(name)}


def model_spec_from_pb(req: models_pb2.CreateModelRequest) -> RouteSpec:
    if req.visibility not in ("", "public", "private"):
        raise InvalidInput("visibility", "must be 'public' or 'private'")
    return RouteSpec(
        name=req.name, runner=req.runner, weights=req.weights,
        options=struct_from_pb(req.options, "options") if req.HasField("options") else {},
        description=req.description, min_instances=req.min_instances,
        max_instances=req.max_instances if req.HasField("max_instances") else None,
        owner=req.name.partition("/")[0], visibility=req.visibility or "public",
    )


def model_to_pb(entry: CatalogEntry) -> models_pb2.Model:
    spec = entry.spec
    pb = models_pb2.Model(
        name=spec.name, description=spec.description, runner=spec.runner, version=spec.version,
        input_schema_json=json.dumps(entry.input_schema), output_schema_json=json.dumps(entry.output_schema),
        owner=spec.owner, visibility=spec.visibility,
    )
    if spec.created_at:
        pb.latest_version_created_at.FromNanoseconds(int(spec.created_at * 1e9))
    pb.latest_version.CopyFrom(version_to_pb(entry))
    return pb


def deployment_to_pb(deployment: Deployment) -> deployments_pb2.Deployment:
    spec = deployment.spec
    return deployments_pb2.Deployment(
        name=spec.name, model=spec.model, version=spec.version, hardware=spec.hardware,
        min_instances=spec.min_instances, max_instances=spec.most_instances,
        autoscaling=deployments_pb2.Autoscaling(**spec.autoscaling), current_release=spec.release,
        target_instances=deployment.target_instances, runner=spec.runner,
    )


# Versions and pushes


async def push_chunks(requests: AsyncIterator[models_pb2.PushVersionRequest]) -> AsyncIterator[bytes]:
    """The bundle bytes of a push, after its header."""
    async for req in requests:
        if req.WhichOneof("part") != "chunk":
            raise InvalidInput("header", "comes once, first; the messages after it carry chunks")
        yield req.chunk


def version_to_pb(entry: CatalogEntry) -> models_pb2.Version:
    """A catalog entry's version (its spec and compiled schemas) as the Version message."""
    spec = entry.spec
    openapi = spec.options.get("openapi_schema") if spec.runner == "cog" else None
    pb = models_pb2.Version(
        id=spec.version, model=spec.model_name, runner=spec.runner,
        input_schema_json=json.dumps(entry.input_schema), output_schema_json=json.dumps(entry.output_schema),
        openapi_schema_json=json.dumps(openapi) if openapi else "",
        cog_version=str(spec.options.get("cog_version", "")) if openapi else "",
        bundle_size_bytes=int(spec.options.get("bundle_size_bytes", 0)) if openapi else 0,
    )
    if spec.created_at:
        pb.created_at.FromNanoseconds(int(spec.created_at * 1e9))
    return pb


def account_to_pb(a: Account) -> accounts_pb2.Account:
    return accounts_pb2.Account(id=a.id, name=a.name, kind=a.kind, created_at=a.created_at)


def token_to_pb(t: TokenInfo, account: Account) -> accounts_pb2.Token:
    return accounts_pb2.Token(id=t.id, account_id=t.account, account=account.name, name=t.name,
                              role=t.role.value, created_at=t.created_at, last_used_at=t.last_used_at,
                              revoked_at=t.revoked_at)
