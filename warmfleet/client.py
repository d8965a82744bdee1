"""The warmfleet Python client: a synchronous gRPC client of the ``warmfleet.v1`` services.

    from warmfleet import Client

    client = Client()  # $WARMFLEET_URL, or what `warmfleet up` recorded, or 127.0.0.1:50051
    # or: Client("grpcs://gw.example:50051", token, root_certificates="ca.pem")  (TLS)
    text = client.run("warmfleet/echo", {"text": "hello"})
    for event in client.stream("warmfleet/echo", {"text": "hello", "chunks": 5}):
        print(event.kind, event.data)

Inputs are plain dicts; ``bytes``, ``pathlib.Path``, open binary files and :class:`File` values become
files, sent as raw bytes beside the JSON fields. Everything the gateway answers comes back as the small
dataclasses below (never protobuf messages), converted in one place: the ``*_from_pb`` functions.
Every gRPC error becomes a :class:`WarmfleetClientError` whose ``code`` is the gRPC status name.
"""

from __future__ import annotations

import itertools
import json
import mimetypes
import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from warmfleet.bundle import bundle_to_tempfile, read_chunks
from warmfleet.cluster_state import read_state
from warmfleet.jsonvalues import place_files, split_files, struct_from_pb, value_from_pb, value_to_pb
from warmfleet.settings import Settings, load_settings
from warmfleet.tls import read_pem
from warmfleet.v1 import (
    accounts_pb2, accounts_pb2_grpc, cluster_pb2, cluster_pb2_grpc, deployments_pb2, deployments_pb2_grpc,
    models_pb2, models_pb2_grpc, predictions_pb2, predictions_pb2_grpc, types_pb2,
)

URL_SCHEME = "grpc://"
TLS_URL_SCHEME = "grpcs://"
MAX_WAIT_S = 60.0  # the gateway holds a create call open at most this long
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "aborted"})
# Generated images and upscales can exceed gRPC's default 4 MiB message limit.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 512 * 1024 * 1024),
                    ("grpc.max_send_message_length", 512 * 1024 * 1024)]


# Client-side types


@dataclass(frozen=True)
class File:
    """A file in an input or an output: raw bytes and what they are."""

    data: bytes = field(repr=False)
    content_type: str = ""
    name: str = ""
    width: int = 0
    height: int = 0

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Output:
    """What :meth:`Client.run` returns when a prediction produced files: the value and the files."""

    value: Any
    files: list[File]


@dataclass(frozen=True)
class Prediction:
    """One prediction. ``status`` is "starting", "processing", "succeeded", "failed", "canceled" or
    "aborted"; ``output`` is the JSON-shaped output value and ``output_files`` the files it produced;
    ``metrics`` holds the timings and counts that apply (e.g. ``predict_time_s``)."""

    id: str
    model: str
    version: str
    status: str
    input: dict[str, Any]
    output: Any = None
    output_files: list[File] = field(default_factory=list)
    logs: str = ""
    error: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    metrics: dict[str, float | int] = field(default_factory=dict)
    deployment: str = ""
    owner: str = ""
    attempt: int = 1  # 2 once it ran again because its node or the gateway stopped while it ran

    @property
    def done(self) -> bool:
        """Whether it reached a terminal status."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class OutputChunk:
    """A piece of output streamed while a prediction runs: a JSON-shaped value and/or a file."""

    value: Any = None
    file: File | None = None


@dataclass(frozen=True)
class Progress:
    """Progress of a multi-step prediction; ``eta_s`` is 0 when unknown."""

    step: int
    total: int
    eta_s: float = 0.0


@dataclass(frozen=True)
class Event:
    """The ``seq``-th event of a prediction. ``data`` depends on ``kind``:

    - "status": the new status, a lowercase string;
    - "log": a log line (str);
    - "output": an :class:`OutputChunk`;
    - "progress": a :class:`Progress`;
    - "completed": the final :class:`Prediction` (always the last event of a stream).
    """

    prediction_id: str
    seq: int
    kind: str
    data: Any = None


@dataclass(frozen=True)
class Page:
    """One page of predictions, newest first; ``next_cursor`` is empty on the last page."""

    results: list[Prediction]
    next_cursor: str


@dataclass(frozen=True)
class Model:
    """A served model and its current version, with its input and output JSON Schemas."""

    name: str
    description: str
    runner: str
    version: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


@dataclass(frozen=True)
class Version:
    """One immutable version of a model; ``openapi_schema`` is Cog's document for a pushed model."""

    id: str
    model: str
    runner: str
    created_at: datetime | None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    openapi_schema: dict[str, Any]
    cog_version: str
    bundle_size_bytes: int


@dataclass(frozen=True)
class PushResult:
    """What ``models.push`` made: the model (its latest version the pushed one) and the version."""

    model: Model
    version: Version
    created_model: bool
    new_version: bool


