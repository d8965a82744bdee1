import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_STARTING: _ClassVar[Status]
    STATUS_PROCESSING: _ClassVar[Status]
    STATUS_SUCCEEDED: _ClassVar[Status]
    STATUS_FAILED: _ClassVar[Status]
    STATUS_CANCELED: _ClassVar[Status]
    STATUS_ABORTED: _ClassVar[Status]
STATUS_UNSPECIFIED: Status
STATUS_STARTING: Status
STATUS_PROCESSING: Status
STATUS_SUCCEEDED: Status
STATUS_FAILED: Status
STATUS_CANCELED: Status
STATUS_ABORTED: Status

class File(_message.Message):
    __slots__ = ("data", "content_type", "name", "width", "height")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    name: str
    width: int
    height: int
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., name: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class JsonInput(_message.Message):
    __slots__ = ("fields", "files")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: File
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[File, _Mapping]] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    fields: _struct_pb2.Struct
    files: _containers.MessageMap[str, File]
    def __init__(self, fields: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., files: _Optional[_Mapping[str, File]] = ...) -> None: ...

class EchoInput(_message.Message):
    __slots__ = ("text", "delay_ms", "chunks")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    text: str
    delay_ms: int
    chunks: int
    def __init__(self, text: _Optional[str] = ..., delay_ms: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class TextGenerationInput(_message.Message):
    __slots__ = ("prompt", "system_prompt", "messages", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty", "stop_sequences", "seed", "min_p", "logit_bias", "stop_token_ids", "n", "logprobs", "top_logprobs", "json_schema", "regex", "choices", "grammar", "tools")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    system_prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    stop_sequences: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    min_p: float
    logit_bias: _containers.ScalarMap[str, float]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    n: int
    logprobs: bool
    top_logprobs: int
    json_schema: _struct_pb2.Struct
    regex: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    grammar: str
    tools: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, prompt: _Optional[str] = ..., system_prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., min_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., repetition_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., stop_sequences: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., min_p: _Optional[float] = ..., logit_bias: _Optional[_Mapping[str, float]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., n: _Optional[int] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., json_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., regex: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., grammar: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class ImageGenerationInput(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "scheduler", "seed", "num_outputs", "output_format", "image", "strength", "controlnets", "guess_mode", "mask", "mask_blur", "outpaint", "loras", "return_maps", "prompt_2", "negative_prompt_2", "refine", "high_noise_frac")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_INFERENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CONTROLNETS_FIELD_NUMBER: _ClassVar[int]
    GUESS_MODE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_FIELD_NUMBER: _ClassVar[int]
    OUTPAINT_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    RETURN_MAPS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_2_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_2_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    HIGH_NOISE_FRAC_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    scheduler: str
    seed: int
    num_outputs: int
    output_format: str
    image: File
    strength: float
    controlnets: _containers.RepeatedCompositeFieldContainer[ControlNetUnit]
    guess_mode: bool
    mask: File
    mask_blur: int
    outpaint: Outpaint
    loras: _containers.RepeatedCompositeFieldContainer[LoraAdapter]
    return_maps: bool
    prompt_2: str
    negative_prompt_2: str
    refine: bool
    high_noise_frac: float
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., num_inference_steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., scheduler: _Optional[str] = ..., seed: _Optional[int] = ..., num_outputs: _Optional[int] = ..., output_format: _Optional[str] = ..., image: _Optional[_Union[File, _Mapping]] = ..., strength: _Optional[float] = ..., controlnets: _Optional[_Iterable[_Union[ControlNetUnit, _Mapping]]] = ..., guess_mode: _Optional[bool] = ..., mask: _Optional[_Union[File, _Mapping]] = ..., mask_blur: _Optional[int] = ..., outpaint: _Optional[_Union[Outpaint, _Mapping]] = ..., loras: _Optional[_Iterable[_Union[LoraAdapter, _Mapping]]] = ..., return_maps: _Optional[bool] = ..., prompt_2: _Optional[str] = ..., negative_prompt_2: _Optional[str] = ..., refine: _Optional[bool] = ..., high_noise_frac: _Optional[float] = ...) -> None: ...

class Outpaint(_message.Message):
    __slots__ = ("left", "right", "top", "bottom", "fill")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    left: int
    right: int
    top: int
    bottom: int
    fill: str
    def __init__(self, left: _Optional[int] = ..., right: _Optional[int] = ..., top: _Optional[int] = ..., bottom: _Optional[int] = ..., fill: _Optional[str] = ...) -> None: ...

class LoraAdapter(_message.Message):
    __slots__ = ("weights", "file", "scale")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    weights: str
    file: File
    scale: float
    def __init__(self, weights: _Optional[str] = ..., file: _Optional[_Union[File, _Mapping]] = ..., scale: _Optional[float] = ...) -> None: ...

class ControlNetUnit(_message.Message):
    __slots__ = ("image", "type", "preprocessor", "conditioning_scale", "guidance_start", "guidance_end", "canny_low_threshold", "canny_high_threshold", "detect_resolution", "mlsd_value_threshold", "mlsd_distance_threshold", "lineart_coarse", "normal_bg_threshold")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_SCALE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_START_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_END_FIELD_NUMBER: _ClassVar[int]
    CANNY_LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CANNY_HIGH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECT_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    MLSD_VALUE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MLSD_DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LINEART_COARSE_FIELD_NUMBER: _ClassVar[int]
    NORMAL_BG_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    image: File
    type: str
    preprocessor: str
    conditioning_scale: float
    guidance_start: float
    guidance_end: float
    canny_low_threshold: int
    canny_high_threshold: int
    detect_resolution: int
    mlsd_value_threshold: float
    mlsd_distance_threshold: float
    lineart_coarse: bool
    normal_bg_threshold: float
    def __init__(self, image: _Optional[_Union[File, _Mapping]] = ..., type: _Optional[str] = ..., preprocessor: _Optional[str] = ..., conditioning_scale: _Optional[float] = ..., guidance_start: _Optional[float] = ..., guidance_end: _Optional[float] = ..., canny_low_threshold: _Optional[int] = ..., canny_high_threshold: _Optional[int] = ..., detect_resolution: _Optional[int] = ..., mlsd_value_threshold: _Optional[float] = ..., mlsd_distance_threshold: _Optional[float] = ..., lineart_coarse: _Optional[bool] = ..., normal_bg_threshold: _Optional[float] = ...) -> None: ...

class UpscaleInput(_message.Message):
    __slots__ = ("image", "scale", "tile", "tile_overlap", "output_format")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TILE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    image: File
    scale: float
    tile: int
    tile_overlap: int
    output_format: str
    def __init__(self, image: _Optional[_Union[File, _Mapping]] = ..., scale: _Optional[float] = ..., tile: _Optional[int] = ..., tile_overlap: _Optional[int] = ..., output_format: _Optional[str] = ...) -> None: ...

class PredictionInput(_message.Message):
    __slots__ = ("json", "echo", "text_generation", "image_generation", "upscale")
    JSON_FIELD_NUMBER: _ClassVar[int]
    ECHO_FIELD_NUMBER: _ClassVar[int]
    TEXT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_FIELD_NUMBER: _ClassVar[int]
    json: JsonInput
    echo: EchoInput
    text_generation: TextGenerationInput
    image_generation: ImageGenerationInput
    upscale: UpscaleInput
    def __init__(self, json: _Optional[_Union[JsonInput, _Mapping]] = ..., echo: _Optional[_Union[EchoInput, _Mapping]] = ..., text_generation: _Optional[_Union[TextGenerationInput, _Mapping]] = ..., image_generation: _Optional[_Union[ImageGenerationInput, _Mapping]] = ..., upscale: _Optional[_Union[UpscaleInput, _Mapping]] = ...) -> None: ...

class PredictionOutput(_message.Message):
    __slots__ = ("value", "files")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    value: _struct_pb2.Value
    files: _containers.RepeatedCompositeFieldContainer[File]
    def __init__(self, value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., files: _Optional[_Iterable[_Union[File, _Mapping]]] = ...) -> None: ...

class PredictionMetrics(_message.Message):
    __slots__ = ("predict_time_s", "total_time_s", "queue_time_s", "input_token_count", "output_token_count", "time_to_first_token_s", "tokens_per_second", "finish_reason", "image_count", "batch_size", "boot_time_s", "custom", "cached_input_token_count")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PREDICT_TIME_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BOOT_TIME_S_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    predict_time_s: float
    total_time_s: float
    queue_time_s: float
    input_token_count: int
    output_token_count: int
    time_to_first_token_s: float
    tokens_per_second: float
    finish_reason: str
    image_count: int
    batch_size: int
    boot_time_s: float
    custom: _containers.ScalarMap[str, float]
    cached_input_token_count: int
    def __init__(self, predict_time_s: _Optional[float] = ..., total_time_s: _Optional[float] = ..., queue_time_s: _Optional[float] = ..., input_token_count: _Optional[int] = ..., output_token_count: _Optional[int] = ..., time_to_first_token_s: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., finish_reason: _Optional[str] = ..., image_count: _Optional[int] = ..., batch_size: _Optional[int] = ..., boot_time_s: _Optional[float] = ..., custom: _Optional[_Mapping[str, float]] = ..., cached_input_token_count: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("id", "model", "version", "deployment", "input", "output", "logs", "error", "error_code", "error_field", "status", "created_at", "started_at", "completed_at", "metrics", "owner", "webhook", "webhook_events_filter", "data_removed", "attempt")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENTS_FILTER_FIELD_NUMBER: _ClassVar[int]
    DATA_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    version: str
    deployment: str
    input: PredictionInput
    output: PredictionOutput
    logs: str
    error: str
    error_code: str
    error_field: str
    status: Status
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    metrics: PredictionMetrics
    owner: str
    webhook: str
    webhook_events_filter: _containers.RepeatedScalarFieldContainer[str]
    data_removed: bool
    attempt: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., deployment: _Optional[str] = ..., input: _Optional[_Union[PredictionInput, _Mapping]] = ..., output: _Optional[_Union[PredictionOutput, _Mapping]] = ..., logs: _Optional[str] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ..., error_field: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[PredictionMetrics, _Mapping]] = ..., owner: _Optional[str] = ..., webhook: _Optional[str] = ..., webhook_events_filter: _Optional[_Iterable[str]] = ..., data_removed: _Optional[bool] = ..., attempt: _Optional[int] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("value", "file")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    value: _struct_pb2.Value
    file: File
    def __init__(self, value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., file: _Optional[_Union[File, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total", "eta_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    eta_s: float
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ..., eta_s: _Optional[float] = ...) -> None: ...

class PredictionEvent(_message.Message):
    __slots__ = ("prediction_id", "seq", "status", "log", "output", "progress", "completed")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    seq: int
    status: Status
    log: str
    output: OutputChunk
    progress: Progress
    completed: Prediction
    def __init__(self, prediction_id: _Optional[str] = ..., seq: _Optional[int] = ..., status: _Optional[_Union[Status, str]] = ..., log: _Optional[str] = ..., output: _Optional[_Union[OutputChunk, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., completed: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...
