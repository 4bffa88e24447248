"""Pull models from the Hugging Face Hub (`sagectl pull hf:OWNER/REPO[:TAG]`), like `ollama pull`
or `llama-server -hf user/repo:Q4_K_M`.

Three layers, the lower ones plain:

- `parse_ref` (text → `HubRef`) and `plan_pull` (ref + the repo's file list → `PullPlan`: what to
  fetch, what it is, which backend loads it) decide without I/O and are tested alone.
- `resolve_blocking` / `pull_blocking` do the I/O on the calling thread with huggingface_hub's own
  functions: `HfApi.model_info(files_metadata=True)` lists the files (sizes, LFS sha256) and pins
  the commit; each file is fetched with huggingface_hub's `http_get` (resumable, see below) into
  huggingface_hub's cache layout under `cache_dir` (`models--OWNER--REPO/{blobs,snapshots,refs}`,
  the layout llama.cpp's `-hf` and sentence-transformers read too), honouring `HF_TOKEN` /
  `HF_ENDPOINT`. Progress comes from the `tqdm_class` hook that `http_get` accepts, throttled to
  ~10 events/s.
- `PullManager` (trio) runs one `pull_blocking` per ref on a thread of its own at nice 19 (the
  engines keep the cores while a pull runs) and lets any number of callers follow it.

What huggingface_hub (2.4) does and what this module adds:

- Resume across attempts (ours): hf_hub_download writes each attempt into a uniquely named
  `blobs/<etag>.<random>.incomplete` and deletes it when the attempt fails or is cancelled
  (huggingface_hub#4228), so it resumes only inside one call (its `http_get` retries a dropped
  connection up to 5 times with `Range`). We download with huggingface_hub's own pieces instead
  (`hf_hub_url`, `get_hf_file_metadata`, `build_hf_headers`, `http_get(resume_size=...)`) into a
  STABLE per-blob partial file, `<cache>/models--OWNER--REPO/blobs/<etag>.incomplete` (the name
  huggingface_hub used before 2.x and which `scan_cache_dir` lists as `incomplete_files`). A
  cancelled pull, a daemon restart or a network error that exhausts huggingface_hub's retries
  leaves it there; the next pull of that blob continues from its size. A small marker,
  `models--OWNER--REPO/.sage-partial/<hash of the path>`, records which etag a path's partial has:
  when the repo changed (the path now has another etag) the old partial is discarded.
- Atomic files: a partial is never at a final path. When it has all its bytes (size checked by
  http_get against `X-Linked-Size`) and passed our checksum, it is moved to `blobs/<etag>` and
  `snapshots/<commit>/<path>` is linked to it, with huggingface_hub's own `_chmod_and_move` and
  `_create_symlink` (relative link), and `refs/<branch>` written with its helper: the result is
  huggingface_hub's cache layout, found by `hf_hub_download(local_files_only=True)` and
  `scan_cache_dir`.
- Checksums: huggingface_hub does NOT hash plain-HTTP downloads. We do: an LFS file is checked
  against the sha256 the Hub lists (the bytes are hashed as they are written, on a second thread
  fed through a bounded queue, the resumed head of the file read back from disk, so it costs no
  wall time), a small regular file against its git blob id, BEFORE it is moved into place. A
  mismatch deletes the partial (a corrupt partial from an earlier attempt included) and raises
  `HubIntegrityError`; the next pull starts from scratch.
- Locks: around each blob, an in-process lock per blob and, inside it, huggingface_hub's own
  cross-process file lock (`WeakFileLock` on `<cache>/.locks/models--OWNER--REPO/<etag>.lock`,
  the one hf_hub_download takes, so a huggingface_hub in another process never writes the same
  blob either): two pulls of one file never write the same partial; the second waits (cancellable),
  then finds the blob done. `PullManager` also runs one pull per ref.
- Xet: Xet-backed files are downloaded the same way (the Hub's resolve URL serves them over plain
  HTTP with Range, as huggingface_hub itself does without hf_xet). Only where the plain HTTP path
  cannot serve a Xet-backed file (over huggingface_hub's 50 GB plain-HTTP limit, or the Hub
  refusing the plain GET with a 4xx) does the pull fall back to `hf_hub_download` (Xet), which
  does not resume across attempts; its result is hashed after the download.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, TypeVar, cast

import msgspec
import trio

from sage_client.protocol import ErrorCode, ModelKind
from sage_daemon.core.errors import (
    ControlPlaneError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
)

log = logging.getLogger(__name__)

Backend = Literal["llamacpp", "sentence-transformers", "vllm"]
Phase = Literal["resolving", "downloading", "verifying", "done"]

# llama.cpp's choice when `-hf user/repo` names no tag (common/download.cpp, find_best_model):
# Q4_K_M, then Q8_0, then the first model GGUF of the repo.
DEFAULT_QUANTS: tuple[str, ...] = ("Q4_K_M", "Q8_0")
PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress events a second
RATE_WINDOW_S = 3.0  # bytes/s over the last few seconds
_HASH_CHUNK = 1 << 20  # a piece between two `pause` calls: ~1-3 ms of sha256
READ_CHUNK = 1 << 20
"""The pieces http_get hands over (huggingface_hub's DOWNLOAD_CHUNK_SIZE, 10 MB by default, is
set to this for the daemon's process): a pull looks at `pause` after each, so it steps aside
within a piece's time (~2-10 ms) of a chat arriving rather than a 10 MB chunk's (~30-100 ms,
as long as the chat's whole time to first token)."""
_PARTIAL_DIR = ".sage-partial"  # per repo: which etag each path's partial download has


# ============================================================================ errors

class HubUnavailableError(EngineUnavailableError):
    """The Hub (or the mirror in HF_ENDPOINT) cannot be reached, or answered 5xx: a 503, retry later."""

    code = "hub_unreachable"
    retry_after_s = 5.0


class HubIntegrityError(ControlPlaneError):
    """A downloaded file is not what the Hub lists (sha256 or size): a 502; the bad blob is deleted."""

    status, code, type, rpc_code = 502, "checksum_mismatch", "server_error", ErrorCode.UNAVAILABLE


class DiskFullError(ControlPlaneError):
    """Not enough free space for the pull: a 507."""

    status, code, type, rpc_code = 507, "disk_full", "server_error", ErrorCode.UNAVAILABLE


class PullCancelled(Exception):
    """The pull's `cancelled` event was set; what was half-downloaded stays in its partial file
    (`blobs/<etag>.incomplete`) and the next pull of the file resumes from it."""


# ============================================================================ refs (plain)

class HubRef(msgspec.Struct, frozen=True):
    """A parsed model reference: `repo` is OWNER/REPO; at most one of `tag` (a GGUF quant, upper
    case) and `file` (a path in the repo); `revision` is a branch, tag or commit (None: main)."""

    repo: str
    tag: str | None = None
    file: str | None = None
    revision: str | None = None

    @property
    def owner(self) -> str:
        return self.repo.split("/", 1)[0]

    def __str__(self) -> str:
        text = "hf:" + self.repo
        if self.file:
            text += "/" + self.file
        elif self.tag:
            text += ":" + self.tag
        if self.revision:
            text += "@" + self.revision
        return text

    def key(self) -> tuple[str, str | None, str | None, str]:
        """What makes two refs the same pull (the Hub's repo names are case-insensitive)."""
        return (self.repo.lower(), self.tag, self.file.lower() if self.file else None, self.revision or "main")


_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def _bad_ref(text: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"bad model reference {text!r}: {why} (expected hf:OWNER/REPO, hf:OWNER/REPO:QUANT, hf:OWNER/REPO/FILE.gguf, optionally @REVISION)",
        param="ref",
    )


def parse_ref(text: str) -> HubRef:
    """`hf:OWNER/REPO`, `hf:OWNER/REPO:TAG` (a GGUF quant such as Q4_K_M, any case, as llama-server's
    `-hf`), `hf:OWNER/REPO/PATH/FILE.gguf`, each with an optional `@REVISION`; `hf:` may be left out
    (also `hf://` and `huggingface.co/` prefixes are accepted). Raises InvalidRequestError(param="ref")."""
    raw = text
    text = text.strip()
    for prefix in ("hf://", "hf:", "https://huggingface.co/", "huggingface.co/"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    if not text:
        raise _bad_ref(raw, "it is empty")
    if any(c.isspace() for c in text):
        raise _bad_ref(raw, "it contains a space")
    revision: str | None = None
    if "@" in text:
        text, _, revision = text.partition("@")
        if not revision or "@" in revision or not _REVISION.fullmatch(revision) or ".." in revision:
            raise _bad_ref(raw, "the revision after @ is not a branch, tag or commit")
    tag: str | None = None
    head, colon, after = text.partition(":")
    if colon:
        if not after or not _TAG.fullmatch(after):
            raise _bad_ref(raw, "the quant tag after : is empty or has odd characters")
        tag = after.upper()
        text = head
    parts = text.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise _bad_ref(raw, "it names no OWNER/REPO")
    owner, name, rest = parts[0], parts[1], parts[2:]
    for part in (owner, name):
        if not _NAME.fullmatch(part) or ".." in part or len(part) > 96:
            raise _bad_ref(raw, f"{part!r} is not a valid Hub name")
    file: str | None = None
    if rest:
        if tag is not None:
            raise _bad_ref(raw, "give a file or a :TAG, not both")
        if any(p in ("", ".", "..") for p in rest):
            raise _bad_ref(raw, "the file path has an empty, . or .. part")
        file = "/".join(rest)
        if not file.lower().endswith(".gguf"):
            raise _bad_ref(raw, "only a .gguf file can be pulled by name (give OWNER/REPO for a whole model)")
    return HubRef(repo=f"{owner}/{name}", tag=tag, file=file, revision=revision)


# ============================================================================ plan (plain)

class RepoFile(msgspec.Struct, frozen=True):
    """One file of the repo as the Hub lists it: `sha256` for LFS files, `blob_id` (git oid) for all."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None

    @property
    def etag(self) -> str | None:
        """The name huggingface_hub gives its blob: the sha256 for LFS files, else the git oid."""
        return self.sha256 or self.blob_id


class PullPlan(msgspec.Struct, frozen=True):
    """What a pull fetches and what it is. `files` empty: nothing to download (vLLM fetches by id).
    `load_file`: the path in the repo to load (the first GGUF part); None: the snapshot folder
    (sentence-transformers) or, when nothing is downloaded, the repo id itself (vLLM)."""

    repo: str
    kind: ModelKind
    backend: Backend
    files: tuple[RepoFile, ...]
    total_bytes: int
    quant: str | None = None
    load_file: str | None = None
    revision: str | None = None  # the commit the file list came from (pins every download)
    ref: str = ""
    note: str = ""


_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_FILE_TAG = re.compile(r"[-.]([A-Za-z0-9_]+)$")
_NOT_MODEL_GGUF = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")  # as llama.cpp
_ST_MARKERS = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_OTHER_FRAMEWORK_DIRS = ("onnx/", "openvino/", "coreml/", "tf/", "flax/", "tflite/")
_OTHER_FRAMEWORK_FILES = re.compile(
    r"(\.h5|\.msgpack|\.onnx|\.onnx_data|\.tflite|\.ot|\.mlmodel|\.gguf)$|(^|/)(tf_model|flax_model|rust_model|model\.ckpt)",
    re.IGNORECASE,
)
_SKIP_ALWAYS = (".gitattributes",)


def _split_info(path: str) -> tuple[str, int, int]:
    """(prefix, index, count) of a GGUF path; a file that is not split is part 1 of 1."""
    name = path[:-5] if path.lower().endswith(".gguf") else path
    m = _SPLIT.match(path)
    if m:
        return m["prefix"], int(m["index"]), int(m["count"])
    return name, 1, 1


def gguf_parts(path: Path) -> list[Path]:
    """The files of the GGUF model at `path` in its folder: itself, or every part of a split one."""
    prefix, _, count = _split_info(path.name)
    if count <= 1:
        return [path]
    return sorted(p for p in path.parent.iterdir() if (info := _split_info(p.name))[0] == prefix and info[2] == count)


def gguf_tag(path: str) -> str | None:
    """The quant tag a GGUF file name carries (`...-Q4_K_M.gguf`, `....Q8_0-00001-of-00002.gguf`), upper case."""
    if not path.lower().endswith(".gguf"):
        return None
    prefix, _, _ = _split_info(path)
    m = _FILE_TAG.search(prefix)
    return m.group(1).upper() if m else None


def _is_model_gguf(path: str) -> bool:
    base = path.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and not any(word in base for word in _NOT_MODEL_GGUF)


def _matches_tag(path: str, tag: str) -> bool:
    # llama.cpp searches `TAG[.-]` anywhere in the path, case-insensitive; we also want a boundary
    # before it (so Q4_0 does not match IQ4_0) and accept a folder named after the tag.
    if gguf_tag(path) == tag:
        return True
    return re.search(rf"(?:^|[-._/]){re.escape(tag)}[-./]", path, re.IGNORECASE) is not None


def _split_parts(files: Sequence[RepoFile], primary: RepoFile) -> list[RepoFile]:
    prefix, _, count = _split_info(primary.path)
    if count <= 1:
        return [primary]
    parts = {idx: f for f in files for p, idx, c in [_split_info(f.path)] if c == count and p == prefix}
    missing = [i for i in range(1, count + 1) if i not in parts]
    if missing:
        raise NotFoundError(f"{primary.path} is split in {count} parts but the repo lacks part(s) {', '.join(map(str, missing))}")
    return [parts[i] for i in range(1, count + 1)]


def _pick_mmproj(files: Sequence[RepoFile], model_path: str) -> RepoFile | None:
    """As llama.cpp's find_best_mmproj: an mmproj GGUF in the model's folder, closest in bits."""
    folder = model_path.rsplit("/", 1)[0] if "/" in model_path else ""

    def bits(path: str) -> int:
        m = re.search(r"\d+", gguf_tag(path) or "")
        return int(m.group()) if m else 0

    candidates = [f for f in files if f.path.lower().endswith(".gguf") and "mmproj" in f.path.rsplit("/", 1)[-1].lower()
                  and (f.path.rsplit("/", 1)[0] if "/" in f.path else "") == folder]
    if not candidates:
        return None
    want = bits(model_path)
    return min(candidates, key=lambda f: (abs(bits(f.path) - want), f.path))


def available_tags(files: Iterable[RepoFile]) -> list[str]:
    """The quant tags of the repo's model GGUFs, sorted."""
    return sorted({t for f in files if _is_model_gguf(f.path) for t in [gguf_tag(f.path)] if t})


def _gguf_plan(ref: HubRef, files: Sequence[RepoFile], mmproj: bool, commit: str | None) -> PullPlan:
    models = sorted((f for f in files if _is_model_gguf(f.path)), key=lambda f: f.path)
    primary: RepoFile | None = None
    if ref.file:
        want = ref.file.lower()
        primary = next((f for f in files if f.path.lower() == want), None)
        if primary is None:
            names = ", ".join(f.path for f in models) or "none"
            raise NotFoundError(f"no file {ref.file} in {ref.repo} (its GGUF files: {names})")
    else:
        for tag in (ref.tag,) if ref.tag else DEFAULT_QUANTS:
            primary = next((f for f in models if _matches_tag(f.path, tag) and _split_info(f.path)[1] == 1), None)
            if primary is not None:
                break
        if primary is None and ref.tag:
            raise NotFoundError(f"no {ref.tag} in {ref.repo}: it has {', '.join(available_tags(files)) or 'no tagged GGUF files'}")
        if primary is None:
            primary = next((f for f in models if _split_info(f.path)[1] == 1), None)
        if primary is None:
            raise NotFoundError(f"no model GGUF in {ref.repo}")
    chosen = _split_parts(files, primary)
    if mmproj:
        proj = _pick_mmproj(files, primary.path)
        if proj is not None:
            chosen.append(proj)
    count = _split_info(primary.path)[2]
    note = f"split in {count} parts: llama.cpp loads the first and finds the rest beside it" if count > 1 else ""
    return PullPlan(repo=ref.repo, kind="llm", backend="llamacpp", files=tuple(chosen),
                    total_bytes=sum(f.size for f in chosen), quant=gguf_tag(primary.path),
                    load_file=primary.path, revision=commit, ref=str(ref), note=note)


def _is_other_framework(path: str) -> bool:
    lower = path.lower()
    return lower.startswith(_OTHER_FRAMEWORK_DIRS) or bool(_OTHER_FRAMEWORK_FILES.search(lower)) or lower in _SKIP_ALWAYS


def _torch_files(files: Sequence[RepoFile]) -> list[RepoFile]:
    """The repo minus other frameworks' weights; pytorch *.bin weights too when safetensors exist."""
    keep = [f for f in files if not _is_other_framework(f.path)]
    if any(f.path.endswith(".safetensors") for f in keep):
        keep = [f for f in keep if not re.search(r"(^|/)pytorch_model[^/]*\.bin(\.index\.json)?$", f.path)]
    return sorted(keep, key=lambda f: f.path)


def _is_cross_encoder(configs: Mapping[str, Any]) -> bool | None:
    """CrossEncoder (rerank) or not, from the configs; None when they do not say.

    The rule: sentence-transformers ≥ 4 writes `"model_type": "CrossEncoder"` in
    config_sentence_transformers.json; older cross-encoders (cross-encoder/ms-marco-*) have no
    sentence-transformers files but a transformers config with a `*ForSequenceClassification`
    architecture and one label (`num_labels == 1` or one `id2label` entry): a relevance score."""
    st = configs.get("config_sentence_transformers.json")
    if isinstance(st, Mapping) and isinstance(st.get("model_type"), str):
        return bool(st["model_type"] == "CrossEncoder")
    cfg = configs.get("config.json")
    if isinstance(cfg, Mapping):
        archs = cfg.get("architectures") or []
        labels = cfg.get("num_labels")
        if labels is None and isinstance(cfg.get("id2label"), Mapping):
            labels = len(cfg["id2label"])
        if any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs) and labels == 1:
            return True
        return False
    return None


def plan_pull(ref: HubRef, files: Sequence[RepoFile], *, configs: Mapping[str, Any] | None = None, commit: str | None = None,
              mmproj: bool = False, download_weights: bool = False) -> PullPlan:
    """Decide what to fetch for `ref` from the repo's file list. No I/O.

    - A :TAG or a .gguf file, or a repo with model GGUFs (and no sentence-transformers files):
      llama.cpp; the tag's file (default: Q4_K_M, then Q8_0, then the first model GGUF, as llama-server
      picks), every part of a split GGUF; mmproj/imatrix GGUFs only with `mmproj=True`.
    - A sentence-transformers repo (modules.json, sentence_bert_config.json or
      config_sentence_transformers.json): the whole repo minus other frameworks' weights (onnx/,
      openvino/, *.h5, *.msgpack, tf/flax, and pytorch *.bin beside safetensors); kind "embedding",
      or "rerank" for a CrossEncoder (see `_is_cross_encoder`; needs `configs`).
    - A transformers repo with a sequence-classification config and one label: "rerank" too.
    - Any other transformers repo (config.json): kind "llm", backend "vllm"; vLLM downloads by id
      itself, so the plan fetches nothing unless `download_weights=True`.

    `configs` maps config_sentence_transformers.json / config.json to their parsed JSON when the
    caller has them. Raises NotFoundError (unknown tag or file: the message lists what there is)
    or InvalidRequestError (a repo with nothing we can load).
    """
    paths = {f.path for f in files}
    configs = configs or {}
    has_st = any(m in paths for m in _ST_MARKERS)
    has_gguf = any(_is_model_gguf(f.path) for f in files)
    if ref.file or ref.tag or (has_gguf and not has_st):
        if not any(f.path.lower().endswith(".gguf") for f in files):
            raise InvalidRequestError(f"{ref.repo} has no GGUF files: pull it without a :{ref.tag or 'TAG'} to get the whole model", param="ref")
        return _gguf_plan(ref, files, mmproj, commit)
    cross = _is_cross_encoder(configs)
    if has_st or cross:
        st = configs.get("config_sentence_transformers.json")
        model_type = st.get("model_type") if isinstance(st, Mapping) else None
        if isinstance(model_type, str) and model_type not in ("SentenceTransformer", "CrossEncoder"):
            raise InvalidRequestError(f"{ref.repo} is a sentence-transformers {model_type}: only SentenceTransformer and CrossEncoder models are served", param="ref")
        chosen = _torch_files(files)
        kind: ModelKind = "rerank" if cross else "embedding"
        return PullPlan(repo=ref.repo, kind=kind, backend="sentence-transformers", files=tuple(chosen),
                        total_bytes=sum(f.size for f in chosen), revision=commit, ref=str(ref))
    if "config.json" in paths:
        chosen = _torch_files(files) if download_weights else []
        note = "" if download_weights else "vLLM downloads the model by its id when it loads it: nothing fetched now"
        return PullPlan(repo=ref.repo, kind="llm", backend="vllm", files=tuple(chosen), total_bytes=sum(f.size for f in chosen),
                        revision=commit, ref=str(ref), note=note)
    raise InvalidRequestError(f"{ref.repo} has no GGUF, sentence-transformers or transformers model files", param="ref")


# ============================================================================ progress

class PulledModel(msgspec.Struct, frozen=True):
    """A finished pull. `path`: what to load (the first GGUF part, the snapshot folder, or for a
    vLLM model not downloaded, the repo id); `snapshot`: huggingface_hub's snapshot folder."""

    ref: str
    repo: str
    revision: str
    kind: ModelKind
    backend: Backend
    path: str
    snapshot: str
    quant: str | None
    files: tuple[str, ...]
    size_bytes: int
    downloaded_bytes: int  # fetched by this pull (0 when everything was already in the cache)
    note: str = ""


class PullProgress(msgspec.Struct, frozen=True):
    """One progress event. `completed`/`total` count bytes of the whole pull (files already in the
    cache count as completed at once); `bytes_per_s` over the last seconds; `eta_s` None until
    known. The last event of a pull has phase "done" and `model` set."""

    phase: Phase
    ref: str
    file: str | None = None
    completed: int = 0
    total: int = 0
    bytes_per_s: float = 0.0
    eta_s: float | None = None
    model: PulledModel | None = None


class _Reporter:
    """Turns byte counts into throttled PullProgress events (called from the download thread)."""

    def __init__(self, ref: str, on_progress: Callable[[PullProgress], None] | None, cancelled: threading.Event,
                 clock: Callable[[], float] = time.monotonic, pause: Callable[[threading.Event], None] | None = None):
        self.ref = ref
        self.on_progress = on_progress
        self.cancelled = cancelled
        self.pause = pause
        self.clock = clock
        self.total = 0
        self.completed = 0
        self.file: str | None = None
        self.phase: Phase = "resolving"
        self._last_emit = -1e9
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise PullCancelled(f"pull of {self.ref} cancelled")

    def pause_here(self) -> None:
        """`pause` without the cancel check (for the hashing thread, which must not raise)."""
        if self.pause is not None:
            self.pause(self.cancelled)

    def between_chunks(self) -> None:
        """After each chunk fetched or hashed: wait while `pause` says so (the daemon's: a chat
        waits for its first token), then stop here if cancelled."""
        self.pause_here()
        self.check_cancelled()

    def set(self, phase: Phase, file: str | None = None) -> None:
        self.phase, self.file = phase, file
        self.emit(force=True)

    def add(self, n: int) -> None:
        with self._lock:
            self.completed += n
        self.emit()

    def rate(self, now: float) -> float:
        self._samples.append((now, self.completed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        return (self.completed - c0) / (now - t0) if now > t0 else 0.0

    def emit(self, force: bool = False, model: PulledModel | None = None) -> None:
        now = self.clock()
        if not force and now - self._last_emit < PROGRESS_INTERVAL_S:
            return
        self._last_emit = now
        rate = self.rate(now)
        left = max(0, self.total - self.completed)
        eta = left / rate if rate > 0 else (0.0 if left == 0 and self.total else None)
        if self.on_progress is not None:
            self.on_progress(PullProgress(phase=self.phase, ref=self.ref, file=self.file, completed=min(self.completed, self.total),
                                          total=self.total, bytes_per_s=round(rate, 1), eta_s=None if eta is None else round(eta, 1),
                                          model=model))


class _HashingWriter:
    """The file object `http_get` writes into: appends to the partial file and hashes (sha256)
    every byte of it on a second thread, so the check costs no wall time on a machine with a core
    to spare.

    The bytes go to the hashing thread through a bounded queue as (offset, chunk); when the queue
    is full the writer does not wait: it drops the chunk and the hasher reads that stretch back
    from the file (the bytes are there: a chunk is queued after it is written). The same gap
    filling hashes the head of a resumed file, from disk, while the rest downloads. `http_get`
    truncating the file to 0 (a server that ignored our Range) restarts the hash; any other
    truncation or a short read marks the digest unknown (`finish` returns None) and the caller
    hashes the finished file instead."""

    _RESET = (-1, b"")

    def __init__(self, file: BinaryIO, path: str, offset: int, *, hashing: bool = True, queue_chunks: int = 32,
                 pause: Callable[[], None] | None = None):
        self.file = file
        self._pause = pause  # the hashing thread calls it after each chunk, as the download does
        self.offset = offset  # where the next write lands (the file is only appended to)
        self.hashing = hashing
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=queue_chunks)
        self._hash = hashlib.sha256()
        self._pos = 0  # bytes hashed so far
        self._broken = False
        self._fd = -1
        self._thread: threading.Thread | None = None
        if hashing:
            self._fd = os.open(path, os.O_RDONLY)
            self._thread = threading.Thread(target=self._run, name="sage-hub-hash", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ the file object http_get sees
    def write(self, data: bytes) -> int:
        n = self.file.write(data)
        self.file.flush()  # the hasher may read this stretch back from the file
        if self.hashing and not self._broken:
            try:
                self._queue.put_nowait((self.offset, bytes(data)))
            except queue.Full:
                pass  # the hasher reads it from the file
        self.offset += len(data)
        return n

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.file.seek(pos, whence)

    def truncate(self, size: int | None = None) -> int:
        self.file.flush()
        new = self.file.truncate(size)
        self.offset = new
        if self.hashing:
            if new == 0:
                self._queue.put(self._RESET)
            else:
                self._broken = True
        return new

    def flush(self) -> None:
        self.file.flush()

    # ------------------------------------------------------------------ the hashing thread
    def _read_into_hash(self, end: int) -> None:
        while self._pos < end and not self._broken:
            chunk = os.pread(self._fd, min(_HASH_CHUNK, end - self._pos), self._pos)
            if not chunk:
                self._broken = True  # the file is shorter than written: it was truncated under us
                return
            self._hash.update(chunk)
            self._pos += len(chunk)

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                offset, data = item
                if offset < 0:  # _RESET
                    self._hash, self._pos, self._broken = hashlib.sha256(), 0, False
                    continue
                if self._broken or offset + len(data) <= self._pos:
                    continue
                self._read_into_hash(offset)  # a gap: the resumed head, or chunks the queue had no room for
                if self._pos >= offset and not self._broken:
                    self._hash.update(memoryview(data)[self._pos - offset:])
                    self._pos = offset + len(data)
                if self._pause is not None:
                    self._pause()
        except OSError:
            self._broken = True

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def finish(self) -> str | None:
        """The sha256 of the whole file as written, or None when it cannot be known (see above)."""
        if not self.hashing:
            return None
        self.file.flush()
        self._stop()
        try:
            if not self._broken:
                self._read_into_hash(self.offset)
        except OSError:
            self._broken = True
        finally:
            os.close(self._fd)
            self._fd = -1
        return None if self._broken or self._pos != self.offset else self._hash.hexdigest()

    def abandon(self) -> None:
        self._stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _sha256_file(path: str | Path, reporter: _Reporter | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            if reporter is not None:
                reporter.between_chunks()
    return h.hexdigest()


def _git_blob_id(path: str | Path) -> str:
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _FileDownload:
    """Per-file state the progress hook shares with pull_blocking."""

    file: RepoFile
    reporter: _Reporter
    started: bool = False
    counted: int = 0


def _progress_class(state: _FileDownload) -> type:
    """A class huggingface_hub instantiates as its progress bar (`tqdm_class`) for one file. Not a
    tqdm subclass: huggingface_hub then calls it with plain keyword arguments; `initial` (the bytes
    a resumed download already has) and `update(n)` count bytes, `update_transfer` (bytes received;
    Xet) is ignored; a set `cancelled` raises PullCancelled from inside the download loop (the
    partial file stays, for the next pull to resume)."""

    class _Bar:
        def __init__(self, *args: Any, **kwargs: Any):
            self.n = int(kwargs.get("initial") or 0)
            self.total = kwargs.get("total")
            state.reporter.check_cancelled()
            if not state.started:
                state.started = True
                if self.n:
                    self._count(self.n)
                    state.reporter.emit(force=True)  # a resumed download shows where it resumes at once, not at the next tick

        def _count(self, n: int) -> None:
            state.counted += n
            state.reporter.add(n)

        def update(self, n: float | None = 1) -> bool | None:
            n = int(n or 0)
            self.n += n
            self._count(n)
            state.reporter.between_chunks()
            return None

        def update_transfer(self, n: int) -> None:
            state.reporter.check_cancelled()  # http_get calls update (which pauses) for the same chunk

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            pass

        def set_description(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return _Bar


# ============================================================================ blocking I/O

def _conn_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("ConnectError", "TimeoutException", "ProxyError", "NetworkError", "RemoteProtocolError")),
                          ("httpx", ("ConnectError", "TimeoutException", "ProxyError", "NetworkError", "RemoteProtocolError")),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        types += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(types)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def translate_error(exc: BaseException, repo: str, endpoint: str, *, path: str | None = None, revision: str | None = None) -> ControlPlaneError:
    """One line that says what to do, as the typed error the doors answer with."""
    from huggingface_hub import errors as hf_errors

    for e in _chain(exc):
        if isinstance(e, ControlPlaneError):
            return e
        if isinstance(e, hf_errors.GatedRepoError):
            return PermissionDeniedError(f"{repo} is gated: accept its licence on huggingface.co and set HF_TOKEN")
        if isinstance(e, hf_errors.RevisionNotFoundError):
            return NotFoundError(f"no revision {revision or 'main'} in {repo} on the Hub (check the @REVISION)")
        if isinstance(e, hf_errors.RemoteEntryNotFoundError):
            return NotFoundError(f"no file {path or ''} in {repo} at {revision or 'main'}".replace("file  ", "file "))
        if isinstance(e, hf_errors.RepositoryNotFoundError):
            return ModelNotFoundError(f"no model {repo} on the Hub (check the name; a private repo needs HF_TOKEN)")
        if isinstance(e, hf_errors.DisabledRepoError):
            return PermissionDeniedError(f"{repo} is disabled on the Hub")
        if isinstance(e, hf_errors.OfflineModeIsEnabled):
            return HubUnavailableError("HF_HUB_OFFLINE is set: unset it to pull models")
        if isinstance(e, hf_errors.HfHubHTTPError):
            status = _status(e)
            if status in (401, 403):
                return PermissionDeniedError(f"the Hub refused access to {repo} ({status}): check HF_TOKEN")
            if status is not None and status >= 500 or status == 429:
                return HubUnavailableError(f"the Hub answered {status} for {repo}: try again later")
        if isinstance(e, _conn_error_types()):
            env = os.environ.get("HF_ENDPOINT")
            where = f"HF_ENDPOINT={env}" if env else "HF_ENDPOINT unset"
            return HubUnavailableError(f"cannot reach {endpoint} ({where}): check the network or set HF_ENDPOINT to a mirror")
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return DiskFullError(f"disk full while pulling {repo}: free some space at {getattr(e, 'filename', None) or 'the model cache'}")
        if isinstance(e, OSError) and "Consistency check failed" in str(e):
            return HubIntegrityError(f"{path or repo}: the download came out the wrong size; pull again")
    return HubUnavailableError(f"pulling {repo} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _repo_dir(cache_dir: Path, repo: str) -> Path:
    return cache_dir / ("models--" + repo.replace("/", "--"))


def _load_json(path: str) -> Any:
    try:
        return msgspec.json.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


_BLOB_LOCKS: dict[str, threading.Lock] = {}
_BLOB_LOCKS_GUARD = threading.Lock()
_LOCK_POLL_S = 0.2


@contextmanager
def _blob_lock(lock_path: Path, cancelled: threading.Event, *, wait: bool = True) -> Iterator[bool]:
    """Hold a blob: first a lock of this process (keyed by the lock file), then huggingface_hub's
    own cross-process file lock on `lock_path` (`WeakFileLock`, as hf_hub_download takes it).
    Waits, checking `cancelled` every 0.2 s (PullCancelled), or with `wait=False` yields False at
    once when someone else holds it."""
    from filelock import Timeout
    from huggingface_hub.utils._fixes import WeakFileLock

    key = os.path.abspath(lock_path)
    with _BLOB_LOCKS_GUARD:
        lock = _BLOB_LOCKS.setdefault(key, threading.Lock())
    while not lock.acquire(timeout=_LOCK_POLL_S if wait else 0):
        if not wait:
            yield False
            return
        if cancelled.is_set():
            raise PullCancelled("cancelled while waiting for another pull of the same file")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            file_lock = WeakFileLock(lock_path, timeout=_LOCK_POLL_S if wait else 0.001)
            try:
                file_lock.__enter__()
            except Timeout:
                if not wait:
                    yield False
                    return
                if cancelled.is_set():
                    raise PullCancelled("cancelled while waiting for another process pulling the same file") from None
                continue
            break
        try:
            yield True
        finally:
            file_lock.__exit__(None, None, None)
    finally:
        lock.release()


def _partial_marker(repo_dir: Path, path: str) -> Path:
    return repo_dir / _PARTIAL_DIR / hashlib.sha1(path.encode()).hexdigest()[:24]


def _note_partial(repo_dir: Path, f_path: str, etag: str, locks_dir: Path, cancelled: threading.Event) -> None:
    """Record that `f_path`'s partial is `blobs/<etag>.incomplete`; a partial the marker named for
    an older etag of the path (the repo changed since) is deleted, unless it is being written."""
    marker = _partial_marker(repo_dir, f_path)
    try:
        old = marker.read_text().split("\n", 1)[0].strip()
    except OSError:
        old = ""
    if old == etag:
        return
    if old and re.fullmatch(r"[0-9A-Za-z_-]{20,128}", old):
        with _blob_lock(locks_dir / f"{old}.lock", cancelled, wait=False) as held:
            stale = repo_dir / "blobs" / f"{old}.incomplete"
            if held and stale.exists():
                log.info("%s changed on the Hub (etag %s → %s): discarding its partial download", f_path, old[:12], etag[:12])
                stale.unlink(missing_ok=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(f"{etag}\n{f_path}\n")
    os.replace(tmp, marker)


def _forget_partial(repo_dir: Path, f_path: str, etag: str) -> None:
    marker = _partial_marker(repo_dir, f_path)
    try:
        if marker.read_text().split("\n", 1)[0].strip() == etag:
            marker.unlink()
    except OSError:
        pass


def _check_file(path: str | Path, f: RepoFile, digest: str | None, reporter: _Reporter) -> tuple[bool, str, str]:
    """(ok, got, wanted) of a complete file against the Hub's listing: `digest` is its sha256 when
    already known (hashed while written), else the file is read."""
    if f.sha256:
        got = digest or _sha256_file(path, reporter)
        return got == f.sha256, got, f"sha256 {f.sha256}"
    if f.blob_id and f.size <= 64 << 20:
        got = _git_blob_id(path)
        return got == f.blob_id, got, f"git blob {f.blob_id}"
    return True, "", ""


def _integrity_error(f: RepoFile, got: str, want: str, *, resumed: bool) -> HubIntegrityError:
    how = " (resumed from an earlier partial download, which may have been damaged)" if resumed else ""
    return HubIntegrityError(f"{f.path}: checksum mismatch{how} (got {got[:12]}…, the Hub lists {want[:19]}…): deleted it; pull again")


@dataclass
class _Fetched:
    pointer: str  # snapshots/<commit>/<path>
    downloaded: int  # bytes fetched by this call (not the ones resumed from a partial)
    resumed: int  # bytes a partial already had


def _fetch_file(repo: str, f: RepoFile, commit: str, cache: Path, token: str | None, endpoint: str, state: _FileDownload,
                cancelled: threading.Event, verify: bool) -> _Fetched:
    """Download one file into huggingface_hub's cache layout, resuming its partial file, under the
    blob's locks; check it; move it into place. See the module docstring."""
    from huggingface_hub._local_folder import _create_cachedir_tag
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, repo_folder_name
    from huggingface_hub.utils._headers import build_hf_headers
    from huggingface_hub.utils._http import _is_same_or_hub_host

    folder = repo_folder_name(repo_id=repo, repo_type="model")
    repo_dir = cache / folder
    pointer = repo_dir / "snapshots" / commit / f.path
    url = hf_hub_url(repo, f.path, revision=commit, endpoint=endpoint)
    headers = build_hf_headers(token=token, library_name="sage-daemon")
    meta = get_hf_file_metadata(url, token=token, library_name="sage-daemon", endpoint=endpoint, retry_on_errors=True)
    etag = meta.etag or f.etag
    if not etag:
        raise HubUnavailableError(f"{endpoint} sent no ETag for {f.path}: is HF_ENDPOINT a Hugging Face Hub?")
    size = meta.size if meta.size is not None else f.size
    url_to_download = url
    if meta.xet_file_data is None and meta.location != url:  # a CDN redirect: go there, without our token if it is off the Hub
        url_to_download = meta.location
        if not _is_same_or_hub_host(url, meta.location):
            headers.pop("authorization", None)
    blob = repo_dir / "blobs" / etag
    partial = repo_dir / "blobs" / f"{etag}.incomplete"
    locks_dir = cache / ".locks" / folder
    blob.parent.mkdir(parents=True, exist_ok=True)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    _create_cachedir_tag(cache)
    _note_partial(repo_dir, f.path, etag, locks_dir, cancelled)

    fallback = _fetch_locked(f, size, url_to_download, headers, meta.xet_file_data is not None, repo_dir, blob, partial, pointer,
                             locks_dir / f"{etag}.lock", state, cancelled, verify)
    if isinstance(fallback, _Fetched):
        return fallback
    # The Xet fallback runs outside our locks: hf_hub_download takes the same file lock itself.
    return _fetch_with_hf(repo, f, commit, cache, token, endpoint, state, verify, why=fallback)


def _fetch_locked(f: RepoFile, size: int, url: str, headers: dict[str, str], xet: bool, repo_dir: Path, blob: Path, partial: Path,
                  pointer: Path, lock_path: Path, state: _FileDownload, cancelled: threading.Event, verify: bool) -> _Fetched | str:
    """The part of `_fetch_file` under the blob's locks; a str: why to fall back to hf_hub_download."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import _chmod_and_move, _create_symlink, http_get

    with _blob_lock(lock_path, cancelled):
        if blob.exists():  # pulled meanwhile (another ref, another process) or an earlier snapshot has it
            if not pointer.exists():
                _create_symlink(str(blob), str(pointer), new_blob=False)
            _forget_partial(repo_dir, f.path, blob.name)
            return _Fetched(str(pointer), 0, 0)
        resume = partial.stat().st_size if partial.exists() else 0
        if resume > size:  # longer than the file: not ours to trust
            partial.unlink()
            resume = 0
        if xet and resume == 0 and size > constants.MAX_HTTP_DOWNLOAD_SIZE:
            return f"{size / 1e9:.0f} GB is over huggingface_hub's plain-HTTP limit"
        constants.DOWNLOAD_CHUNK_SIZE = READ_CHUNK  # the same value every time: no restore, no race
        with open(partial, "ab") as raw:
            writer = _HashingWriter(raw, str(partial), resume, hashing=verify and bool(f.sha256), pause=state.reporter.pause_here)
            try:
                http_get(url, cast(BinaryIO, writer), resume_size=resume, headers=headers, expected_size=size,
                         displayed_filename=f.path, tqdm_class=cast(Any, _progress_class(state)))
            except HfHubHTTPError as exc:
                writer.abandon()
                status = _status(exc)
                if xet and status is not None and 400 <= status < 500 and status not in (401, 403, 404, 416, 429):
                    return f"its plain HTTP GET was answered {status}"
                raise
            except BaseException:
                writer.abandon()
                raise
            digest = writer.finish()
        got_size = partial.stat().st_size
        if got_size != size:  # http_get checks what it received; this is the file as a whole
            partial.unlink(missing_ok=True)
            _forget_partial(repo_dir, f.path, blob.name)
            raise HubIntegrityError(f"{f.path}: the download came out {got_size} bytes, the Hub lists {size}: deleted it; pull again")
        if verify:
            state.reporter.set("verifying", f.path)
            ok, got, want = _check_file(partial, f, digest, state.reporter)
            if not ok:
                partial.unlink(missing_ok=True)
                _forget_partial(repo_dir, f.path, blob.name)
                raise _integrity_error(f, got, want, resumed=resume > 0)
        _chmod_and_move(partial, blob)
        _create_symlink(str(blob), str(pointer), new_blob=True)
        _forget_partial(repo_dir, f.path, blob.name)
    return _Fetched(str(pointer), size - resume, resume)


def _fetch_with_hf(repo: str, f: RepoFile, commit: str, cache: Path, token: str | None, endpoint: str, state: _FileDownload,
                   verify: bool, *, why: str) -> _Fetched:
    """The Xet fallback: hf_hub_download, which does not resume across attempts; the result is
    hashed after the download (a mismatch deletes the blob and its link)."""
    from huggingface_hub import hf_hub_download

    log.info("%s is Xet-backed and %s: downloading it with hf_hub_download (Xet), which does not resume across attempts", f.path, why)
    local = hf_hub_download(repo, f.path, revision=commit, cache_dir=str(cache), token=token, endpoint=endpoint,
                            library_name="sage-daemon", tqdm_class=cast(Any, _progress_class(state)))
    if verify:
        state.reporter.set("verifying", f.path)
        real = os.path.realpath(local)
        ok, got, want = _check_file(real, f, None, state.reporter)
        if not ok:
            for p in (local, real):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise _integrity_error(f, got, want, resumed=False)
    return _Fetched(local, f.size, 0)


def _is_commit(revision: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{40}", revision) is not None


def resolve_blocking(ref: HubRef | str, *, cache_dir: str | Path, token: str | None = None, endpoint: str | None = None,
                     mmproj: bool = False, download_weights: bool = False,
                     cancelled: threading.Event | None = None) -> PullPlan:
    """List the repo (one `model_info` call, pinning the commit) and plan the pull. For a repo that
    is not GGUF, the small config files that decide the kind are fetched into the cache first."""
    from huggingface_hub import HfApi, hf_hub_download

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    url = _endpoint(endpoint)
    try:
        info = HfApi(endpoint=url, token=token, library_name="sage-daemon").model_info(ref.repo, revision=ref.revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one typed line
        raise translate_error(exc, ref.repo, url, revision=ref.revision) from exc
    commit = info.sha or ref.revision or "main"
    files = [RepoFile(path=s.rfilename, size=int(s.size if s.size is not None else (s.lfs.size if s.lfs else 0)),
                      sha256=(s.lfs.sha256 if s.lfs else None), blob_id=s.blob_id) for s in (info.siblings or [])]
    paths = {f.path for f in files}
    configs: dict[str, Any] = {}
    needs_configs = not (ref.tag or ref.file) and (
        any(m in paths for m in _ST_MARKERS) or not any(_is_model_gguf(p) for p in paths))
    if needs_configs:
        for name in ("config_sentence_transformers.json", "config.json"):
            if name in paths:
                if cancelled is not None and cancelled.is_set():
                    raise PullCancelled(f"pull of {ref} cancelled")
                try:
                    local = hf_hub_download(ref.repo, name, revision=commit, cache_dir=str(cache_dir), token=token, endpoint=url,
                                            library_name="sage-daemon")
                except Exception as exc:  # noqa: BLE001
                    raise translate_error(exc, ref.repo, url, path=name, revision=commit) from exc
                configs[name] = _load_json(local)
    return plan_pull(ref, files, configs=configs, commit=commit, mmproj=mmproj, download_weights=download_weights)


def _free_bytes(path: Path) -> tuple[int, Path]:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def pull_blocking(plan_or_ref: PullPlan | HubRef | str, cache_dir: str | Path, token: str | None = None, endpoint: str | None = None,
                  on_progress: Callable[[PullProgress], None] | None = None, cancelled: threading.Event | None = None, *,
                  mmproj: bool = False, download_weights: bool = False, verify: bool = True,
                  pause: Callable[[threading.Event], None] | None = None) -> PulledModel:
    """Download what the plan says into huggingface_hub's cache under `cache_dir`; blocking.

    Calls `on_progress` (on this thread, ≤ ~10/s, plus at each phase change and a final "done"
    event carrying the PulledModel). Setting `cancelled` stops at the next chunk with PullCancelled;
    what was fetched stays in the file's partial (`blobs/<etag>.incomplete`) and the next pull
    resumes from it, as after any other failure. Raises the typed errors of `translate_error`,
    HubIntegrityError on a checksum mismatch (the partial is deleted: the next pull starts over),
    DiskFullError when the free space cannot hold what is left to fetch. `verify=False` skips our
    checksum (huggingface_hub's size check stays): for a trusted mirror on a CPU-starved machine,
    where hashing competes with the download. `pause(cancelled)` is called after every chunk
    fetched or hashed (the daemon's holds the pull while a chat waits for its first token)."""
    from huggingface_hub import constants

    cancelled = cancelled or threading.Event()
    cache = Path(cache_dir)
    url = _endpoint(endpoint)
    ref_text = str(plan_or_ref) if not isinstance(plan_or_ref, PullPlan) else plan_or_ref.ref or plan_or_ref.repo
    if isinstance(plan_or_ref, str):
        ref_text = str(parse_ref(plan_or_ref))
    reporter = _Reporter(ref_text, on_progress, cancelled, pause=pause)
    reporter.set("resolving")
    if constants.is_offline_mode():
        raise HubUnavailableError("HF_HUB_OFFLINE is set: unset it to pull models")
    plan = plan_or_ref if isinstance(plan_or_ref, PullPlan) else resolve_blocking(
        plan_or_ref, cache_dir=cache, token=token, endpoint=url, mmproj=mmproj, download_weights=download_weights, cancelled=cancelled)
    reporter.check_cancelled()
    commit = plan.revision or "main"
    repo_dir = _repo_dir(cache, plan.repo)
    snapshot = repo_dir / "snapshots" / commit
    blobs = repo_dir / "blobs"

    def present(f: RepoFile) -> bool:
        return (snapshot / f.path).exists() or (f.etag is not None and (blobs / f.etag).exists())

    reporter.total = plan.total_bytes
    have = [f for f in plan.files if present(f)]
    reporter.completed = sum(f.size for f in have)
    partials = sum(p.stat().st_size for f in plan.files if f.etag and f not in have
                   for p in [blobs / f"{f.etag}.incomplete"] if p.is_file())
    needed = plan.total_bytes - reporter.completed - partials
    if needed > 0:
        free, where = _free_bytes(cache)
        if free < needed + (64 << 20):
            raise DiskFullError(f"disk full: {needed / 2**30:.1f} GiB needed at {where} ({free / 2**30:.1f} GiB free)")
    downloaded = 0
    for f in plan.files:
        reporter.check_cancelled()
        reporter.set("downloading", f.path)
        if present(f):
            if not (snapshot / f.path).exists():  # the blob is here (another revision or ref): link it
                _fetch_or_translate(plan.repo, f, commit, cache, token, url, _FileDownload(file=f, reporter=reporter), cancelled, verify)
            continue
        state = _FileDownload(file=f, reporter=reporter)
        fetched = _fetch_or_translate(plan.repo, f, commit, cache, token, url, state, cancelled, verify)
        # Bytes the hook did not see (a download without progress) still count once the file is here.
        if state.counted < f.size:
            reporter.add(f.size - state.counted)
        downloaded += fetched.downloaded
    # A branch or tag name: record where it pointed, as hf_hub_download does (we passed the commit).
    ref_name = (parse_ref(plan.ref).revision if plan.ref else None) or "main"
    if plan.files and not _is_commit(ref_name) and commit != ref_name:
        from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision

        _cache_commit_hash_for_specific_revision(str(repo_dir), ref_name, commit)
    if plan.backend == "vllm" and not plan.files:
        path = plan.repo
    elif plan.load_file:
        path = str(snapshot / plan.load_file)
    else:
        path = str(snapshot)
    model = PulledModel(ref=plan.ref or plan.repo, repo=plan.repo, revision=commit, kind=plan.kind, backend=plan.backend, path=path,
                        snapshot=str(snapshot), quant=plan.quant, files=tuple(f.path for f in plan.files),
                        size_bytes=plan.total_bytes, downloaded_bytes=downloaded, note=plan.note)
    reporter.phase, reporter.file = "done", None
    reporter.completed = reporter.total
    reporter.emit(force=True, model=model)
    return model


def find_pulled(ref: HubRef | str, cache_dir: str | Path) -> str | None:
    """The path to load for `ref` if an earlier pull left it complete in the cache, else None.
    No network: the revision is read from `refs/` (a commit is used as is), the files from the
    snapshot folder, and `plan_pull` picks among them as a pull would."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    repo_dir = _repo_dir(Path(cache_dir), ref.repo)
    revision = ref.revision or "main"
    if _is_commit(revision):
        commit = revision
    else:
        try:
            commit = (repo_dir / "refs" / revision).read_text().strip()
        except OSError:
            return None
    snapshot = repo_dir / "snapshots" / commit
    if not commit or not snapshot.is_dir():
        return None
    files = [RepoFile(path=p.relative_to(snapshot).as_posix(), size=p.stat().st_size)
             for p in sorted(snapshot.rglob("*")) if p.is_file()]  # is_file follows the links; a dangling one is skipped
    configs = {name: _load_json(str(snapshot / name)) for name in ("config_sentence_transformers.json", "config.json")
               if (snapshot / name).is_file()}
    try:
        plan = plan_pull(ref, files, configs=configs, commit=commit, download_weights=True)
    except ControlPlaneError:
        return None
    if not plan.files:
        return None
    return str(snapshot / plan.load_file) if plan.load_file else str(snapshot)


def _fetch_or_translate(repo: str, f: RepoFile, commit: str, cache: Path, token: str | None, endpoint: str, state: _FileDownload,
                        cancelled: threading.Event, verify: bool) -> _Fetched:
    try:
        return _fetch_file(repo, f, commit, cache, token, endpoint, state, cancelled, verify)
    except (PullCancelled, ControlPlaneError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise translate_error(exc, repo, endpoint, path=f.path, revision=commit) from exc


# ============================================================================ trio: PullManager

T = TypeVar("T")

PULL_NICE = 19
"""CPU priority of a pull's threads (the download and the hashing thread it starts, which inherits
it). On loopback or a fast link a pull is CPU-bound and took the cores llama.cpp decodes on: chat
TTFT went from 68 to 184 ms while pulling (benchmarks/pull.py). At nice 19 the scheduler gives the
pull what the engines leave over; an idle machine still downloads at full speed."""


def _call_at_background_priority(fn: Callable[[], T]) -> T:
    """Runs `fn` on a new thread at nice `PULL_NICE` and waits for it. A new thread each time, not
    trio's cached worker: an unprivileged daemon cannot raise a thread's priority back, and the
    cached worker would carry nice 19 into every later `to_thread` call."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread id names one thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PULL_NICE)
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=body, name="sage-pull", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return cast(T, outcome["result"])


@dataclass
class _Job:
    key: tuple[str, ...]
    ref: HubRef
    cancelled: threading.Event = field(default_factory=threading.Event)
    latest: PullProgress | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    followers: int = 0
    result: PulledModel | None = None
    error: BaseException | None = None
    done: bool = False

    def publish(self, event: PullProgress) -> None:
        self.latest = event
        self.changed.set()
        self.changed = trio.Event()


class PullManager:
    """Runs pulls on worker threads and lets callers follow them.

        async with trio.open_nursery() as nursery:
            manager = PullManager(cache_dir)
            await nursery.start(manager.run)
            async with contextlib.aclosing(manager.pull("hf:owner/repo:Q4_K_M")) as events:
                async for event in events:      # PullProgress; the last has phase "done" and .model
                    ...

    - One pull per ref (same repo, tag/file and revision, case-insensitive): a second caller
      attaches to the running one and sees its progress from where it is; nothing downloads twice.
    - Progress is a "latest state" stream: a slow follower skips events, never buffers them.
    - A follower that leaves (cancelled, or closes the iterator) does not stop a pull others still
      follow; when the last one leaves, the pull is cancelled (its partial file stays: the next
      pull of the ref resumes from it).
    - Errors: the pull's typed error is raised to every follower, from `pull`'s iteration.
    - `run` owns the pulls; cancelling it cancels them all and waits for their threads to stop.
    """

    def __init__(self, cache_dir: str | Path, *, token: str | None = None, endpoint: str | None = None,
                 pause: Callable[[threading.Event], None] | None = None):
        self.cache_dir = Path(cache_dir)
        self.token = token
        self.endpoint = endpoint
        self.pause = pause  # between chunks: the control plane's hold while chats wait (pull_blocking)
        self._jobs: dict[tuple[str, ...], _Job] = {}
        self._nursery: trio.Nursery | None = None
        self._pull_blocking = pull_blocking  # a seam for tests

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def active(self) -> list[PullProgress]:
        """The latest event of each running pull (for a `sagectl ps`-like listing)."""
        return [job.latest for job in self._jobs.values() if job.latest is not None and not job.done]

    async def pull(self, ref_text: str, *, mmproj: bool = False, download_weights: bool = False) -> AsyncIterator[PullProgress]:
        """Start or join the pull of `ref_text`; yields PullProgress until the "done" event (with
        `.model`), or raises the pull's typed error. InvalidRequestError for a bad ref, at once."""
        ref = parse_ref(ref_text)
        if self._nursery is None:
            raise EngineUnavailableError("the pull manager is not running")
        key = (*map(str, ref.key()), str(mmproj), str(download_weights))
        job = self._jobs.get(key)
        if job is None or job.cancelled.is_set():
            job = _Job(key=key, ref=ref)
            self._jobs[key] = job
            self._nursery.start_soon(self._run_job, job, mmproj, download_weights)
        job.followers += 1
        try:
            seen: PullProgress | None = None
            while True:
                if job.latest is not None and job.latest is not seen:
                    seen = job.latest
                    if seen.phase != "done":
                        yield seen
                if job.done:
                    if job.error is not None:
                        raise job.error
                    if job.latest is not None and job.latest.phase == "done":
                        yield job.latest
                    return
                await job.changed.wait()
        finally:
            job.followers -= 1
            if job.followers == 0 and not job.done:
                job.cancelled.set()
                if self._jobs.get(key) is job:
                    del self._jobs[key]

    async def _run_job(self, job: _Job, mmproj: bool, download_weights: bool) -> None:
        token = trio.lowlevel.current_trio_token()

        def on_progress(event: PullProgress) -> None:
            trio.from_thread.run_sync(job.publish, event, trio_token=token)

        fn = partial(self._pull_blocking, job.ref, self.cache_dir, self.token, self.endpoint, on_progress, job.cancelled,
                     mmproj=mmproj, download_weights=download_weights, pause=self.pause)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_on_exit, job)
                try:
                    job.result = await trio.to_thread.run_sync(_call_at_background_priority, fn)
                except PullCancelled:
                    job.error = EngineUnavailableError(f"pull of {job.ref} was cancelled")
                except Exception as exc:  # noqa: BLE001 - handed to the followers
                    job.error = exc if isinstance(exc, ControlPlaneError) else translate_error(exc, job.ref.repo, _endpoint(self.endpoint))
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            job.done = True
            job.changed.set()
            if self._jobs.get(job.key) is job:
                del self._jobs[job.key]

    @staticmethod
    async def _cancel_on_exit(job: _Job) -> None:
        try:
            await trio.sleep_forever()
        finally:
            job.cancelled.set()  # the job's task was cancelled (shutdown): stop the thread at its next chunk
