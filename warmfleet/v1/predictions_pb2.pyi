from warmfleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreatePredictionRequest(_message.Message):
    __slots__ = ("model", "version", "deployment", "input", "wait_s", "id", "deadline_s", "priority", "webhook", "webhook_events_filter")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENTS_FILTER_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    deployment: str
    input: _types_pb2.PredictionInput
    wait_s: float
    id: str
    deadline_s: float
    priority: int
    webhook: str
    webhook_events_filter: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., deployment: _Optional[str] = ..., input: _Optional[_Union[_types_pb2.PredictionInput, _Mapping]] = ..., wait_s: _Optional[float] = ..., id: _Optional[str] = ..., deadline_s: _Optional[float] = ..., priority: _Optional[int] = ..., webhook: _Optional[str] = ..., webhook_events_filter: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPredictionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListPredictionsRequest(_message.Message):
    __slots__ = ("page_size", "cursor")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    cursor: str
    def __init__(self, page_size: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListPredictionsResponse(_message.Message):
    __slots__ = ("predictions", "next_cursor")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[_types_pb2.Prediction]
    next_cursor: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[_types_pb2.Prediction, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class CancelPredictionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StreamPredictionRequest(_message.Message):
    __slots__ = ("id", "after_seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_seq: int
    def __init__(self, id: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...
