"""The Unix-socket RPC door: peer checks, framing, dispatch to handlers, streamed replies.

Framing and message types live in `sage_client.protocol` (no I/O); this module is the trio
adapter around them. A bad frame, an oversized frame or an unknown method gets a typed error
on that connection only; nothing here can take the daemon or other connections down.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio

from sage_client import protocol as p
from sage_daemon.core.errors import ControlPlaneError, PermissionDeniedError
from sage_daemon.core.lifecycle import Lifecycle
from sage_daemon.core.logging import log
from sage_daemon.jobs.access import Principal, Role

logger = logging.getLogger("sage.rpc")
HELLO_TIMEOUT_S = 10.0
_PEERCRED = struct.Struct("3i")


ERROR_CODES: frozenset[str] = frozenset(v for k, v in vars(p.ErrorCode).items() if k.isupper())


class ClientGone(Exception):
    """Sending to the client failed: it went away. Raised only by `_Connection.send`, so a
    trio.ClosedResourceError from inside a handler (a channel of the plane) is told apart from a
    closed client socket: the first is a bug answered `internal` and logged, this one is not."""


class RpcError(Exception):
    """A typed error for the caller: `code` is a member of protocol.ErrorCode (clients branch on it)."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, f"{code!r} is not a protocol.ErrorCode member"
        super().__init__(message)
        self.code = code
        self.message = message



# What a `user` peer (a member of [rpc].group with group_role = "user") may call. Everything
# else is admin-only, including any method added later: a new method stays closed to group
# members until someone decides it is safe for them. job.submit is checked further by the job
# manager (built-in operators, paths under [jobs].allowed_roots); job.show/logs/watch/wait/
# cancel/retry by the job's owner (a user peer sees only its own jobs).
USER_METHODS: frozenset[str] = frozenset({
    "ping", "status", "version", "nodes", "ports", "models", "models.show", "chat", "queue", "policy.get",
    "job.embed", "job.generate", "job.rerank", "job.submit", "job.list", "job.show", "job.logs", "job.watch", "job.wait", "job.cancel", "job.retry",
    "collection.list", "collection.show",
})


@dataclass(frozen=True)
class Peer(Principal):
    """The process on the other end of a connection (SO_PEERCRED): a principal (uid, role) with
    its pid and gid, so handlers hand it to the job manager as it is."""

    pid: int
    gid: int


class ReplyStream:
    """Handed to handlers: who asked (`peer`), and for streaming methods each `send` becomes one
    Item frame of the reply."""

    def __init__(self, connection: _Connection, request_id: int):
        self._connection = connection
        self._id = request_id
        self.peer: Peer = connection.peer

    async def send(self, data: Any) -> None:
        await self._connection.send(p.Item(self._id, msgspec.to_builtins(data)))


Handler = Callable[[Any, ReplyStream], Awaitable[Any]]


