"""User functions for test pipelines, referenced as "tests.jobs.helpers:NAME"."""

from __future__ import annotations

import time
from typing import Any


def upper(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "text": item["text"].upper()}


def is_even(item: dict[str, Any]) -> bool:
    return int(item["n"]) % 2 == 0


def explode(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**item, "id": f"{item['id']}/{k}", "k": k} for k in range(2)]


def fail_on_three(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("n") == 3:
        raise ValueError("three is not allowed")
    return item


def slow(item: Any) -> Any:
    time.sleep(0.05)
    return item


class Suffix:
    """A class with execute(): one instance per worker."""

    def __init__(self) -> None:
        self.calls = 0

    def execute(self, item: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {**item, "text": item["text"] + "!"}


FLAKY_SEEN: dict[str, int] = {}


def flaky(item: dict[str, Any]) -> dict[str, Any]:
    """Fails the first time it sees an item."""
    FLAKY_SEEN[item["id"]] = FLAKY_SEEN.get(item["id"], 0) + 1
    if FLAKY_SEEN[item["id"]] == 1:
        raise RuntimeError("first try fails")
    return item
