"""A small blocking RPC client for the daemon's Unix socket (used by sagectl and scripts)."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import msgspec

from sage_client import protocol as p
from sage_client._version import __version__
from sage_client.paths import default_socket_path

START_HINT = "start it with `sage-daemon` (or `systemctl --user start sage` when installed as a service)"


class DaemonNotRunning(Exception):
    """Nothing answers on the socket. sagectl exits 3."""


class RpcCallError(Exception):
    """The daemon answered with a typed error. sagectl exits 1."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class RpcClient:
    def __init__(self, socket_path: str | Path | None = None, timeout: float | None = 60.0):
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = p.FrameDecoder(max_frame_bytes=1 << 31)
        self._ids = itertools.count(1)
        self.welcome: p.Welcome | None = None

    def __enter__(self) -> RpcClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> p.Welcome:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonNotRunning(f"the daemon is not running (nothing listens on {self.socket_path}): {START_HINT}") from None
        except PermissionError:
            sock.close()
            raise RpcCallError(
                p.ErrorCode.PERMISSION_DENIED,
                f"no permission to open {self.socket_path}: run as the daemon's user, or ask for the daemon's rpc.group",
            ) from None
        self._sock = sock
        try:
            self._send(p.Hello(client=f"sage_client/{__version__}"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused us before our hello arrived: its reason is waiting to be read
        reply = self._receive()
        if isinstance(reply, p.Error):
            self.close()
            raise RpcCallError(reply.code, reply.message)
        if not isinstance(reply, p.Welcome):
            self.close()
            raise RpcCallError(p.ErrorCode.BAD_FRAME, f"expected welcome, got {type(reply).__name__}")
        self.welcome = reply
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: p.Message) -> None:
        assert self._sock is not None, "connect() first"
        self._sock.sendall(p.encode_frame(message))

    def _receive(self) -> p.Message:
        assert self._sock is not None, "connect() first"
        while True:
            body = self._decoder.next_frame()
            if body is not None:
                return p.decode_message(body)
            data = self._sock.recv(65536)
            if not data:
                raise DaemonNotRunning(f"the daemon closed the connection on {self.socket_path} (it may be stopping)")
            self._decoder.feed(data)

    def _request(self, method: str, params: Any) -> int:
        request_id = next(self._ids)
        self._send(p.Request(request_id, method, p.encode_params(params if params is not None else {})))
        return request_id

    def call(self, method: str, params: Any = None) -> Any:
        """One request, one typed result (the Struct declared in protocol.METHODS)."""
        request_id = self._request(method, params)
        while True:
            message = self._receive()
            if isinstance(message, p.Error) and message.id in (request_id, 0):
                raise RpcCallError(message.code, message.message)
            if isinstance(message, (p.Reply, p.End)) and message.id == request_id:
                return _typed(method, message.result)

    def stream(self, method: str, params: Any = None) -> Generator[Any, None, Any]:
        """Items of a streamed reply as they arrive; the final result is the generator's return value."""
        request_id = self._request(method, params)
        while True:
            message = self._receive()
            if isinstance(message, p.Error) and message.id in (request_id, 0):
                raise RpcCallError(message.code, message.message)
            if isinstance(message, p.Item) and message.id == request_id:
                yield message.data
            elif isinstance(message, (p.End, p.Reply)) and message.id == request_id:
                return _typed(method, message.result)


def _typed(method: str, result: Any) -> Any:
    spec = p.METHODS.get(method)
    return msgspec.convert(result, spec.result) if spec is not None else result
