"""In-process llama.cpp engine: continuous batching over one context, shared-prefix reuse.

One llama.cpp context holds `parallel` sequences (`n_seq_max`, unified KV cache, `n_ctx`
per sequence). A decode loop on a thread the engine owns builds ONE batch per step with
every live sequence: a token each for the decoding ones, then prefill chunks (at most
`n_batch` tokens per step in all) for the ones still reading their prompt. Sequences join
and leave at any step. The scheduling decisions live in `BatchScheduler` (no model needed
to test them); this module applies them to llama.cpp and streams results to trio.

Each step of the loop: the scheduler plans it (admissions, KV operations, batch items, whether
it may be cut short) → the loop applies the KV operations, fills the batch, decodes, samples →
the scheduler applies the sampled tokens and the stop rule (`update_from_output`) → the loop
turns tokens into text (stop strings) and delivers. A failure while sampling or finishing one
sequence fails that sequence alone; only a failed `llama_decode` stops the engine.

Trio side: `prepare()` (on a worker thread) tokenizes and checks the request once;
`generate()` submits a prepared request to the loop and yields chunks from the stream's
`ChunkMailbox` (engines/mailbox.py). The loop hands each step's chunks to trio in one
`TrioToken.run_sync_soon` call (non-blocking: the loop never waits for a consumer); a mailbox
holds one chunk and merges into it what arrives while the consumer lags, so a slow client gets
its tokens in fewer, larger chunks. Closing or cancelling the consumer sends a cancel to the
loop, which drops the sequence and clears its KV cells at the next step.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import AsyncIterator
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import trio

from sage_client.protocol import ModelKind

from .base import (
    ChatMessage,
    ChatTemplateMissingError,
    ContextOverflowError,
    EngineError,
    EngineHealth,
    EngineState,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    NullGate,
    OutputConstraint,
    SamplingParams,
    StepGate,
    TokenLogprob,
    ToolSpec,
    TopLogprob,
)
from .batch_scheduler import MAX_ABORTS_IN_A_ROW, BatchScheduler, KvCopy, KvOp, KvTrim, Sequence, StepPlan
from .mailbox import ChunkMailbox
from .text_stream import StopStringMatcher, Utf8StreamDecoder

if TYPE_CHECKING:
    from .grammar import CompiledGrammar, GrammarCompiler, TokenMatcher
    from .llamacpp_sampling import Sampler
    from .tool_formats import ToolCallParser, ToolFormat

__all__ = ["MAX_ABORTS_IN_A_ROW", "LlamaCppEngine", "LlamaCppSpec", "llama_cpp_uses_openmp"]

log = logging.getLogger(__name__)


class LlamaCppSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to run one GGUF model in-process."""

    name: str
    model_path: str
    n_ctx: int = 4096  # context per sequence (the KV cache holds parallel * n_ctx cells)
    parallel: int = 8  # sequences decoded together (slots)
    threads: int | None = None  # None: every core of the machine
    n_batch: int = 512  # tokens per decode step, shared by decoding and prefilling sequences
    chat_format: str | None = None  # a Jinja chat template overriding the GGUF's
    flash_attn: bool | None = None  # None: llama.cpp decides ("auto": on where the device supports it)
    prefix_reuse: bool = True  # copy a cached shared prompt prefix instead of prefilling it
    prefix_block_size: int = 16  # prefix-reuse granularity of the hash lookup (exact match after)
    # Tokens that finished sequences other than the newest may keep cached for reuse (None: cells
    # worth a quarter of the weights' bytes, at most n_ctx). Every decode step attends over all
    # used cells of the unified cache, so idle caches cost some speed.
    idle_cache_tokens: int | None = None
    n_gpu_layers: int = 0  # layers offloaded to the GPU (-1: all); resolved by gpu_fit where "auto"
    # KV cache types ("f16", "q8_0", "q4_0"); a quantized V cache needs flash_attn (gpu_fit.flash_attn_for).
    type_k: Literal["f16", "q8_0", "q4_0"] = "f16"
    type_v: Literal["f16", "q8_0", "q4_0"] = "f16"
    # How tool calls are written and parsed (hermes | llama3 | mistral | generic); None: from the chat template.
    tool_format: str | None = None
    # Reasoning markers whose text goes to `reasoning_content`: "auto" (<think>...</think> when the
    # template knows them), "think" (always), "off".
    reasoning: Literal["auto", "think", "off"] = "auto"


# -- llama.cpp process-wide setup ---------------------------------------------------------------

_llama_cpp_lock = threading.Lock()
_llama_cpp_ready = False
_silent_log_callback = None  # kept referenced: llama.cpp calls it for the life of the process


def llama_cpp_uses_openmp() -> bool:
    """Whether the installed llama.cpp was built with OpenMP. One libgomp then serves every engine
    thread of the process; once more of them have an OpenMP team than there are cores, it stops
    spinning at llama.cpp's barriers and decoding slows (benchmarks/engine_threads.py)."""
    import llama_cpp

    return "OPENMP = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


