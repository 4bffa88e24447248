"""Where the client looks for the daemon. The daemon uses the same rule for where it listens."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "sage"
SOCKET_NAME = "sage.sock"
SYSTEM_RUNTIME_DIR = Path("/run/sage")  # systemd's RuntimeDirectory=sage for the system service


def user_runtime_dir() -> Path:
    """XDG_RUNTIME_DIR/sage; root without one (a shell as root, not a login session) uses /run/sage."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        if os.geteuid() == 0:
            return SYSTEM_RUNTIME_DIR
        return Path(f"/tmp/sage-{os.geteuid()}")  # what platformdirs would pick, minus its warning
    return Path(platformdirs.user_runtime_dir(APP_NAME))


def default_socket_path() -> Path:
    """SAGE_SOCKET if set; else the user's daemon socket if present; else the system service's; else the user's."""
    explicit = os.environ.get("SAGE_SOCKET")
    if explicit:
        return Path(explicit)
    user_socket = user_runtime_dir() / SOCKET_NAME
    system_socket = SYSTEM_RUNTIME_DIR / SOCKET_NAME
    if not user_socket.exists() and system_socket.exists():
        return system_socket
    return user_socket
