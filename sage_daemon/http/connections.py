"""The HTTP door's connections: hypercorn's settings, a cap on open connections, and the closes
that hypercorn and h11 get wrong.

What is the libraries' (reproductions in docs/upstream/):

* hypercorn closes a finished connection (after `Connection: close`, HTTP/1.0, a response that
  ended before its request body, or the drain) from inside the application's task, right after
  it has sent the application `http.disconnect`. quart-trio answers that message by cancelling
  its request nursery, which is the task doing the close, so the close is cut short at its first
  checkpoint and the socket stays open until the client gives up. The same cancellation stops
  the keep-alive idle timer from being re-armed after a recycled request, so idle keep-alive
  connections never time out. `DoorApp` holds `http.disconnect` back from the application while
  the last body message is being sent, so nothing cancels that task mid-close.
* hypercorn waits for the idle timer (keep_alive_timeout) or the application before it closes a
  socket whose client has already closed: CLOSE-WAIT for seconds or minutes. `_TCPServer` closes
  as soon as the read side ends.
* h11 keeps a connection alive after a request with both Content-Length and Transfer-Encoding
  (RFC 9112 §6.1: the server MUST close after responding). `DoorApp` adds `Connection: close`
  to the response of such a request, which makes h11 close.
* hypercorn accepts without limit, one connection per scheduler round, and the listen backlog
  is its own default (100) unless `Config.backlog` is set. `serve` accepts in a thread of its
  own and caps open connections: past `max_connections` a connection gets an immediate 503
  with Retry-After (sent by the accept thread, not after the busy event loop gets to it, and
  without the GIL: `cython_ops.AcceptGate`) instead of a reset or a wait; during the drain, new connections get a 503 `shutting_down`
  until the open ones are done.

`serve` is hypercorn.trio.run.worker_serve cut down to what the daemon uses (plain TCP, one
worker, no QUIC/SSL/max_requests) with its own connection handler; it uses hypercorn's TCPServer,
Lifespan and WorkerContext (internal modules, stable from 0.14 to 0.18; tests/http/test_connections.py
goes through them, so an upgrade that moves them fails there first).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import time
import socket
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import msgspec
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.events import Event, RawData
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr

from cython_ops import AcceptGate, Outcome
from sage_daemon.core.config import HttpConfig

logger = logging.getLogger("sage.http.connections")

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
# Descriptors the daemon needs besides its HTTP connections: model files, the job store, RPC
# clients, log files, refusals in progress.
FD_RESERVE = 1024
HEAD_TIMEOUT_S = 1.0  # how long the rest of a refusal may take to send (when the socket did not take it whole)
LINGER_S = 2.0  # how long a refused connection is read (and discarded) after the answer
MAX_HEAD = 64 * 1024
# accept() errors that concern only the connection being accepted (as trio's SocketListener).
_IGNORED_ACCEPT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                          errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH}

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def hypercorn_config(http: HttpConfig, drain_grace_s: float, bind: str) -> Config:
    """hypercorn's Config for the HTTP door; `bind` is e.g. `fd://7` or `127.0.0.1:8888`."""
    hyper = Config()
    hyper.bind = [bind]
    hyper.backlog = http.backlog  # hypercorn calls listen() again with this (its default: 100)
    hyper.keep_alive_timeout = http.keep_alive_timeout_s
    hyper.graceful_timeout = drain_grace_s
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("sage.http.server")
    return hyper


def check_somaxconn(backlog: int, path: Path = SOMAXCONN) -> str | None:
    """A warning line when the kernel caps the listen backlog below `backlog` (Linux silently
    truncates listen()'s argument to net.core.somaxconn); None when it does not or cannot tell."""
    try:
        limit = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if limit >= backlog:
        return None
    return (
        f"the kernel caps the HTTP listen backlog at {limit} (net.core.somaxconn), below http.backlog = {backlog}: "
        f"bursts of more than {limit} new connections can be reset; raise it with `sysctl -w net.core.somaxconn={backlog}`"
    )


def raise_nofile_limit(max_connections: int) -> str | None:
    """Raise the soft limit on open files to what `max_connections` needs (up to the hard limit);
    a warning line when the hard limit is lower, since past it accept() fails with EMFILE and new
    connections wait in the backlog instead of getting the 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        return (
            f"the open-files limit is {soft}, below http.max_connections = {max_connections} plus {FD_RESERVE} for the rest: "
            f"lower http.max_connections to {max(1, soft - FD_RESERVE)} or raise LimitNOFILE / ulimit -n"
        )
    return None


# -- the ASGI side ---------------------------------------------------------------------------


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class DoorApp:
    """ASGI wrapper around the Quart app: the connection closes where it must, and the close
    is not cut short (see the module docstring)."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool] = lambda: False):
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        # RFC 9112 §6.1: both framings given → answer, then close (h11 would keep the connection
        # and read whatever follows the chunked body as the next request).
        smuggling = _header(headers, b"content-length") is not None and _header(headers, b"transfer-encoding") is not None
        finishing: trio.Event | None = None

        async def door_send(message: Message) -> None:
            nonlocal finishing
            kind = message["type"]
            if kind == "http.response.start" and (smuggling or self.draining()):
                out = list(message.get("headers") or [])
                if (_header(out, b"connection") or b"").lower() != b"close":
                    out = [(k, v) for k, v in out if k.lower() != b"connection"] + [(b"connection", b"close")]
                message = {**message, "headers": out}
            elif kind == "http.response.body" and not message.get("more_body", False):
                # hypercorn sends http.disconnect and then closes the connection, all inside
                # this call; door_receive holds the disconnect back until the call is over.
                finishing = trio.Event()
                try:
                    await send(message)
                finally:
                    finishing.set()
                return
            await send(message)

        async def door_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and finishing is not None:
                await finishing.wait()
            return message

        await self.app(scope, door_receive, door_send)


