from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Autoscaling(_message.Message):
    __slots__ = ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s", "scale_to_zero_delay_s")
    TARGET_ONGOING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    DOWNSCALE_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_TO_ZERO_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    target_ongoing_requests: float
    upscale_delay_s: float
    downscale_delay_s: float
    scale_to_zero_delay_s: float
    def __init__(self, target_ongoing_requests: _Optional[float] = ..., upscale_delay_s: _Optional[float] = ..., downscale_delay_s: _Optional[float] = ..., scale_to_zero_delay_s: _Optional[float] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "model", "version", "hardware", "min_instances", "max_instances", "autoscaling", "current_release", "target_instances", "runner")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    MIN_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RELEASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    version: str
    hardware: str
    min_instances: int
    max_instances: int
    autoscaling: Autoscaling
    current_release: int
    target_instances: int
    runner: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., hardware: _Optional[str] = ..., min_instances: _Optional[int] = ..., max_instances: _Optional[int] = ..., autoscaling: _Optional[_Union[Autoscaling, _Mapping]] = ..., current_release: _Optional[int] = ..., target_instances: _Optional[int] = ..., runner: _Optional[str] = ...) -> None: ...

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("name", "model", "version", "hardware", "min_instances", "max_instances", "autoscaling")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    MIN_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    version: str
    hardware: str
    min_instances: int
    max_instances: int
    autoscaling: Autoscaling
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., hardware: _Optional[str] = ..., min_instances: _Optional[int] = ..., max_instances: _Optional[int] = ..., autoscaling: _Optional[_Union[Autoscaling, _Mapping]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class UpdateDeploymentRequest(_message.Message):
    __slots__ = ("name", "version", "hardware", "min_instances", "max_instances", "autoscaling")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    MIN_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    hardware: str
    min_instances: int
    max_instances: int
    autoscaling: Autoscaling
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., hardware: _Optional[str] = ..., min_instances: _Optional[int] = ..., max_instances: _Optional[int] = ..., autoscaling: _Optional[_Union[Autoscaling, _Mapping]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...
