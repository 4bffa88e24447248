"""Turning sampled tokens into streamed text: UTF-8 safe byte decoding and stop strings.

Both are plain objects with no llama.cpp dependency, so they are tested on their own.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class Utf8StreamDecoder:
    """Bytes of token pieces in, complete characters out.

    A token can end in the middle of a multi-byte character (byte-fallback vocabularies split
    emoji and CJK across tokens); the incomplete tail is held until the next piece completes
    it. Invalid bytes become U+FFFD rather than raising.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """End of stream: an incomplete trailing character (cut by max_tokens) is dropped, not
        turned into U+FFFD, so a stream never ends in a broken character."""
        self._decoder.reset()
        return ""


class StopStringMatcher:
    """Finds stop strings in streamed text, even when they span token boundaries.

    Text that could be the start of a stop string is held back until it is either completed
    (generation stops; the stop string and what follows are never emitted) or ruled out.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._max_len = max((len(s) for s in self.stops), default=0)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        pending = self._pending + text
        hit = -1
        for stop in self.stops:
            i = pending.find(stop)
            if i != -1 and (hit == -1 or i < hit):
                hit = i
        if hit != -1:
            self._pending = ""
            return pending[:hit], True
        hold = self._held_suffix_len(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        """The held-back text, once the stream ended for another reason (EOS, length)."""
        pending, self._pending = self._pending, ""
        return pending

    def _held_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = min(len(text), self._max_len - 1)
        for n in range(longest, 0, -1):
            tail = text[-n:]
            if any(stop.startswith(tail) for stop in self.stops):
                return n
        return 0
