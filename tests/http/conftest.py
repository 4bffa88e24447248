"""Fixtures of the HTTP door: an in-process daemon whose control plane is the in-test fake,
handed in through the daemon's plane_factory seam (the daemon runs it as it runs the real one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import isolated_overrides
from tests.http.fakes import FakeControlPlane


class FakeDaemon:
    def __init__(self, instance: Any, control: FakeControlPlane):
        self.instance = instance
        self.services = instance.services
        self.control = control
        self.url = instance.services.http_url

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kwargs)


@pytest.fixture
async def make_fake_daemon(clean_env: Path, nursery: trio.Nursery):  # noqa: ANN201
    """make(("http.api_keys", ["k"]), ...) → a daemon in this trio run, serving the fake control plane."""
    from sage_daemon.core.config import load_config
    from sage_daemon.daemon import Daemon

    count = 0

    async def make(*settings: tuple[str, Any]) -> FakeDaemon:
        nonlocal count
        count += 1
        root = clean_env / f"d{count}"
        overrides = isolated_overrides(root) + [(key, value, "test") for key, value in settings]
        planes: list[FakeControlPlane] = []

        def fake_plane(config: Any, node: Any, paths: Any, metrics: Any) -> FakeControlPlane:
            planes.append(FakeControlPlane(metrics))
            return planes[-1]

        instance = Daemon(load_config(None, overrides), None, overrides, plane_factory=fake_plane)
        await nursery.start(instance.run)
        return FakeDaemon(instance, planes[0])

    yield make
    nursery.cancel_scope.cancel()


@pytest.fixture
async def fake(make_fake_daemon: Any) -> FakeDaemon:
    return await make_fake_daemon()