@dataclass(frozen=True)
class Deployment:
    """A deployment as it is now: the model and version it serves, its size and its current release."""

    name: str
    model: str
    version: str
    runner: str
    hardware: str
    min_instances: int
    max_instances: int
    autoscaling: dict[str, float]
    current_release: int
    target_instances: int


@dataclass(frozen=True)
class Node:
    """A node agent and what it reports; a figure NVML does not give (or a CPU node lacks) is None.

    ``hardware`` is the SKU deployments ask for ("cpu", "gpu-nvidia-h100-80gb"); memory is the GPU's, or
    the host's RAM on a CPU node; temperature in degrees Celsius, power in watts.
    """

    id: str
    ray_node_id: str
    address: str
    accelerator: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float | None
    metrics_note: str
    instance_count: int
    hardware: str
    gpu_index: int | None
    gpu_uuid: str
    temperature_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class Instance:
    """A model instance kept warm on a node."""

    id: str
    model: str
    version: str
    node_id: str
    state: str
    in_flight: int
    max_concurrency: int
    memory_bytes: int = 0  # what its own processes use, when they are measured (pushed models)


@dataclass(frozen=True)
class Account:
    """A user or an organization: ``id`` is what predictions record as their owner, ``name`` the
    namespace of its models."""

    id: str
    name: str
    kind: str  # "user" or "organization"
    created_at: float


@dataclass(frozen=True)
class Token:
    """An access token, less its text (see ``NewToken``); times in seconds since the Unix epoch."""

    id: str
    account_id: str
    account: str
    name: str
    role: str  # "user", "priority" or "admin"
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class NewToken:
    """A token just created: ``text`` is shown only this once."""

    text: str
    token: Token


@dataclass(frozen=True)
class NodeDrain:
    """How far a node's drain has come: instances still on it, and whether it is empty."""

    node_id: str
    instances_left: int
    done: bool


# Errors


class WarmfleetClientError(Exception):
    """An error the gateway answered (or could not be reached). ``code`` is the gRPC status name,
    e.g. "NOT_FOUND", "UNAUTHENTICATED", "INVALID_ARGUMENT"; ``message`` is one line for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidArgumentError(WarmfleetClientError):
    """A request field broke a rule; the message names the field."""


class UnauthenticatedError(WarmfleetClientError):
    """No token, or a token the gateway does not know."""


class PermissionDeniedError(WarmfleetClientError):
    """The token's role does not allow the call (e.g. cluster calls need an admin token)."""


class NotFoundError(WarmfleetClientError):
    """The prediction, model or version does not exist (or is not the caller's)."""


class AlreadyExistsError(WarmfleetClientError):
    """A client-chosen prediction id is taken by a different request."""


class ResourceExhaustedError(WarmfleetClientError):
    """The model's queue is full (backpressure); retry later."""


class UnavailableError(WarmfleetClientError):
    """The cluster cannot serve this now."""


class GatewayUnreachableError(UnavailableError):
    """No gateway answers at the target address."""


class TlsError(GatewayUnreachableError):
    """The TLS handshake with the gateway failed: its certificate is not one this client trusts, or is
    not for the name the client connected to, or one end speaks TLS and the other does not."""


class DeadlineExceededError(WarmfleetClientError):
    """The call did not finish within its timeout."""


class PredictionError(WarmfleetClientError):
    """A prediction ended without succeeding; ``prediction`` is the final prediction."""

    def __init__(self, prediction: Prediction) -> None:
        reason = f": {prediction.error}" if prediction.error else ""
        super().__init__(f"PREDICTION_{prediction.status.upper()}",
                         f"prediction {prediction.id} {prediction.status}{reason}")
        self.prediction = prediction


