"""Schemathesis against GET /openapi.json on a running daemon, loopback only, bounded in count
and time: whatever it sends (valid or not), the door answers (no connection goes without a
response), never with a 500 (a 5xx is only a 503 with Retry-After), every error is
OpenAI-shaped, the daemon is still healthy afterwards, and on the real daemon no fuzzed request
makes another fail: canary chat streams run the whole time and every one completes.

Half of the valid bodies are steered to real model names with small max_tokens/n, so the
generation paths run too instead of stopping at "model not found"; the steering only bounds
the run time (the schema itself allows far more)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import trio

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from tests.http.conftest import FakeDaemon  # noqa: E402

pytestmark = pytest.mark.slow

GENERATION_LIMITS = {"max_tokens": 8, "max_completion_tokens": 8, "n": 2}


def clamp(body: Any) -> None:
    """Keep generation small: a CPU decoding 16 choices of thousands of tokens proves nothing here."""
    if not isinstance(body, dict):
        return
    for key, limit in GENERATION_LIMITS.items():
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool):
            body[key] = max(1, min(body[key], limit))


# Fields whose random values are 400s with tests of their own (refused by name, or a random
# schema/grammar/tool list the engine refuses): steered bodies are meant to reach generation.
REFUSED_BY_NAME = (
    "tools", "functions", "function_call", "tool_choice", "response_format", "echo", "suffix", "best_of", "grammar", "json_schema",
    "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
)


def steer(body: Any, model: str) -> None:
    if not isinstance(body, dict):
        return
    body["model"] = model
    for key in REFUSED_BY_NAME:
        body.pop(key, None)
    if body.get("stream_options") is not None:  # only allowed with stream: true
        body["stream"] = True
    for message in body.get("messages") or []:  # text parts only (other part types are refused by name)
        if isinstance(message, dict):
            # Tool turns have rules of their own (tool_call_id, null content only beside tool_calls), tested apart.
            message.pop("tool_calls", None)
            message.pop("tool_call_id", None)
            if message.get("role") == "tool":
                message["role"] = "user"
            if message.get("content") is None:
                message["content"] = ""
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            message["content"] = [{"type": "text", "text": str(part.get("text", "")) if isinstance(part, dict) else ""} for part in message["content"]]
    for key, limit in GENERATION_LIMITS.items():
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool):
            body[key] = max(1, min(body[key], limit))
    if "top_logprobs" in body:  # a rule the schema cannot say: it needs logprobs: true
        body["logprobs"] = True
    if "messages" in body or "prompt" in body:
        body.setdefault("max_tokens", 8)
        if isinstance(body.get("prompt"), list):
            body["prompt"] = body["prompt"][:2]


def fuzz(base_url: str, headers: dict[str, str], models: list[str], *, max_examples: int, budget_s: float) -> dict[str, int]:
    """Run every operation of the daemon's own OpenAPI document; return status counts."""
    import requests

    assert base_url.startswith(("http://127.0.0.1:", "http://[::1]:", "http://localhost:")), "fuzz on loopback only"
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json", headers=headers, timeout=30)
    statuses: dict[str, int] = {}
    started = time.monotonic()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            if time.monotonic() - started > budget_s:
                statuses["skipped-over-budget"] = statuses.get("skipped-over-budget", 0) + 1
                continue

            @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=operation.as_strategy(generation_mode=mode), model=st.sampled_from(models), steered=st.booleans())
            def run(case: Any, model: str, steered: bool) -> None:
                if steered and mode is schemathesis.GenerationMode.POSITIVE:
                    # chat bodies to the chat model (models[0]): the others answer 400 by design
                    steer(case.body, models[0] if isinstance(case.body, dict) and "messages" in case.body else model)
                clamp(case.body)
                sent = f"{operation.method.upper()} {operation.path} ({mode}) body={json.dumps(case.body, default=str)[:500]}"
                try:
                    response = case.call(base_url=base_url, headers=headers, session=session, timeout=120)
                except (ValueError, UnicodeError, requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL):
                    return  # the client library refused to send it (e.g. a header that is not latin-1)
                except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.exceptions.Timeout) as exc:
                    raise AssertionError(f"no HTTP answer: {sent} -> {type(exc).__name__}: {exc}") from None
                key = f"{operation.method.upper()} {operation.path} {response.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
                where = f"{sent} -> {response.status_code} {response.text[:500]}"
                assert response.status_code != 500, where
                if response.status_code >= 500:  # only a refusal to retry: a restarting engine, the drain
                    assert response.status_code == 503 and response.headers.get("Retry-After"), where
                assert response.headers.get("x-request-id"), where
                if response.status_code >= 400:
                    error = response.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"}, where

            try:
                run()
            except Unsatisfiable:
                if mode is schemathesis.GenerationMode.POSITIVE:
                    raise
                # nothing to make invalid (an operation with no body or parameters)
    return statuses


async def test_fuzz_against_the_door_with_the_in_test_control_plane(fake: FakeDaemon) -> None:
    statuses = await trio.to_thread.run_sync(lambda: fuzz(fake.url, {}, ["chatty", "base", "emb"], max_examples=40, budget_s=240))
    print(json.dumps(statuses, indent=1, sort_keys=True))
    assert any(k.endswith(" 200") for k in statuses if k.startswith("POST /v1/chat")), statuses
    async with fake.client() as c:
        assert (await c.get("/health")).status_code == 200


class CanaryStreams:
    """Chat streams on the chat model, one after another in a thread, for as long as the fuzzing
    runs; each must end with all its tokens (finish_reason "length")."""

    TOKENS = 48

    def __init__(self, live: Any):
        self.live = live
        self.stop = threading.Event()
        self.completed = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.live.sdk() as client:
            while not self.stop.is_set():
                try:
                    stream = client.chat.completions.create(
                        model="smollm2", messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=self.TOKENS,
                        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
                    )
                    finish, tokens = None, 0
                    for chunk in stream:
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finish = chunk.choices[0].finish_reason
                        if chunk.usage is not None:
                            tokens = chunk.usage.completion_tokens
                    if (finish, tokens) == ("length", self.TOKENS):
                        self.completed += 1
                    else:
                        self.failures.append(f"ended with {finish!r} after {tokens} tokens")
                except Exception as exc:  # a canary that fails is the finding: kept for the assertion
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> CanaryStreams:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def test_fuzz_against_the_real_daemon(live: Any) -> None:
    with CanaryStreams(live) as canaries:
        statuses = fuzz(live.url, live.headers, ["smollm2", "gemma3-270m", "minilm"], max_examples=40, budget_s=180)
    print(json.dumps(statuses, indent=1, sort_keys=True), f"canary streams completed: {canaries.completed}")
    assert any(k.startswith("POST") and k.endswith(" 200") for k in statuses), statuses
    assert not canaries.failures, f"fuzzed requests made other requests fail: {canaries.failures[:5]}"
    assert canaries.completed >= 1, "no canary stream ran alongside the fuzzing"
    import httpx

    assert httpx.get(live.url + "/health", timeout=30).status_code == 200, "the daemon survived the fuzzing"
