"""Server-sent events: the one parser the client and the daemon's remote engine both use.

I/O-free: text in (chunks of any size, or whole lines), `ServerSentEvent`s out. It follows the
WHATWG event-stream rules (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end with CRLF, LF or CR; a line starting with ":" is a comment (keep-alive); `data`
lines accumulate (joined by "\\n") and a blank line dispatches them; `event` names the event;
a single space after the colon is dropped; a field without a colon has an empty value.
One deliberate difference: an event still open when the stream ends is dispatched by `close()`
instead of being discarded, because some servers end an OpenAI stream with `data: [DONE]` and
no blank line, and the last event is the one that says the stream is complete.

No imports from sage_daemon: the client package must stand alone.
"""

from __future__ import annotations

import msgspec

__all__ = ["SSEDecoder", "ServerSentEvent"]


class ServerSentEvent(msgspec.Struct, frozen=True):
    data: str
    event: str = "message"
    id: str | None = None  # the last `id` field seen (the stream's last event id), if any


class SSEDecoder:
    """Feed it text (`feed`) or single lines (`feed_line`); call `close()` at the end of the stream."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._pending = ""  # text after the last line break: the start of a line not yet complete
        self._skip_lf = False  # the previous chunk ended with CR: a LF opening this one belongs to it
        self._started = False  # a BOM is stripped from the very start of the stream only

    def feed(self, text: str) -> list[ServerSentEvent]:
        """Events completed by this chunk of the stream; a line may be split across chunks anywhere."""
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        events = []
        buffer = self._pending + text
        start = 0
        length = len(buffer)
        while True:
            cr, lf = buffer.find("\r", start), buffer.find("\n", start)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            line = buffer[start:end]
            if buffer[end] == "\r":
                if end + 1 < length:
                    start = end + 2 if buffer[end + 1] == "\n" else end + 1
                else:  # a CR at the end of the chunk: the LF of a CRLF may open the next one
                    start = end + 1
                    self._skip_lf = True
            else:
                start = end + 1
            if (event := self.feed_line(line)) is not None:
                events.append(event)
        self._pending = buffer[start:]
        return events

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """One line (its line break may be left on); the event it completes, if any."""
        self._started = True
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: servers send them as keep-alives
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        return None  # `retry` and unknown fields: nothing a one-shot stream needs

    def close(self) -> ServerSentEvent | None:
        """End of the stream: the event that a final blank line would have dispatched, if any."""
        pending, self._pending = self._pending, ""
        if pending:
            self.feed_line(pending)
        return self._dispatch()

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""  # a blank line with no data resets the event name (WHATWG)
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or "message", self._last_id)
        self._data, self._event = [], ""
        return event