_ERRORS_BY_CODE: dict[str, type[WarmfleetClientError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineExceededError,
}
# How gRPC core words a failure to reach the server at all (as opposed to an UNAVAILABLE it answered).
_CONNECT_FAILURES = ("failed to connect", "connection refused", "errors resolving", "dns resolution failed")
# ... and a TLS handshake that failed (BoringSSL's reason, or gRPC's own check of the name).
_TLS_FAILURES = ("handshake failed", "ssl_error", "verification check failed")
_TLS_HINTS = (
    ("certificate_verify_failed", "its certificate is not one this client trusts: pass root_certificates "
     "(the CLI: `up --tls-ca`, or WARMFLEET_TLS_CA_PATH) with the CA that issued it, or the certificate "
     "itself if it is self-signed"),
    ("hostname verification", "its certificate is not for the name connected to: connect by a name the "
     "certificate lists"),
    ("wrong_version_number", "it does not serve TLS: connect without TLS (a grpc:// URL)"),
)


def error_from_rpc(err: grpc.RpcError, target: str, tls: bool = False) -> WarmfleetClientError:
    """The client error for a failed call to the gateway at ``target`` (over TLS when ``tls``)."""
    code_fn = getattr(err, "code", None)
    code = code_fn().name if callable(code_fn) else "UNKNOWN"
    details_fn = getattr(err, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(err)
    lowered = message.lower()
    if code == "UNAVAILABLE" and any(m in lowered for m in _TLS_FAILURES):
        hint = next((h for m, h in _TLS_HINTS if m in lowered), "see the reason")
        reason = message.rpartition("last error: ")[2] or message
        return TlsError(code, f"the TLS handshake with the gateway at {target} failed: {hint} ({reason})")
    if code == "UNAVAILABLE" and not tls and any(m in lowered for m in ("socket closed", "connection reset")):
        # What a plaintext client meets at a TLS port: the server hangs up on bytes that are not TLS.
        return GatewayUnreachableError(code, f"the gateway at {target} closed the connection at once: if it "
                                             "serves TLS, connect with TLS (a grpcs:// URL, or tls=True)")
    if code == "UNAVAILABLE" and any(m in lowered for m in _CONNECT_FAILURES):
        return GatewayUnreachableError(code, f"no gateway at {target}: is `warmfleet up` running?")
    if code == "DEADLINE_EXCEEDED":
        message = f"no answer from the gateway at {target} in time ({message})"
    return _ERRORS_BY_CODE.get(code, WarmfleetClientError)(code, message)


# Conversions: client inputs to protobuf


def as_file(value: Any) -> File | None:
    """``value`` as a :class:`File` if it is one: bytes, a path, an open binary file; else None."""
    if isinstance(value, File):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return File(bytes(value))
    if isinstance(value, os.PathLike):
        path = Path(value)
        return File(path.read_bytes(), _guess_type(path.name), path.name)
    if callable(getattr(value, "read", None)):
        data = value.read()
        name = Path(str(getattr(value, "name", ""))).name
        data = data.encode() if isinstance(data, str) else bytes(data)
        return File(data, _guess_type(name), name)
    return None


def _guess_type(name: str) -> str:
    return (mimetypes.guess_type(name)[0] or "") if name else ""


def file_to_pb(f: File) -> types_pb2.File:
    return types_pb2.File(data=f.data, content_type=f.content_type, name=f.name, width=f.width,
                          height=f.height)


def input_to_pb(values: Mapping[str, Any]) -> types_pb2.PredictionInput:
    """A plain dict as the generic JSON input form: JSON values in ``fields``, files (at any depth, or
    under a path key such as "controlnets[0].image") in ``files``."""
    for name in values:
        if not isinstance(name, str):
            raise InvalidArgumentError("INVALID_ARGUMENT", f"input: field names must be strings: {name!r}")
    rest, files = split_files(dict(values), as_file)
    msg = types_pb2.JsonInput()
    for path, file in files.items():
        msg.files[path].CopyFrom(file_to_pb(file))
    for name, value in rest.items():
        try:
            msg.fields.fields[name].CopyFrom(value_to_pb(value))
        except json_format.ParseError as err:
            raise InvalidArgumentError(
                "INVALID_ARGUMENT", f"input.{name}: not JSON-shaped and not a file ({type(value).__name__})"
            ) from err
    return types_pb2.PredictionInput(json=msg)


# Conversions: protobuf to client types


def status_from_pb(status: int) -> str:
    """``STATUS_SUCCEEDED`` -> "succeeded"."""
    return types_pb2.Status.Name(status).removeprefix("STATUS_").lower()


def file_from_pb(f: types_pb2.File) -> File:
    return File(f.data, f.content_type, f.name, f.width, f.height)


def _message_to_dict(msg: Message) -> dict[str, Any]:
    """A typed input message as a dict of the fields that are set, files as :class:`File`."""
    return {fd.name: [_field_value(v) for v in value] if fd.is_repeated else _field_value(value)
            for fd, value in msg.ListFields()}


def _field_value(value: Any) -> Any:
    if isinstance(value, types_pb2.File):
        return file_from_pb(value)
    if isinstance(value, Message):
        return _message_to_dict(value)
    return value


def input_from_pb(pb: types_pb2.PredictionInput) -> dict[str, Any]:
    kind = pb.WhichOneof("kind")
    if kind is None:
        return {}
    if kind != "json":
        return _message_to_dict(getattr(pb, kind))
    values = struct_from_pb(pb.json.fields)
    return place_files(values, {path: file_from_pb(f) for path, f in pb.json.files.items()})


def _time_from_pb(pb: Message, name: str) -> datetime | None:
    return getattr(pb, name).ToDatetime(tzinfo=timezone.utc) if pb.HasField(name) else None


def prediction_from_pb(pb: types_pb2.Prediction) -> Prediction:
    has_output = pb.HasField("output")
    return Prediction(
        id=pb.id, model=pb.model, version=pb.version, status=status_from_pb(pb.status),
        input=input_from_pb(pb.input),
        output=value_from_pb(pb.output.value) if has_output and pb.output.HasField("value") else None,
        output_files=[file_from_pb(f) for f in pb.output.files] if has_output else [],
        logs=pb.logs, error=pb.error, created_at=_time_from_pb(pb, "created_at"),
        started_at=_time_from_pb(pb, "started_at"), completed_at=_time_from_pb(pb, "completed_at"),
        metrics={**dict(pb.metrics.custom),
                 **{fd.name: value for fd, value in pb.metrics.ListFields() if fd.name != "custom"}},
        deployment=pb.deployment, owner=pb.owner, attempt=pb.attempt or 1,
    )


def _chunk_from_pb(pb: types_pb2.OutputChunk) -> OutputChunk:
    return OutputChunk(value=value_from_pb(pb.value) if pb.HasField("value") else None,
                       file=file_from_pb(pb.file) if pb.HasField("file") else None)


_EVENT_DATA: dict[str, Callable[[types_pb2.PredictionEvent], Any]] = {
    "status": lambda e: status_from_pb(e.status),
    "log": lambda e: e.log,
    "output": lambda e: _chunk_from_pb(e.output),
    "progress": lambda e: Progress(e.progress.step, e.progress.total, e.progress.eta_s),
    "completed": lambda e: prediction_from_pb(e.completed),
}


def event_from_pb(pb: types_pb2.PredictionEvent) -> Event:
    """An event; a kind this client does not know comes through with ``data`` None."""
    kind = pb.WhichOneof("kind") or ""
    convert = _EVENT_DATA.get(kind)
    return Event(pb.prediction_id, pb.seq, kind, convert(pb) if convert else None)


def model_from_pb(pb: models_pb2.Model) -> Model:
    return Model(pb.name, pb.description, pb.runner, pb.version,
                 _schema(pb.input_schema_json), _schema(pb.output_schema_json))


def version_from_pb(pb: models_pb2.Version) -> Version:
    return Version(pb.id, pb.model, pb.runner, _time_from_pb(pb, "created_at"), _schema(pb.input_schema_json),
                   _schema(pb.output_schema_json), _schema(pb.openapi_schema_json), pb.cog_version,
                   pb.bundle_size_bytes)


def deployment_from_pb(pb: deployments_pb2.Deployment) -> Deployment:
    autoscaling = {fd.name: value for fd, value in pb.autoscaling.ListFields()}
    return Deployment(pb.name, pb.model, pb.version, pb.runner, pb.hardware, pb.min_instances,
                      pb.max_instances, autoscaling, pb.current_release, pb.target_instances)


def _schema(text: str) -> dict[str, Any]:
    return json.loads(text) if text else {}


def record_from_pb(cls: type, pb: Message) -> Any:
    """A flat dataclass from the message fields of the same names; an unset optional field is None."""
    by_name = pb.DESCRIPTOR.fields_by_name
    unset = {f.name for f in fields(cls) if by_name[f.name].has_presence and not pb.HasField(f.name)}
    values = {f.name: None if f.name in unset else getattr(pb, f.name) for f in fields(cls)}
    return cls(**values)


# Where to connect, with which token


@dataclass(frozen=True)
class Endpoint:
    """Where a gateway serves ("host:port") and how to reach it: over TLS or not, and the PEM roots that
    verify its certificate (None: gRPC's default roots, the public CAs)."""

    target: str
    tls: bool = False
    root_certificates: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials for TLS; None for a plaintext channel."""
        return grpc.ssl_channel_credentials(self.root_certificates) if self.tls else None

    def channel(self, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        """A new synchronous channel to the gateway, TLS or plaintext as this endpoint says."""
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target, options=options)
        return grpc.secure_channel(self.target, credentials, options=options)


def resolve_target(url: str | None, settings: Callable[[], Settings]) -> str:
    """``url``, else $WARMFLEET_URL, else what `warmfleet up` recorded, else the settings' gRPC address."""
    return resolve_endpoint(url, settings).target


def resolve_endpoint(url: str | None, settings: Callable[[], Settings], tls: bool | None = None,
                     root_certificates: bytes | str | Path | None = None) -> Endpoint:
    """Where and how to connect: ``url`` ("host:port" or "grpc://host:port", "grpcs://host:port" over
    TLS), else $WARMFLEET_URL, else what `warmfleet up` recorded (over TLS when it serves TLS), else the
    settings' gRPC address, in plaintext. ``tls`` overrides that; ``root_certificates`` (PEM bytes, or a
    file's path) implies it. The roots: those given, else the CA file `up` recorded for that target,
    else the settings' ``tls_ca_path``, else gRPC's default roots."""
    url = url or os.environ.get("WARMFLEET_URL")
    state = read_state(settings()) if not url else None
    if url:
        target, said_tls = _parse_url(url)
    elif state is not None:
        target, said_tls = state.grpc_target, state.tls
    else:
        target, said_tls = settings().grpc_target, False
    if tls is False or not (tls or said_tls or root_certificates is not None):
        return Endpoint(target)
    if root_certificates is None:
        if url:  # a URL to the gateway `up` recorded verifies it as `up` said
            recorded = read_state(settings())
            state = recorded if recorded is not None and recorded.grpc_target == target else None
        recorded_ca = state.tls_ca_path if state is not None and state.tls else ""
        root_certificates = recorded_ca or settings().tls_ca_path
    return Endpoint(target, True, _roots(root_certificates))


def _parse_url(url: str) -> tuple[str, bool]:
    """(host:port, whether the URL asks for TLS)."""
    tls = url.startswith(TLS_URL_SCHEME)
    target = url.removeprefix(TLS_URL_SCHEME if tls else URL_SCHEME)
    if "://" in target or not target:
        raise ValueError(f"url {url!r}: expected host:port or grpc://host:port (grpcs://host:port: TLS)")
    return target, tls


def _roots(value: bytes | str | Path) -> bytes | None:
    """PEM roots from bytes or a file's path; None ("" given) for gRPC's default roots."""
    if isinstance(value, bytes):
        return value
    return read_pem(value, "root_certificates") if str(value) else None


def resolve_token(token: str | None, settings: Callable[[], Settings]) -> str | None:
    """``token``, else the settings' token ($WARMFLEET_TOKEN), else the local admin token file."""
    if token:
        return token
    if settings().token:
        return settings().token
    try:
        return settings().admin_token_path.read_text().strip() or None
    except OSError:
        return None


def _settings_once(settings: Settings | None) -> Callable[[], Settings]:
    """A getter that builds the settings on first use only (URL and token given need none)."""
    cache: list[Settings] = [settings] if settings is not None else []

    def get() -> Settings:
        if not cache:
            cache.append(load_settings())
        return cache[0]

    return get


# The transport and the resources


class _Transport:
    """One channel, the stubs on it, the auth metadata, and the error wrapping of every call."""

    def __init__(self, endpoint: Endpoint | str, token: str | None, timeout_s: float) -> None:
        endpoint = Endpoint(endpoint) if isinstance(endpoint, str) else endpoint  # "host:port": plaintext
        self.endpoint = endpoint
        self.target = endpoint.target
        self.timeout_s = timeout_s
        self.channel = endpoint.channel(_CHANNEL_OPTIONS)
        # Per-call metadata, over TLS as over plaintext: call credentials would refuse a plaintext
        # channel, and a local gateway in plaintext is the default.
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.predictions = predictions_pb2_grpc.PredictionsStub(self.channel)
        self.models = models_pb2_grpc.ModelsStub(self.channel)
        self.deployments = deployments_pb2_grpc.DeploymentsStub(self.channel)
        self.cluster = cluster_pb2_grpc.ClusterStub(self.channel)
        self.accounts = accounts_pb2_grpc.AccountsStub(self.channel)

    def unary(self, method: Callable, request: Message, extra_timeout_s: float = 0.0) -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout_s + extra_timeout_s)
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.target, self.endpoint.tls) from err

    def events(self, method: Callable, request: Message, timeout_s: float | None) -> Iterator[Event]:
        """The events of a server stream; leaving the loop early cancels the call."""
        call = method(request, metadata=self.metadata, timeout=timeout_s)
        try:
            for pb in call:
                yield event_from_pb(pb)
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.target, self.endpoint.tls) from err
        finally:
            call.cancel()