class PeerPolicy:
    """Who may talk to the daemon, and as what: its own uid and root are `admin`; members of
    the configured group get `group_role` ("user" unless the config trusts the group)."""

    def __init__(self, group: str = "", group_role: Role = "user"):
        self.uid = os.geteuid()
        self.group = group
        self.group_role: Role = group_role
        self.gid = grp.getgrnam(group).gr_gid if group else None

    def role_of(self, uid: int, gid: int) -> Role | None:
        """The peer's role, or None when it may not connect at all."""
        if uid in (self.uid, 0):
            return "admin"
        if self.gid is None:
            return None
        if gid == self.gid:
            return self.group_role
        try:
            entry = pwd.getpwuid(uid)
            member = entry.pw_name in grp.getgrgid(self.gid).gr_mem or entry.pw_gid == self.gid
        except KeyError:
            return None
        return self.group_role if member else None

    def allows(self, uid: int, gid: int) -> bool:
        return self.role_of(uid, gid) is not None

    def refusal(self, peer: Peer, method: str) -> str | None:
        """Why `peer` may not call `method` (a message saying what to do), or None."""
        if peer.admin or method in USER_METHODS:
            return None
        return (
            f"{method} needs an admin peer and uid {peer.uid} is a \"user\" member of group {self.group!r}: "
            "run it as the daemon's user or root, or set [rpc].group_role = \"admin\" in the daemon's config to trust the whole group"
        )


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end of a Unix socket."""
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))


async def bind_unix_socket(path: Path, group: str = "") -> trio.socket.SocketType:
    """Bind the RPC socket with mode 0600 (0660 and the group's ownership when a group is configured)."""
    if path.exists() or path.is_symlink():
        mode = path.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise OSError(f"{path} exists and is not a socket; remove it or set rpc.socket to another path")
        path.unlink()  # stale: our lock file says no daemon owns it
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window where the socket is open to others
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class RpcServer:
    def __init__(
        self,
        handlers: dict[str, Handler],
        welcome: Callable[[], p.Welcome],
        lifecycle: Lifecycle,
        peer_policy: PeerPolicy,
        max_frame_bytes: int = p.DEFAULT_MAX_FRAME_BYTES,
    ):
        unknown = set(handlers) - set(p.METHODS)
        assert not unknown, f"handlers for methods the protocol does not declare: {unknown}"
        self.handlers = handlers
        self.welcome = welcome
        self.lifecycle = lifecycle
        self.peer_policy = peer_policy
        self.max_frame_bytes = max_frame_bytes
        self.connections = 0

    async def serve(self, sock: trio.socket.SocketType, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled. Each connection is served in its own task."""
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        connection = _Connection(self, stream)
        self.connections += 1
        try:
            await connection.run()
        except (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        except Exception:
            logger.exception("rpc connection failed")
        finally:
            self.connections -= 1
            await trio.aclose_forcefully(stream)


class _Connection:
    def __init__(self, server: RpcServer, stream: trio.SocketStream):
        self.server = server
        self.stream = stream
        self.decoder = p.FrameDecoder(server.max_frame_bytes)
        self.send_lock = trio.Lock()
        self.peer = Peer(uid=-1, role="user", pid=0, gid=-1)  # set from SO_PEERCRED before any request is read

    async def send(self, message: p.Message) -> None:
        data = p.encode_frame(message)
        async with self.send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError) as exc:
                raise ClientGone(str(exc)) from exc

    async def _next_message(self) -> p.Message | None:
        """The next message, None at end of stream. Undecodable frames are answered here and skipped."""
        while True:
            body = self.decoder.next_frame()  # raises a fatal ProtocolError for oversized frames
            if body is not None:
                try:
                    return p.decode_message(body)
                except p.ProtocolError as exc:
                    await self.send(p.Error(0, exc.code, exc.message))
                    continue
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.decoder.feed(data)

    async def run(self) -> None:
        pid, uid, gid = peer_credentials(self.stream.socket)
        role = self.server.peer_policy.role_of(uid, gid)
        if role is None:
            log(logger, logging.WARNING, "rpc peer refused", pid=pid, uid=uid, gid=gid)
            group = self.server.peer_policy.group
            how = f"ask to be added to group {group!r}" if group else "set rpc.group in the daemon's config to let a group in"
            await self.send(p.Error(0, p.ErrorCode.PERMISSION_DENIED, f"uid {uid} may not use this daemon; {how}"))
            return
        self.peer = Peer(uid=uid, role=role, pid=pid, gid=gid)
        try:
            with trio.fail_after(HELLO_TIMEOUT_S):
                first = await self._next_message()
        except trio.TooSlowError:
            await self.send(p.Error(0, p.ErrorCode.BAD_FRAME, f"no hello within {HELLO_TIMEOUT_S:.0f} s"))
            return
        except p.ProtocolError as exc:
            await self.send(p.Error(0, exc.code, exc.message))
            return
        if first is None:
            return
        if not isinstance(first, p.Hello):
            await self.send(p.Error(0, p.ErrorCode.BAD_FRAME, "the first message must be hello"))
            return
        if first.protocol != p.PROTOCOL_VERSION:
            await self.send(
                p.Error(0, p.ErrorCode.PROTOCOL_VERSION, f"client speaks protocol {first.protocol}, the daemon speaks {p.PROTOCOL_VERSION}: upgrade the older side")
            )
            return
        await self.send(self.server.welcome())
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    message = await self._next_message()
                except p.ProtocolError as exc:  # oversized frame: the stream can't be trusted
                    await self.send(p.Error(0, exc.code, exc.message))
                    break
                if message is None:
                    break
                if not isinstance(message, p.Request):
                    await self.send(p.Error(0, p.ErrorCode.BAD_FRAME, f"expected a request, got {type(message).__name__.lower()}"))
                    continue
                nursery.start_soon(self._dispatch, message)
            # End of stream or a fatal frame: stop work started for this client.
            nursery.cancel_scope.cancel()

    async def _dispatch(self, request: p.Request) -> None:
        server = self.server
        spec = p.METHODS.get(request.method)
        handler = server.handlers.get(request.method)
        try:
            if not server.lifecycle.accepting:
                raise RpcError(p.ErrorCode.SHUTTING_DOWN, "the daemon is shutting down; retry once it is back")
            params = p.decode_params(request.method, request.params)
            if handler is None or spec is None:
                raise RpcError(p.ErrorCode.UNKNOWN_METHOD, f"method {request.method!r} is not served by this daemon")
            refusal = server.peer_policy.refusal(self.peer, request.method)
            if refusal is not None:
                raise PermissionDeniedError(refusal)
            with server.lifecycle.track():  # until the reply is sent, so the drain waits for it
                result = await handler(params, ReplyStream(self, request.id))
                payload = msgspec.to_builtins(result)
                await self.send(p.End(request.id, payload) if spec.streaming else p.Reply(request.id, payload))
        except (RpcError, p.ProtocolError) as exc:
            await self.send(p.Error(request.id, exc.code, exc.message))
        except ControlPlaneError as exc:
            # `code` is the HTTP door's (OpenAI's) name; the RPC client gets the protocol's.
            if exc.rpc_code == p.ErrorCode.PERMISSION_DENIED:
                peer = self.peer
                log(logger, logging.WARNING, "rpc refused", method=request.method, uid=peer.uid, pid=peer.pid, role=peer.role, reason=exc.message)
            await self.send(p.Error(request.id, exc.rpc_code, exc.message))
        except ClientGone:
            raise
        except Exception as exc:  # our bug: log it with the request, answer typed
            logger.exception("rpc handler failed", extra={"fields": {"method": request.method, "id": request.id}})
            await self.send(p.Error(request.id, p.ErrorCode.INTERNAL, f"internal error in {request.method}: {type(exc).__name__}: {exc}"))
