"""RPC methods: thin translations into calls on the services."""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import platform
import time
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from sage_client import protocol as p
from sage_client._version import __version__
from sage_daemon.core.config import effective_values
from sage_daemon.core.errors import InvalidRequestError
from sage_daemon.core.ports import SagePorts
from sage_daemon.jobs.access import Principal
from sage_daemon.rpc.server import Handler, ReplyStream, RpcError
from sage_daemon.services import Services

if TYPE_CHECKING:
    from sage_daemon.model_admin import ModelAdmin
    from sage_daemon.jobs.manager import JobManager

SECRET_KEYS = ("http.api_keys",)
_REPORTED_PACKAGES = ("trio", "hypercorn", "quart", "quart-trio", "msgspec", "llama_cpp_python", "sentence-transformers", "torch", "vllm", "ray")


def _redact(key: str, value: Any) -> Any:
    if key in SECRET_KEYS and value:
        return ["***"] * len(value) if isinstance(value, list) else "***"
    return value


def principal(reply: ReplyStream) -> Principal:
    """Who the job manager acts for: the connection's peer (a Principal: its uid and role)."""
    return reply.peer


def make_handlers(services: Services) -> dict[str, Handler]:
    """Handlers call only `services.control`'s ControlPlaneAPI and the job manager. Which peer
    may call which method is the server's table (`rpc.server.USER_METHODS`); what a user peer's
    job may touch, and whose jobs it sees, is the job manager's (`reply.peer` passed on)."""

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
        rows = [p.ConfigValue(k, _redact(k, v), s) for k, v, s in effective_values(services.loaded)]
        if services.models is not None:  # models added at run time: their own layer
            catalog = services.models.catalog
            rows += [p.ConfigValue(f"models.{m.name}", msgspec.to_builtins(m), catalog.layer) for m in catalog.added]
        return p.ConfigShowResult(rows)

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
        return model_row(await services.control.load(params.name))

    async def unload(params: p.ModelName, _: ReplyStream) -> p.ModelRow:
        return model_row(await services.control.unload(params.name))

    def admin() -> ModelAdmin:
        if services.models is None:
            raise RpcError(p.ErrorCode.UNAVAILABLE, "model administration is not running")
        return services.models

    async def models_add(params: p.ModelAddParams, _: ReplyStream) -> p.ModelRow:
        return await admin().add(params)

    async def models_rm(params: p.ModelRemoveParams, _: ReplyStream) -> p.ModelRemoved:
        return await admin().remove(params)

    async def models_show(params: p.ModelName, _: ReplyStream) -> p.ModelDetail:
        return await admin().show(params.name)

    async def models_available(_: p.Empty, __: ReplyStream) -> p.AvailableResult:
        return await admin().available()

    async def models_pull(params: p.PullParams, reply: ReplyStream) -> p.PullResult:
        result: p.PullResult | None = None
        async for event in admin().pull(params.ref):
            if isinstance(event, p.PullResult):
                result = event
            else:
                await reply.send(event)
        assert result is not None, "a pull ends with its result or an error"
        return result

    chat_ids = itertools.count(1)

    async def chat(params: p.ChatParams, reply: ReplyStream) -> p.ChatEnd:
        """One streamed assistant turn (sagectl run); the caller closing the connection ends it."""
        from sage_daemon.control.api import Priority, RequestMeta
        from sage_daemon.engines.base import ChatMessage, GenerationRequest, SamplingParams

        request_id = f"rpc-chat-{os.getpid()}-{next(chat_ids)}"
        sampling = SamplingParams(max_tokens=params.max_tokens or 2048, temperature=params.temperature, seed=params.seed)
        request = GenerationRequest(request_id=request_id, sampling=sampling, messages=tuple(ChatMessage(m.role, m.content) for m in params.messages))
        started = time.monotonic()
        stream = await services.control.generate(params.model, "chat", request, RequestMeta(request_id=request_id, priority=Priority.HIGH, caller="rpc"))
        last = None
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                if chunk.error:
                    raise RpcError(p.ErrorCode.UNAVAILABLE, f"model {params.model} failed: {chunk.error}")
                if chunk.text or chunk.reasoning:
                    await reply.send(p.ChatDelta(chunk.text, chunk.reasoning))
                last = chunk
        assert last is not None
        return p.ChatEnd(last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens, round(time.monotonic() - started, 3))

    async def queue(_: p.Empty, __: ReplyStream) -> p.QueueResult:
        snapshot = services.control.queue_snapshot()
        entries = [msgspec.convert(msgspec.to_builtins(e), p.QueueRow) for e in snapshot.entries]
        return p.QueueResult(snapshot.policy, entries, {m: n for m, n in snapshot.running.items() if n})

    async def policy_get(_: p.Empty, __: ReplyStream) -> p.PolicyResult:
        return p.PolicyResult(services.control.policy_name)

    async def policy_set(params: p.PolicyParams, _: ReplyStream) -> p.PolicyResult:
        if params.name not in p.POLICY_NAMES:
            raise InvalidRequestError(f"unknown policy {params.name!r}: use one of {', '.join(p.POLICY_NAMES)}", param="name")
        previous = services.control.set_policy(params.name)
        return p.PolicyResult(services.control.policy_name, previous)

    # ----------------------------------------------------------------- jobs and collections

    def jobs() -> JobManager:
        if services.jobs is None:
            raise RpcError(p.ErrorCode.UNAVAILABLE, "the job manager is not running")
        return services.jobs

    async def job_submit(params: p.JobSubmitParams, reply: ReplyStream) -> p.JobSummary:
        if params.toml:
            return await jobs().submit_toml(params.toml, params.source_path, params.name, principal(reply))
        if params.spec is not None:
            from sage_daemon.jobs.spec import spec_from_dict

            spec = spec_from_dict({**params.spec, **({"name": params.name} if params.name else {})})
            return await jobs().submit(spec, "", os.path.dirname(params.source_path) if params.source_path else "", principal(reply))
        raise RpcError(p.ErrorCode.INVALID_PARAMS, "job.submit needs toml (a pipeline file's text) or spec (a table)")

    async def job_list(params: p.JobListParams, reply: ReplyStream) -> p.JobListResult:
        return p.JobListResult(await jobs().list(params.state, params.limit, principal(reply)))

    async def owned(job_id: int, reply: ReplyStream) -> JobManager:
        """The job manager, once the peer may see job `job_id` (a user peer: its own jobs)."""
        manager = jobs()
        await manager.check_owner(job_id, principal(reply))
        return manager

    async def job_show(params: p.JobId, reply: ReplyStream) -> p.JobDetail:
        return await (await owned(params.id, reply)).show(params.id)

    async def job_logs(params: p.JobLogsParams, reply: ReplyStream) -> p.JobLogsEnd:
        await owned(params.id, reply)
        last = params.after
        async for event in jobs().logs(params.id, params.follow, params.after):
            await reply.send(event)
            last = event.seq
        return p.JobLogsEnd(await jobs().summary(params.id), last)

    async def job_watch(params: p.JobWatchParams, reply: ReplyStream) -> p.JobDetail:
        await owned(params.id, reply)
        last = None
        async for detail in jobs().watch(params.id, params.interval_s, params.results):
            last = detail
            await reply.send(detail)
        assert last is not None
        return last

    async def job_wait(params: p.JobWaitParams, reply: ReplyStream) -> p.JobDetail:
        return await (await owned(params.id, reply)).wait(params.id, params.timeout_s, params.results)

    async def job_cancel(params: p.JobId, reply: ReplyStream) -> p.JobSummary:
        return await (await owned(params.id, reply)).cancel(params.id)

    async def job_retry(params: p.JobId, reply: ReplyStream) -> p.JobSummary:
        return await (await owned(params.id, reply)).retry(params.id)

    async def job_embed(params: p.JobEmbedParams, _: ReplyStream) -> p.JobEmbedResult:
        return p.JobEmbedResult(await jobs().embed_for_stage(params.model, params.texts, params.priority))

    async def job_rerank(params: p.JobRerankParams, _: ReplyStream) -> p.JobRerankResult:
        return p.JobRerankResult(await jobs().rerank_for_stage(params.model, params.query, params.documents, params.priority))

    async def job_generate(params: p.JobGenerateParams, _: ReplyStream) -> p.JobGenerateResult:
        text, finish = await jobs().generate_for_stage(params)
        return p.JobGenerateResult(text, finish)

    async def collection_list(_: p.Empty, __: ReplyStream) -> p.CollectionListResult:
        return p.CollectionListResult(await jobs().collection_list())

    async def collection_show(params: p.CollectionName, _: ReplyStream) -> p.CollectionRow:
        return await jobs().collection_show(params.name)

    async def collection_drop(params: p.CollectionName, _: ReplyStream) -> p.CollectionRow:
        return await jobs().collection_drop(params.name)

    return {
        "job.submit": job_submit, "job.list": job_list, "job.show": job_show, "job.logs": job_logs, "job.watch": job_watch,
        "job.wait": job_wait, "job.cancel": job_cancel, "job.retry": job_retry, "job.embed": job_embed, "job.generate": job_generate, "job.rerank": job_rerank,
        "collection.list": collection_list, "collection.show": collection_show, "collection.drop": collection_drop,
        "ping": ping, "status": status, "config.show": config_show, "nodes": nodes, "ports": ports, "version": version,
        "models": models, "models.add": models_add, "models.rm": models_rm, "models.show": models_show, "models.available": models_available, "models.pull": models_pull, "chat": chat,
        "load": load, "unload": unload, "queue": queue, "policy.get": policy_get, "policy.set": policy_set,
    }
