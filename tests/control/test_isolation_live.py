"""No request can hurt another: random sampling values sent to the real daemon while 8 chat
streams run on the same model. Each random request gets a 200 or a 400 naming its mistake,
never a 5xx, and every one of the 8 streams completes with all its tokens (issue: a single
`top_k: 2147483648` used to end every stream of the model with engine_unavailable)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveDaemon, run_sagectl

pytestmark = pytest.mark.slow

STREAMS = 8
STREAM_TOKENS = 400  # long enough to outlast the probes on 2 cores

INTS = st.one_of(st.integers(-3, 50), st.sampled_from([2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, -(2**31) - 1, -(2**63)]))
FLOATS = st.one_of(st.floats(-3, 3, allow_nan=False), st.sampled_from([0.0, 1e308, -1e308, 2.0000001, 1e-300]))
OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "temperature": FLOATS,
    "top_p": FLOATS,
    "top_k": INTS,
    "min_p": FLOATS,
    "seed": INTS,
    "presence_penalty": FLOATS,
    "frequency_penalty": FLOATS,
    "n": st.integers(-1, 3),
    "max_tokens": st.one_of(st.integers(-1, 4), st.sampled_from([2**31, 10**6])),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=4), max_size=6)),
    "logit_bias": st.dictionaries(st.integers(-2, 60_000).map(str), st.one_of(st.integers(-101, 101), FLOATS), max_size=3),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(-1, 25),
}


def sampling_bodies() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just("smollm2"), "messages": st.just([{"role": "user", "content": "Say hi."}])},
        optional=OPTIONAL_FIELDS,
    )


def long_stream(live: LiveDaemon, index: int, results: dict[int, tuple[str | None, int]]) -> None:
    with live.sdk() as client:
        stream = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Count slowly from {index} upwards."}],
            max_tokens=STREAM_TOKENS, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        finish, tokens = None, 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        results[index] = (finish, tokens)


def test_random_sampling_values_never_end_other_streams(live: LiveDaemon) -> None:
    results: dict[int, tuple[str | None, int]] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            long_stream(live, index, results)
        except BaseException as exc:  # reported below with the others' outcomes
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    answers: dict[int, int] = {}
    with live.http() as http:

        def probe(body: dict[str, Any]) -> None:
            reply = http.post("/v1/chat/completions", json=body, timeout=120)
            answers[reply.status_code] = answers.get(reply.status_code, 0) + 1
            assert reply.status_code in (200, 400), f"{body} -> {reply.status_code} {reply.text}"
            if reply.status_code == 400:
                error = reply.json()["error"]
                assert error["message"] and error["type"] == "invalid_request_error", reply.text

        # The request that used to take the engine down, first, while all 8 streams run.
        probe({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "top_k": 2147483648, "max_tokens": 2})
        assert all(thread.is_alive() for thread in threads), "the streams ended before the probes ran: make them longer"

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(sampling_bodies())
        def random_probe(body: dict[str, Any]) -> None:
            probe(body)

        random_probe()
        still_running = sum(thread.is_alive() for thread in threads)
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, f"streams failed: {errors!r}; probe answers {answers}"
    assert results == {i: ("length", STREAM_TOKENS) for i in range(STREAMS)}, f"probe answers {answers}"
    assert answers.get(200, 0) > 0 and answers.get(400, 0) > 0, answers  # both paths were exercised
    assert still_running > 0 or len(answers) > 1  # the probes overlapped the streams (checked above for the first)


def engine_failures(live: LiveDaemon) -> int:
    reply = run_sagectl("models", "--json", socket_path=live.process.socket)
    assert reply.returncode == 0, reply.stderr
    return {m["id"]: m for m in json.loads(reply.stdout)["models"]}["smollm2"]["failures"]


def test_engine_keeps_serving_after_the_killer_request(live: LiveDaemon) -> None:
    """The exact request of the report, then a normal one: the engine neither died nor restarted."""
    failures = engine_failures(live)
    with live.http() as http:
        bad = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "top_k": 2147483648})
        assert bad.status_code in (200, 400), bad.text
        good = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert good.status_code == 200, good.text
        models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        assert models["smollm2"]["state"] == "ready"
    assert engine_failures(live) == failures