# -- the connection side ---------------------------------------------------------------------


def refusal_bytes(status: int, reason: str, message: str, code: str, retry_after_s: int) -> bytes:
    body = msgspec.json.encode({"error": {"message": message, "type": "server_error", "param": None, "code": code}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"retry-after: {retry_after_s}\r\nconnection: close\r\nserver: sage-daemon\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _TCPServer(TCPServer):
    def __init__(self, app: Any, config: Config, context: WorkerContext, state: ConnectionState, stream: trio.SocketStream, raw: socket.socket):
        # hypercorn's annotation says SSLStream; a plain SocketStream is its non-TLS path.
        super().__init__(app, config, context, state, cast(Any, stream))
        self._raw = raw  # the stdlib socket the stream wraps (the same descriptor)

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's, with a fast path: when no other write is in progress, the bytes go to
        the socket with one non-blocking send. hypercorn takes the connection's lock and calls
        trio's send_all, two scheduler rounds per write (the lock's checkpoint and the send's)
        even when the kernel takes everything at once, which it does for an SSE event or a
        small reply; that was most of what a streamed token cost the event loop beyond the
        engine (docs/BENCHMARKS.md, issue 23). What the kernel does not take (a slow reader)
        goes the usual way, in order, under the lock."""
        if isinstance(event, RawData) and event.data and not self.send_lock.locked() and not self.stream.socket.did_shutdown_SHUT_WR:
            try:
                sent = self._raw.send(event.data)
            except OSError:  # full (EAGAIN), or broken: send_all below says which, as before
                sent = 0
            if sent == len(event.data):
                return
            event = RawData(data=event.data[sent:], address=event.address)
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        await super()._read_data()
        # The read side is over (the client closed, reset, or we closed). hypercorn would now
        # wait for the keep-alive timer and the app task before closing: the socket would sit
        # in CLOSE-WAIT meanwhile. The app has been sent http.disconnect already; close now.
        await self.idle_task.stop()
        await self._close()


class ConnectionDoor:
    """Accepts connections, counts the open ones and hands each to hypercorn's TCPServer, or
    refuses it with a 503 (past the cap, or during the drain)."""

    def __init__(self, app: Any, config: Config, context: WorkerContext, state: ConnectionState, max_connections: int):
        self.app = app
        self.config = config
        self.context = context
        self.state = state
        self.max_connections = max_connections
        self.refused = 0
        # Counts and refuses without the GIL (cython_ops/accept.pyx says why).
        self._gate = AcceptGate(
            max_connections,
            refusal_bytes(
                503, "Service Unavailable", f"the server has {max_connections} open connections (http.max_connections); retry shortly",
                "too_many_connections", 1,
            ),
            refusal_bytes(503, "Service Unavailable", "the daemon is shutting down", "shutting_down", 5),
        )

    @property
    def open(self) -> int:
        """Connections admitted and not closed yet."""
        return cast(int, self._gate.open)

    @property
    def draining(self) -> bool:
        return cast(bool, self._gate.draining)

    def start_draining(self) -> None:
        """New connections get a 503 `shutting_down` from now on."""
        self._gate.set_draining()

    async def accept(self, listener: socket.socket, handler_nursery: trio.Nursery) -> None:
        """Accept until cancelled; the listener stays open (the drain goes on accepting on it).

        The accepting is done by a thread of its own, which answers a refused connection right
        there: in a burst the event loop is busy with the connections already in (one scheduler
        round can take most of a second on a loaded machine), and a refusal that waited for
        it would come late. Admitted connections go to the loop."""
        stop = threading.Event()
        token = trio.lowlevel.current_trio_token()

        def start_all(handlers: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]]) -> None:
            for position, (fn, args) in enumerate(handlers):
                try:
                    handler_nursery.start_soon(fn, *args)
                except RuntimeError:  # the nursery is closed: the server is stopping
                    for fn_left, args_left in handlers[position:]:
                        self._forget(args_left[0], fn_left)
                    return

        def spawn(handlers: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]]) -> None:
            try:
                token.run_sync_soon(start_all, handlers)  # one wake-up of the loop per batch
            except trio.RunFinishedError:
                for fn, args in handlers:
                    self._forget(args[0], fn)

        async with trio.open_nursery() as nursery:
            # Not abandoned on cancel: the thread is joined (it checks `stop` every 0.2 s).
            nursery.start_soon(partial(trio.to_thread.run_sync, self._accept_loop, listener, spawn, stop, limiter=trio.CapacityLimiter(1)))
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

    def _forget(self, sock: socket.socket, fn: Callable[..., Awaitable[None]]) -> None:
        sock.close()
        if fn == self._serve:
            self._gate.connection_closed()

    def _accept_loop(
        self, listener: socket.socket, spawn: Callable[[list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]]], None], stop: threading.Event
    ) -> None:
        """In the accept thread: the gate accepts a batch and answers the refused connections
        without the GIL; their sockets (to be read until the client closes) and the admitted ones
        go to the loop in one call."""
        listener.setblocking(False)
        warned_at = -1e9
        answers = {Outcome.REFUSED_FULL: self._gate.too_many, Outcome.REFUSED_DRAINING: self._gate.shutting_down}
        while not stop.is_set():
            accepted, error = self._gate.accept_batch(listener.fileno(), 200)
            handlers: list[tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]] = []
            for fd, outcome, sent in accepted:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                if outcome == Outcome.ADMITTED:
                    handlers.append((self._serve, (sock,)))
                    continue
                self.refused += 1
                if sent < 0:
                    sock.close()  # the client is gone already
                else:
                    handlers.append((self._linger, (sock, answers[outcome][sent:])))
            if handlers:
                spawn(handlers)
            if not error or error in _IGNORED_ACCEPT_ERRNOS:
                continue  # an ignored one concerned only the connection being accepted
            if error not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise OSError(error, os.strerror(error))
            # New connections wait in the backlog meanwhile; raise_nofile_limit says how to avoid it.
            if time.monotonic() - warned_at > 10:
                warned_at = time.monotonic()
                logger.warning("accept failed (%s): out of descriptors with %d connections open", errno.errorcode[error], self.open)
            stop.wait(0.1)

    async def _serve(self, sock: socket.socket) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        try:
            await _TCPServer(self.app, self.config, self.context, self.state, stream, sock).run()
        finally:
            await trio.aclose_forcefully(stream)
            self._gate.connection_closed()

    async def _linger(self, sock: socket.socket, unsent: bytes) -> None:
        """Finish a refusal: send what is left, then read until the client closes before
        closing: closing with unread bytes (its request) in the receive queue would make the
        kernel send a reset, which is what the refusal is there to avoid."""
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        try:
            if unsent:
                with trio.move_on_after(HEAD_TIMEOUT_S):
                    await stream.send_all(unsent)
                    await stream.send_eof()
            with trio.move_on_after(LINGER_S):
                while await stream.receive_some(MAX_HEAD):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def refuse_until_idle(self, listeners: list[socket.socket]) -> None:
        """During the drain: keep accepting, and answer each new connection with a 503, until
        the open connections are done (then the server returns and the listener closes)."""
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self.accept, listener, nursery)
            while self.open:  # bounded by the grace: the caller's deadline cancels this
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def serve(
    app: ASGIApp,
    config: Config,
    *,
    max_connections: int,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[ConnectionDoor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` (wrapped in DoorApp here) like hypercorn.trio.serve, plain HTTP binds only,
    with the connection cap. Started with nursery.start, it reports the ConnectionDoor (its
    counts are live)."""
    door_ref: list[ConnectionDoor] = []
    wrapped = ASGIWrapper(cast(Any, DoorApp(app, draining=lambda: bool(door_ref) and door_ref[0].draining)))
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        if sockets.secure_sockets or sockets.quic_sockets:
            raise ValueError("sage_daemon.http.connections.serve serves plain HTTP binds only")
        listeners = list(sockets.insecure_sockets)
        for sock in listeners:
            sock.listen(config.backlog)
            await config.log.info(f"Running on http://{repr_socket_addr(sock.family, sock.getsockname())}")
        door = ConnectionDoor(wrapped, config, context, ConnectionState(lifespan_state.copy()), max_connections)
        door_ref.append(door)
        try:
            async with trio.open_nursery() as server_nursery:
                task_status.started(door)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                        for listener in listeners:
                            nursery.start_soon(door.accept, listener, server_nursery)
                        await trio.sleep_forever()
                except BaseExceptionGroup as error:
                    _, other = error.split(ShutdownError)
                    if other is not None:
                        raise other
                finally:
                    # As hypercorn: open connections finish their request (idle ones close now)
                    # within the grace; meanwhile new ones are answered, not left in the backlog.
                    await context.terminated.set()
                    door.start_draining()
                    server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
                    server_nursery.start_soon(door.refuse_until_idle, listeners)
        finally:
            for listener in listeners:
                listener.close()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
