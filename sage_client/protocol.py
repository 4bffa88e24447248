"""The RPC wire protocol between `sagectl` (or any local client) and the daemon.

Frames are a 4-byte big-endian length followed by one MessagePack message. Messages are a
tagged union (field "t"): the client opens with Hello, then sends Requests; the daemon answers
each request id with one Reply, or with Items followed by an End (streamed replies), or with
an Error. Nothing here does I/O: `FrameDecoder` is fed bytes and hands back messages, so the
framing is tested alone and driven by both the trio server and the blocking client.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size


# ----------------------------------------------------------------------------- messages


class Hello(msgspec.Struct, tag="hello", tag_field="t"):
    protocol: int = PROTOCOL_VERSION
    client: str = ""


class Welcome(msgspec.Struct, tag="welcome", tag_field="t"):
    protocol: int
    daemon_version: str
    pid: int
    http_url: str


class Request(msgspec.Struct, tag="req", tag_field="t"):
    id: int
    method: str
    params: msgspec.Raw = msgspec.Raw(b"\x80")  # an empty map


class Reply(msgspec.Struct, tag="ok", tag_field="t"):
    id: int
    result: Any = None


class Item(msgspec.Struct, tag="item", tag_field="t"):
    """One piece of a streamed reply (a log line, a progress update)."""

    id: int
    data: Any = None


class End(msgspec.Struct, tag="end", tag_field="t"):
    id: int
    result: Any = None


class Error(msgspec.Struct, tag="err", tag_field="t"):
    id: int  # 0 when the error is about the connection, not a request
    code: str
    message: str


Message = Hello | Welcome | Request | Reply | Item | End | Error


class ErrorCode:
    """Typed error codes. Clients branch on these, never on message text. The daemon's typed
    errors (`sage_daemon.core.errors`) each name the one they are sent as."""

    BAD_FRAME: Final = "bad_frame"
    FRAME_TOO_LARGE: Final = "frame_too_large"
    PROTOCOL_VERSION: Final = "protocol_version"
    UNKNOWN_METHOD: Final = "unknown_method"
    INVALID_PARAMS: Final = "invalid_params"
    PERMISSION_DENIED: Final = "permission_denied"
    NOT_FOUND: Final = "not_found"
    MODEL_NOT_FOUND: Final = "model_not_found"
    INVALID_STATE: Final = "invalid_state"
    QUEUE_FULL: Final = "queue_full"
    DEADLINE_EXCEEDED: Final = "deadline_exceeded"
    UNAVAILABLE: Final = "unavailable"
    SHUTTING_DOWN: Final = "shutting_down"
    INTERNAL: Final = "internal"


# ----------------------------------------------------------------------------- shared names
# One spelling for the names that sagectl, the RPC handlers and the daemon all use.

PolicyName = Literal["fifo", "priority", "slo", "hybrid"]
POLICY_NAMES: Final[tuple[str, ...]] = get_args(PolicyName)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
TERMINAL_JOB_STATES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})

ModelKind = Literal["llm", "embedding", "rerank"]
# Embedding and rerank requests are batched by the plane (see control/policies.py BATCHED_KINDS).
RequestKind = Literal["chat", "completion", "embedding", "rerank"]


class ProtocolError(Exception):
    """A frame broke the protocol. `fatal` means the byte stream cannot be trusted any more."""

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode_frame(message: Message) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def encode_params(params: Any) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(params))


def decode_message(body: bytes) -> Message:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame does not decode as a SAGE RPC message: {exc}") from None


class FrameDecoder:
    """Turns a byte stream into messages. Feed it bytes; iterate `messages()`.

    An oversized frame is fatal (the stream cannot be resynchronised without reading the
    whole claimed length); a frame that does not decode is not (its length was honest).
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None when more bytes are needed."""
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self.max_frame_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {length} bytes is over the limit of {self.max_frame_bytes} bytes",
                fatal=True,
            )
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return body

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# ----------------------------------------------------------------------------- methods
# Params and results of each RPC method. The daemon converts params with these types, so a
# wrong type is an `invalid_params` error naming the field.


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class StatusResult(msgspec.Struct):
    version: str
    pid: int
    uptime_s: float
    http_url: str
    socket: str
    state: str  # starting | serving | draining
    in_flight: int
    config_files: list[str]
    notes: list[str] = []  # e.g. "config reload: http.port needs a restart"


class ConfigValue(msgspec.Struct):
    key: str
    value: Any
    source: str


class ConfigShowResult(msgspec.Struct):
    values: list[ConfigValue]


class GpuInfo(msgspec.Struct):
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int


class NodeInfo(msgspec.Struct):
    hostname: str
    cpu_model: str
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    gpus: list[GpuInfo]
    gpu_source: str  # nvml | nvidia-smi | none | config
    is_wsl2: bool
    vllm_available: bool
    overrides: list[str] = []  # which facts come from config, not from the host
    llamacpp_gpu: bool = False  # llama-cpp-python is a GPU (CUDA) build: llama_supports_gpu_offload()
    engines_missing: list[str] = []  # backends whose Python package is not installed: "llamacpp", "sentence-transformers", "vllm"


class PortInfo(msgspec.Struct):
    name: str
    port: int
    free: bool
    holder: str = ""  # "pid 123 (python3 -m http.server)" where it can be found
    note: str = ""


class PortsResult(msgspec.Struct):
    ports: list[PortInfo]
    recommended_llm_port: int
    reason: str


class VersionResult(msgspec.Struct):
    daemon_version: str
    protocol: int
    python: str
    packages: dict[str, str]


class EchoParams(msgspec.Struct, forbid_unknown_fields=True):
    """`ping` with an optional payload, echoed back, after an optional delay (to test clients' timeouts and the drain)."""

    payload: str = ""
    delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


class PingResult(msgspec.Struct):
    payload: str
    daemon_time: float


class ModelRow(msgspec.Struct):
    """A configured model as `sagectl models` / `ps` show it (mirrors the daemon's ModelInfo)."""

    id: str
    kind: ModelKind
    backend: str
    state: str
    owned_by: str = "sage"
    created: int = 0
    reason: str = ""
    device: str = "cpu"
    slots_busy: int = 0
    slots_total: int = 0
    keep_alive_until: float | None = None
    n_ctx: int = 0
    dimensions: int = 0
    chat_template: bool = False
    failures: int = 0
    restart_in_s: float | None = None


class ModelsResult(msgspec.Struct):
    models: list[ModelRow]


class ModelName(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]


# -- models added, removed, pulled (sagectl models add/rm/show/--available, sagectl pull) -------------

ModelRef = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class ModelAddParams(msgspec.Struct, forbid_unknown_fields=True):
    """`source`: a path (a .gguf file, a sentence-transformers folder), a name `models.available`
    lists, or an `hf:` reference already pulled."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
    source: ModelRef
    kind: ModelKind | None = None
    n_ctx: Annotated[int, msgspec.Meta(ge=64, le=1048576)] | None = None
    parallel: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None


class ModelRemoveParams(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    purge: bool = False  # also delete the model's files when the daemon pulled them


class ModelRemoved(msgspec.Struct):
    name: str
    restored: bool  # a config model of that name is served again
    purged_bytes: int = 0


class ModelDetail(msgspec.Struct):
    """`sagectl models show NAME`."""

    model: ModelRow
    origin: str  # "config" or "models file (PATH)"
    file: str = ""
    size_bytes: int = 0
    quant: str = ""
    architecture: str = ""
    parameters: int = 0
    context_length: int = 0  # what the model was trained for (n_ctx is what this daemon gives it)
    chat_template: bool = False
    tool_format: str = ""


class AvailableModel(msgspec.Struct):
    name: str  # the name `sagectl models add NAME` would give it
    path: str
    kind: ModelKind
    backend: str
    size_bytes: int
    where: str
    quant: str = ""
    added: bool = False  # already served under some name


class AvailableResult(msgspec.Struct):
    models: list[AvailableModel]


class PullParams(msgspec.Struct, forbid_unknown_fields=True):
    ref: ModelRef


class PullEvent(msgspec.Struct):
    """One progress line of `models.pull` (streamed)."""

    phase: str  # resolving | downloading | verifying | done
    file: str = ""
    completed_bytes: int = 0
    total_bytes: int = 0
    bytes_per_s: float = 0.0
    eta_s: float | None = None


class PullResult(msgspec.Struct):
    ref: str
    path: str  # what to load: the first GGUF part, or the snapshot folder
    kind: ModelKind
    backend: str
    size_bytes: int
    name: str  # a suggested model name
    quant: str = ""


class ChatTurn(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatParams(msgspec.Struct, forbid_unknown_fields=True):
    """`sagectl run MODEL`: one assistant turn, streamed as ChatDelta items."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[ChatTurn], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1048576)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.8
    seed: int | None = None


class ChatDelta(msgspec.Struct):
    text: str = ""
    reasoning: str = ""


class ChatEnd(msgspec.Struct):
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class QueueRow(msgspec.Struct):
    request_id: str
    model: str
    kind: str
    priority: str
    position: int
    waited_s: float
    estimated_wait_s: float | None


class QueueResult(msgspec.Struct):
    policy: str
    entries: list[QueueRow]
    running: dict[str, int]


class PolicyParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class PolicyResult(msgspec.Struct):
    policy: str
    previous: str = ""


# ----------------------------------------------------------------------------- jobs and collections


class JobSubmitParams(msgspec.Struct, forbid_unknown_fields=True):
    """A pipeline as a TOML file's text, or as a table (`spec`). Relative paths in it resolve in
    the folder of `source_path` (the file sagectl read), else in `base_dir`."""

    toml: str = ""
    spec: dict[str, Any] | None = None
    source_path: str = ""
    name: str = ""  # overrides the pipeline's name


class JobId(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[int, msgspec.Meta(ge=1)]


class JobListParams(msgspec.Struct, forbid_unknown_fields=True):
    state: str = ""  # only jobs in this state
    limit: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 50


class JobWaitParams(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[int, msgspec.Meta(ge=1)]
    timeout_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    results: Annotated[int, msgspec.Meta(ge=0, le=100000)] = 0  # how many collected results to return


class JobWatchParams(msgspec.Struct, forbid_unknown_fields=True):
    """Streamed: a JobDetail every `interval_s` until the job ends; the result is the last one."""

    id: Annotated[int, msgspec.Meta(ge=1)]
    interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 0.5
    results: Annotated[int, msgspec.Meta(ge=0, le=100000)] = 0


class JobLogsParams(msgspec.Struct, forbid_unknown_fields=True):
    """Streamed: JobEvent items (after `after`); with `follow`, until the job ends."""

    id: Annotated[int, msgspec.Meta(ge=1)]
    follow: bool = False
    after: Annotated[int, msgspec.Meta(ge=0)] = 0


class JobSummary(msgspec.Struct):
    id: int
    name: str
    state: JobState
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 1
    error: str = ""
    result_location: str = ""  # a file, or collection:NAME
    executor: str = "local"


class JobStage(msgspec.Struct):
    index: int
    name: str
    ops: str  # the fused operators, "map+chunk"
    kind: str  # source | cpu | model | write | sink
    parallelism: int
    node: str = ""  # the node selector's decision...
    reason: str = ""  # ...and why
    items_in: int = 0
    items_out: int = 0
    errors: int = 0
    done: bool = False


class JobEvent(msgspec.Struct):
    seq: int
    ts: float
    level: str  # state | info | warning | error
    message: str


class JobDetail(msgspec.Struct):
    job: JobSummary
    stages: list[JobStage] = []
    events: list[JobEvent] = []  # the latest few
    results: list[Any] = []
    notes: list[str] = []  # the planner's (fused stages, defaults it chose)


class JobListResult(msgspec.Struct):
    jobs: list[JobSummary]


class JobLogsEnd(msgspec.Struct):
    job: JobSummary
    last_seq: int = 0


class JobEmbedParams(msgspec.Struct, forbid_unknown_fields=True):
    """For job stages running outside the daemon (Ray workers): embeddings through the control plane."""

    model: str
    texts: Annotated[list[str], msgspec.Meta(min_length=1)]
    priority: str = "background"


class JobEmbedResult(msgspec.Struct):
    vectors: list[list[float]]


class JobRerankParams(msgspec.Struct, forbid_unknown_fields=True):
    """For job stages running outside the daemon (Ray workers): the relevance of each document to the query."""

    model: str
    query: str
    documents: Annotated[list[str], msgspec.Meta(min_length=1)]
    priority: str = "background"


class JobRerankResult(msgspec.Struct):
    scores: list[float]  # one per document, in the documents' order


class JobGenerateParams(msgspec.Struct, forbid_unknown_fields=True):
    """For job stages running outside the daemon (Ray workers): one generation, whole."""

    model: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 256
    temperature: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    seed: int | None = 0
    priority: str = "background"


class JobGenerateResult(msgspec.Struct):
    text: str
    finish_reason: str = ""


class CollectionName(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]


class CollectionRow(msgspec.Struct):
    name: str
    count: int
    dimensions: int
    model: str
    created_at: float
    updated_at: float
    path: str
    size_bytes: int


class CollectionListResult(msgspec.Struct):
    collections: list[CollectionRow]


class MethodSpec(msgspec.Struct, frozen=True):
    params: type
    result: type
    streaming: bool = False


METHODS: Final[dict[str, MethodSpec]] = {
    "ping": MethodSpec(EchoParams, PingResult),
    "status": MethodSpec(Empty, StatusResult),
    "config.show": MethodSpec(Empty, ConfigShowResult),
    "nodes": MethodSpec(Empty, NodeInfo),
    "ports": MethodSpec(Empty, PortsResult),
    "version": MethodSpec(Empty, VersionResult),
    "models": MethodSpec(Empty, ModelsResult),
    "load": MethodSpec(ModelName, ModelRow),
    "models.add": MethodSpec(ModelAddParams, ModelRow),
    "models.rm": MethodSpec(ModelRemoveParams, ModelRemoved),
    "models.show": MethodSpec(ModelName, ModelDetail),
    "models.available": MethodSpec(Empty, AvailableResult),
    "models.pull": MethodSpec(PullParams, PullResult, streaming=True),
    "chat": MethodSpec(ChatParams, ChatEnd, streaming=True),
    "unload": MethodSpec(ModelName, ModelRow),
    "queue": MethodSpec(Empty, QueueResult),
    "policy.get": MethodSpec(Empty, PolicyResult),
    "policy.set": MethodSpec(PolicyParams, PolicyResult),
    "job.submit": MethodSpec(JobSubmitParams, JobSummary),
    "job.list": MethodSpec(JobListParams, JobListResult),
    "job.show": MethodSpec(JobId, JobDetail),
    "job.logs": MethodSpec(JobLogsParams, JobLogsEnd, streaming=True),
    "job.watch": MethodSpec(JobWatchParams, JobDetail, streaming=True),
    "job.wait": MethodSpec(JobWaitParams, JobDetail),
    "job.cancel": MethodSpec(JobId, JobSummary),
    "job.retry": MethodSpec(JobId, JobSummary),
    "job.embed": MethodSpec(JobEmbedParams, JobEmbedResult),
    "job.generate": MethodSpec(JobGenerateParams, JobGenerateResult),
    "job.rerank": MethodSpec(JobRerankParams, JobRerankResult),
    "collection.list": MethodSpec(Empty, CollectionListResult),
    "collection.show": MethodSpec(CollectionName, CollectionRow),
    "collection.drop": MethodSpec(CollectionName, CollectionRow),
}


def decode_params(method: str, raw: msgspec.Raw) -> Any:
    """Params of `method` as its typed Struct; ProtocolError for unknown methods and bad params."""
    spec = METHODS.get(method)
    if spec is None:
        raise ProtocolError(ErrorCode.UNKNOWN_METHOD, f"unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    try:
        return msgspec.msgpack.decode(raw, type=spec.params)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"invalid params for {method}: {exc}") from None
