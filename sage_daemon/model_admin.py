"""Adding, removing, describing and pulling models while the daemon runs: what `sagectl models
add|rm|show|--available`, `sagectl pull` and the dashboard's admin routes call (one
implementation for the RPC and the HTTP doors).

The catalog (core/model_catalog.py) persists the added models; the control plane serves them
(`put_model` / `remove_model`); local_models says what a path on disk is; hub pulls from the
Hugging Face Hub. File work runs on worker threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, cast

import msgspec
import trio

from sage_client import protocol as p
from sage_daemon.control.api import ControlPlaneAPI
from sage_daemon.core.config import ModelConfig
from sage_daemon.core.errors import InvalidRequestError, NotFoundError
from sage_daemon.core.model_catalog import ModelCatalog
from sage_daemon.engines import local_models
from sage_daemon.engines.sources import SourceError, resolve_local_source

if TYPE_CHECKING:
    from sage_daemon.engines.hub import PullManager, PullProgress


def hf_cache_dir(configured: str, data_dir: Path) -> Path:
    """Where pulls go: [paths].hf_cache_dir, else $HF_HUB_CACHE, else DATA_DIR/huggingface/hub."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return data_dir / "huggingface" / "hub"


class ModelAdmin:
    def __init__(self, catalog: ModelCatalog, control: ControlPlaneAPI, data_dir: Path, hf_cache: Path, models_dir: str = "", pulls: PullManager | None = None):
        self.pulls = pulls
        self.catalog = catalog
        self.control = control
        self.data_dir = data_dir
        self.hf_cache = hf_cache
        self.models_dir = Path(models_dir).expanduser() if models_dir else None

    def _row(self, info: object) -> p.ModelRow:
        return msgspec.convert(msgspec.to_builtins(info), p.ModelRow)

    # ------------------------------------------------------------------ discovery

    def _scan(self) -> list[local_models.LocalModel]:
        found = local_models.scan_hf_cache(self.hf_cache)
        default_cache = Path.home() / ".cache" / "huggingface" / "hub"
        if default_cache != self.hf_cache and os.access(default_cache, os.R_OK):
            found += local_models.scan_hf_cache(default_cache)  # what the user pulled with other tools
        if self.models_dir is not None:
            found += local_models.scan_models_dir(self.models_dir)
        return found

    async def available(self) -> p.AvailableResult:
        found = await trio.to_thread.run_sync(self._scan)
        served = {path for m in self.catalog.models() for path in (m.sources.llamacpp, m.sources.sentence_transformers) if path}
        return p.AvailableResult([p.AvailableModel(**msgspec.structs.asdict(m), added=m.path in served) for m in found])

    # ------------------------------------------------------------------ pull

    async def pull(self, ref: str) -> AsyncIterator[p.PullEvent | p.PullResult]:
        """Progress events of pulling `ref` (joining a pull of it already running), then the result."""
        if self.pulls is None:
            raise InvalidRequestError("pulling is not available in this daemon", param="ref")
        async with aclosing(cast("AsyncGenerator[PullProgress, None]", self.pulls.pull(ref))) as events:
            async for event in events:
                if event.model is None:
                    yield p.PullEvent(event.phase, event.file or "", event.completed, event.total, event.bytes_per_s, event.eta_s)
                    continue
                model = event.model
                name = local_models.suggested_name(model.repo, model.quant or "")
                yield p.PullResult(model.ref, model.path, model.kind, model.backend, model.size_bytes, name, model.quant or "")

    # ------------------------------------------------------------------ add, remove, show

    async def _resolve(self, source: str) -> Path:
        """A path for `source`: itself, a name `available` lists, or an `hf:` ref in the cache."""
        path = Path(source).expanduser()
        if path.exists():
            return path.absolute()  # not resolve(): a pulled file is a symlink to a blob without its .gguf name
        found = await trio.to_thread.run_sync(self._scan)
        by_name = {m.name: m for m in found}
        if source in by_name:
            return Path(by_name[source].path)
        if source.startswith("hf:") or (source.count("/") in (1, 2) and not source.startswith(("/", ".", "~"))):
            from sage_daemon.engines import hub

            ref = hub.parse_ref(source)
            pulled = await trio.to_thread.run_sync(hub.find_pulled, ref, self.hf_cache)
            if pulled is not None:
                return Path(pulled)
            raise NotFoundError(f"{source} is not pulled yet: run `sagectl pull {source}` first (or `sagectl models add NAME --from {source}` does both)")
        names = ", ".join(sorted(by_name)) or "none"
        raise NotFoundError(f"no file, folder or available model named {source!r} (available: {names}); see `sagectl models --available`")

    async def add(self, params: p.ModelAddParams) -> p.ModelRow:
        path = await self._resolve(params.source)
        model = await trio.to_thread.run_sync(local_models.model_config, params.name, path, params.kind, params.n_ctx, params.parallel)
        await trio.to_thread.run_sync(self.catalog.add, model)
        return self._row(await self.control.put_model(model))

    async def remove(self, params: p.ModelRemoveParams) -> p.ModelRemoved:
        self.control.get_model(params.name)  # 404 naming the served models
        added = next((m for m in self.catalog.added if m.name == params.name), None)
        if added is None:
            raise InvalidRequestError(
                f"model {params.name!r} comes from the config, not from `sagectl models add`; remove its [[models]] entry in the config file "
                "(`sagectl config show` names it) and reload, or `sagectl unload` it",
                param="name",
            )
        await self.control.remove_model(params.name)
        restored = await trio.to_thread.run_sync(self.catalog.remove, params.name)
        if restored is not None:
            await self.control.put_model(restored)
        purged = await trio.to_thread.run_sync(self._purge, added) if params.purge else 0
        return p.ModelRemoved(params.name, restored is not None, purged)

    def _purge(self, model: ModelConfig) -> int:
        """Delete a removed model's downloads when they lie in the daemon's pull cache and no other
        served model uses them (never a user's own file): its snapshot entries (a GGUF's file, every
        part of a split one, or a sentence-transformers folder) and the blobs they link to. The
        repo's folder goes once no snapshot entry of it is left, so another quant pulled from the
        same repo and not removed stays."""
        files = self._pulled_files(model)
        if not files:
            return 0
        cache = self.hf_cache.resolve()
        blobs = {f.resolve() for f in files}
        for other in self.catalog.models():
            if blobs & {f.resolve() for f in self._pulled_files(other)}:
                return 0
        size = sum(b.stat().st_size for b in blobs if b.is_file())
        for entry in files:
            entry.unlink(missing_ok=True)
        for blob in blobs:
            blob.unlink(missing_ok=True)
        repo_dir = cache / files[0].relative_to(cache).parts[0]
        if not any(f.is_file() for f in (repo_dir / "snapshots").rglob("*")):
            shutil.rmtree(repo_dir)
            shutil.rmtree(cache / ".locks" / repo_dir.name, ignore_errors=True)  # huggingface_hub's lock files for it
        else:
            for folder in sorted({f.parent for f in files}, key=lambda d: len(d.parts), reverse=True):
                with contextlib.suppress(OSError):  # not empty: another model's files are there
                    folder.rmdir()
        return size

    def _pulled_files(self, model: ModelConfig) -> list[Path]:
        """The snapshot entries of `model` in the pull cache (links into `blobs/`), [] for anything else."""
        from sage_daemon.engines import hub

        source = model.sources.llamacpp or model.sources.sentence_transformers
        if not source or source.startswith(("package:", "assemble:")):
            return []
        path = Path(os.path.realpath(Path(source).parent)) / Path(source).name  # the entry, not the blob it links to
        try:
            parts = path.relative_to(self.hf_cache.resolve()).parts
        except ValueError:
            return []
        if len(parts) < 3 or not parts[0].startswith("models--") or parts[1] != "snapshots" or not os.path.lexists(path):
            return []
        if path.is_dir():
            return sorted(f for f in path.rglob("*") if f.is_file())
        return hub.gguf_parts(path)

    async def show(self, name: str) -> p.ModelDetail:
        info = self.control.get_model(name)
        model = next(m for m in self.catalog.models() if m.name == name)
        detail = p.ModelDetail(self._row(info), self.catalog.origin(name))
        source = {"llamacpp": model.sources.llamacpp, "sentence-transformers": model.sources.sentence_transformers}.get(info.backend, "")
        if not source:
            detail.file = model.sources.remote or model.sources.vllm
            return detail
        try:
            path = await trio.to_thread.run_sync(resolve_local_source, source, self.data_dir)
        except SourceError as exc:
            detail.file = f"{source} ({exc})"
            return detail
        return await trio.to_thread.run_sync(_describe_file, detail, path, model)


def _describe_file(detail: p.ModelDetail, path: Path, model: ModelConfig) -> p.ModelDetail:
    detail.file = str(path)
    detail.size_bytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    if path.suffix.lower() == ".gguf":
        from sage_daemon.engines.gguf_info import read_gguf_info
        from sage_daemon.engines.tool_formats import detect_format

        gguf = read_gguf_info(path)
        detail.quant = gguf.file_type or local_models.quant_of(path.name)
        detail.architecture = gguf.architecture
        detail.parameters = gguf.parameter_count
        detail.context_length = gguf.context_length
        template = model.chat_format or gguf.chat_template
        detail.chat_template = bool(template)
        detail.tool_format = model.tool_format or (detect_format(template) if template else "generic")
    else:
        config = local_models._json(path / "config.json")
        detail.architecture = ",".join(config.get("architectures") or []) or str(config.get("model_type", ""))
        detail.context_length = int(config.get("max_position_embeddings") or 0)
    return detail

