"""The pool inside a real daemon with the real shipped models: load on demand, keep-alive unload
and reload, eviction under max_loaded_models = 1, a dying engine restarted with backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from sage_daemon.control.api import EngineUnavailableError, RequestMeta
from sage_daemon.engines.base import GenerationRequest, SamplingParams
from tests.conftest import start_daemon

pytestmark = pytest.mark.slow


def greedy(prompt: str, n: int = 8) -> GenerationRequest:
    return GenerationRequest("t", SamplingParams(max_tokens=n, temperature=0), prompt=prompt)


async def complete(control: Any, model: str, prompt: str, **meta: Any) -> str:
    stream = await control.generate(model, "completion", greedy(prompt), RequestMeta("t", **meta))
    text, last = await stream.collect()
    assert last.finish_reason in ("stop", "length")
    return text


async def test_keep_alive_eviction_and_reload_on_real_models(clean_env: Path, nursery: trio.Nursery) -> None:
    daemon = await start_daemon(clean_env, nursery, [("engines.max_loaded_models", 1, "test")])
    control, pool = daemon.services.control, daemon.services.control.pool
    assert [m.state for m in control.list_models()] == ["stopped", "stopped", "stopped"]

    first = await complete(control, "smollm2", "The capital of France is")
    assert first and pool.info("smollm2").state == "ready"
    assert "CPU fallback to llama.cpp" in pool.info("smollm2").reason

    # Only one model fits: using gemma evicts the idle smollm2.
    assert await complete(control, "gemma3-270m", "Once upon a time")
    assert pool.info("gemma3-270m").state == "ready" and pool.info("smollm2").state == "stopped"

    # Reload on demand gives the same greedy text.
    assert await complete(control, "smollm2", "The capital of France is") == first

    # A per-request keep_alive of 1 s: unloaded by the supervisor once it expires.
    await complete(control, "smollm2", "Hello", keep_alive_s=1.0)
    with trio.fail_after(10):
        while pool.info("smollm2").state != "stopped":
            await trio.sleep(0.2)

    # keep_alive 0 unloads right after the request (embedding model this time).
    result = await control.embed("minilm", ["a sentence"], RequestMeta("e", keep_alive_s=0))
    assert len(result.vectors[0]) == 384 and pool.info("minilm").state == "stopped"


async def test_dead_engine_fails_in_flight_work_and_comes_back(clean_env: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = await start_daemon(clean_env, nursery, [("engines.restart_backoff_s", 0.5, "test")])
    control, pool = daemon.services.control, daemon.services.control.pool
    assert await complete(control, "smollm2", "Hi")
    engine = pool.slot("smollm2").engine

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected decode failure")

    monkeypatch.setattr(engine, "_decode_batch", crash)
    with pytest.raises(EngineUnavailableError, match="injected decode failure"):
        await complete(control, "smollm2", "This request meets a dying engine")
    with trio.fail_after(10):
        while pool.info("smollm2").state != "error":
            await trio.sleep(0.1)
    assert "engine died" in pool.info("smollm2").reason
    assert any("smollm2" in r for r in control.health().reasons)
    with trio.fail_after(20):  # restarted with backoff by the supervisor, a fresh engine
        while pool.info("smollm2").state != "ready":
            await trio.sleep(0.1)
    assert pool.slot("smollm2").engine is not engine
    assert await complete(control, "smollm2", "Hi")
    assert control.health().ok and daemon.services.lifecycle.state == "serving"
