"""The metrics registry: names, labels, balanced gauges, one registry per daemon."""

from __future__ import annotations

import pytest

from sage_daemon.core.metrics import Metrics


def test_names_and_labels_follow_vllm_with_a_sage_prefix() -> None:
    m = Metrics()
    m.on_queued("smollm2", "chat")
    m.on_dequeued("smollm2", "chat")
    m.on_admitted("smollm2", "chat", 0.02)
    m.on_first_token("smollm2", 0.1)
    for _ in range(3):
        m.on_token("smollm2", 0.01)
    m.on_finished("smollm2", "chat", "stop", 7, 4, 0.5)
    m.on_embedding_batch("minilm", 8)
    m.on_queued("minilm", "embedding")
    m.on_dequeued("minilm", "embedding")
    m.on_admitted("minilm", "embedding", 0.001)
    m.on_finished("minilm", "embedding", "stop", 40, 0, 0.01)
    text = m.render()[0].decode()
    for name in (
        'sage:num_requests_running{model_name="smollm2"} 0.0',
        'sage:num_requests_waiting{model_name="smollm2"} 0.0',
        'sage:queue_depth{kind="chat",model_name="smollm2"} 0.0',
        'sage:time_to_first_token_seconds_count{model_name="smollm2"} 1.0',
        'sage:inter_token_latency_seconds_count{model_name="smollm2"} 3.0',
        'sage:e2e_request_latency_seconds_count{model_name="smollm2"} 1.0',
        'sage:request_queue_time_seconds_count{model_name="smollm2"} 1.0',
        'sage:prompt_tokens_total{model_name="smollm2"} 7.0',
        'sage:generation_tokens_total{model_name="smollm2"} 4.0',
        'sage:request_success_total{finished_reason="stop",model_name="smollm2"} 1.0',
        'sage:embedding_batch_size_count{model_name="minilm"} 1.0',
        'sage:prompt_tokens_total{model_name="minilm"} 40.0',
        'sage:num_requests_running{model_name="minilm"} 0.0',
    ):
        assert name in text, name


def test_two_daemons_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.on_queued("x", "chat")
    assert a.value("sage:num_requests_waiting", model_name="x") == 1
    assert b.value("sage:num_requests_waiting", model_name="x") is None


def test_track_keeps_gauges_balanced_on_every_exit() -> None:
    m = Metrics()
    running = lambda: m.value("sage:num_requests_running", model_name="x")  # noqa: E731
    waiting = lambda: m.value("sage:num_requests_waiting", model_name="x")  # noqa: E731

    with m.track("x", "chat") as t:  # left while queued: no success counted
        assert waiting() == 1
    assert waiting() == 0 and m.value("sage:request_success_total", model_name="x", finished_reason="cancelled") is None

    with m.track("x", "chat") as t:  # normal end
        t.admitted()
        assert running() == 1 and waiting() == 0
        t.tokens(1)
        t.tokens(2)
        t.finished("stop", prompt_tokens=3, completion_tokens=3)
    assert running() == 0
    assert m.value("sage:time_to_first_token_seconds_count", model_name="x") == 1
    assert m.value("sage:inter_token_latency_seconds_count", model_name="x") == 2

    with pytest.raises(RuntimeError), m.track("x", "chat") as t:
        t.admitted()
        raise RuntimeError("engine bug")
    assert running() == 0 and m.value("sage:request_success_total", model_name="x", finished_reason="error") == 1

    with m.track("x", "chat") as t:  # closed by the consumer mid-stream
        t.admitted()
    assert running() == 0 and m.value("sage:request_success_total", model_name="x", finished_reason="cancelled") == 1


def test_implements_the_control_planes_protocol() -> None:
    import inspect

    from sage_daemon.control.plane import PlaneMetrics

    for name, member in inspect.getmembers(PlaneMetrics, inspect.isfunction):
        if name.startswith("on_"):
            theirs = list(inspect.signature(member).parameters)
            ours = list(inspect.signature(getattr(Metrics, name)).parameters)
            assert ours[: len(theirs)] == theirs, name
