"""RPC methods: thin translations into calls on the services."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from typing import Any

import msgspec
import trio

from sage_client import protocol as p
from sage_client._version import __version__
from sage_daemon.core.config import effective_values
from sage_daemon.core.ports import SagePorts
from sage_daemon.rpc.server import Handler, ReplyStream
from sage_daemon.services import Services

SECRET_KEYS = ("http.api_keys",)
_REPORTED_PACKAGES = ("trio", "hypercorn", "quart", "quart-trio", "msgspec", "llama_cpp_python", "sentence-transformers", "torch", "vllm", "ray")


def _redact(key: str, value: Any) -> Any:
    if key in SECRET_KEYS and value:
        return ["***"] * len(value) if isinstance(value, list) else "***"
    return value


def make_handlers(services: Services) -> dict[str, Handler]:
    async def ping(params: p.EchoParams, _: ReplyStream) -> p.PingResult:
        if params.delay_s:
            await trio.sleep(params.delay_s)
        return p.PingResult(params.payload, time.time())

    async def status(_: p.Empty, __: ReplyStream) -> p.StatusResult:
        lifecycle = services.lifecycle
        return p.StatusResult(
            version=__version__,
            pid=os.getpid(),
            uptime_s=time.time() - lifecycle.started_at,
            http_url=services.http_url,
            socket=str(services.paths.socket),
            state=lifecycle.state,
            in_flight=lifecycle.in_flight,
            config_files=services.loaded.files,
            notes=list(lifecycle.notes),
        )

    async def config_show(_: p.Empty, __: ReplyStream) -> p.ConfigShowResult:
        return p.ConfigShowResult([p.ConfigValue(k, _redact(k, v), s) for k, v, s in effective_values(services.loaded)])

    async def nodes(_: p.Empty, __: ReplyStream) -> p.NodeInfo:
        return services.node

    async def ports(_: p.Empty, __: ReplyStream) -> p.PortsResult:
        http = services.config.http
        return await trio.to_thread.run_sync(SagePorts.report, services.node.is_wsl2, http.host, http.port)

    async def version(_: p.Empty, __: ReplyStream) -> p.VersionResult:
        packages = {}
        for name in _REPORTED_PACKAGES:
            try:
                packages[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
        return p.VersionResult(__version__, p.PROTOCOL_VERSION, platform.python_version(), packages)

    def model_row(info: object) -> p.ModelRow:
        return msgspec.convert(msgspec.to_builtins(info), p.ModelRow)

    async def models(_: p.Empty, __: ReplyStream) -> p.ModelsResult:
        return p.ModelsResult([model_row(info) for info in services.control.list_models()])

    async def load(params: p.ModelName, _: ReplyStream) -> p.ModelRow:
        return model_row(await services.control.pool.load(params.name))

    async def unload(params: p.ModelName, _: ReplyStream) -> p.ModelRow:
        return model_row(await services.control.pool.unload(params.name))

    async def queue(_: p.Empty, __: ReplyStream) -> p.QueueResult:
        control = services.control
        entries = [msgspec.convert(msgspec.to_builtins(e), p.QueueRow) for e in control.queue()]
        return p.QueueResult(control.policy.name, entries, {m: n for m, n in control.running.items() if n})

    async def policy_get(_: p.Empty, __: ReplyStream) -> p.PolicyResult:
        return p.PolicyResult(services.control.policy.name)

    async def policy_set(params: p.PolicyParams, _: ReplyStream) -> p.PolicyResult:
        previous = services.control.set_policy(params.name)
        return p.PolicyResult(services.control.policy.name, previous)

    return {
        "ping": ping, "status": status, "config.show": config_show, "nodes": nodes, "ports": ports, "version": version,
        "models": models, "load": load, "unload": unload, "queue": queue, "policy.get": policy_get, "policy.set": policy_set,
    }
