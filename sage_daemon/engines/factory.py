"""Build the engine for a model where the pool placed it. Backends import lazily: a daemon that
serves only remote models never imports torch or llama.cpp."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from sage_client.protocol import NodeInfo
from sage_daemon.core.config import Config, ControlConfig, ModelConfig
from sage_daemon.core.logging import log
from sage_daemon.engines.base import Engine, StepGate
from sage_daemon.engines.pool import EngineFactory, Placement
from sage_daemon.engines.sources import resolve_local_source


def engine_threads(control: ControlConfig, node: NodeInfo, kind: str, configured: int = 0) -> int:
    """Threads for one engine: the model's own setting, else [control]'s, else by cpu_sharing."""
    if configured:
        return configured
    explicit = control.llm_threads if kind == "llm" else control.embedding_threads
    if explicit:
        return explicit
    # interleave: each engine takes every core for its step; parallel: they split the cores.
    return node.cpu_count if control.cpu_sharing == "interleave" else max(1, node.cpu_count // 2)


def llamacpp_gpu_layers(model: ModelConfig, placement: Placement, model_path: Path, node: NodeInfo) -> tuple[int, str]:
    """llama.cpp's n_gpu_layers for `model` now, and why: fitted (gpu_fit) to the GPU's free memory
    as read at load time, from the GGUF's header. 0 where the placement is the CPU."""
    if not placement.device.startswith("cuda:"):
        return 0, placement.reason
    from sage_daemon.core.nodes import current_gpus
    from sage_daemon.engines.gguf_info import GgufError, model_facts, read_gguf_info
    from sage_daemon.engines.gpu_fit import fit_gpu_layers

    index = int(placement.device.split(":")[1])
    gpu = next((g for g in current_gpus(node) if g.index == index), None)
    try:
        facts = model_facts(read_gguf_info(model_path))
    except (OSError, GgufError) as exc:
        layers = 0 if model.n_gpu_layers == "auto" else model.n_gpu_layers
        return layers, f"cannot read the GGUF header of {model_path} ({exc}): n_gpu_layers = {layers}"
    if gpu is None:
        return 0, f"GPU {index} is gone: all layers on the CPU"
    fit = fit_gpu_layers(
        facts, free_bytes=gpu.memory_free_bytes, total_bytes=gpu.memory_total_bytes, gpu_index=index,
        n_ctx=model.n_ctx, parallel=model.parallel, cache_type_k=model.cache_type_k, cache_type_v=model.cache_type_v,
        requested=model.n_gpu_layers,
    )  # fmt: skip
    return fit.n_gpu_layers, fit.reason


def make_factory(
    config: Config, node: NodeInfo, data_dir: Path, llm_gate: StepGate, embedding_gate: StepGate, nursery: Callable[[], trio.Nursery]
) -> EngineFactory:
    """`nursery` gives the nursery that child-process engines (vLLM) run their supervisors in."""

    def build(model: ModelConfig, placement: Placement) -> Engine:
        threads = engine_threads(config.control, node, model.kind, model.threads)
        if placement.backend == "llamacpp":
            from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec

            from sage_daemon.engines.gpu_fit import flash_attn_for

            model_path = resolve_local_source(model.sources.llamacpp, data_dir)
            n_gpu_layers, why = llamacpp_gpu_layers(model, placement, model_path, node)
            if placement.device.startswith("cuda:"):
                log(logging.getLogger("sage.engines"), logging.INFO, "llama.cpp GPU offload", model=model.name, n_gpu_layers=n_gpu_layers, reason=why)
            spec = LlamaCppSpec(
                name=model.name,
                model_path=str(model_path),
                n_gpu_layers=n_gpu_layers,
                type_k=model.cache_type_k,
                type_v=model.cache_type_v,
                flash_attn=flash_attn_for(model.cache_type_v),
                n_ctx=model.n_ctx,
                parallel=model.parallel,
                threads=threads,
                chat_format=model.chat_format or None,
                tool_format=model.tool_format or None,
                reasoning=model.reasoning,
            )
            return LlamaCppEngine(spec, gate=llm_gate)
        if placement.backend == "sentence-transformers":
            from sage_daemon.engines.sentence_transformers import SentenceTransformersEngine, SentenceTransformersSpec

            st_spec = SentenceTransformersSpec(
                name=model.name,
                model_path=str(resolve_local_source(model.sources.sentence_transformers, data_dir)),
                device="cuda" if placement.device.startswith("cuda") else "cpu",
                threads=threads,
                max_batch=config.control.max_batch_texts,
                matryoshka_dims=tuple(model.matryoshka_dims),
            )
            if model.kind == "rerank":
                from sage_daemon.engines.cross_encoder import CrossEncoderEngine

                return CrossEncoderEngine(st_spec, gate=embedding_gate)
            return SentenceTransformersEngine(st_spec, gate=embedding_gate)
        if placement.backend == "remote":
            from sage_daemon.engines.remote import RemoteOpenAIEngine, RemoteSpec

            api_key = os.environ.get(model.remote_api_key_env) if model.remote_api_key_env else None
            remote = RemoteSpec(name=model.name, kind=model.kind, base_url=model.sources.remote, remote_model=model.remote_model or None, api_key=api_key, parallel=model.parallel)
            return RemoteOpenAIEngine(remote)
        if placement.backend == "vllm":
            from sage_daemon.engines.vllm import VllmEngine, VllmSpec

            gpu = int(placement.device.split(":")[1]) if placement.device.startswith("cuda:") else None
            vllm = VllmSpec(
                name=model.name, model=model.sources.vllm, kind=model.kind, gpu_index=gpu, max_model_len=model.n_ctx,
                max_num_seqs=model.parallel, extra_args=list(model.vllm_args),
                restart_backoff_initial_s=config.engines.restart_backoff_s, restart_backoff_max_s=config.engines.restart_backoff_max_s,
            )
            return VllmEngine(vllm, nursery=nursery(), is_wsl2=node.is_wsl2)
        raise ValueError(f"model {model.name!r}: cannot place it ({placement.reason})")

    return build
