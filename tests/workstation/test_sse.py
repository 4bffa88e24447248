"""sage_client.sse alone: the one SSE parser the client and the daemon's remote engine share."""

from __future__ import annotations

import pytest

from sage_client.sse import SSEDecoder, ServerSentEvent

STREAM = (
    ": keep-alive\n"
    "event: update\n"
    "id: 7\n"
    "data: {\"a\":\n"
    "data: 1}\n"
    "\n"
    "retry: 100\n"
    "data:no space\n"
    "data:  two spaces\n"
    "\n"
    "\n"  # a blank line with nothing pending dispatches nothing
    "data\n"  # a field without a colon: empty value
    "\n"
    "data: [DONE]\n"
    "\n"
)
EXPECTED = [
    ServerSentEvent('{"a":\n1}', "update", "7"),
    ServerSentEvent("no space\n two spaces", "message", "7"),  # only one space after the colon goes
    ServerSentEvent("", "message", "7"),
    ServerSentEvent("[DONE]", "message", "7"),
]


def decode_all(chunks: list[str]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    last = decoder.close()
    return events + ([last] if last is not None else [])


def test_whole_stream_in_one_chunk() -> None:
    assert decode_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_lines_split_anywhere_across_chunks(size: int) -> None:
    assert decode_all([STREAM[i : i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_ends_even_split_between_chunks(newline: str) -> None:
    text = STREAM.replace("\n", newline)
    assert decode_all([text]) == EXPECTED
    # Every split point, CRLF torn between two chunks included: "\r" | "\n" is one line end.
    for cut in range(1, len(text)):
        assert decode_all([text[:cut], text[cut:]]) == EXPECTED, cut


def test_a_final_event_without_a_blank_line_still_counts() -> None:
    assert decode_all(['data: {"x": 1}\n\ndata: [DONE]']) == [ServerSentEvent('{"x": 1}'), ServerSentEvent("[DONE]")]
    assert decode_all(["data: [DONE]\n"]) == [ServerSentEvent("[DONE]")]
    assert decode_all([": only a comment\n", "event: lonely\n"]) == []  # no data: nothing to dispatch


def test_event_name_resets_after_each_event_and_a_bom_is_dropped() -> None:
    events = decode_all(["\ufeffevent: first\ndata: a\n\ndata: b\n\nevent: ignored\n\ndata: c\n\n"])
    assert [(e.event, e.data) for e in events] == [("first", "a"), ("message", "b"), ("message", "c")]


def test_feed_line_takes_lines_with_or_without_their_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_line("data: x\r\n") is None
    assert decoder.feed_line("data: y") is None
    assert decoder.feed_line("\r\n") == ServerSentEvent("x\ny")
    assert decoder.feed_line(":comment") is None and decoder.close() is None
