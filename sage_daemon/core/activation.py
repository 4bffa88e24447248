"""systemd socket activation: the listening sockets systemd (or `systemd-socket-activate`) passes.

The protocol is sd_listen_fds(3): descriptors start at 3 (SD_LISTEN_FDS_START), `LISTEN_FDS`
says how many, `LISTEN_PID` must be our pid (otherwise they were meant for a parent and we
inherited the variables by accident), and `LISTEN_FDNAMES` names them, colon-separated, from
the socket unit's `FileDescriptorName=`.

sage.socket (`rpc`) and sage-http.socket (`http`) are two units because FileDescriptorName=
names every socket of one unit alike. Without names (one socket unit with both ListenStream=
lines, or a tool that passes none) the family decides: AF_UNIX is the RPC door, AF_INET and
AF_INET6 the HTTP door. Anything else is an error that names the fix,
because silently binding our own socket next to systemd's would leave the unit's socket dead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import msgspec

SD_LISTEN_FDS_START = 3
RPC_NAME = "rpc"
HTTP_NAME = "http"
_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The passed sockets do not fit the daemon's two doors; the message says what to change."""


class ActivatedSockets(msgspec.Struct, frozen=True):
    """The doors systemd passed; None for a door the daemon binds itself."""

    http: socket.socket | None = None
    rpc: socket.socket | None = None

    @property
    def any(self) -> bool:
        return self.http is not None or self.rpc is not None


def _door_of(sock: socket.socket, name: str, index: int) -> str:
    if name in (RPC_NAME, HTTP_NAME):
        return name
    # systemd names an fd after its socket unit ("sage.socket") when FileDescriptorName= is unset.
    unnamed = name in ("", "unknown", "stored", "connection") or name.endswith(".socket")
    if unnamed and sock.family == socket.AF_UNIX:
        return RPC_NAME
    if unnamed and sock.family in (socket.AF_INET, socket.AF_INET6):
        return HTTP_NAME
    raise ActivationError(
        f"socket activation passed fd {SD_LISTEN_FDS_START + index} named {name!r} ({sock.family.name}); "
        f"name the Unix socket {RPC_NAME!r} and the TCP socket {HTTP_NAME!r} with FileDescriptorName= in sage.socket"
    )


def take_activated_sockets(environ: MutableMapping[str, str] | None = None) -> ActivatedSockets:
    """The listening sockets passed to this process, by door. Removes the LISTEN_* variables, so
    children (engines, vLLM) never mistake them for their own, and marks the descriptors
    close-on-exec for the same reason. Returns an empty ActivatedSockets when none were passed."""
    environ = os.environ if environ is None else environ
    count, pid, names = (environ.pop(name, "") for name in _VARIABLES)
    if not count or pid != str(os.getpid()):
        return ActivatedSockets()
    try:
        n = int(count)
    except ValueError:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a number") from None
    labels = names.split(":") if names else []
    doors: dict[str, socket.socket] = {}
    for index in range(n):
        fd = SD_LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
        if sock.type != socket.SOCK_STREAM:
            raise ActivationError(f"socket activation passed fd {fd} of type {sock.type.name}; sage.socket must use ListenStream=")
        door = _door_of(sock, labels[index] if index < len(labels) else "", index)
        if door in doors:
            raise ActivationError(f"socket activation passed two {door!r} sockets (fds {doors[door].fileno()} and {fd}); pass one of each")
        doors[door] = sock
    return ActivatedSockets(http=doors.get(HTTP_NAME), rpc=doors.get(RPC_NAME))
