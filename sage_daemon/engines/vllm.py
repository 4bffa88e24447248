"""VllmEngine: the daemon's manager of a vLLM OpenAI server child process (GPU hosts).

The child runs in its own process group on a port from SagePorts, with CUDA_VISIBLE_DEVICES
from the node selector's choice. Requests go to it through a RemoteOpenAIEngine (one SSE path
for every OpenAI-compatible server). A supervisor task in a nursery the engine owns watches the
child: when it dies, in-flight requests fail with EngineError, health turns `error` with the
exit code and the child's last output lines, and the child is restarted with exponential
backoff up to `max_restarts` in a row. unload(), the cancellation of the nursery the engine
was given, and (as a last resort) interpreter exit stop the whole process group: no orphans.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import msgspec
import trio

from sage_client.protocol import ModelKind
from sage_daemon.core.ports import SagePorts, is_port_free
from sage_daemon.engines.base import (
    EmbeddingResult,
    EngineError,
    EngineHealth,
    EngineState,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
)
from sage_daemon.engines.remote import RemoteOpenAIEngine, RemoteSpec

log = logging.getLogger("sage.engines.vllm")

OUTPUT_LINES_KEPT = 50  # the child's last output lines, for error messages
OUTPUT_LINES_SHOWN = 8


class VllmSpec(msgspec.Struct, frozen=True):
    """How to run one vLLM server child (the pool fills it from `[[models]]` and the node selector)."""

    name: str  # the model's name in this daemon
    model: str  # Hugging Face id or local path, as vLLM's --model takes it
    kind: ModelKind = "llm"
    served_model_name: str | None = None  # --served-model-name; None = name
    gpu_index: int | None = None  # CUDA_VISIBLE_DEVICES for the child; None = inherit the daemon's
    max_model_len: int = 4096
    max_num_seqs: int = 16
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    extra_args: list[str] = []  # appended to the vLLM command line (e.g. ["--enforce-eager"])
    command: list[str] | None = None  # replaces vllm_command(); "{port}" in an item becomes the port
    python: str | None = None  # interpreter for `-m vllm...`; None = the daemon's own
    port: int | None = None  # fixed port; None = SagePorts' recommended LLM port when free, else one in 8900-8999
    prefer_recommended_port: bool = True
    api_key: str | None = None  # passed as --api-key and used by the proxy
    env: dict[str, str] = {}  # extra environment for the child
    health_timeout_s: float = 900.0  # vLLM compiles and captures graphs: minutes on a cold start
    stop_timeout_s: float = 20.0  # SIGTERM → SIGKILL grace
    restart_backoff_initial_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    max_restarts: int = 5  # in a row (a child that served for stable_after_s resets the count)
    stable_after_s: float = 120.0


def vllm_command(spec: VllmSpec, port: int) -> list[str]:
    """The vLLM OpenAI server's command line: the one place it is built (checked against vLLM's flags by a test)."""
    command = [
        spec.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", spec.model,
        "--served-model-name", spec.served_model_name or spec.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--gpu-memory-utilization", str(spec.gpu_memory_utilization),
        "--dtype", spec.dtype,
    ]
    if spec.api_key:
        command += ["--api-key", spec.api_key]
    return command + list(spec.extra_args)


def child_command(spec: VllmSpec, port: int) -> list[str]:
    if spec.command is None:
        return vllm_command(spec, port)
    return [part.replace("{port}", str(port)) for part in spec.command]


def child_environment(spec: VllmSpec) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.env)
    if spec.gpu_index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(spec.gpu_index)
    env.setdefault("PYTHONUNBUFFERED", "1")  # so the last output lines are really the last
    return env


# -- last-resort cleanup: process groups still alive when the interpreter exits -------------------

_LIVE_GROUPS: set[int] = set()


def _kill_live_groups() -> None:
    for pgid in list(_LIVE_GROUPS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    _LIVE_GROUPS.clear()


atexit.register(_kill_live_groups)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the daemon dies (Linux), even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Child:
    """One incarnation of the server child: its process, port, output tail and proxy."""

    def __init__(self, process: trio.Process, port: int):
        self.process = process
        self.pgid = process.pid  # start_new_session: the child leads its own group
        self.port = port
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self.exited = trio.Event()
        self.exit_code: int | None = None
        self.started_at = time.monotonic()
        self.remote: RemoteOpenAIEngine | None = None
        self.stopping = False  # we are stopping it: its exit is not a crash

    def tail(self, lines: int = OUTPUT_LINES_SHOWN) -> str:
        kept = list(self.output)[-lines:]
        return " | ".join(kept) if kept else "(no output)"


class VllmEngine:
    """An LLMEngine or EmbeddingEngine served by a vLLM child process this engine manages.

    `nursery` is where the engine's own supervising task lives (the pool's nursery): cancelling
    it stops the child like unload() does.
    """

    backend = "vllm"
    local_tokenizer = False  # the child tokenizes

    def __init__(self, spec: VllmSpec, *, nursery: trio.Nursery, is_wsl2: bool = False):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.served_model_name = spec.served_model_name or spec.name
        self.n_ctx = spec.max_model_len
        self.parallel = spec.max_num_seqs
        self.dimensions = 0
        self.max_seq_length = spec.max_model_len
        # As the remote engine it serves through: token-array inputs go to vLLM as they are,
        # `dimensions` other than the native size is refused (vLLM takes it only for Matryoshka models).
        self.accepts_token_ids = True
        self.supports_dimensions = False
        self.is_wsl2 = is_wsl2
        self._parent_nursery = nursery
        self._scope: trio.CancelScope | None = None
        self._supervisor_done: trio.Event | None = None
        self._child: _Child | None = None
        self._state = EngineState.STOPPED
        self._detail = ""
        self._restarts_total = 0
        self._load_error: EngineError | None = None
        self._last_port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Start the child, wait for its /health and its model; then supervise it in the background."""
        if self._scope is not None and self._state is EngineState.READY:
            return
        if self._scope is not None:
            await self.unload()
        self._state, self._detail = EngineState.LOADING, "starting the vLLM server"
        self._load_error = None
        await self._parent_nursery.start(self._supervise)
        if self._load_error is not None:
            failure, self._load_error = self._load_error, None
            if self._supervisor_done is not None:
                await self._supervisor_done.wait()
            self._scope = self._supervisor_done = None
            raise failure

    async def unload(self) -> None:
        """Stop the child (SIGTERM to its group, SIGKILL after stop_timeout_s). Idempotent."""
        scope, done = self._scope, self._supervisor_done
        if scope is not None and done is not None:
            scope.cancel()
            await done.wait()
        self._scope = self._supervisor_done = None
        self._state, self._detail = EngineState.STOPPED, ""

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, self._state is EngineState.READY, self._detail)

    def stats(self) -> EngineStats:
        remote = self._child.remote if self._child else None
        base = remote.stats() if remote else EngineStats(slots_total=self.parallel)
        base.extra = {**base.extra, "restarts_total": float(self._restarts_total)}
        return base

    @property
    def child_pid(self) -> int | None:
        """The current child's pid (= its process group id), for `sagectl ps` and tests."""
        return self._child.pgid if self._child else None

    @property
    def base_url(self) -> str | None:
        return f"http://127.0.0.1:{self._child.port}" if self._child else None

    # -- supervision ---------------------------------------------------------------------------

    async def _supervise(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._supervisor_done = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:  # the engine's own: child output readers
                    try:
                        await self._start_child(nursery)
                    except EngineError as exc:
                        self._state, self._detail = EngineState.ERROR, str(exc)
                        self._load_error = exc
                        task_status.started()  # load() raises it; the supervisor ends here
                        nursery.cancel_scope.cancel()
                        return
                    task_status.started()
                    await self._watch_and_restart(nursery)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_child()
            self._supervisor_done.set()

    async def _watch_and_restart(self, nursery: trio.Nursery) -> None:
        failures_in_a_row = 0
        while True:
            child = self._child
            assert child is not None
            await child.exited.wait()
            if time.monotonic() - child.started_at >= self.spec.stable_after_s:
                failures_in_a_row = 0
            cause = f"vLLM child exited with code {child.exit_code}; last output: {child.tail()}"
            log.warning("%s: %s", self.name, cause)
            await self._stop_child()  # the rest of its group, and the proxy
            while True:  # back off and restart until one comes up, or give up
                if failures_in_a_row >= self.spec.max_restarts:
                    self._state, self._detail = EngineState.ERROR, f"{cause}; gave up after {failures_in_a_row} restarts in a row"
                    return
                delay = min(self.spec.restart_backoff_initial_s * 2**failures_in_a_row, self.spec.restart_backoff_max_s)
                failures_in_a_row += 1
                self._restarts_total += 1
                self._state = EngineState.ERROR
                self._detail = f"{cause}; restart {failures_in_a_row} of {self.spec.max_restarts} in {delay:g} s"
                await trio.sleep(delay)
                try:
                    await self._start_child(nursery)
                    break
                except EngineError as exc:  # it left nothing running
                    cause = f"restart {failures_in_a_row} failed: {exc}"
                    log.warning("%s: %s", self.name, cause)

    def _choose_port(self) -> int:
        if self.spec.port is not None:
            return self.spec.port
        if self._last_port is not None and is_port_free("127.0.0.1", self._last_port):
            return self._last_port  # a restart keeps its address where it can
        if self.spec.prefer_recommended_port:
            recommended, _reason = SagePorts.recommended_llm_port(self.is_wsl2)
            if is_port_free("127.0.0.1", recommended):
                return recommended
        return SagePorts.find_free_port()

    async def _start_child(self, nursery: trio.Nursery) -> None:
        """Start a child and wait until it serves; on failure leave nothing running and raise EngineError."""
        port = self._choose_port()
        self._last_port = port
        command = child_command(self.spec, port)
        try:
            process = await trio.lowlevel.open_process(
                command, env=child_environment(self.spec), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise EngineError(f"cannot start the vLLM server ({command[0]}): {exc}") from exc
        child = _Child(process, port)
        self._child = child
        _LIVE_GROUPS.add(child.pgid)
        log.info("%s: started %s (pid %d, port %d)", self.name, " ".join(command), process.pid, port)
        nursery.start_soon(self._read_output, child)
        nursery.start_soon(self._reap, child)
        try:
            await self._wait_healthy(child)
            remote = RemoteOpenAIEngine(RemoteSpec(
                name=self.name, kind=self.kind, base_url=f"http://127.0.0.1:{port}", remote_model=self.served_model_name,
                api_key=self.spec.api_key, n_ctx=self.spec.max_model_len, parallel=self.spec.max_num_seqs,
            ), backend="vllm")
            await remote.load()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop_child()
            raise
        child.remote = remote
        self.dimensions = remote.dimensions
        self._state, self._detail = EngineState.READY, f"vLLM pid {process.pid} on port {port}"

    async def _wait_healthy(self, child: _Child) -> None:
        url = f"http://127.0.0.1:{child.port}/health"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            with trio.move_on_after(self.spec.health_timeout_s):
                while not child.exited.is_set():
                    try:
                        if (await client.get(url)).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass  # not listening yet
                    with trio.move_on_after(0.25):
                        await child.exited.wait()
                await trio.sleep(0.1)  # let the output reader catch the last lines
                raise EngineError(f"the vLLM server exited with code {child.exit_code} before it was healthy; last output: {child.tail()}")
        raise EngineError(f"the vLLM server was not healthy on {url} within {self.spec.health_timeout_s:g} s; last output: {child.tail()}")

    async def _read_output(self, child: _Child) -> None:
        stream = child.process.stdout
        assert stream is not None
        pending = b""
        async for data in stream:
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                if text:
                    child.output.append(text)
                    log.debug("%s child: %s", self.name, text)
        if pending.strip():
            child.output.append(pending.decode(errors="replace").rstrip())

    async def _reap(self, child: _Child) -> None:
        child.exit_code = await child.process.wait()
        if not child.stopping and child is self._child:
            # Before anyone waiting on `exited` runs: a failed request must find the engine in error.
            await trio.sleep(0.05)  # let the output reader take the child's last lines
            self._state = EngineState.ERROR
            self._detail = f"vLLM child exited with code {child.exit_code}; last output: {child.tail()}"
        child.exited.set()

    async def _stop_child(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after stop_timeout_s; reap the leader."""
        child = self._child
        if child is None:
            return
        child.stopping = True
        if child.remote is not None:
            await child.remote.unload()
            child.remote = None
        pgid = child.pgid
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            with trio.move_on_after(self.spec.stop_timeout_s):
                await child.process.wait()
                while group_alive(pgid):  # workers the leader started may outlive it briefly
                    await trio.sleep(0.05)
            if group_alive(pgid):
                log.warning("%s: vLLM group %d ignored SIGTERM for %g s; killing it", self.name, pgid, self.spec.stop_timeout_s)
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        await child.process.wait()
        _LIVE_GROUPS.discard(pgid)

    # -- requests ------------------------------------------------------------------------------

    def _serving(self) -> tuple[_Child, RemoteOpenAIEngine]:
        child = self._child
        if self._state is not EngineState.READY or child is None or child.remote is None:
            raise EngineError(f"vLLM engine {self.name} is not serving ({self._state.value}: {self._detail})")
        return child, child.remote

    async def _explain(self, child: _Child, exc: EngineError) -> EngineError:
        """A request failed at the transport: if the child died, say so with its exit code."""
        with trio.move_on_after(1.0):
            await child.exited.wait()
        if child.exited.is_set():
            return EngineError(f"vLLM engine {self.name}: the server child died (exit code {child.exit_code}) during the request; last output: {child.tail()}")
        return exc

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """The proxy's checks (context size for token prompts, engine serving); vLLM does the rest."""
        _child, remote = self._serving()
        return remote.prepare(request)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        child, remote = self._serving()
        try:
            async for chunk in remote.generate(request):
                yield chunk
        except EngineError as exc:
            raise await self._explain(child, exc) from exc

    async def embed(self, texts: list[str], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        child, remote = self._serving()
        try:
            return await remote.embed(texts, dimensions)
        except EngineError as exc:
            raise await self._explain(child, exc) from exc

    async def embed_tokens(self, token_lists: list[list[int]], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        child, remote = self._serving()
        try:
            return await remote.embed_tokens(token_lists, dimensions)
        except EngineError as exc:
            raise await self._explain(child, exc) from exc

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError("the vLLM engine tokenizes in its child; send text")

    def has_chat_template(self) -> bool:
        return True  # vLLM answers 400 itself for a model without one

