"""The engine pool: every configured model, loaded on demand, kept alive, evicted, restarted.

The pool decides *where* a model runs (backend and device, with the reason kept for users) and
keeps engines alive; the control plane decides *what runs when*. Model lifecycle lives here in
one place, the way Ollama keeps it in server/sched.go: load on first use, keep-alive per model
and per request, at most `max_loaded_models` and a memory budget with least-recently-used
eviction of idle engines, restart with backoff when an engine dies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trio

from sage_client.protocol import NodeInfo
from sage_daemon.core.config import Config, ModelConfig
from sage_daemon.core.errors import EngineUnavailableError, ModelNotFoundError
from sage_daemon.core.logging import log
from sage_daemon.engines.base import EmbeddingEngine, Engine, EngineState, LLMEngine, ModelInfo
from sage_daemon.engines.gpu_fit import GpuFit, ModelFacts, fit_gpu_layers

logger = logging.getLogger("sage.pool")

EVICTION_WAIT_S = 60.0  # how long a load waits for a busy model to go idle before giving up


@dataclass(frozen=True)
class Placement:
    backend: str  # llamacpp | vllm | sentence-transformers | remote | none (no engine here can serve it)
    device: str  # cpu | cuda:N | remote
    reason: str
    gpu_fit: GpuFit | None = None  # llama.cpp on a GPU, when the GGUF's facts were known when placing


LLAMACPP_MISSING = "llama-cpp-python is not installed: pip install llama-cpp-python (or scripts/install.sh, which builds it with CUDA where nvcc is found)"
SENTENCE_TRANSFORMERS_MISSING = "sentence-transformers is not installed: pip install sentence-transformers"
LLAMACPP_CPU_ONLY = (
    "the llama-cpp-python build is CPU-only; for the GPU rebuild it with CUDA: "
    'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_OPENMP=OFF" pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python '
    "(scripts/install.sh does it where nvcc is found)"
)


def choose_placement(
    model: ModelConfig, node: NodeInfo, allow_vllm_on_wsl: bool, vllm_min_free_gpu_gb: float, gguf: ModelFacts | None = None
) -> Placement:
    """Where `model` runs on this node, and why. Pure: tests force each branch with node overrides.

    `gguf`: the model's GGUF facts where known (gguf_info.model_facts), to fit llama.cpp's GPU
    layers now; without them a GPU placement says the layers are fitted when the model loads."""
    if model.backend == "remote":
        return Placement("remote", "remote", f"configured remote {model.sources.remote}")
    best_gpu = max(node.gpus, key=lambda g: g.memory_free_bytes, default=None)
    if model.kind in ("embedding", "rerank"):  # torch models: sentence-transformers (CrossEncoder for rerank)
        if model.backend not in ("auto", "sentence-transformers"):
            return Placement(model.backend, "cpu", f"configured backend {model.backend}")
        if "sentence-transformers" in node.engines_missing:
            return Placement("none", "cpu", f"no engine can serve {model.name}: {SENTENCE_TRANSFORMERS_MISSING}")
        if best_gpu is not None:  # torch's CUDA works on WSL2 too (vLLM's port trouble is another matter)
            return Placement("sentence-transformers", f"cuda:{best_gpu.index}", f"GPU {best_gpu.index} ({best_gpu.name}) has the most free memory")
        return Placement("sentence-transformers", "cpu", "no usable GPU: sentence-transformers on the CPU")
    if model.backend == "llamacpp":
        if "llamacpp" in node.engines_missing:
            return Placement("none", "cpu", f"no engine can serve {model.name}: configured backend llamacpp, and {LLAMACPP_MISSING}")
        return _llamacpp_placement(model, node, gguf, ["configured backend llamacpp"])
    # auto or vllm: vLLM only where it can really run; otherwise fall back to llama.cpp and say why.
    why_not: list[str] = []
    if not node.gpus:
        why_not.append("no GPU found")
    elif best_gpu is not None and best_gpu.memory_free_bytes < vllm_min_free_gpu_gb * 2**30:
        why_not.append(f"GPU {best_gpu.index} has only {best_gpu.memory_free_bytes / 2**30:.1f} GiB free (< {vllm_min_free_gpu_gb} GiB)")
    if not node.vllm_available:
        why_not.append("vLLM is not installed")
    if node.is_wsl2 and not allow_vllm_on_wsl:
        why_not.append("WSL2 host (set engines.allow_vllm_on_wsl = true to try vLLM)")
    if not model.sources.vllm:
        why_not.append("no vLLM source configured")
    if not why_not and best_gpu is not None:
        return Placement("vllm", f"cuda:{best_gpu.index}", f"GPU {best_gpu.index} ({best_gpu.name}) with {best_gpu.memory_free_bytes / 2**30:.1f} GiB free and vLLM installed")
    if not model.sources.llamacpp:
        return Placement("none", "cpu", f"no engine can serve {model.name}: " + "; ".join(why_not) + "; and no GGUF source for llama.cpp")
    if "llamacpp" in node.engines_missing:
        return Placement("none", "cpu", f"no engine can serve {model.name}: " + "; ".join([*why_not, LLAMACPP_MISSING]))
    return _llamacpp_placement(model, node, gguf, why_not)


def _llamacpp_placement(model: ModelConfig, node: NodeInfo, gguf: ModelFacts | None, why: list[str]) -> Placement:
    """llama.cpp with as many layers on the GPU as fit (n_gpu_layers), on the CPU where there is
    no GPU, the build cannot offload, or n_gpu_layers = 0. Layers are fitted to the GPU with the
    most free memory (llama.cpp splits them over every visible GPU by default)."""
    gpu = max(node.gpus, key=lambda g: g.memory_free_bytes, default=None)
    cpu_reasons = list(why)
    if gpu is None:
        if "no GPU found" not in cpu_reasons:
            cpu_reasons.append("no GPU found")
    elif model.n_gpu_layers == 0:
        cpu_reasons.append("n_gpu_layers = 0")
    elif not node.llamacpp_gpu:
        cpu_reasons.append(LLAMACPP_CPU_ONLY)
    else:
        suffix = "".join(f"; {w}" for w in why)
        if gguf is None:
            layers = "as many layers as fit" if model.n_gpu_layers == "auto" else f"n_gpu_layers = {model.n_gpu_layers}"
            free = f"{gpu.memory_free_bytes / 2**30:.1f} GiB free"
            return Placement("llamacpp", f"cuda:{gpu.index}", f"GPU {gpu.index} ({gpu.name}, {free}): llama.cpp with {layers} (fitted when loaded){suffix}")
        fit = fit_gpu_layers(
            gguf, free_bytes=gpu.memory_free_bytes, total_bytes=gpu.memory_total_bytes, gpu_index=gpu.index,
            n_ctx=model.n_ctx, parallel=model.parallel, cache_type_k=model.cache_type_k, cache_type_v=model.cache_type_v,
            requested=model.n_gpu_layers,
        )  # fmt: skip
        return Placement("llamacpp", f"cuda:{gpu.index}" if fit.n_gpu_layers else "cpu", fit.reason + suffix, fit)
    if why and why[0].startswith("configured"):
        return Placement("llamacpp", "cpu", "; ".join(cpu_reasons) + ": llama.cpp on the CPU")
    return Placement("llamacpp", "cpu", "CPU fallback to llama.cpp: " + "; ".join(cpu_reasons))


EngineFactory = Callable[[ModelConfig, Placement], Engine]


@dataclass
class ModelSlot:
    """The pool's record of one configured model."""

    config: ModelConfig
    placement: Placement
    engine: Engine | None = None
    state: str = EngineState.STOPPED.value
    error: str = ""
    users: int = 0
    last_used: float = 0.0
    keep_alive_until: float | None = None  # trio clock; None = forever (or not loaded)
    loading: trio.Event | None = None
    failures: int = 0
    next_restart_at: float | None = None
    memory_bytes: int = 0
    created: int = field(default_factory=lambda: int(time.time()))


