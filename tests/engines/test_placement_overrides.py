"""Each placement branch forced through the node-facts overrides of a real daemon's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.conftest import start_daemon


CPU_BUILD = ("nodes.llamacpp", "cpu", "t")


@pytest.mark.parametrize(
    ("overrides", "llm_backend", "reason_part", "embedding_device"),
    [
        ([("nodes.pretend_gpus", 1, "t"), ("nodes.vllm", "yes", "t")], "vllm", "vLLM installed", "cuda:0"),
        ([("nodes.pretend_gpus", 0, "t"), ("nodes.vllm", "yes", "t"), CPU_BUILD], "llamacpp", "no GPU found", "cpu"),
        ([("nodes.pretend_gpus", 1, "t"), ("nodes.vllm", "no", "t"), CPU_BUILD], "llamacpp", "vLLM is not installed", "cuda:0"),
        ([("nodes.pretend_gpus", 1, "t"), ("nodes.vllm", "yes", "t"), ("nodes.wsl2", "yes", "t"), CPU_BUILD], "llamacpp", "WSL2 host", "cuda:0"),
        ([("nodes.pretend_gpus", 1, "t"), ("nodes.vllm", "yes", "t"), ("nodes.wsl2", "yes", "t"), ("engines.allow_vllm_on_wsl", True, "t")], "vllm", "vLLM installed", "cuda:0"),
        ([("nodes.pretend_gpus", 1, "t"), ("nodes.vllm", "no", "t"), ("nodes.llamacpp", "gpu", "t")], "llamacpp", "fitted when loaded); vLLM is not installed", "cuda:0"),
        ([("nodes.pretend_gpus", 0, "t"), ("nodes.vllm", "no", "t"), ("nodes.llamacpp", "no", "t")], "none", "no engine can serve smollm2", "cpu"),
    ],
)
async def test_backend_choice_follows_the_node_facts(clean_env: Path, nursery: trio.Nursery, overrides: list, llm_backend: str, reason_part: str, embedding_device: str) -> None:  # type: ignore[type-arg]
    daemon = await start_daemon(clean_env, nursery, overrides)
    models = {m.id: m for m in daemon.services.control.list_models()}
    assert models["smollm2"].backend == llm_backend and reason_part in models["smollm2"].reason
    assert models["smollm2"].state == "stopped"  # choosing loads nothing
    assert models["minilm"].device == embedding_device
    if ("nodes.llamacpp", "gpu", "t") in overrides:
        assert models["smollm2"].device == "cuda:0"
    elif llm_backend == "llamacpp":
        assert models["smollm2"].reason.startswith("CPU fallback to llama.cpp") and models["smollm2"].device == "cpu"
    nursery.cancel_scope.cancel()