def _split_ref(model: str, version: str) -> tuple[str, str]:
    """Accept "owner/name:version" as a model reference, as Replicate does."""
    if ":" in model and not version:
        model, version = model.split(":", 1)
    return model, version


class Predictions:
    """``client.predictions``: create, get, list, cancel and follow predictions."""

    def __init__(self, transport: _Transport) -> None:
        self._t = transport

    @staticmethod
    def _create_request(model: str, input: Mapping[str, Any] | None, version: str, deployment: str,
                        wait_s: float, id: str | None, deadline_s: float, priority: int
                        ) -> predictions_pb2.CreatePredictionRequest:
        model, version = _split_ref(model, version)
        return predictions_pb2.CreatePredictionRequest(
            model=model, version=version, deployment=deployment, input=input_to_pb(input or {}),
            wait_s=wait_s, id=id or "", deadline_s=deadline_s, priority=priority)

    def create(self, model: str = "", input: Mapping[str, Any] | None = None, *, version: str = "",
               deployment: str = "", wait_s: float = 0.0, id: str | None = None, deadline_s: float = 0.0,
               priority: int = 0) -> Prediction:
        """Create a prediction of ``model`` ("owner/name" or "owner/name:version") or ``version``.

        With ``wait_s`` > 0 (at most 60) the gateway answers when it ends or when ``wait_s`` passes.
        ``id`` makes the call idempotent; ``deadline_s`` aborts it if it has not started by then;
        higher ``priority`` runs first among queued predictions of the same model.
        """
        request = self._create_request(model, input, version, deployment, wait_s, id, deadline_s, priority)
        return prediction_from_pb(self._t.unary(self._t.predictions.CreatePrediction, request, wait_s))

    def get(self, id: str) -> Prediction:
        return prediction_from_pb(self._t.unary(self._t.predictions.GetPrediction,
                                                predictions_pb2.GetPredictionRequest(id=id)))

    def list(self, page_size: int = 100, cursor: str = "") -> Page:
        """One page of the caller's predictions (all of them, for an admin), newest first."""
        reply = self._t.unary(self._t.predictions.ListPredictions,
                              predictions_pb2.ListPredictionsRequest(page_size=page_size, cursor=cursor))
        return Page([prediction_from_pb(p) for p in reply.predictions], reply.next_cursor)

    def iter(self, page_size: int = 100) -> Iterator[Prediction]:
        """Every prediction, newest first, fetching pages as the iteration goes."""
        cursor = ""
        while True:
            page = self.list(page_size, cursor)
            yield from page.results
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, id: str) -> Prediction:
        """Cancel a prediction; one that already ended comes back unchanged."""
        return prediction_from_pb(self._t.unary(self._t.predictions.CancelPrediction,
                                                predictions_pb2.CancelPredictionRequest(id=id)))

    def stream(self, id: str, after_seq: int = 0, timeout_s: float | None = None) -> Iterator[Event]:
        """Follow a prediction's events (after ``after_seq``), ending with its "completed" event."""
        request = predictions_pb2.StreamPredictionRequest(id=id, after_seq=after_seq)
        return self._t.events(self._t.predictions.StreamPrediction, request, timeout_s)

    def create_and_stream(self, model: str = "", input: Mapping[str, Any] | None = None, *,
                          version: str = "", deployment: str = "", id: str | None = None,
                          deadline_s: float = 0.0, priority: int = 0, timeout_s: float | None = None
                          ) -> Iterator[Event]:
        """Create a prediction and follow its events in one call (see :meth:`create`)."""
        request = self._create_request(model, input, version, deployment, 0.0, id, deadline_s, priority)
        return self._t.events(self._t.predictions.CreateAndStreamPrediction, request, timeout_s)

    def wait(self, prediction: Prediction | str, timeout_s: float | None = None) -> Prediction:
        """The prediction once it has ended, following its events; raises
        :class:`DeadlineExceededError` if that takes longer than ``timeout_s``."""
        if isinstance(prediction, Prediction):
            if prediction.done:
                return prediction
            prediction = prediction.id
        for event in self.stream(prediction, timeout_s=timeout_s):
            if event.kind == "completed":
                return event.data
        return self.get(prediction)


