"""Models already on disk: what a file or folder is (`sagectl models add NAME --from PATH`), and
which ones lie in the Hugging Face cache and the configured models_dir (`sagectl models --available`).

Plain blocking code (file reads only; nothing is loaded, nothing downloads).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec

from sage_client.protocol import ModelKind
from sage_daemon.core.config import ModelConfig, ModelSources
from sage_daemon.core.errors import InvalidRequestError

SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
QUANT = re.compile(r"[-_.]((?:I?Q\d[_A-Z0-9]*)|F16|BF16|F32)(?:-\d{5}-of-\d{5})?\.gguf$", re.I)


class LocalModel(msgspec.Struct):
    """A model found on disk, with the name `sagectl models add` would give it."""

    name: str
    path: str
    kind: ModelKind
    backend: str  # llamacpp | sentence-transformers
    size_bytes: int
    where: str  # "huggingface cache (OWNER/REPO)" or "models_dir"
    quant: str = ""


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def folder_kind(folder: Path) -> ModelKind | None:
    """A sentence-transformers folder: "embedding" (a bi-encoder) or "rerank" (a cross-encoder:
    sentence-transformers says so in its config since v4; older ones are a one-label
    *ForSequenceClassification transformers model). None: not one we can serve."""
    st_config = _json(folder / "config_sentence_transformers.json")
    if st_config.get("model_type") == "CrossEncoder":
        return "rerank"
    if (folder / "modules.json").exists() or (folder / "sentence_bert_config.json").exists() or st_config:
        return "embedding"
    config = _json(folder / "config.json")
    architectures = config.get("architectures") or []
    labels = config.get("id2label") or {}
    if any(str(a).endswith("ForSequenceClassification") for a in architectures) and len(labels) <= 1:
        return "rerank"
    return None


def quant_of(filename: str) -> str:
    match = QUANT.search(filename)
    return match[1].upper() if match else ""


def suggested_name(label: str, quant: str = "") -> str:
    """A model name from a repo or file name: lower case, safe characters, the quant appended."""
    base = re.sub(r"(?i)[-_.]gguf$", "", SPLIT_PART.sub(".gguf", label.rsplit("/", 1)[-1]))
    if quant and base.upper().endswith(quant):
        base = base[: -len(quant)].rstrip("-_.")
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"
    return f"{name}:{quant.lower()}" if quant else name


def model_config(name: str, path: Path, kind: ModelKind | None = None, n_ctx: int | None = None, parallel: int | None = None) -> ModelConfig:
    """The `[[models]]` entry serving the model at `path` (a .gguf file or a sentence-transformers folder)."""
    if not path.exists():
        raise InvalidRequestError(f"{path} does not exist", param="source")
    changes: dict[str, Any] = {}
    if n_ctx is not None:
        changes["n_ctx"] = n_ctx
    if parallel is not None:
        changes["parallel"] = parallel
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidRequestError(f"{path} is not a GGUF file (llama.cpp) nor a sentence-transformers folder", param="source")
        if kind not in (None, "llm"):
            raise InvalidRequestError(f"{path} is a GGUF language model; --kind {kind} does not fit it", param="kind")
        return ModelConfig(name=name, kind="llm", backend="llamacpp", sources=ModelSources(llamacpp=str(path)), **changes)
    found = folder_kind(path)
    if found is None:
        raise InvalidRequestError(f"{path} is not a sentence-transformers folder (no modules.json or config_sentence_transformers.json)", param="source")
    if kind is not None and kind != found and not (kind == "rerank" and found == "embedding"):
        raise InvalidRequestError(f"{path} holds {'a cross-encoder' if found == 'rerank' else 'an embedding model'}; --kind {kind} does not fit it", param="kind")
    changes.setdefault("parallel", 1)
    changes.setdefault("n_ctx", 512)
    return ModelConfig(name=name, kind=kind or found, backend="sentence-transformers", sources=ModelSources(sentence_transformers=str(path)), **changes)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _ggufs(folder: Path, where: str, label: str | None) -> list[LocalModel]:
    found = []
    for gguf in sorted(folder.rglob("*.gguf")):
        split = SPLIT_PART.search(gguf.name)
        if (split and split[1] != "00001") or "mmproj" in gguf.name.lower():
            continue  # llama.cpp finds the other parts from the first; a projector is not a model
        quant = quant_of(gguf.name)
        size = sum(p.stat().st_size for p in gguf.parent.glob(SPLIT_PART.sub("-*-of-*.gguf", gguf.name))) if split else gguf.stat().st_size
        name = suggested_name(label or gguf.name, quant)
        found.append(LocalModel(name, str(gguf), "llm", "llamacpp", size, where, quant))
    return found


def scan_models_dir(folder: Path) -> list[LocalModel]:
    if not folder.is_dir():
        return []
    found = _ggufs(folder, "models_dir", None)
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        kind = folder_kind(child)
        if kind is not None:
            found.append(LocalModel(suggested_name(child.name), str(child), kind, "sentence-transformers", _size(child), "models_dir"))
    return found


def scan_hf_cache(cache_dir: Path) -> list[LocalModel]:
    """Models in a huggingface_hub cache (`models--OWNER--REPO/snapshots/REV/`), newest snapshot each."""
    found: list[LocalModel] = []
    if not cache_dir.is_dir():
        return found
    for repo_dir in sorted(cache_dir.glob("models--*")):
        snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        if not snapshots:
            continue
        repo = repo_dir.name[len("models--") :].replace("--", "/")
        where = f"huggingface cache ({repo})"
        snapshot = snapshots[0]
        ggufs = _ggufs(snapshot, where, repo)
        found += ggufs
        kind = folder_kind(snapshot)
        if not ggufs and kind is not None:
            found.append(LocalModel(suggested_name(repo), str(snapshot), kind, "sentence-transformers", _size(snapshot), where))
    return found