def _init_llama_cpp() -> None:
    """Load the library, silence its logs, init the backend: once per process."""
    global _llama_cpp_ready, _silent_log_callback
    with _llama_cpp_lock:
        if _llama_cpp_ready:
            return
        import llama_cpp

        def _silent(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            return None

        _silent_log_callback = llama_cpp.llama_log_callback(_silent)  # a ctypes callback kept alive as long as the library
        llama_cpp.llama_log_set(_silent_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        if llama_cpp_uses_openmp():
            log.warning(
                "llama.cpp here was built with OpenMP: once a second engine (another model, or "
                "sentence-transformers) has run in this process, decoding slows to about 0.7x; "
                "reinstall it without: CMAKE_ARGS=-DGGML_OPENMP=OFF pip install --no-cache-dir "
                "--force-reinstall --no-deps llama-cpp-python (scripts/install.sh does)"
            )
        _llama_cpp_ready = True


# -- per-request state --------------------------------------------------------------------------


@dataclass(eq=False)
class _Stream:
    """One request as the loop sees it (created on the trio thread, then owned by the loop)."""

    request_id: str
    sampling: SamplingParams
    prompt_tokens: npt.NDArray[np.int32]
    mailbox: ChunkMailbox
    trio_token: trio.lowlevel.TrioToken
    background: bool = False  # its steps may be cut short for an interactive arrival
    grammar: CompiledGrammar | None = None  # its output constraint; the Sampler gets a matcher of it
    seq: Sequence = field(init=False)
    sampler: Sampler | None = None  # made on the loop thread when the submit arrives
    decoder: Utf8StreamDecoder = field(default_factory=Utf8StreamDecoder)
    stop: StopStringMatcher = field(init=False)
    unsent_token_ids: list[int] = field(default_factory=list)
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)  # aligned with unsent_token_ids when asked for
    completion_tokens: int = 0
    finished: bool = False  # loop side: the final chunk was produced
    delivered_final: bool = False  # trio side: the final chunk reached the mailbox

    def __post_init__(self) -> None:
        self.stop = StopStringMatcher(self.sampling.stop)
        self.seq = Sequence(
            prompt=self.prompt_tokens, max_tokens=self.sampling.max_tokens, payload=self, background=self.background, ignore_eos=self.sampling.ignore_eos
        )

    def chunk(self, text: str, finish_reason: FinishReason | None = None, error: str | None = None) -> GenerationChunk:
        ids, self.unsent_token_ids = tuple(self.unsent_token_ids), []
        logprobs, self.unsent_logprobs = tuple(self.unsent_logprobs), []
        return GenerationChunk(
            text=text,
            token_ids=ids,
            finish_reason=finish_reason,
            prompt_tokens=len(self.prompt_tokens),
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=self.seq.n_cached,
            error=error,
            logprobs=logprobs,
        )


def _template_tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    from .tool_formats import template_tools

    return template_tools(tools)


def _parsed(parser: ToolCallParser, chunk: GenerationChunk) -> GenerationChunk:
    """A chunk of raw output as content, reasoning and tool calls (the parser holds back what may
    still become a marker or a call until it knows)."""
    delta = parser.feed(chunk.text) if chunk.text else None
    content, reasoning, calls = (delta.content, delta.reasoning, delta.tool_calls) if delta is not None else ("", "", ())
    reason = chunk.finish_reason
    if reason is not None:
        tail = parser.finish()
        content, reasoning, calls = content + tail.content, reasoning + tail.reasoning, calls + tail.tool_calls
        if reason == "stop" and parser.called:
            reason = "tool_calls"
    return msgspec.structs.replace(chunk, text=content, reasoning=reasoning, tool_calls=calls, finish_reason=reason)


def _deliver_on_trio(items: list[tuple[_Stream, GenerationChunk]]) -> None:
    """Runs on the trio thread: put a step's chunks into their mailboxes, close finished ones.
    (A consumer that left drops what it is handed; its cancel is on the way to the loop.)"""
    for stream, chunk in items:
        stream.mailbox.put(chunk)
        if chunk.finish_reason is not None:
            stream.delivered_final = True
            stream.mailbox.close()


_Command = tuple[Literal["submit", "cancel"], _Stream]


def _compute_masks(matchers: list[TokenMatcher]) -> None:
    for matcher in matchers:
        matcher.compute_mask()


# Special tokens that the output parser reads (tool_formats): rendered as text in the output.
_MARKER_TEXTS = frozenset({"<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<think>", "</think>"})


class _Model:
    """The llama.cpp objects of a loaded engine (touched only under the engine's lifecycle)."""

    def __init__(self, spec: LlamaCppSpec):
        import llama_cpp

        self.lib = llama_cpp
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = spec.n_gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(spec.model_path.encode(), mparams)
        if not self.model:
            raise EngineError(f"llama.cpp could not load the model file {spec.model_path!r}")
        # ctypes objects of an untyped library; None once freed.
        self.ctx: Any = None
        self.batch: Any = None
        try:
            self.vocab = llama_cpp.llama_model_get_vocab(self.model)
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            threads = spec.threads or os.cpu_count() or 1
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = spec.n_ctx * spec.parallel
            self.n_batch = max(spec.n_batch, spec.parallel)  # a step always fits one token per slot
            cparams.n_batch = self.n_batch
            cparams.n_ubatch = self.n_batch
            cparams.n_seq_max = spec.parallel
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.kv_unified = True  # one cell pool: shared prefixes share cells, seq_cp is cheap
            cparams.no_perf = True
            from .gpu_fit import KV_CACHE_TYPES

            cparams.type_k = KV_CACHE_TYPES[spec.type_k][0]
            cparams.type_v = KV_CACHE_TYPES[spec.type_v][0]
            if spec.flash_attn is not None:
                cparams.flash_attn_type = (
                    llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if spec.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
                )
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise EngineError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens for {spec.model_path!r}")
            self.memory = llama_cpp.llama_get_memory(self.ctx)
            # Set abort_flag[0] to cut the running llama_decode short: llama.cpp checks it (through a
            # compiled callback) between graph nodes and rolls the step's cells back.
            from cython_ops import flag_callback_address

            self.abort_flag = np.zeros(1, dtype=np.int32)
            self._abort_callback = llama_cpp.ggml_abort_callback(flag_callback_address())
            llama_cpp.llama_set_abort_callback(self.ctx, self._abort_callback, self.abort_flag.ctypes.data)
            self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            # numpy views over the batch arrays: prefill chunks are filled with slice copies.
            self.batch_token = np.ctypeslib.as_array(self.batch.token, shape=(self.n_batch,))
            self.batch_pos = np.ctypeslib.as_array(self.batch.pos, shape=(self.n_batch,))
            self.batch_logits = np.ctypeslib.as_array(self.batch.logits, shape=(self.n_batch,))
            np.ctypeslib.as_array(self.batch.n_seq_id, shape=(self.n_batch,))[:] = 1
            self.batch_seq_ids = [self.batch.seq_id[i] for i in range(self.n_batch)]
            self.bos = llama_cpp.llama_vocab_bos(self.vocab)
            self.eos = llama_cpp.llama_vocab_eos(self.vocab)
            self.eog_tokens = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
            self.eog_set = frozenset(self.eog_tokens)
            # What one KV cell costs a decode step that attends it (K and V in every layer, at the
            # cache types), against the weights every step reads: sizes the idle-cache budget.
            arch = self.meta("general.architecture") or ""
            n_head = max(1, llama_cpp.llama_model_n_head(self.model))
            head_dim = int(self.meta(f"{arch}.attention.key_length") or llama_cpp.llama_model_n_embd(self.model) // n_head)
            kv_element_bytes = KV_CACHE_TYPES[spec.type_k][1] + KV_CACHE_TYPES[spec.type_v][1]
            self.kv_bytes_per_cell = int(llama_cpp.llama_model_n_layer(self.model) * llama_cpp.llama_model_n_head_kv(self.model) * head_dim * kv_element_bytes)
            self.weights_bytes = int(llama_cpp.llama_model_size(self.model))
            template = llama_cpp.llama_model_chat_template(self.model, None)
            self.gguf_chat_template = template.decode("utf-8") if template else None
            # Special tokens by text, by llguidance's rule (control tokens, and user-defined ones that
            # look like "<...>"): a tool-call grammar must name <tool_call> or [TOOL_CALLS] as the
            # token the model emits, not as text.
            self.special_token_ids = {}
            for t in range(self.n_vocab):
                attr = llama_cpp.llama_vocab_get_attr(self.vocab, t)
                text = self.token_text(t)
                if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL or (attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and text.startswith("<") and text.endswith(">")):
                    self.special_token_ids[text] = t
            self.special_tokens = frozenset(self.special_token_ids)
            # The special tokens that mark tool calls and reasoning render as their text (others as
            # nothing): the output parser reads them.
            self.marker_tokens = {t: text.encode() for text, t in self.special_token_ids.items() if text in _MARKER_TEXTS}
            self.grammars: GrammarCompiler | None = None
            self._pieces: dict[int, bytes] = {}
        except BaseException:
            self.free()
            raise

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = self.lib.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the output (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        marker = self.marker_tokens.get(token)
        if marker is not None:
            self._pieces[token] = marker
            return marker
        # A buffer per miss (not a shared one): detokenize() runs on other threads than the loop.
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        piece = buf.raw[:n]
        self._pieces[token] = piece  # one dict store: atomic under the GIL
        return piece

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> npt.NDArray[np.int32]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self.lib.llama_token * capacity)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            buf = (self.lib.llama_token * capacity)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
            if n < 0:
                raise InvalidRequestError(f"llama.cpp could not tokenize a text of {len(data)} bytes", param="prompt")
        return np.array(buf[:n], dtype=np.int32)

    def free(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None


def _token_logprob(model: _Model, sampler: Sampler, token: int) -> TokenLogprob:
    def text_and_bytes(token_id: int) -> tuple[str, tuple[int, ...]]:
        piece = model.piece(token_id)
        return piece.decode("utf-8", errors="replace"), tuple(piece)

    logprob, top = sampler.logprobs_of(token)
    return TokenLogprob(*text_and_bytes(token), logprob, tuple(TopLogprob(*text_and_bytes(i), lp) for i, lp in top))


class LlamaCppEngine:
    """An `LLMEngine` running a GGUF model in-process with continuous batching."""

    kind: ModelKind = "llm"  # the protocol's type: a mutable attribute must match it exactly
    backend = "llamacpp"
    local_tokenizer = True

    def __init__(self, spec: LlamaCppSpec, gate: StepGate | None = None):
        if spec.parallel < 1 or spec.n_ctx < 1 or spec.n_batch < 1:
            raise ValueError("parallel, n_ctx and n_batch must be >= 1")
        self.spec = spec
        self.name = spec.name
        self.n_ctx = spec.n_ctx
        self.parallel = spec.parallel
        self._gate: StepGate = gate or NullGate()
        self._state = EngineState.STOPPED
        self._detail = ""
        self._model: _Model | None = None
        self._chat_formatter: object | None = None
        self._grammar_lock = threading.Lock()
        self._mask_pool: ThreadPoolExecutor | None = None  # computes grammar masks while llama.cpp decodes
        self._lifecycle = threading.Lock()  # load/unload, on worker threads
        self._cond = threading.Condition(threading.Lock())  # guards the fields below
        self._inbox: list[_Command] = []
        self._accepting = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._scheduler: BatchScheduler | None = None
        # Counters: written by the loop thread, read anywhere (single ints: no lock needed).
        self._requests_total = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._cached_prompt_tokens_total = 0
        self._decode_steps = 0
        self._preempted_steps = 0
        self._preemptible_step = False  # a step of background decode tokens only is running (guarded by _cond)
        self._slots_busy = 0
        self._waiting = 0
        self._idle_slots = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the model and start the decode loop (on worker threads). Idempotent."""
        await trio.to_thread.run_sync(self._load_blocking)

    def _load_blocking(self) -> None:
        with self._lifecycle:
            if self._state is EngineState.READY:
                return
            if self._model is not None:  # an errored engine: start from scratch
                self._unload_locked()
            self._state = EngineState.LOADING
            self._detail = ""
            try:
                _init_llama_cpp()
                model = _Model(self.spec)
            except Exception as exc:
                self._state = EngineState.ERROR
                self._detail = f"load failed: {exc}"
                if isinstance(exc, EngineError):
                    raise
                raise EngineError(f"could not load {self.name!r}: {exc}") from exc
            self._model = model
            self._chat_formatter = self._make_chat_formatter(model)
            self._scheduler = BatchScheduler(
                self.parallel,
                model.n_batch,
                self.spec.prefix_block_size,
                prefix_reuse=self.spec.prefix_reuse,
                idle_cache_tokens=self._idle_cache_budget(model),
                eog_tokens=model.eog_set,
            )
            with self._cond:
                self._inbox = []
                self._stopping = False
                self._accepting = True
            self._thread = threading.Thread(target=self._loop_main, name=f"llamacpp-{self.name}", daemon=True)
            self._thread.start()
            self._state = EngineState.READY

    async def unload(self) -> None:
        """Stop the loop, fail in-flight requests with an error chunk, free everything. Idempotent."""
        await trio.to_thread.run_sync(self._unload_blocking)

    def _unload_blocking(self) -> None:
        with self._lifecycle:
            self._unload_locked()

    def _unload_locked(self) -> None:
        if self._model is None and self._thread is None:
            self._state = EngineState.STOPPED
            return
        if self._state is EngineState.READY:
            self._state = EngineState.DRAINING
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._mask_pool is not None:
            self._mask_pool.shutdown()
            self._mask_pool = None
        # The loop failed its own streams on the way out; these were never seen by it.
        with self._cond:
            leftover, self._inbox = self._inbox, []
        self._fail_streams([s for kind, s in leftover if kind == "submit"], "the engine was unloaded")
        if self._model is not None:
            self._model.free()
            self._model = None
        self._scheduler = None
        self._slots_busy = self._waiting = self._idle_slots = 0
        self._state = EngineState.STOPPED
        self._detail = ""

    def health(self) -> EngineHealth:
        return EngineHealth(state=self._state, ok=self._state is EngineState.READY, detail=self._detail)

    def stats(self) -> EngineStats:
        return EngineStats(
            slots_total=self.parallel,
            slots_busy=self._slots_busy,
            requests_total=self._requests_total,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
            cached_prompt_tokens_total=self._cached_prompt_tokens_total,
            extra={
                "waiting": float(self._waiting),
                "idle_cached_slots": float(self._idle_slots),
                "decode_steps": float(self._decode_steps),
                "preempted_steps": float(self._preempted_steps),
            },
        )

    # -- prompts -------------------------------------------------------------------------------

    def _require_model(self) -> _Model:
        model = self._model
        if model is None or self._state is not EngineState.READY:
            detail = f": {self._detail}" if self._detail else ""
            raise EngineError(f"engine {self.name!r} is {self._state.value}{detail}")
        return model

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text` as a completion prompt would get them (BOS when the model wants one)."""
        ids: list[int] = self._require_model().tokenize(text, add_special, True).tolist()
        return ids

    def detokenize(self, token_ids: SequenceOf[int]) -> str:
        """The text of generated token ids, as the stream emits it (special tokens render as nothing)."""
        return b"".join(self.token_pieces(token_ids)).decode("utf-8", errors="replace")

    def token_pieces(self, token_ids: SequenceOf[int]) -> list[bytes]:
        model = self._require_model()
        return [model.piece(t) for t in token_ids]

    @property
    def vocab_size(self) -> int:
        return int(self._require_model().n_vocab)

    def has_chat_template(self) -> bool:
        if self.spec.chat_format:
            return True
        model = self._model
        return model is not None and model.gguf_chat_template is not None

    def _idle_cache_budget(self, model: _Model) -> int:
        """Tokens that idle slots other than the newest may keep. Their cells cost every later decode
        step reading them (masked, but read) on top of the weights: by default they may add at most a
        quarter of the weights' bytes (SmolLM2-135M: ~1,000 cells; a 7B model: ~8,000)."""
        if self.spec.idle_cache_tokens is not None:
            return self.spec.idle_cache_tokens
        return min(self.n_ctx, int(model.weights_bytes // 4 // max(1, model.kv_bytes_per_cell)))

    def _make_chat_formatter(self, model: _Model) -> object | None:
        template = self.spec.chat_format or model.gguf_chat_template
        if not template:
            return None
        # llama-cpp-python's own renderer: the same Jinja environment, globals and filters.
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        return Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_text(model.eos),
            bos_token=model.token_text(model.bos),
            add_generation_prompt=True,
        )

    def _template_text(self) -> str | None:
        model = self._model
        return self.spec.chat_format or (model.gguf_chat_template if model is not None else None)

    def tool_format(self) -> ToolFormat:
        """How this model writes tool calls: the configured format, else the chat template's family."""
        from .tool_formats import detect_format, template_knows_tools

        if self.spec.tool_format:
            return self.spec.tool_format  # type: ignore[return-value]  # checked by the config's Literal
        template = self._template_text()
        # A template that renders no tools gets the generic prompt, so the generic output shape.
        return detect_format(template) if template_knows_tools(template) else "generic"

    def _reasoning_markers(self) -> tuple[str, str] | None:
        mode = self.spec.reasoning
        if mode == "off" or (mode == "auto" and "<think>" not in (self._template_text() or "")):
            return None
        return ("<think>", "</think>")

    def render_chat(
        self, messages: tuple[ChatMessage, ...] | list[ChatMessage], tools: tuple[ToolSpec, ...] = (), tool_choice: str = "auto", parallel_tool_calls: bool = True
    ) -> str:
        """The prompt text of a conversation by the model's Jinja template, with `tools` rendered
        the template's own way, or (a template that knows no tools) described in a system prompt."""
        formatter = self._chat_formatter
        if formatter is None:
            raise ChatTemplateMissingError(
                f"model {self.name!r} has no chat template (no tokenizer.chat_template in its GGUF) "
                "and no chat_format is configured: use a completion request, or set chat_format for this model"
            )
        import jinja2

        offered = tools if tool_choice != "none" else ()
        dicts: list[dict[str, Any]]
        native = False
        if offered or any(m.tool_calls or m.role == "tool" for m in messages):
            from .tool_formats import template_knows_tools, template_messages

            native = bool(offered) and template_knows_tools(self._template_text())
            dicts = template_messages(messages, offered, tool_choice, parallel_tool_calls, self.tool_format(), native)
        else:
            dicts = [{"role": m.role, "content": m.content or ""} for m in messages]
        try:
            result = formatter(messages=dicts, tools=_template_tools(offered) if native else None)  # type: ignore[operator]
        except (jinja2.TemplateError, ValueError, TypeError) as exc:  # the template's raise_exception: roles out of order...
            raise InvalidRequestError(f"the chat template of {self.name!r} refused the messages: {exc}", param="messages") from exc
        prompt: str = result.prompt
        return prompt

    def _prompt_tokens(self, model: _Model, request: GenerationRequest) -> npt.NDArray[np.int32]:
        given = sum(x is not None for x in (request.prompt, request.messages, request.prompt_tokens))
        if given != 1:
            raise InvalidRequestError("a generation request needs exactly one of prompt, messages, prompt_tokens", param="prompt")
        if request.prompt_tokens is not None:
            # Checked as Python ints: an id beyond int32 must be refused, not overflow the conversion.
            ids = request.prompt_tokens
            if ids and not all(isinstance(t, int) and 0 <= t < model.n_vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be in [0, {model.n_vocab})", param="prompt")
            tokens = np.asarray(ids, dtype=np.int32)
        elif request.messages is not None:
            text = self.render_chat(request.messages, request.tools, request.tool_choice, request.parallel_tool_calls)
            bos_text = model.token_text(model.bos)
            # Templates that write the BOS themselves must not get a second one.
            add_special = not (bos_text and text.startswith(bos_text))
            tokens = model.tokenize(text, add_special, True)
        else:
            assert request.prompt is not None
            tokens = model.tokenize(request.prompt, True, True)
        if len(tokens) == 0:
            if model.bos < 0:
                raise InvalidRequestError("the prompt is empty and the model has no BOS token to start from", param="prompt")
            tokens = np.array([model.bos], dtype=np.int32)
        return tokens

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """Validate and tokenize before the request is queued: the same request with prompt_tokens
        and its sampling values in the form the decode loop passes to C (`check_sampling`).

        The one place a request is checked: `generate` trusts what this returns. Raises
        InvalidRequestError (ContextOverflowError, ChatTemplateMissingError, InvalidSamplingError)
        for a client's mistake, EngineError (a 503) if the engine is not serving. Blocking.
        """
        from .llamacpp_sampling import check_sampling

        model = self._require_model()
        sampling = check_sampling(request.sampling, model.n_vocab)
        tools = request.tools if request.tool_choice != "none" else ()
        if tools and request.messages is None:
            raise InvalidRequestError("tools need a chat request (messages)", param="tools")
        tokens = self._prompt_tokens(model, request)
        constraint = self._output_constraint(request, tools, self._starts_in_reasoning(tokens))
        if constraint is not None:
            self._grammar_compiler(model).compile(constraint)  # a 400 now, and cached for generate()
        if len(tokens) + sampling.max_tokens > self.n_ctx:
            raise ContextOverflowError(len(tokens), sampling.max_tokens, self.n_ctx, param="messages" if request.messages is not None else "prompt")
        return msgspec.structs.replace(
            request, sampling=sampling, prompt=None, messages=None, prompt_tokens=tuple(tokens.tolist()), constraint=constraint, tools=tools
        )

    def _starts_in_reasoning(self, prompt_tokens: Any) -> bool:
        """Whether the prompt ends inside a reasoning block the template opened (the output then
        starts with reasoning)."""
        markers = self._reasoning_markers()
        return markers is not None and self.detokenize(list(prompt_tokens[-4:])).rstrip().endswith(markers[0])

    def _output_constraint(self, request: GenerationRequest, tools: tuple[ToolSpec, ...], starts_in_reasoning: bool = False) -> OutputConstraint | None:
        """What the output must match: a forced tool call (tool_choice required or a named
        function), the request's own constraint (response_format, grammar...), or with tool_choice
        auto a grammar that leaves text free and makes any call valid."""
        if not tools:
            return request.constraint
        if request.constraint is not None and request.tool_choice == "auto":
            return request.constraint
        from .tool_formats import call_constraint

        model = self._require_model()
        return call_constraint(
            self.tool_format(), tools, request.tool_choice, request.parallel_tool_calls, model.special_tokens, model.special_token_ids,
            reasoning=self._reasoning_markers(), starts_in_reasoning=starts_in_reasoning,
        )

    def _grammar_compiler(self, model: _Model) -> GrammarCompiler:
        """The model's grammar compiler, made at the first constrained request (~0.2 s)."""
        compiler = model.grammars
        if compiler is None:
            with self._grammar_lock:
                compiler = model.grammars
                if compiler is None:
                    from .grammar import GrammarCompiler

                    compiler = model.grammars = GrammarCompiler.for_llama_vocab(model.vocab, model.n_vocab, model.eog_tokens)
        return compiler

    # -- generation ----------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the generation of a request returned by `prepare`; closing the generator or
        cancelling its consumer frees the slot.

        Raises (at the first iteration, before anything is queued) EngineError if not serving,
        ValueError for a request that did not go through `prepare` (a caller's bug).
        """
        if request.prompt_tokens is None or request.prompt is not None or request.messages is not None:
            raise ValueError(f"generate() takes a request returned by prepare(); {request.request_id!r} was not prepared")
        sampling = request.sampling
        model = self._require_model()
        # A cache hit: prepare() compiled it (a miss, after 64 other grammars, compiles here).
        grammar = self._grammar_compiler(model).compile(request.constraint) if request.constraint is not None else None
        parser = self._output_parser(request)
        mailbox = ChunkMailbox()
        stream = _Stream(
            request_id=request.request_id,
            sampling=sampling,
            prompt_tokens=np.asarray(request.prompt_tokens, dtype=np.int32),
            mailbox=mailbox,
            trio_token=trio.lowlevel.current_trio_token(),
            background=request.background,
            grammar=grammar,
        )
        self._post(("submit", stream))
        try:
            while (chunk := await mailbox.get()) is not None:
                yield chunk if parser is None else _parsed(parser, chunk)
                if chunk.finish_reason is not None:
                    return
            if not stream.delivered_final:
                raise EngineError(f"engine {self.name!r} closed the stream without a final chunk")
        finally:
            mailbox.leave()
            if not stream.delivered_final:
                self._post(("cancel", stream), quiet=True)

    def _output_parser(self, request: GenerationRequest) -> ToolCallParser | None:
        """What splits the output into content, reasoning and tool calls (None: all of it is content)."""
        markers = self._reasoning_markers()
        if not request.tools and markers is None:
            return None
        from .tool_formats import ToolCallParser

        assert request.prompt_tokens is not None
        return ToolCallParser(self.tool_format(), bool(request.tools), markers, starts_in_reasoning=self._starts_in_reasoning(request.prompt_tokens))

    def _post(self, command: _Command, quiet: bool = False) -> None:
        with self._cond:
            if command[0] == "submit" and not self._accepting:
                raise EngineError(f"engine {self.name!r} is not serving ({self._state.value}{': ' + self._detail if self._detail else ''})")
            if not self._accepting and quiet:
                return
            self._inbox.append(command)
            if command[0] == "submit" and not command[1].background and self._preemptible_step and self._model is not None:
                self._model.abort_flag[0] = 1  # an interactive request: cut the background step short
            self._cond.notify()

    # -- the decode loop (its own thread) ------------------------------------------------------------

    def _loop_main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the loop must never die silently
            log.exception("llama.cpp decode loop of %r crashed", self.name)
            self._crash(f"decode loop crashed: {type(exc).__name__}: {exc}")
            return
        # A clean stop (unload): fail whatever is still in flight.
        self._fail_in_flight("the engine was unloaded while the request was in flight")

    def _crash(self, reason: str) -> None:
        with self._cond:
            self._accepting = False
        self._state = EngineState.ERROR
        self._detail = reason
        self._fail_in_flight(reason)

    def _fail_in_flight(self, reason: str) -> None:
        with self._cond:
            leftover, self._inbox = self._inbox, []
        streams = [s for kind, s in leftover if kind == "submit"]
        if self._scheduler is not None:
            streams += [seq.payload for seq in self._scheduler.abort_all()]  # type: ignore[misc]
        self._fail_streams(streams, reason)
        self._slots_busy = self._waiting = self._idle_slots = 0

    def _fail_streams(self, streams: list[_Stream], reason: str) -> None:
        outbox = []
        for stream in streams:
            if stream.finished:
                continue
            stream.finished = True
            self._close_sampler(stream)
            outbox.append((stream, stream.chunk("", "error", error=reason)))
        self._deliver(outbox)

    def _loop(self) -> None:
        model = self._model
        scheduler = self._scheduler
        assert model is not None and scheduler is not None
        while True:
            commands = self._next_commands(scheduler)
            if commands is None:
                return
            self._apply_commands(model, scheduler, commands)
            if scheduler.has_work():
                self._step(model, scheduler)
            else:
                self._publish(scheduler)

    def _next_commands(self, scheduler: BatchScheduler) -> list[_Command] | None:
        """The commands that came in; waits for one while there is nothing to do. None: stop."""
        with self._cond:
            while not self._inbox and not scheduler.has_work() and not self._stopping:
                self._cond.wait()  # idle: sleep until a submit, cancel or stop
            if self._stopping:
                return None
            commands, self._inbox = self._inbox, []
        return commands

    def _step(self, model: _Model, scheduler: BatchScheduler) -> None:
        """One step: schedule → KV ops → fill batch → decode → sample → update → deliver."""
        plan = scheduler.schedule()
        self._count_admitted(plan)
        self._apply_kv_ops(model, plan.kv_ops)
        self._publish(scheduler)
        if not plan.items:
            return
        n_tokens, logit_rows = self._fill_batch(model, plan)
        if not self._decode_with_masks(model, plan, n_tokens):  # preempted: llama.cpp dropped the step's cells; the tokens go again
            scheduler.unschedule(plan)
            self._preempted_steps += 1
            return
        self._decode_steps += 1
        outbox: list[tuple[_Stream, GenerationChunk]] = []
        sampled = self._sample(model, scheduler, plan, logit_rows, outbox)
        self._apply_kv_ops(model, scheduler.update_from_output(plan, sampled))
        self._emit(model, scheduler, plan, sampled, outbox)
        self._publish(scheduler)  # before delivering: a caller that saw its final chunk sees its slot freed
        self._deliver(outbox)

    def _fill_batch(self, model: _Model, plan: StepPlan) -> tuple[int, list[int]]:
        """Write the plan's items into the one reusable batch: its number of tokens, and the batch
        rows that get logits (aligned with `plan.sampling`)."""
        n = 0
        logit_rows: list[int] = []
        token_view, pos_view, logits_view, seq_ids = model.batch_token, model.batch_pos, model.batch_logits, model.batch_seq_ids
        for item in plan.items:
            k = len(item.tokens)
            slot = item.seq.slot
            token_view[n : n + k] = item.tokens
            pos_view[n : n + k] = np.arange(item.start_pos, item.start_pos + k, dtype=np.int32)
            logits_view[n : n + k] = 0
            for i in range(n, n + k):
                seq_ids[i][0] = slot
            if item.wants_logits:
                logits_view[n + k - 1] = 1
                logit_rows.append(n + k - 1)
            n += k
        model.batch.n_tokens = n
        return n, logit_rows

    def _decode_with_masks(self, model: _Model, plan: StepPlan, n_tokens: int) -> bool:
        """Decode, computing the grammar masks of the step's constrained sequences at the same time
        on the mask thread (llguidance and ggml both drop the GIL): the masks cost the step
        nothing while they take less time than the decode."""
        matchers = [m for m in (seq.payload.sampler.matcher for seq in plan.sampling if seq.payload.sampler is not None) if m is not None]  # type: ignore[attr-defined]
        if not matchers:
            return self._decode_step(model, plan, n_tokens)
        if self._mask_pool is None:
            self._mask_pool = ThreadPoolExecutor(1, thread_name_prefix=f"grammar-{self.name}")
        masks = self._mask_pool.submit(_compute_masks, matchers)
        try:
            return self._decode_step(model, plan, n_tokens)
        finally:
            masks.result()

    def _decode_step(self, model: _Model, plan: StepPlan, n_tokens: int) -> bool:
        """Decode the filled batch; an interactive submit may abort it when the scheduler marked it
        preemptible (`_post` reads the flag). False when it was cut short."""
        with self._cond:
            model.abort_flag[0] = 0
            self._preemptible_step = plan.preemptible
        try:
            return self._decode_batch(model, n_tokens)
        finally:
            with self._cond:
                self._preemptible_step = False

    def _decode_batch(self, model: _Model, n_tokens: int) -> bool:
        """One llama_decode of the filled batch, holding the step gate only for its duration.
        False when the step was aborted (abort_flag) before it finished. Raising here (a failed
        llama_decode) is the one failure that stops the engine: the cells of every sequence are
        then in doubt."""
        if model.abort_flag[0]:
            return False
        self._gate.acquire()
        try:
            if model.abort_flag[0]:  # an interactive request came while this step waited for the cores
                return False
            rc = model.lib.llama_decode(model.ctx, model.batch)
        finally:
            self._gate.release()
        if rc == 2:
            return False
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc} on a batch of {n_tokens} tokens")
        return True

    def _sample(
        self, model: _Model, scheduler: BatchScheduler, plan: StepPlan, logit_rows: list[int], outbox: list[tuple[_Stream, GenerationChunk]]
    ) -> list[int]:
        """A token for each sequence of `plan.sampling` (-1 for one whose sampling failed: that
        sequence alone ends with an error)."""
        sampled: list[int] = []
        for seq, row in zip(plan.sampling, logit_rows):
            stream: _Stream = seq.payload  # type: ignore[assignment]
            try:
                sampled.append(stream.sampler.sample(model.ctx, row))  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the batch
                self._fail_one(model, scheduler, stream, exc, outbox)
                sampled.append(-1)
        return sampled

    def _emit(
        self, model: _Model, scheduler: BatchScheduler, plan: StepPlan, sampled: list[int], outbox: list[tuple[_Stream, GenerationChunk]]
    ) -> None:
        """Turn each sampled token into its stream's text and chunk (after `update_from_output`)."""
        for seq, token in zip(plan.sampling, sampled):
            if token < 0:
                continue
            stream: _Stream = seq.payload  # type: ignore[assignment]
            try:
                self._on_token(model, scheduler, stream, token, outbox)
            except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the batch
                self._fail_one(model, scheduler, stream, exc, outbox)

    def _fail_one(self, model: _Model, scheduler: BatchScheduler, stream: _Stream, exc: Exception, outbox: list[tuple[_Stream, GenerationChunk]]) -> None:
        """End one stream with an error chunk and free its slot; the others go on."""
        log.exception("llama.cpp engine %r: request %r failed; the other sequences go on", self.name, stream.request_id)
        if stream.finished:
            return
        stream.finished = True
        self._apply_kv_ops(model, scheduler.finish(stream.seq))  # nothing if the stop rule finished it already
        self._close_sampler(stream)
        outbox.append((stream, stream.chunk("", "error", error=f"generation failed: {type(exc).__name__}: {exc}")))

    def _publish(self, scheduler: BatchScheduler) -> None:
        self._slots_busy = scheduler.slots_busy
        self._waiting = len(scheduler.waiting)
        self._idle_slots = len(scheduler.idle)

    def _apply_commands(self, model: _Model, scheduler: BatchScheduler, commands: list[_Command]) -> None:
        outbox: list[tuple[_Stream, GenerationChunk]] = []
        for kind, stream in commands:
            if kind == "submit":
                self._requests_total += 1
                self._start_stream(model, scheduler, stream, outbox)
            elif not stream.finished:  # cancel
                stream.finished = True
                self._apply_kv_ops(model, scheduler.finish(stream.seq))
                self._close_sampler(stream)
        self._deliver(outbox)

    def _apply_kv_ops(self, model: _Model, ops: list[KvOp]) -> None:
        lib = model.lib
        for op in ops:
            if isinstance(op, KvTrim):
                lib.llama_memory_seq_rm(model.memory, op.slot, op.from_pos, -1)
            elif isinstance(op, KvCopy):
                lib.llama_memory_seq_cp(model.memory, op.src_slot, op.dst_slot, 0, op.n_tokens)

    def _start_stream(self, model: _Model, scheduler: BatchScheduler, stream: _Stream, outbox: list[tuple[_Stream, GenerationChunk]]) -> None:
        """Make the stream's sampler and queue its sequence; a request that cannot start fails
        alone, with an error chunk in `outbox`, before it takes a slot."""
        from .llamacpp_sampling import Sampler

        try:
            matcher = stream.grammar.matcher() if stream.grammar is not None else None
            stream.sampler = Sampler(stream.sampling, model.n_vocab, model.eog_tokens, matcher)
            scheduler.add(stream.seq)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the batch
            log.exception("llama.cpp engine %r: request %r could not start", self.name, stream.request_id)
            stream.finished = True
            self._close_sampler(stream)
            outbox.append((stream, stream.chunk("", "error", error=f"generation failed: {type(exc).__name__}: {exc}")))

    def _count_admitted(self, plan: StepPlan) -> None:
        for seq in plan.admitted:
            self._prompt_tokens_total += seq.prompt_len
            self._cached_prompt_tokens_total += seq.n_cached

    def _on_token(
        self, model: _Model, scheduler: BatchScheduler, stream: _Stream, token: int, outbox: list[tuple[_Stream, GenerationChunk]]
    ) -> None:
        """A token the scheduler has recorded (or that ended the sequence: `seq.finish_reason`)."""
        reason = stream.seq.finish_reason
        if reason == "stop":  # an end-of-generation token: not part of the output
            self._finish(stream, "stop", outbox)
            return
        stream.completion_tokens += 1
        self._generation_tokens_total += 1
        stream.unsent_token_ids.append(token)
        if stream.sampling.logprobs is not None:
            stream.unsent_logprobs.append(_token_logprob(model, stream.sampler, token))  # type: ignore[arg-type]
        text = stream.decoder.feed(model.piece(token))
        emit, hit_stop = stream.stop.feed(text) if text else ("", False)
        matcher = stream.sampler.matcher if stream.sampler is not None else None
        if matcher is not None and not hit_stop and matcher.is_finished():
            # The grammar is complete (it allows nothing but the end): stop now, not a step later.
            hit_stop = True
            emit += stream.stop.flush()
        if hit_stop:  # a stop string or a complete grammar: the loop's own stop rules (the scheduler never sees text)
            if reason is None:
                self._apply_kv_ops(model, scheduler.finish(stream.seq))
            self._finish(stream, "stop", outbox, emit, flush=False)
        elif reason == "length":
            self._finish(stream, "length", outbox, emit)
        elif emit:
            outbox.append((stream, stream.chunk(emit)))

    def _finish(self, stream: _Stream, reason: FinishReason, outbox: list[tuple[_Stream, GenerationChunk]], text: str = "", flush: bool = True) -> None:
        """The final chunk of a stream whose sequence the scheduler has finished."""
        if flush:  # the stream ended for another reason: release what was held back
            tail, hit_stop = stream.stop.feed(stream.decoder.flush())
            text += tail
            if hit_stop:
                reason = "stop"
            else:
                text += stream.stop.flush()
        stream.finished = True
        outbox.append((stream, stream.chunk(text, reason)))
        self._close_sampler(stream)

    @staticmethod
    def _close_sampler(stream: _Stream) -> None:
        stream.sampler = None  # its scratch row (one float per vocabulary token) goes now

    def _deliver(self, outbox: list[tuple[_Stream, GenerationChunk]]) -> None:
        """Hand chunks to trio without waiting (one wake-up per trio run per step)."""
        if not outbox:
            return
        by_run: dict[trio.lowlevel.TrioToken, list[tuple[_Stream, GenerationChunk]]] = {}
        for stream, chunk in outbox:
            stream.seq.answered = True  # its first output is out: background steps may resume
            by_run.setdefault(stream.trio_token, []).append((stream, chunk))
        for trio_token, items in by_run.items():
            try:
                trio_token.run_sync_soon(_deliver_on_trio, items)
            except trio.RunFinishedError:
                # Nobody is listening any more: stop decoding for them.
                for stream, _ in items:
                    if not stream.finished:
                        with self._cond:
                            self._inbox.append(("cancel", stream))
