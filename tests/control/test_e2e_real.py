"""The control plane end to end on the real engines, through the HTTP door: embeddings batched
across requests (visible in /metrics), a chat stream that keeps flowing while embeddings are
served, a full queue answered with 429 + Retry-After while everything else keeps working."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import trio

from tests.conftest import DaemonProcess, LiveDaemon, metric

pytestmark = pytest.mark.slow


def batch_metrics(live: LiveDaemon) -> tuple[float, float]:
    with live.http() as http:
        text = http.get("/metrics").text
    return metric(text, "sage:embedding_batch_size_sum", model_name="minilm") or 0.0, metric(text, "sage:embedding_batch_size_count", model_name="minilm") or 0.0


async def test_concurrent_embeddings_are_served_in_batches(live: LiveDaemon) -> None:
    total_before, batches_before = batch_metrics(live)
    client = live.async_sdk()
    vectors: dict[int, list[float]] = {}

    async def one(i: int) -> None:
        reply = await client.embeddings.create(model="minilm", input=f"sentence number {i} about batching")
        vectors[i] = reply.data[0].embedding

    async with trio.open_nursery() as nursery:
        for i in range(48):
            nursery.start_soon(one, i)
    await client.close()
    total_after, batches_after = batch_metrics(live)
    texts, batches = total_after - total_before, batches_after - batches_before
    assert texts == 48 and len(vectors) == 48 and all(len(v) == 384 for v in vectors.values())
    assert batches < 48 and texts / batches > 1.5, f"48 requests went out in {batches} batches"


def test_a_chat_stream_keeps_flowing_while_embeddings_are_served(live: LiveDaemon) -> None:
    gaps: list[float] = []
    tokens: dict[str, int] = {}

    def chat() -> None:
        with live.sdk() as client:
            stream = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Count from one to one hundred."}], max_tokens=120,
                stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            )
            last = None
            for chunk in stream:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].delta.content:
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                if chunk.usage:
                    tokens["n"] = chunk.usage.completion_tokens

    def embeddings() -> None:
        with live.sdk() as client:
            for i in range(12):
                client.embeddings.create(model="minilm", input=[f"text {i} {j} " * 20 for j in range(32)])

    talker = threading.Thread(target=chat)
    talker.start()
    time.sleep(0.3)
    embedder = threading.Thread(target=embeddings)
    embedder.start()
    embedder.join(120)
    talker.join(120)
    assert tokens["n"] == 120
    # Interleaved at step granularity: no pause longer than a few embedding batches.
    assert max(gaps) < 2.0, f"the chat stalled for {max(gaps):.2f} s while embeddings ran"


def test_full_queue_is_a_429_with_retry_after_and_nothing_breaks(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1"}
    process = DaemonProcess(tmp_path / "tiny-queue", "--set", "control.max_queue=2", env=env)
    try:
        url = re.search(r"serving on (http://\S+)", " ".join(process.notify.messages)).group(1)  # type: ignore[union-attr]
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
        client.completions.create(model="smollm2", prompt="warm up", max_tokens=1)
        outcomes: list[Any] = []

        def long_request(i: int) -> None:
            try:
                reply = client.completions.create(model="smollm2", prompt=f"Story {i}:", max_tokens=64, extra_body={"ignore_eos": True})
                outcomes.append(reply.usage.completion_tokens)
            except openai.RateLimitError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=long_request, args=(i,)) for i in range(14)]  # 8 slots + 2 queued + 4 over
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        served = [o for o in outcomes if isinstance(o, int)]
        assert refused and served and len(refused) + len(served) == 14
        assert all(n == 64 for n in served)
        error = refused[0]
        assert error.status_code == 429 and int(error.response.headers["retry-after"]) >= 1
        assert error.body["code"] == "queue_full" if isinstance(error.body, dict) else "queue_full" in str(error)
        # ...and the daemon serves normally afterwards.
        assert client.completions.create(model="smollm2", prompt="Hello", max_tokens=4).choices[0].text is not None
        assert client.embeddings.create(model="minilm", input="still fine").data[0].embedding
    finally:
        process.stop()