class Models:
    """``client.models``: the models the cluster serves."""

    def __init__(self, transport: _Transport) -> None:
        self._t = transport

    def list(self) -> list[Model]:
        reply = self._t.unary(self._t.models.ListModels, models_pb2.ListModelsRequest())
        return [model_from_pb(m) for m in reply.models]

    def get(self, name: str) -> Model:
        return model_from_pb(self._t.unary(self._t.models.GetModel, models_pb2.GetModelRequest(name=name)))

    def create(self, name: str, runner: str, weights: str = "", options: Mapping[str, Any] | None = None, *,
               description: str = "", min_instances: int = 0, max_instances: int | None = None,
               visibility: str = "public") -> Model:
        """Create a model, or a new version of it (admin); a "private" one is seen and run only by the
        account or organization its name begins with."""
        request = models_pb2.CreateModelRequest(name=name, runner=runner, weights=weights,
                                                description=description, min_instances=min_instances,
                                                visibility=visibility)
        if options:
            request.options.update(dict(options))
        if max_instances is not None:
            request.max_instances = max_instances
        return model_from_pb(self._t.unary(self._t.models.CreateModel, request))

    def delete(self, name: str) -> Model:
        return model_from_pb(self._t.unary(self._t.models.DeleteModel,
                                           models_pb2.DeleteModelRequest(name=name)).model)

    def push(self, directory: str | Path, name: str, *, description: str = "", timeout_s: float = 1800.0
             ) -> PushResult:
        """Push a Cog model directory (``cog.yaml`` and its predictor) as a new version of ``name``,
        creating the model if it does not exist. Files ``.cogignore`` (or ``.dockerignore``) names stay
        out. The bundle is built in a temporary file and streamed: weights are never in memory whole."""
        path, digest, size = bundle_to_tempfile(Path(directory))
        try:
            header = models_pb2.PushHeader(model=name, description=description, digest=digest, size_bytes=size)
            parts = itertools.chain([models_pb2.PushVersionRequest(header=header)],
                                    (models_pb2.PushVersionRequest(chunk=c) for c in read_chunks(path)))
            reply = self._t.unary(self._t.models.PushVersion, parts, extra_timeout_s=timeout_s)
        finally:
            path.unlink(missing_ok=True)
        return PushResult(model_from_pb(reply.model), version_from_pb(reply.version), reply.created_model,
                          reply.new_version)

    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, newest first."""
        reply = self._t.unary(self._t.models.ListVersions, models_pb2.ListVersionsRequest(model=name))
        return [version_from_pb(v) for v in reply.versions]

    def version(self, name: str, id: str) -> Version:
        return version_from_pb(self._t.unary(self._t.models.GetVersion, models_pb2.GetVersionRequest(model=name, id=id)))

    def delete_version(self, name: str, id: str) -> Version:
        """Delete a version (refused while a deployment serves it, or if it is the model's only one)."""
        return version_from_pb(self._t.unary(self._t.models.DeleteVersion,
                                             models_pb2.DeleteVersionRequest(model=name, id=id)))


class Deployments:
    """``client.deployments``: named routes to a model version, with their own size (admin to change)."""

    def __init__(self, transport: _Transport) -> None:
        self._t = transport

    def create(self, name: str, model: str, version: str = "", *, hardware: str = "", min_instances: int = 0,
               max_instances: int | None = None, **autoscaling: float) -> Deployment:
        request = deployments_pb2.CreateDeploymentRequest(
            name=name, model=model, version=version, hardware=hardware, min_instances=min_instances,
            autoscaling=deployments_pb2.Autoscaling(**autoscaling))
        if max_instances is not None:
            request.max_instances = max_instances
        return deployment_from_pb(self._t.unary(self._t.deployments.CreateDeployment, request))

    def get(self, name: str) -> Deployment:
        return deployment_from_pb(self._t.unary(self._t.deployments.GetDeployment,
                                                deployments_pb2.GetDeploymentRequest(name=name)))

    def list(self) -> list[Deployment]:
        reply = self._t.unary(self._t.deployments.ListDeployments, deployments_pb2.ListDeploymentsRequest())
        return [deployment_from_pb(d) for d in reply.deployments]

    def update(self, name: str, *, version: str | None = None, hardware: str | None = None,
               min_instances: int | None = None, max_instances: int | None = None,
               **autoscaling: float) -> Deployment:
        """A new release: only the fields given change."""
        fields = {"version": version, "hardware": hardware, "min_instances": min_instances,
                  "max_instances": max_instances}
        request = deployments_pb2.UpdateDeploymentRequest(
            name=name, autoscaling=deployments_pb2.Autoscaling(**autoscaling),
            **{k: v for k, v in fields.items() if v is not None})
        return deployment_from_pb(self._t.unary(self._t.deployments.UpdateDeployment, request))

    def delete(self, name: str) -> Deployment:
        reply = self._t.unary(self._t.deployments.DeleteDeployment,
                              deployments_pb2.DeleteDeploymentRequest(name=name))
        return deployment_from_pb(reply.deployment)


class Accounts:
    """``client.accounts``: the caller's account, its tokens; with an admin token, every account and the
    organizations' members."""

    def __init__(self, transport: _Transport) -> None:
        self._t = transport

    def me(self) -> tuple[Account, list[Account], str]:
        """The caller's account, the organizations it is a member of, and the calling token's role."""
        reply = self._t.unary(self._t.accounts.GetAccount, accounts_pb2.GetAccountRequest())
        organizations = [record_from_pb(Account, o) for o in reply.organizations]
        return record_from_pb(Account, reply.account), organizations, reply.role

    def create(self, name: str, kind: str = "user") -> Account:
        """Create a user account, or (``kind="organization"``) an organization (admin)."""
        request = accounts_pb2.CreateAccountRequest(name=name, kind=kind)
        return record_from_pb(Account, self._t.unary(self._t.accounts.CreateAccount, request))

    def list(self) -> list[Account]:
        reply = self._t.unary(self._t.accounts.ListAccounts, accounts_pb2.ListAccountsRequest())
        return [record_from_pb(Account, a) for a in reply.accounts]

    def set_member(self, organization: str, account: str, member: bool = True) -> None:
        """Add ``account`` to ``organization`` (or, with ``member=False``, take it out) (admin)."""
        request = accounts_pb2.SetMemberRequest(organization=organization, account=account, member=member)
        self._t.unary(self._t.accounts.SetMember, request)

    def members(self, organization: str) -> list[Account]:
        request = accounts_pb2.ListMembersRequest(organization=organization)
        reply = self._t.unary(self._t.accounts.ListMembers, request)
        return [record_from_pb(Account, a) for a in reply.accounts]

    def create_token(self, name: str, role: str = "user", account: str = "") -> NewToken:
        """A new token called ``name`` for ``account`` (default: the caller's own) with ``role``."""
        request = accounts_pb2.CreateTokenRequest(name=name, role=role, account=account)
        reply = self._t.unary(self._t.accounts.CreateToken, request)
        return NewToken(reply.text, record_from_pb(Token, reply.token))

    def tokens(self, account: str = "") -> list[Token]:
        """The caller's tokens, or ``account``'s (an admin with no account: every token)."""
        reply = self._t.unary(self._t.accounts.ListTokens, accounts_pb2.ListTokensRequest(account=account))
        return [record_from_pb(Token, t) for t in reply.tokens]

    def revoke_token(self, token_id: str) -> Token:
        request = accounts_pb2.RevokeTokenRequest(id=token_id)
        return record_from_pb(Token, self._t.unary(self._t.accounts.RevokeToken, request))


class Cluster:
    """``client.cluster``: nodes and instances; needs an admin token."""

    def __init__(self, transport: _Transport) -> None:
        self._t = transport

    def nodes(self) -> list[Node]:
        reply = self._t.unary(self._t.cluster.ListNodes, cluster_pb2.ListNodesRequest())
        return [record_from_pb(Node, n) for n in reply.nodes]

    def instances(self) -> list[Instance]:
        reply = self._t.unary(self._t.cluster.ListInstances, cluster_pb2.ListInstancesRequest())
        return [record_from_pb(Instance, i) for i in reply.instances]

    def drain(self, node_id: str, wait: bool = True, timeout_s: float = 600.0) -> NodeDrain:
        """Drain a node: its instances move to other nodes, finishing their predictions, and it takes no
        new one. With ``wait``, returns when the node is empty, or raises DeadlineExceededError when it
        is not within ``timeout_s`` (beyond the client's own timeout); the drain goes on, and calling
        again follows it. Without ``wait``, returns at once with the progress so far."""
        request = cluster_pb2.DrainNodeRequest(node_id=node_id, wait=wait)
        reply = self._t.unary(self._t.cluster.DrainNode, request, extra_timeout_s=timeout_s if wait else 0.0)
        return record_from_pb(NodeDrain, reply)


class Client:
    """A client of one warmfleet gateway.

    ``url`` is "host:port" (a "grpc://" prefix is accepted); by default $WARMFLEET_URL, else the address
    `warmfleet up` recorded in ``$WARMFLEET_HOME/cluster.json``, else 127.0.0.1:50051. ``token`` is
    sent as a bearer token; by default $WARMFLEET_TOKEN, else the local admin token file. ``timeout_s``
    bounds each unary call (a create's ``wait_s`` is added to it). ``settings`` overrides where the
    defaults are looked up (the CLI passes its own).

    TLS: a "grpcs://" URL, ``tls=True``, or ``root_certificates`` (PEM bytes or a file's path: the CA that
    issued the gateway's certificate, or a self-signed certificate itself; by default what `warmfleet up`
    recorded, else $WARMFLEET_TLS_CA_PATH, else gRPC's default roots). The gateway `up` recorded is
    reached as it serves, TLS or not. Anything else is plaintext, as a local gateway serves by default.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 60.0, *,
                 settings: Settings | None = None, tls: bool | None = None,
                 root_certificates: bytes | str | Path | None = None) -> None:
        get_settings = _settings_once(settings)
        endpoint = resolve_endpoint(url, get_settings, tls, root_certificates)
        self._t = _Transport(endpoint, resolve_token(token, get_settings), timeout_s)
        self.predictions = Predictions(self._t)
        self.models = Models(self._t)
        self.deployments = Deployments(self._t)
        self.cluster = Cluster(self._t)
        self.accounts = Accounts(self._t)

    @property
    def target(self) -> str:
        """The gateway's "host:port"."""
        return self._t.target

    @property
    def endpoint(self) -> Endpoint:
        """Where the gateway is and how this client reaches it (TLS or not, with which roots)."""
        return self._t.endpoint

    def run(self, model: str, input: Mapping[str, Any], wait_s: float = 60.0) -> Any:
        """Run ``model`` on ``input`` and return its output.

        The gateway holds the create call open up to ``wait_s`` seconds (at most 60); if the prediction
        has not ended by then, this follows its events until it does. Returns the output value, or an
        :class:`Output` (value and files) when the prediction produced files. Raises
        :class:`PredictionError`, with the prediction attached, if it failed, was canceled or aborted.
        """
        created = self.predictions.create(model, input, wait_s=min(max(wait_s, 0.0), MAX_WAIT_S))
        prediction = self.predictions.wait(created)
        if not prediction.succeeded:
            raise PredictionError(prediction)
        if prediction.output_files:
            return Output(prediction.output, prediction.output_files)
        return prediction.output

    def stream(self, model: str, input: Mapping[str, Any], **options: Any) -> Iterator[Event]:
        """Create a prediction and yield its events as they come, the last one "completed".
        ``options`` are those of :meth:`Predictions.create_and_stream`."""
        return self.predictions.create_and_stream(model, input, **options)

    def close(self) -> None:
        self._t.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
