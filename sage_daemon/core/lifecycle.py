"""The daemon's serving state and its count of in-flight work, shared by both doors for the drain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import trio

State = Literal["starting", "serving", "draining"]


class Lifecycle:
    def __init__(self) -> None:
        self.state: State = "starting"
        self.started_at = time.time()
        self.in_flight = 0
        self.tracked_total = 0  # requests ever tracked: tells a sampler whether work came and went between samples
        self._idle = trio.Event()
        self._idle.set()
        self.notes: list[str] = []  # things an operator should know (e.g. a reload that needs a restart)

    @property
    def accepting(self) -> bool:
        return self.state != "draining"

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one request as in flight for as long as the block runs."""
        self.in_flight += 1
        self.tracked_total += 1
        if self.in_flight == 1:
            self._idle = trio.Event()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        while self.in_flight:
            await self._idle.wait()
