"""What the doors (HTTP routes, RPC handlers) may call: one object built by the composition root."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sage_client.protocol import NodeInfo
from sage_daemon.control.plane import ControlPlane
from sage_daemon.core.config import LoadedConfig
from sage_daemon.core.lifecycle import Lifecycle
from sage_daemon.core.metrics import Metrics
from sage_daemon.core.paths import Paths


@dataclass
class Services:
    loaded: LoadedConfig
    paths: Paths
    node: NodeInfo
    lifecycle: Lifecycle
    control: ControlPlane
    http_url: str = ""
    metrics: Metrics = field(default_factory=Metrics)  # the daemon's Prometheus registry (GET /metrics)
    jobs: Any = None  # the JobManager (sage_daemon.jobs.manager), None until it runs
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self):  # noqa: ANN201 - the Config struct
        return self.loaded.config
