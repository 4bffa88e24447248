"""What the doors (HTTP routes, RPC handlers) may call: one object built by the composition root."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sage_client.protocol import NodeInfo
from sage_daemon.control.api import ControlPlaneAPI
from sage_daemon.core.config import Config, LoadedConfig
from sage_daemon.core.lifecycle import Lifecycle
from sage_daemon.core.metrics import Metrics
from sage_daemon.core.paths import Paths

if TYPE_CHECKING:
    from sage_daemon.jobs.manager import JobManager
    from sage_daemon.model_admin import ModelAdmin


@dataclass
class Services:
    loaded: LoadedConfig
    paths: Paths
    node: NodeInfo
    lifecycle: Lifecycle
    control: ControlPlaneAPI  # the doors call only this surface of the control plane
    http_url: str = ""
    metrics: Metrics = field(default_factory=Metrics)  # the daemon's Prometheus registry (GET /metrics)
    jobs: JobManager | None = None  # None until the job manager runs
    models: ModelAdmin | None = None  # models added, removed, pulled at run time (None with a fake plane)

    @property
    def config(self) -> Config:
        return self.loaded.config
