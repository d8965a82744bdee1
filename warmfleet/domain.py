"""Domain types shared by the gateway, the scheduler, the node agents and the runners.

Plain dataclasses: no protobuf, no Ray. Times are seconds since the epoch (floats) unless a name
says otherwise. Inputs are JSON-shaped dicts in which files appear as ``FileData`` values.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Union


class Status(str, enum.Enum):
    """Where a prediction is in its life (Replicate's statuses)."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.ABORTED})


@dataclass(frozen=True)
class FileData:
    """A file inside an input or output: raw bytes and what they are."""

    data: bytes = field(repr=False)  # error messages show the file, never its bytes
    content_type: str = ""
    name: str = ""
    width: int = 0
    height: int = 0


@dataclass
class Output:
    """What a prediction produced: JSON-shaped ``value`` and files, in order."""

    value: Any = None
    files: list[FileData] = field(default_factory=list)


@dataclass
class Metrics:
    """Timings (seconds) and counts of one prediction; None where they do not apply."""

    predict_time_s: float | None = None
    total_time_s: float | None = None
    queue_time_s: float | None = None
    input_token_count: int | None = None
    cached_input_token_count: int | None = None  # of those, read from the prefix cache
    output_token_count: int | None = None
    time_to_first_token_s: float | None = None
    tokens_per_second: float | None = None
    finish_reason: str | None = None
    boot_time_s: float | None = None
    image_count: int | None = None
    batch_size: int | None = None
    custom: dict[str, float] = field(default_factory=dict)  # what the model recorded itself, by name


@dataclass
class Prediction:
    """One prediction, as the gateway stores and reports it."""

    id: str
    model: str
    version: str
    input: dict[str, Any]
    owner: str
    created_at: float
    input_kind: str = "json"
    deployment: str = ""
    status: Status = Status.STARTING
    output: Output | None = None
    logs: list[str] = field(default_factory=list)
    error: str = ""
    # When a runner refused it with one of warmfleet's errors: that error's class in the status table
    # ("InvalidInput"), and the field it names; "" otherwise.
    error_code: str = ""
    error_field: str = ""
    started_at: float | None = None
    completed_at: float | None = None
    metrics: Metrics = field(default_factory=Metrics)
    deadline_at: float | None = None
    priority: int = 0
    # True once retention removed its input files and output (gateway/files.py; Replicate's data_removed).
    data_removed: bool = False
    webhook: str = ""  # http(s) URL the gateway POSTs the prediction to as it progresses; "" for none
    # Which events send a webhook: "start", "output", "logs", "completed"; empty means all four.
    webhook_events_filter: list[str] = field(default_factory=list)
    source: str = "api"  # where it was made: "web" (the console) or "api" (anything else), as Replicate says
    # Its runs: 1, and 2 once re-run after its node or the gateway stopped while it ran (``Requeued``).
    attempt: int = 1


# Events a runner yields while predicting.


@dataclass(frozen=True)
class LogLine:
    text: str


@dataclass(frozen=True)
class OutputChunk:
    value: Any = None
    file: FileData | None = None
    # Text that reads the same merged with the next chunk (tokens; a Cog ConcatenateIterator), so chunks
    # that pile up may travel as one. False for items of a list (a Cog Iterator[str]).
    joinable: bool = True


@dataclass(frozen=True)
class ProgressUpdate:
    step: int
    total: int
    eta_s: float = 0.0


@dataclass(frozen=True)
class MetricsUpdate:
    """Figures a runner reports about its prediction (``Metrics`` field names); the agent merges them
    into the prediction's metrics. Not streamed to clients."""

    values: dict[str, Any]


RunnerEvent = Union[LogLine, OutputChunk, ProgressUpdate, MetricsUpdate]


# Events a node agent reports about a task (one prediction on one instance).


@dataclass(frozen=True)
class Started:
    """The task began running on its instance at ``at``."""

    at: float


@dataclass(frozen=True)
class Finished:
    """The task ended. ``status`` is terminal; ``error`` says why when it did not succeed."""

    status: Status
    started_at: float | None
    completed_at: float
    output: Output | None = None
    error: str = ""
    metrics: Metrics = field(default_factory=Metrics)
    error_code: str = ""  # the runner's error's class in the status table ("InvalidInput"), if it is one
    error_field: str = ""  # the field an InvalidInput names


@dataclass(frozen=True)
class Rejected:
    """The agent could not start the task (its instance is gone, draining or full): the router
    places it again. Never a terminal outcome by itself."""

    reason: str
    # The instance takes no work at all (gone, draining, stopped), not merely full: the router sends it
    # nothing more until a routing table lists it again.
    instance_closed: bool = False


@dataclass(frozen=True)
class Requeued:
    """Its run was lost to the infrastructure (its node, or the gateway, stopped while it ran): it is
    queued to run again, as attempt ``attempt`` (2 for the one re-run). From the router, never an agent."""

    reason: str
    attempt: int


TaskEventBody = Union[Started, LogLine, OutputChunk, ProgressUpdate, Finished, Rejected, Requeued]


@dataclass(frozen=True)
class TaskEvent:
    """An event about one prediction, from a node agent to the router that dispatched it."""

    prediction_id: str
    body: TaskEventBody


@dataclass(frozen=True)
class Task:
    """One prediction sent to a node agent to run on one of its instances."""

    prediction_id: str
    instance_id: str
    input: dict[str, Any]


# Events the gateway publishes about a prediction, to stream subscribers.


@dataclass(frozen=True)
class Completed:
    """The final event of a prediction: the prediction in its terminal status."""

    prediction: Prediction


PublicEventBody = Union[Status, LogLine, OutputChunk, ProgressUpdate, Completed]


@dataclass(frozen=True)
class PredictionEvent:
    """The ``seq``-th event of a prediction (from 1)."""

    prediction_id: str
    seq: int
    body: PublicEventBody


# The cluster's shape.


@dataclass(frozen=True)
class RouteSpec:
    """What the cluster serves under one name (a route): a model version (runner family, weights,
    options) and how many instances of it to keep.

    A model's own route has the model's name. A deployment is a route of its own: ``name`` is the
    deployment's, ``model`` the model it deploys, ``release`` counts its updates. Predictions for a
    route queue under its name, and its instances carry that name. A model created with no version yet
    (Replicate's "create a model", filled by a later push) has ``runner`` "" and no instance.
    """

    name: str
    runner: str
    weights: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    min_instances: int = 1
    # Most instances the autoscaler may run; None: max(1, min_instances) (a fixed size).
    max_instances: int | None = None
    # The autoscaler's other knobs (scheduler.autoscaling.AutoscalingConfig's names):
    # target_ongoing_requests, upscale_delay_s, downscale_delay_s, scale_to_zero_delay_s.
    autoscaling: dict[str, float] = field(default_factory=dict)
    model: str = ""  # a deployment's model ("owner/name"); empty on a model's own route
    release: int = 0  # a deployment's release number: 1 when created, +1 on every update
    hardware: str = ""  # the hardware SKU its instances need ("cpu", "gpu-nvidia-h100-80gb"); "gpu": any GPU
    # A content-addressed version id (a pushed bundle's SHA-256); empty: the digest of runner, weights and
    # options (``version``).
    version_id: str = ""
    # When the version was pushed (seconds since the epoch), or the model with no version yet created; 0 for
    # one the configuration made.
    created_at: float = 0.0
    # A version route: it serves one earlier version of this model ("owner/name"), for predictions pinned
    # to it, from zero instances. Its name is ``version_route_name(model, version)``.
    version_of: str = ""
    owner: str = ""  # the namespace (account or organization name) it belongs to; "" for the configuration
    visibility: str = "public"  # "public" or "private" (a pushed model starts private)
    # Whether a prediction whose run was lost to the infrastructure (its node or the gateway stopped) may
    # run once more; False for a model whose runs have effects outside it that must not happen twice.
    retryable: bool = True
    # What a model says of itself, by Replicate's names (github_url, paper_url, license_url, cover_image_url,
    # weights_url, readme): shown by the API, never part of the version.
    about: dict[str, str] = field(default_factory=dict)
    # A deployment's current release: when it was made (seconds since the epoch) and by which account (its
    # name); 0 and "" for one the configuration made.
    released_at: float = 0.0
    released_by: str = ""

    @property
    def has_version(self) -> bool:
        """False for a model created with no version yet (``runner`` ""): it is listed, and refused for
        predictions until a push gives it one."""
        return bool(self.runner)

    @property
    def model_name(self) -> str:
        """The model this route serves a version of."""
        return self.model or self.version_of or self.name

    @property
    def most_instances(self) -> int:
        """``max_instances``, or its default: max(1, min_instances) (a fixed size)."""
        return self.max_instances if self.max_instances is not None else max(1, self.min_instances)

    @property
    def is_version_route(self) -> bool:
        return bool(self.version_of)

    @property
    def is_deployment(self) -> bool:
        return bool(self.model)

    @property
    def version(self) -> str:
        """Immutable version id: ``version_id`` when set, else a digest of runner family, weights reference
        and options; "" for a model with no version yet."""
        if self.version_id or not self.runner:
            return self.version_id
        blob = json.dumps([self.runner, self.weights, self.options], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def version_route_name(model: str, version: str) -> str:
    """The route that serves ``version`` of ``model`` when it is not the model's latest."""
    return f"{model}@{version[:16]}"


class InstanceState(enum.StrEnum):
    """Where an instance is in its life (``node.instance`` holds the transitions an agent may make)."""

    STARTING = "starting"
    IDLE = "idle"
    PROCESSING = "processing"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class InstanceInfo:
    """A model instance as the control plane sees it."""

    id: str
    model: str
    version: str
    node_id: str
    state: InstanceState
    max_concurrency: int
    in_flight: int = 0
    # What its own processes use (GPU memory on a GPU node, resident memory on a CPU node), as its agent
    # measured it; 0: not measured (the instance lives in the agent's process).
    memory_bytes: int = 0
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DrainStatus:
    """How far the drain of a node has come."""

    node_id: str
    instances_left: int  # on the node still: waiting for their replacements, or finishing their predictions
    done: bool  # every instance has left; the node stays, and takes no new one


@dataclass(frozen=True)
class NodeInfo:
    """A node agent and what it reports.

    ``hardware`` is the SKU deployments ask for ("cpu", "gpu-nvidia-h100-80gb"; ``node.metrics.hardware_sku``);
    ``accelerator`` the name NVML gives. Memory is the GPU's, or the host's RAM on a CPU node. Figures a
    board does not report, or that NVML could not read, are None (``metrics_note`` says why).
    """

    id: str
    ray_node_id: str
    address: str
    accelerator: str = "cpu"
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    utilization_percent: float | None = None
    metrics_note: str = ""
    instance_count: int = 0
    hardware: str = "cpu"
    gpu_index: int | None = None  # NVML index of the agent's GPU; None on a CPU node
    gpu_uuid: str = ""  # NVML's "GPU-..." id, stable across reboots and index order; "" where unread
    temperature_c: float | None = None
    power_w: float | None = None
