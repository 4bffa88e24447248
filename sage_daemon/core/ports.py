"""SagePorts: the port plan of the outline, WSL2-aware, with free-port search and clear conflicts."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Final

from sage_client.protocol import PortInfo, PortsResult


class PortInUseError(OSError):
    def __init__(self, host: str, port: int, holder: str):
        self.host, self.port, self.holder = host, port, holder
        who = f" by {holder}" if holder else ""
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is already in use{who}; stop that program or choose another port (http.port / --port)")


class SagePorts:
    GATEWAY_DEFAULT: Final = 8888  # the daemon's HTTP door
    LLM_DEFAULT: Final = 8001
    LLM_SECONDARY: Final = 8002
    LLM_WSL_FALLBACK: Final = 8901  # on WSL2, 8001 may show as listening and refuse connections
    EMBEDDING_DEFAULT: Final = 8090
    EMBEDDING_SECONDARY: Final = 8091
    BENCHMARK_LLM: Final = 8901
    BENCHMARK_EMBEDDING: Final = 8902
    BENCHMARK_API: Final = 8903
    ENGINE_RANGE: Final = range(8900, 9000)  # where engines that need a port (vLLM children) get one

    NAMED: Final = (
        "GATEWAY_DEFAULT", "LLM_DEFAULT", "LLM_SECONDARY", "LLM_WSL_FALLBACK", "EMBEDDING_DEFAULT",
        "EMBEDDING_SECONDARY", "BENCHMARK_LLM", "BENCHMARK_EMBEDDING", "BENCHMARK_API",
    )

    @classmethod
    def recommended_llm_port(cls, is_wsl2: bool) -> tuple[int, str]:
        if is_wsl2:
            return cls.LLM_WSL_FALLBACK, "WSL2 host: 8001 may show as listening and refuse connections, so LLM engines use 8901"
        return cls.LLM_DEFAULT, "not WSL2: the default LLM port 8001"

    @classmethod
    def find_free_port(cls, host: str = "127.0.0.1", ports: range = ENGINE_RANGE, exclude: set[int] | None = None) -> int:
        for port in ports:
            if exclude and port in exclude:
                continue
            if is_port_free(host, port):
                return port
        raise OSError(errno.EADDRINUSE, f"no free port in {ports.start}-{ports.stop - 1} on {host}")

    @classmethod
    def report(cls, is_wsl2: bool, host: str = "127.0.0.1", gateway_port: int = GATEWAY_DEFAULT) -> PortsResult:
        recommended, reason = cls.recommended_llm_port(is_wsl2)
        rows = []
        for name in cls.NAMED:
            port = gateway_port if name == "GATEWAY_DEFAULT" else getattr(cls, name)
            free = is_port_free(host, port)
            note = "this daemon's HTTP door" if name == "GATEWAY_DEFAULT" else ""
            holder = "" if free else port_holder(port)
            if holder.startswith(f"pid {os.getpid()} "):
                holder = "this daemon"
            rows.append(PortInfo(name, port, free, holder, note))
        return PortsResult(rows, recommended, reason)


def is_port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def tcp_sockets(port: int, state: str) -> list[str]:
    """Inodes of this host's TCP sockets whose local port is `port` in `state` (the kernel's hex
    code in /proc/net/tcp*: "0A" LISTEN, "08" CLOSE-WAIT); empty where /proc cannot tell."""
    inodes = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.append(fields[9])
    return inodes


def _listening_inodes(port: int) -> set[str]:
    return set(tcp_sockets(port, "0A"))


def port_holder(port: int) -> str:
    """'pid 123 (cmdline)' of the process listening on `port`, where /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return ""
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"pid {pid} ({cmdline[:120]})"
            except OSError:
                continue
    return "another process (not visible to this user)"
