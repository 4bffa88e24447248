"""The composition root: builds the services, opens both doors, and owns the one nursery tree.

Shutdown: SIGTERM/SIGINT → stop accepting (both doors) → drain in-flight work for up to
`daemon.drain_grace_s` → cancel the rest → exit 0. SIGHUP re-reads the config files and applies
what can change live; the rest is reported as needing a restart.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
from contextlib import ExitStack
from pathlib import Path
from collections.abc import Callable
from typing import Any

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig

from sage_client import protocol as p
from sage_client._version import __version__
from sage_client.protocol import NodeInfo
from sage_daemon.control.api import ServedControlPlane
from sage_daemon.control.gate import CpuGate
from sage_daemon.control.plane import ControlPlane
from sage_daemon.core.activation import ActivationError, take_activated_sockets
from sage_daemon.core.config import LIVE_KEYS, Config, ConfigError, LoadedConfig, ModelConfig, diff_keys, load_config, reload_refusal
from sage_daemon.core.lifecycle import Lifecycle
from sage_daemon.core.logging import log, set_level
from sage_daemon.core.memory import IdleTrimmer, trim_heap
from sage_daemon.core.metrics import Metrics
from sage_daemon.core.model_catalog import ModelCatalog
from sage_daemon.core.nodes import detect_node
from sage_daemon.core.paths import Paths, resolve_paths
from sage_daemon.core.ports import PortInUseError, port_holder
from sage_daemon.core.sdnotify import SystemdNotifier
from sage_daemon.engines.base import NullGate
from sage_daemon.engines.factory import make_factory
from sage_daemon.engines.hub import PullManager
from sage_daemon.engines.pool import EnginePool, Placement, estimate_memory_bytes
from sage_daemon.engines.sources import SourceError, resolve_local_source
from sage_daemon.http.app import create_app
from sage_daemon.http.lean import lean_app
from sage_daemon.http.connections import check_somaxconn, hypercorn_config, raise_nofile_limit
from sage_daemon.http.connections import serve as serve_http
from sage_daemon.jobs.manager import JobManager
from sage_daemon.model_admin import ModelAdmin, hf_cache_dir
from sage_daemon.rpc.handlers import make_handlers
from sage_daemon.rpc.server import PeerPolicy, RpcServer, bind_unix_socket
from sage_daemon.services import Services

logger = logging.getLogger("sage.daemon")
HEAP_TRIM_INTERVAL_S = 5.0  # how often the doors are sampled for "idle after work" (then the heap is trimmed)


class StartupError(Exception):
    """Start-up cannot go on; the message says why and what to do. Exit code 1."""


class AlreadyRunning(StartupError):
    pass


def acquire_lock(paths: Paths) -> int:
    """Hold an exclusive lock on the runtime dir's lock file for the daemon's lifetime."""
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another sage-daemon (pid {other}) is already running on {paths.runtime_dir}; "
            "stop it first, or give this one its own paths.runtime_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(host, port, port_holder(port)) from None
        raise StartupError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def build_control_plane(config: Config, node: NodeInfo, paths: Paths, metrics: Metrics | None = None) -> ControlPlane:
    """The engine pool and the control plane over it, sharing one CPU gate between engines."""
    gate = CpuGate(embedding_first=config.control.policy == "hybrid")
    interleave = config.control.cpu_sharing == "interleave"
    llm_gate = gate.view("llm") if interleave else NullGate()
    embedding_gate = gate.view("embedding") if interleave else NullGate()
    pool_ref: list[EnginePool] = []

    def pool_nursery() -> trio.Nursery:
        nursery = pool_ref[0].nursery
        if nursery is None:
            raise RuntimeError("the engine pool is not running")
        return nursery

    factory = make_factory(config, node, paths.data_dir, llm_gate, embedding_gate, pool_nursery)

    def memory_of(model: ModelConfig, placement: Placement) -> int:
        source = {"llamacpp": model.sources.llamacpp, "sentence-transformers": model.sources.sentence_transformers}.get(placement.backend, "")
        try:
            return estimate_memory_bytes(model, resolve_local_source(source, paths.data_dir)) if source else 0
        except SourceError:
            return 0

    pool = EnginePool(config, node, factory, memory_of)
    pool_ref.append(pool)
    return ControlPlane(pool, config.control, metrics=metrics, gate=gate)


PlaneFactory = Callable[[Config, NodeInfo, Paths, Metrics], ServedControlPlane]


class Daemon:
    """The composition root. `plane_factory` builds the control plane the doors and jobs call
    (the real one by default; tests hand in a fake through this seam)."""

    def __init__(
        self,
        loaded: LoadedConfig,
        config_file: str | None = None,
        overrides: list[tuple[str, Any, str]] | tuple[()] = (),
        plane_factory: PlaneFactory = build_control_plane,
    ):
        self.loaded = loaded
        self.plane_factory = plane_factory
        self.config_file = config_file
        self.overrides = list(overrides)
        self.lifecycle = Lifecycle()
        self.paths = resolve_paths(loaded.config)
        self.notifier = SystemdNotifier()
        self._http_shutdown = trio.Event()
        self._owns_socket = True  # False when systemd passed the RPC socket (socket activation)

    async def run(self, *, task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation), then drain and return."""
        config = self.loaded.config
        with ExitStack() as stack:
            self.paths.ensure()
            lock_fd = acquire_lock(self.paths)
            stack.callback(os.close, lock_fd)
            try:
                activated = take_activated_sockets()
            except ActivationError as exc:
                raise StartupError(str(exc)) from None
            # Sockets systemd passed are its own: used as they are, never unlinked by us.
            http_sock = activated.http or bind_tcp(config.http.host, config.http.port, config.http.backlog)
            for warning in (check_somaxconn(config.http.backlog), raise_nofile_limit(config.http.max_connections)):
                if warning:
                    log(logger, logging.WARNING, warning)
            stack.callback(http_sock.close)
            if activated.rpc is not None:
                rpc_sock = trio.socket.from_stdlib_socket(activated.rpc)
                self.paths = msgspec.structs.replace(self.paths, socket=Path(activated.rpc.getsockname()))
                self._owns_socket = False
            else:
                rpc_sock = await bind_unix_socket(self.paths.socket, config.rpc.group)
                stack.callback(self._remove_socket)
            stack.callback(rpc_sock.close)

            host, port = http_sock.getsockname()[:2]
            node = await trio.to_thread.run_sync(detect_node, config.nodes)
            metrics = Metrics()
            try:
                catalog = ModelCatalog(self.paths.state_dir / "models.json", config.models)
            except ConfigError as exc:
                raise StartupError(str(exc)) from None
            # The engines serve the config's models and those added at run time (sagectl models add).
            control = self.plane_factory(msgspec.structs.replace(config, models=catalog.models()), node, self.paths, metrics)
            self.control = control
            services = Services(
                loaded=self.loaded,
                paths=self.paths,
                node=node,
                lifecycle=self.lifecycle,
                control=control,
                metrics=metrics,
                http_url=f"http://{'[' + host + ']' if ':' in host else host}:{port}",
            )
            hf_cache = hf_cache_dir(config.paths.hf_cache_dir, self.paths.data_dir)
            # A pull yields the cores to chats waiting for their first token (besides running at nice 19).
            pulls = PullManager(hf_cache, token=os.environ.get("HF_TOKEN") or None, endpoint=os.environ.get("HF_ENDPOINT") or None,
                                pause=control.pause_for_interactive)
            services.models = ModelAdmin(catalog, control, self.paths.data_dir, hf_cache, config.paths.models_dir, pulls)
            services.jobs = JobManager(
                config.jobs, self.paths.state_dir, self.paths.data_dir, control, node, config.control.reserved_interactive_slots,
                stopping=lambda: self.lifecycle.state == "draining", http_url=services.http_url, socket_path=str(self.paths.socket),
            )
            self.services = services
            rpc = RpcServer(
                make_handlers(services),
                welcome=lambda: p.Welcome(p.PROTOCOL_VERSION, __version__, os.getpid(), services.http_url),
                lifecycle=self.lifecycle,
                peer_policy=PeerPolicy(config.rpc.group, config.rpc.group_role),
                max_frame_bytes=config.rpc.max_frame_bytes,
            )
            # Hypercorn closes the socket it is given: give it its own descriptor of ours.
            hyper = hypercorn_config(config.http, config.daemon.drain_grace_s, f"fd://{os.dup(http_sock.fileno())}")

            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(control.serve)
                    await nursery.start(pulls.run)
                    await nursery.start(services.jobs.run)
                    await nursery.start(self._serve_http, lean_app(create_app(services), services), hyper)
                    rpc_scope = trio.CancelScope()
                    await nursery.start(self._serve_rpc, rpc, rpc_sock, rpc_scope)
                    self.lifecycle.state = "serving"
                    log(logger, logging.INFO, "serving", http=services.http_url, socket=str(self.paths.socket), pid=os.getpid())
                    self.notifier.ready(f"serving on {services.http_url} and {self.paths.socket}")
                    if self.notifier.watchdog_interval_s:
                        nursery.start_soon(self._watchdog)
                    nursery.start_soon(self._trim_heap_when_idle)
                    task_status.started(services)
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            await self.reload()
                            continue
                        log(logger, logging.INFO, "stopping", signal=signal.Signals(signum).name)
                        break
                    await self._drain(rpc_scope)
                    await control.aclose()
                    nursery.cancel_scope.cancel()
            log(logger, logging.INFO, "stopped")
            self.notifier.close()

    async def _serve_http(self, app: Any, hyper: HypercornConfig, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        # The door's own serve: hypercorn's worker with a connection cap and the closes hypercorn misses.
        await serve_http(app, hyper, max_connections=self.loaded.config.http.max_connections, shutdown_trigger=self._http_shutdown.wait, task_status=task_status)

    async def _serve_rpc(self, rpc: RpcServer, sock: Any, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await rpc.serve(sock, task_status=task_status)

    async def _drain(self, rpc_scope: trio.CancelScope) -> None:
        grace = self.loaded.config.daemon.drain_grace_s
        self.lifecycle.state = "draining"
        self.control.stop_accepting()
        self.notifier.stopping(f"draining {self.lifecycle.in_flight} requests")
        self._http_shutdown.set()  # hypercorn stops accepting and finishes open requests
        self._remove_socket()  # new RPC clients see "not running" instead of hanging
        with trio.move_on_after(grace) as scope:
            await self.lifecycle.wait_idle()
        if scope.cancelled_caught:
            log(logger, logging.WARNING, "drain grace over; cancelling the rest", in_flight=self.lifecycle.in_flight, grace_s=grace)
        rpc_scope.cancel()

    def _remove_socket(self) -> None:
        if not self._owns_socket:
            return  # systemd's socket: new clients wait in its queue for the next start
        try:
            self.paths.socket.unlink()
        except FileNotFoundError:
            pass

    async def reload(self) -> None:
        self.notifier.reloading()
        try:
            fresh = load_config(self.config_file, self.overrides)
        except ConfigError as exc:
            log(logger, logging.ERROR, "config reload failed; keeping the running config", error=str(exc))
            self.notifier.notify("READY=1", "STATUS=serving (config reload failed)")
            return
        refusal = reload_refusal(self.loaded, fresh)
        if refusal is not None:
            # An emptied or half-written file must not silently drop the API keys (or anything else).
            log(logger, logging.ERROR, refusal)
            self.notifier.notify("READY=1", "STATUS=serving (config reload refused)")  # systemd waits for READY=1 after RELOADING=1
            return
        changed = diff_keys(self.loaded.config, fresh.config)
        live = [key for key in changed if key in LIVE_KEYS]
        restart = [key for key in changed if key not in LIVE_KEYS]
        if live:
            # Apply the live values on top of the running config; the rest waits for a restart.
            running = msgspec.to_builtins(self.loaded.config)
            new = msgspec.to_builtins(fresh.config)
            for key in live:
                section, name = key.split(".", 1)
                running[section][name] = new[section][name]
                self.loaded.sources[key] = fresh.sources.get(key, "built-in default")
            self.loaded.config = msgspec.convert(running, type(self.loaded.config))
            self.services.loaded = self.loaded
            set_level(self.loaded.config.daemon.log_level)
            if "control.policy" in live:
                self.control.set_policy(self.loaded.config.control.policy)
        self.lifecycle.notes = [f"config reload: {key} changed and needs a restart" for key in restart]
        log(logger, logging.INFO, "config reloaded", applied=",".join(live) or "-", needs_restart=",".join(restart) or "-")
        self.notifier.notify("READY=1", "STATUS=serving (config reloaded)")

    async def _trim_heap_when_idle(self) -> None:
        """After a burst, give the heap it left behind back to the kernel (RSS back near where it was)."""
        trimmer = IdleTrimmer()
        while True:
            await trio.sleep(HEAP_TRIM_INTERVAL_S)
            if trimmer.should_trim(self.lifecycle.in_flight, self.lifecycle.tracked_total):
                await trio.to_thread.run_sync(trim_heap)

    async def _watchdog(self) -> None:
        assert self.notifier.watchdog_interval_s
        while True:
            self.notifier.watchdog()
            await trio.sleep(self.notifier.watchdog_interval_s)

