"""The models a user added at run time (`sagectl models add`, `sagectl pull` + add), kept in the
state directory and layered over the config's `[[models]]`.

Why a file of its own rather than writing to the user's sage.toml: the config files are the
admin's (comments, order, /etc under systemd is read-only to the daemon); this one is the
daemon's to rewrite. It is JSON (msgspec), written whole to a temporary file and renamed, so
a crash leaves the old list or the new one, never half of one. Layering: an added model
replaces a config model of the same name (`sagectl models rm` brings the config's back);
`sagectl config show` names the layer each model came from.

Plain blocking code: callers on the trio thread use a worker thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec

from sage_daemon.core.config import ConfigError, ModelConfig

CONFIG_LAYER = "config"


class ModelsFileContent(msgspec.Struct, forbid_unknown_fields=True):
    models: list[ModelConfig] = []


class ModelCatalog:
    """The config's models plus the added ones; `models()` is what the engine pool serves."""

    def __init__(self, path: Path, configured: list[ModelConfig]):
        self.path = path
        self.configured = list(configured)
        self._lock = threading.Lock()
        self.added = self._read()

    @property
    def layer(self) -> str:
        return f"models file ({self.path})"

    def _read(self) -> list[ModelConfig]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read the models file {self.path}: {exc.strerror}") from None
        try:
            return msgspec.json.decode(raw, type=ModelsFileContent).models
        except msgspec.DecodeError as exc:
            raise ConfigError(
                f"the models file {self.path} is broken ({exc}); fix it, or move it away to start with the config's models only"
            ) from None

    def _write(self, models: list[ModelConfig]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        with partial.open("wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(ModelsFileContent(models)), indent=2))
            f.flush()
            os.fsync(f.fileno())
        partial.replace(self.path)

    def models(self) -> list[ModelConfig]:
        """Every model served, config order first, added ones after; an added one replaces a
        config model of its name in place."""
        added = {m.name: m for m in self.added}
        out = [added.pop(m.name, m) for m in self.configured]
        return out + list(added.values())

    def origin(self, name: str) -> str:
        return self.layer if any(m.name == name for m in self.added) else CONFIG_LAYER

    def add(self, model: ModelConfig) -> None:
        with self._lock:
            models = [m for m in self.added if m.name != model.name] + [model]
            self._write(models)
            self.added = models

    def remove(self, name: str) -> ModelConfig | None:
        """Forget an added model; returns the config's model of that name (now served again), if any."""
        with self._lock:
            models = [m for m in self.added if m.name != name]
            if len(models) == len(self.added):
                raise KeyError(name)
            self._write(models)
            self.added = models
        return next((m for m in self.configured if m.name == name), None)