def estimate_memory_bytes(model: ModelConfig, path: Path | None) -> int:
    """A rough resident size: the weights plus a third for context and runtime buffers."""
    if path is None or not path.exists():
        return 0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return int(size * 1.33)


class EnginePool:
    def __init__(self, config: Config, node: NodeInfo, factory: EngineFactory, memory_of: Callable[[ModelConfig, Placement], int] = lambda m, p: 0):
        self.config = config
        self.node = node
        self.factory = factory
        self.memory_of = memory_of
        engines = config.engines
        self.slots: dict[str, ModelSlot] = {
            m.name: ModelSlot(m, choose_placement(m, node, engines.allow_vllm_on_wsl, engines.vllm_min_free_gpu_gb)) for m in config.models
        }
        budget = engines.memory_budget_gb * 2**30 if engines.memory_budget_gb > 0 else 0.8 * node.memory_total_bytes
        self.memory_budget_bytes = int(budget) if budget else None
        self._changed = trio.Condition()  # users or states changed: eviction waits on it
        self.nursery: trio.Nursery | None = None
        for slot in self.slots.values():
            if slot.placement.backend == "llamacpp" and "fallback" in slot.placement.reason:
                log(logger, logging.INFO, "model placed on CPU", model=slot.config.name, reason=slot.placement.reason)

    # ------------------------------------------------------------------ lookups

    def slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            known = ", ".join(sorted(self.slots)) or "(none configured)"
            raise ModelNotFoundError(f"the model {name!r} does not exist; this daemon serves: {known}", param="model")
        return slot

    def info(self, name: str) -> ModelInfo:
        slot = self.slot(name)
        engine = slot.engine
        ready = engine is not None and slot.state == "ready"
        stats = engine.stats() if engine is not None and ready else None
        now = trio.current_time()
        wall_until = None
        if slot.keep_alive_until is not None and ready:
            wall_until = time.time() + max(0.0, slot.keep_alive_until - now)
        n_ctx, dimensions, chat_template = slot.config.n_ctx, 0, False
        if engine is not None and slot.config.kind == "llm":
            llm = cast(LLMEngine, engine)
            n_ctx, chat_template = llm.n_ctx, ready and llm.has_chat_template()
        elif engine is not None and slot.config.kind == "embedding":
            dimensions = cast(EmbeddingEngine, engine).dimensions
        restart_in = None
        if slot.state == "error" and slot.next_restart_at is not None and self.restarts(slot):
            restart_in = round(max(0.0, slot.next_restart_at - now), 1)
        return ModelInfo(
            id=slot.config.name,
            kind=slot.config.kind,
            backend=slot.placement.backend,
            state=slot.state,
            created=slot.created,
            reason=slot.error if slot.state == "error" else slot.placement.reason,
            device=slot.placement.device,
            slots_busy=stats.slots_busy if stats else 0,
            slots_total=stats.slots_total if stats else (slot.config.parallel if slot.config.kind == "llm" else 0),
            keep_alive_until=wall_until,
            n_ctx=n_ctx,
            dimensions=dimensions,
            chat_template=chat_template,
            failures=slot.failures,
            restart_in_s=restart_in,
        )

    def infos(self) -> list[ModelInfo]:
        return [self.info(name) for name in self.slots]

    def loaded(self) -> list[ModelSlot]:
        return [s for s in self.slots.values() if s.engine is not None]

    # ------------------------------------------------------------------ use

    @asynccontextmanager
    async def use(self, name: str, keep_alive_s: float | None = None) -> AsyncIterator[Engine]:
        """The model's engine, loaded if needed, held busy (never evicted) for the block."""
        slot = self.slot(name)
        engine = await self.ensure_loaded(name)
        slot.users += 1
        try:
            yield engine
        finally:
            slot.users -= 1
            slot.last_used = trio.current_time()
            keep = slot.config.keep_alive_s if keep_alive_s is None else keep_alive_s
            slot.keep_alive_until = None if keep < 0 else slot.last_used + keep
            async with self._changed:
                self._changed.notify_all()
            if keep == 0 and slot.users == 0:
                with trio.CancelScope(shield=True):
                    await self.unload(name, reason="keep_alive 0")

    async def ensure_loaded(self, name: str) -> Engine:
        slot = self.slot(name)
        while True:
            if slot.state == "ready" and slot.engine is not None:
                return slot.engine
            if slot.loading is not None:  # someone else is loading it: wait for them
                await slot.loading.wait()
                continue
            if slot.state == "error" and slot.next_restart_at is not None and trio.current_time() < slot.next_restart_at:
                wait = slot.next_restart_at - trio.current_time()
                raise EngineUnavailableError(f"model {name!r} failed: {slot.error}; next restart in {wait:.0f} s", retry_after_s=wait)
            await self._load(slot)

    async def load(self, name: str) -> ModelInfo:
        await self.ensure_loaded(name)
        slot = self.slot(name)
        if slot.users == 0:
            slot.last_used = trio.current_time()
            keep = slot.config.keep_alive_s
            slot.keep_alive_until = None if keep < 0 else slot.last_used + max(keep, 0)
        return self.info(name)

    async def _load(self, slot: ModelSlot) -> None:
        slot.loading = trio.Event()
        name = slot.config.name
        try:
            # Sources may need assembling (a file copy) and sizing: off the trio thread.
            slot.memory_bytes = await trio.to_thread.run_sync(self.memory_of, slot.config, slot.placement)
            await self._make_room(slot)
            slot.state, slot.error = EngineState.LOADING.value, ""
            log(logger, logging.INFO, "loading model", model=name, backend=slot.placement.backend, device=slot.placement.device)
            started = time.perf_counter()
            try:
                engine = await trio.to_thread.run_sync(self.factory, slot.config, slot.placement)
                await engine.load()
            except Exception as exc:
                self._mark_failed(slot, f"load failed: {exc}")
                raise EngineUnavailableError(f"model {name!r} could not be loaded: {exc}") from exc
            slot.engine = engine
            slot.state = EngineState.READY.value
            slot.failures = 0
            slot.next_restart_at = None
            slot.last_used = trio.current_time()
            log(logger, logging.INFO, "model ready", model=name, seconds=round(time.perf_counter() - started, 2))
        finally:
            event, slot.loading = slot.loading, None
            event.set()

    def _mark_failed(self, slot: ModelSlot, error: str) -> None:
        slot.state, slot.error = EngineState.ERROR.value, error
        slot.failures += 1
        engines = self.config.engines
        backoff = min(engines.restart_backoff_s * 2 ** (slot.failures - 1), engines.restart_backoff_max_s)
        slot.next_restart_at = trio.current_time() + backoff
        log(logger, logging.ERROR, "model failed", model=slot.config.name, error=error, retry_in_s=round(backoff, 1))

    async def _make_room(self, incoming: ModelSlot) -> None:
        """Evict least recently used idle models until `incoming` fits the count and memory limits."""
        deadline = trio.current_time() + EVICTION_WAIT_S
        while True:
            loaded = [s for s in self.loaded() if s is not incoming]
            used = sum(s.memory_bytes for s in loaded)
            over_count = len(loaded) + 1 > self.config.engines.max_loaded_models
            over_memory = self.memory_budget_bytes is not None and loaded and used + incoming.memory_bytes > self.memory_budget_bytes
            if not over_count and not over_memory:
                return
            idle = sorted((s for s in loaded if s.users == 0 and s.state in ("ready", "error")), key=lambda s: s.last_used)
            if idle:
                victim = idle[0]
                why = "max_loaded_models" if over_count else "memory budget"
                await self.unload(victim.config.name, reason=f"evicted for {incoming.config.name} ({why})")
                continue
            if trio.current_time() >= deadline:
                busy = ", ".join(s.config.name for s in loaded)
                raise EngineUnavailableError(
                    f"cannot load {incoming.config.name!r}: max_loaded_models={self.config.engines.max_loaded_models} and every loaded model is busy ({busy}); retry later"
                )
            with trio.move_on_at(deadline):
                async with self._changed:
                    await self._changed.wait()

    async def unload(self, name: str, reason: str = "requested") -> ModelInfo:
        slot = self.slot(name)
        engine, slot.engine = slot.engine, None
        if engine is not None:
            slot.state = EngineState.DRAINING.value
            log(logger, logging.INFO, "unloading model", model=name, reason=reason)
            try:
                await engine.unload()
            except Exception:
                logger.exception("unload failed", extra={"fields": {"model": name}})
        if slot.state != EngineState.ERROR.value:
            slot.state = EngineState.STOPPED.value
        slot.keep_alive_until = None
        async with self._changed:
            self._changed.notify_all()
        return self.info(name)

    # ------------------------------------------------------------------ models added and removed live

    async def put_model(self, model: ModelConfig) -> ModelInfo:
        """Serve `model` from now on: a new name, or a new definition of a served one (whose
        engine is unloaded first; requests holding it finish on the old one)."""
        old = self.slots.get(model.name)
        if old is not None:
            while old.loading is not None:
                await old.loading.wait()
            await self.unload(model.name, reason="model redefined")
        engines = self.config.engines
        self.slots[model.name] = ModelSlot(model, choose_placement(model, self.node, engines.allow_vllm_on_wsl, engines.vllm_min_free_gpu_gb))
        return self.info(model.name)

    async def remove_model(self, name: str) -> ModelInfo:
        """Stop serving `name`: unloaded, then gone from the list."""
        slot = self.slot(name)
        while slot.loading is not None:
            await slot.loading.wait()
        info = await self.unload(name, reason="model removed")
        self.slots.pop(name, None)
        return info

    # ------------------------------------------------------------------ supervision

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED, interval_s: float = 0.5) -> None:
        """Load required models, then expire idle ones and restart dead ones until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery  # engines that supervise child processes run their tasks here
            task_status.started()
            for slot in self.slots.values():
                if slot.config.required:
                    nursery.start_soon(self._load_required, slot.config.name)
            while True:
                await self.supervise_once()
                await trio.sleep(interval_s)

    async def _load_required(self, name: str) -> None:
        try:
            await self.load(name)
            self.slot(name).keep_alive_until = None  # required models stay loaded
        except EngineUnavailableError:
            pass  # marked error with backoff; supervise_once retries

    async def supervise_once(self) -> None:
        now = trio.current_time()
        for slot in list(self.slots.values()):
            name = slot.config.name
            engine = slot.engine
            if engine is not None and slot.state == "ready":
                health = engine.health()
                if health.state == EngineState.ERROR:
                    await self.unload(name, reason="engine died")
                    self._mark_failed(slot, f"engine died: {health.detail}")
                    continue
                if slot.users == 0 and slot.keep_alive_until is not None and now >= slot.keep_alive_until and not slot.config.required:
                    await self.unload(name, reason="keep_alive expired")
            elif slot.state == "error" and slot.next_restart_at is not None and now >= slot.next_restart_at and slot.loading is None:
                if self.restarts(slot):
                    try:
                        await self.load(name)
                        log(logger, logging.INFO, "model restarted", model=name)
                    except EngineUnavailableError:
                        pass

    @staticmethod
    def restarts(slot: ModelSlot) -> bool:
        """Whether the supervisor restarts this failed model by itself (required, or its engine died)."""
        return slot.config.required or bool(slot.failures and slot.error.startswith("engine died"))

    def health_reasons(self) -> list[str]:
        reasons = []
        for slot in self.slots.values():
            if slot.state == "error" and self.restarts(slot):
                reasons.append(f"model {slot.config.name}: {slot.error}")  # ModelInfo.restart_in_s says when it restarts
            elif slot.config.required and slot.state != "ready":
                reasons.append(f"model {slot.config.name}: {slot.state}")
            elif slot.engine is not None and slot.state == "ready":
                health = slot.engine.health()
                if not health.ok:
                    reasons.append(f"model {slot.config.name}: {health.state.value}: {health.detail}")
        return reasons

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for slot in self.loaded():
                await self.unload(slot.config.name, reason="daemon stopping")

