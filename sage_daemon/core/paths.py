"""Every directory the daemon uses. Order: the config's [paths] > systemd's *_DIRECTORY > platformdirs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec
import platformdirs

from sage_client.paths import APP_NAME, SOCKET_NAME, user_runtime_dir
from sage_daemon.core.config import Config


class Paths(msgspec.Struct, frozen=True):
    data_dir: Path  # models assembled from packages, collections
    state_dir: Path  # job database
    cache_dir: Path
    log_dir: Path
    runtime_dir: Path  # socket and lock file
    socket: Path

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "sage.lock"

    def ensure(self) -> None:
        for directory in (self.data_dir, self.state_dir, self.cache_dir, self.log_dir, self.runtime_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)


def _systemd_dir(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value.split(":")[0]) if value else None


def resolve_paths(config: Config, environ: Mapping[str, str] | None = None) -> Paths:
    environ = os.environ if environ is None else environ
    p = config.paths

    def pick(configured: str, systemd_var: str, default: str) -> Path:
        if configured:
            return Path(configured).expanduser()
        return _systemd_dir(environ, systemd_var) or Path(default)

    runtime = pick(p.runtime_dir, "RUNTIME_DIRECTORY", str(user_runtime_dir()))
    socket = Path(config.rpc.socket).expanduser() if config.rpc.socket else runtime / SOCKET_NAME
    return Paths(
        # systemd has no data directory of its own: /var/lib/sage (StateDirectory=) holds both.
        data_dir=pick(p.data_dir, "STATE_DIRECTORY", platformdirs.user_data_dir(APP_NAME)),
        state_dir=pick(p.state_dir, "STATE_DIRECTORY", platformdirs.user_state_dir(APP_NAME)),
        cache_dir=pick(p.cache_dir, "CACHE_DIRECTORY", platformdirs.user_cache_dir(APP_NAME)),
        log_dir=pick(p.log_dir, "LOGS_DIRECTORY", platformdirs.user_log_dir(APP_NAME)),
        runtime_dir=runtime,
        socket=socket,
    )
