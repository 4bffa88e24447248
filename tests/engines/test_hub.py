"""engines/hub.py: refs and plans alone, then real pulls from a local server that speaks the Hub's
protocol (tests/engines/hub_server.py) with huggingface_hub doing the HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from sage_daemon.core.errors import InvalidRequestError, ModelNotFoundError, NotFoundError, PermissionDeniedError
from sage_daemon.engines import hub
from sage_daemon.engines.hub import (
    DiskFullError,
    HubIntegrityError,
    HubRef,
    HubUnavailableError,
    PullManager,
    PullProgress,
    RepoFile,
    parse_ref,
    plan_pull,
    pull_blocking,
)

from .hub_server import GATED_REPO, GGUF_REPO, MINILM_REPO, FakeHub, fake_bytes, smollm_gguf, standard_hub

Q4 = "SmolLM2-135M-Instruct-Q4_1.gguf"
Q8 = "SmolLM2-135M-Instruct-Q8_0.gguf"


# ============================================================================ parse_ref

@pytest.mark.parametrize("text, expected", [
    ("hf:owner/repo", HubRef("owner/repo")),
    ("owner/repo", HubRef("owner/repo")),
    ("hf:owner/repo:q4_k_m", HubRef("owner/repo", tag="Q4_K_M")),
    ("owner/Repo-GGUF:Q8_0", HubRef("owner/Repo-GGUF", tag="Q8_0")),
    ("hf:owner/repo:UD-Q4_K_XL", HubRef("owner/repo", tag="UD-Q4_K_XL")),
    ("hf:owner/repo/model-Q4_K_M.gguf", HubRef("owner/repo", file="model-Q4_K_M.gguf")),
    ("hf:owner/repo/Q4_K_M/model-00001-of-00002.gguf", HubRef("owner/repo", file="Q4_K_M/model-00001-of-00002.gguf")),
    ("hf:owner/repo@v1.0", HubRef("owner/repo", revision="v1.0")),
    ("hf:owner/repo:Q4_0@refs/pr/3", HubRef("owner/repo", tag="Q4_0", revision="refs/pr/3")),
    ("hf:owner/repo/m.gguf@" + "a" * 40, HubRef("owner/repo", file="m.gguf", revision="a" * 40)),
    ("  hf://owner/my.repo_1  ", HubRef("owner/my.repo_1")),
    ("https://huggingface.co/owner/repo", HubRef("owner/repo")),
])
def test_parse_ref_forms(text: str, expected: HubRef) -> None:
    assert parse_ref(text) == expected


def test_parse_ref_round_trips() -> None:
    for text in ("hf:o/r", "hf:o/r:Q4_K_M", "hf:o/r/a/b.gguf", "hf:o/r:Q8_0@dev"):
        assert str(parse_ref(text)) == text


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("hf:", "empty"),
    ("hf:repo", "OWNER/REPO"),
    ("hf:/repo", "OWNER/REPO"),
    ("hf:owner/", "OWNER/REPO"),
    ("hf:owner/repo:", "quant tag"),
    ("hf:owner/repo:Q4 K", "space"),
    ("hf:owner/repo@", "revision"),
    ("hf:owner/repo@a@b", "revision"),
    ("hf:ow ner/repo", "space"),
    ("hf:-owner/repo", "valid Hub name"),
    ("hf:owner/re..po", "valid Hub name"),
    ("hf:owner/repo/config.json", "only a .gguf"),
    ("hf:owner/repo/../x.gguf", ". or .."),
    ("hf:owner/repo/a.gguf:Q4_0", "not both"),
])
def test_parse_ref_refuses(text: str, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=why) as info:
        parse_ref(text)
    assert info.value.param == "ref" and info.value.status == 400


# ============================================================================ plan_pull

def rf(path: str, size: int = 100, lfs: bool | None = None) -> RepoFile:
    is_lfs = path.endswith((".gguf", ".safetensors", ".bin", ".onnx", ".h5", ".msgpack")) if lfs is None else lfs
    digest = hashlib.sha256(path.encode()).hexdigest()
    return RepoFile(path, size, sha256=digest if is_lfs else None, blob_id=hashlib.sha1(path.encode()).hexdigest())


GGUF_FILES = [rf("README.md"), rf("m-Q2_K.gguf", 10), rf("m-Q4_0.gguf", 20), rf("m-Q4_K_M.gguf", 30), rf("m-Q8_0.gguf", 40),
              rf("m-IQ4_XS.gguf", 15), rf("mmproj-m-F16.gguf", 5), rf("mmproj-m-Q8_0.gguf", 4), rf("m.imatrix.gguf", 3)]


def test_plan_default_quant_is_q4_k_m_then_q8_0_then_first() -> None:
    plan = plan_pull(parse_ref("o/m"), GGUF_FILES)
    assert (plan.kind, plan.backend, plan.quant, plan.load_file) == ("llm", "llamacpp", "Q4_K_M", "m-Q4_K_M.gguf")
    assert [f.path for f in plan.files] == ["m-Q4_K_M.gguf"] and plan.total_bytes == 30
    no_q4km = [f for f in GGUF_FILES if "Q4_K_M" not in f.path]
    assert plan_pull(parse_ref("o/m"), no_q4km).load_file == "m-Q8_0.gguf"
    only_odd = [rf("m-Q2_K.gguf"), rf("m-IQ4_XS.gguf"), rf("mmproj-m-F16.gguf")]
    assert plan_pull(parse_ref("o/m"), only_odd).load_file == "m-IQ4_XS.gguf"  # first model GGUF by name, never the mmproj


def test_plan_tag_is_case_insensitive_and_exact() -> None:
    assert plan_pull(parse_ref("o/m:q4_0"), GGUF_FILES).load_file == "m-Q4_0.gguf"
    assert plan_pull(parse_ref("o/m:iq4_xs"), GGUF_FILES).load_file == "m-IQ4_XS.gguf"
    assert plan_pull(parse_ref("o/m:Q8_0"), GGUF_FILES).load_file == "m-Q8_0.gguf"  # not the mmproj's Q8_0


def test_plan_unknown_tag_lists_the_repo_tags() -> None:
    with pytest.raises(NotFoundError) as info:
        plan_pull(parse_ref("o/m:Q5_K_M"), GGUF_FILES)
    assert str(info.value) == "no Q5_K_M in o/m: it has IQ4_XS, Q2_K, Q4_0, Q4_K_M, Q8_0"
    assert info.value.status == 404


def test_plan_mmproj_only_when_asked() -> None:
    plan = plan_pull(parse_ref("o/m:Q8_0"), GGUF_FILES, mmproj=True)
    assert [f.path for f in plan.files] == ["m-Q8_0.gguf", "mmproj-m-Q8_0.gguf"]  # the closest in bits
    assert plan.load_file == "m-Q8_0.gguf" and plan.total_bytes == 44


def test_plan_split_gguf_takes_every_part() -> None:
    files = [rf(f"Q4_K_M/big-Q4_K_M-0000{i}-of-00003.gguf", 1000 + i) for i in (3, 1, 2)] + [rf("big-Q8_0.gguf")]
    plan = plan_pull(parse_ref("o/big"), files)
    assert [f.path for f in plan.files] == [f"Q4_K_M/big-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert plan.load_file == "Q4_K_M/big-Q4_K_M-00001-of-00003.gguf" and plan.total_bytes == 3006
    assert plan.quant == "Q4_K_M" and "llama.cpp loads the first" in plan.note
    by_file = plan_pull(parse_ref("o/big/q4_k_m/big-q4_k_m-00001-of-00003.gguf"), files)  # names match case-insensitively
    assert len(by_file.files) == 3
    with pytest.raises(NotFoundError, match=r"lacks part\(s\) 2"):
        plan_pull(parse_ref("o/big:Q4_K_M"), [f for f in files if "00002" not in f.path])


def test_plan_by_file_in_a_folder() -> None:
    files = GGUF_FILES + [rf("sub/dir/m-Q6_K.gguf", 77)]
    plan = plan_pull(parse_ref("o/m/sub/dir/m-Q6_K.gguf"), files)
    assert plan.load_file == "sub/dir/m-Q6_K.gguf" and plan.quant == "Q6_K" and plan.total_bytes == 77
    with pytest.raises(NotFoundError, match="no file nope.gguf in o/m"):
        plan_pull(parse_ref("o/m/nope.gguf"), files)


def test_plan_tag_on_a_repo_without_gguf() -> None:
    with pytest.raises(InvalidRequestError, match="has no GGUF files"):
        plan_pull(parse_ref("o/m:Q4_K_M"), [rf("config.json"), rf("model.safetensors")])


ST_FILES = [rf(".gitattributes"), rf("1_Pooling/config.json"), rf("README.md"), rf("config.json"), rf("modules.json"),
            rf("config_sentence_transformers.json"), rf("sentence_bert_config.json"), rf("model.safetensors", 1000),
            rf("pytorch_model.bin", 1000), rf("tf_model.h5", 1000), rf("flax_model.msgpack", 1000), rf("rust_model.ot", 1000),
            rf("onnx/model.onnx", 1000), rf("onnx/config.json"), rf("openvino/openvino_model.xml"), rf("tokenizer.json"), rf("vocab.txt")]


def test_plan_sentence_transformers_repo_minus_other_frameworks() -> None:
    plan = plan_pull(parse_ref("sentence-transformers/all-MiniLM-L6-v2"), ST_FILES, configs={"config_sentence_transformers.json": {}})
    assert (plan.kind, plan.backend, plan.load_file, plan.quant) == ("embedding", "sentence-transformers", None, None)
    assert [f.path for f in plan.files] == ["1_Pooling/config.json", "README.md", "config.json", "config_sentence_transformers.json",
                                            "model.safetensors", "modules.json", "sentence_bert_config.json", "tokenizer.json", "vocab.txt"]
    assert plan.total_bytes == 1000 + 8 * 100
    no_safetensors = [f for f in ST_FILES if f.path != "model.safetensors"]
    assert "pytorch_model.bin" in [f.path for f in plan_pull(parse_ref("o/m"), no_safetensors).files]


def test_plan_cross_encoders_are_rerank() -> None:
    st_ce = plan_pull(parse_ref("o/ce"), ST_FILES, configs={"config_sentence_transformers.json": {"model_type": "CrossEncoder"}})
    assert (st_ce.kind, st_ce.backend) == ("rerank", "sentence-transformers")
    classic = [rf("config.json"), rf("model.safetensors"), rf("tokenizer.json")]
    cfg = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    assert plan_pull(parse_ref("cross-encoder/ms-marco-MiniLM-L6-v2"), classic, configs={"config.json": cfg}).kind == "rerank"
    two_labels = {"architectures": ["BertForSequenceClassification"], "num_labels": 2}
    assert plan_pull(parse_ref("o/cls"), classic, configs={"config.json": two_labels}).backend == "vllm"
    with pytest.raises(InvalidRequestError, match="SparseEncoder"):
        plan_pull(parse_ref("o/sp"), ST_FILES, configs={"config_sentence_transformers.json": {"model_type": "SparseEncoder"}})


def test_plan_transformers_llm_is_vllm_and_downloads_nothing_unless_asked() -> None:
    files = [rf("config.json"), rf("model-00001-of-00002.safetensors", 500), rf("model-00002-of-00002.safetensors", 400),
             rf("pytorch_model.bin", 900), rf("tokenizer.json"), rf("flax_model.msgpack", 900)]
    cfg = {"architectures": ["LlamaForCausalLM"]}
    plan = plan_pull(parse_ref("meta/llama"), files, configs={"config.json": cfg}, commit="c" * 40)
    assert (plan.kind, plan.backend, plan.files, plan.total_bytes) == ("llm", "vllm", (), 0)
    assert "vLLM downloads" in plan.note and plan.revision == "c" * 40
    full = plan_pull(parse_ref("meta/llama"), files, configs={"config.json": cfg}, download_weights=True)
    assert [f.path for f in full.files] == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"]


def test_plan_repo_with_nothing_to_load() -> None:
    with pytest.raises(InvalidRequestError, match="no GGUF, sentence-transformers or transformers"):
        plan_pull(parse_ref("o/m"), [rf("README.md")])


# ============================================================================ real pulls

@pytest.fixture(scope="module")
def hub_server() -> Iterator[FakeHub]:
    server = standard_hub().start()
    yield server
    server.stop()


@pytest.fixture
def server(hub_server: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The module's server with counters and faults reset; huggingface_hub online, no stray token."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # other test modules set HF_HUB_OFFLINE=1
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    hub_server.reset_counts()
    hub_server.cut_once.clear()
    hub_server.wrong_sha256.clear()
    hub_server.chunk_delay_s = 0.0
    return hub_server


def check_progress(events: list[PullProgress], total: int) -> None:
    assert events[0].phase == "resolving" and events[-1].phase == "done"
    completed = [e.completed for e in events if e.phase != "resolving"]
    assert completed == sorted(completed), "progress goes backwards"
    assert events[-1].completed == events[-1].total == total
    assert all(e.total == total for e in events[1:])
    phases = [e.phase for e in events]
    assert phases.index("downloading") < phases.index("done")


def test_pull_by_tag_into_hf_cache_and_load_with_llama_cpp(server: FakeHub, tmp_path: Path) -> None:
    events: list[PullProgress] = []
    model = pull_blocking(f"hf:{GGUF_REPO}:q4_1", tmp_path, endpoint=server.url, on_progress=events.append)
    size = smollm_gguf().stat().st_size
    assert (model.kind, model.backend, model.quant, model.size_bytes, model.downloaded_bytes) == ("llm", "llamacpp", "Q4_1", size, size)
    snapshot = tmp_path / f"models--{GGUF_REPO.replace('/', '--')}" / "snapshots" / model.revision
    assert model.path == str(snapshot / Q4) and Path(model.path).is_symlink()
    assert (snapshot.parents[1] / "refs" / "main").read_text() == model.revision
    check_progress(events, size)
    assert events[-1].model == model
    assert server.gets == {(GGUF_REPO, Q4): 1}
    assert not list(tmp_path.rglob("*.incomplete"))

    from llama_cpp import Llama

    llm = Llama(model_path=model.path, vocab_only=True, verbose=False)
    assert llm.tokenize(b"hello world")

    again: list[PullProgress] = []
    second = pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url, on_progress=again.append)
    assert second.path == model.path and second.downloaded_bytes == 0
    assert server.gets == {(GGUF_REPO, Q4): 1}, "a pulled file is not fetched again"
    assert again[1].completed == size  # what is in the cache counts as done from the start


def test_find_pulled_answers_from_the_cache_alone(server: FakeHub, tmp_path: Path) -> None:
    assert hub.find_pulled(f"hf:{GGUF_REPO}:Q4_1", tmp_path) is None
    model = pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    server.reset_counts()
    assert hub.find_pulled(f"hf:{GGUF_REPO}:q4_1", tmp_path) == model.path
    assert hub.find_pulled(f"{GGUF_REPO}", tmp_path) == model.path  # the only GGUF there
    assert hub.find_pulled(f"hf:{GGUF_REPO}:Q8_0", tmp_path) is None
    assert hub.find_pulled(f"hf:{GGUF_REPO}:Q4_1@{model.revision}", tmp_path) == model.path
    assert server.api_calls == 0 and not server.gets and not server.heads, "no network"
    st = pull_blocking(f"hf:{MINILM_REPO}", tmp_path, endpoint=server.url)
    assert hub.find_pulled(MINILM_REPO, tmp_path) == st.path


def test_pull_by_file_and_split_parts(server: FakeHub, tmp_path: Path) -> None:
    model = pull_blocking(f"hf:{GGUF_REPO}/{Q8}", tmp_path, endpoint=server.url)
    assert model.path.endswith(Q8) and Path(model.path).read_bytes() == fake_bytes(300_000, 8)
    split = pull_blocking(f"hf:{GGUF_REPO}:Q2_K", tmp_path, endpoint=server.url)
    assert len(split.files) == 3 and split.path.endswith("split/SmolLM2-135M-Instruct-Q2_K-00001-of-00003.gguf")
    assert all((Path(split.snapshot) / f).is_file() for f in split.files)
    assert split.size_bytes == 500_000 and "finds the rest" in split.note


def test_pull_minilm_loads_with_sentence_transformers(server: FakeHub, tmp_path: Path) -> None:
    events: list[PullProgress] = []
    model = pull_blocking(f"hf:{MINILM_REPO}", tmp_path, endpoint=server.url, on_progress=events.append)
    assert (model.kind, model.backend) == ("embedding", "sentence-transformers") and model.path == model.snapshot
    check_progress(events, model.size_bytes)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model.path, device="cpu", local_files_only=True)
    vectors = st.encode(["a pulled model", "works"])
    assert vectors.shape == (2, 384)


def test_resume_after_a_cut_connection_fetches_only_the_rest(server: FakeHub, tmp_path: Path) -> None:
    size = smollm_gguf().stat().st_size
    server.cut_once[Q4] = 30 << 20
    model = pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    assert server.gets[(GGUF_REPO, Q4)] == 2, "one cut, one resumed GET"
    assert server.bytes_served[(GGUF_REPO, Q4)] == size, "the second GET sends only the rest (Range)"
    assert hashlib.sha256(Path(model.path).read_bytes()).digest() == hashlib.sha256(smollm_gguf().read_bytes()).digest()


def test_checksum_mismatch_is_refused_and_nothing_is_left(server: FakeHub, tmp_path: Path) -> None:
    server.wrong_sha256.add(Q8)
    with pytest.raises(HubIntegrityError, match="checksum mismatch") as info:
        pull_blocking(f"hf:{GGUF_REPO}:Q8_0", tmp_path, endpoint=server.url)
    assert info.value.status == 502 and "\n" not in str(info.value)
    repo_dir = tmp_path / f"models--{GGUF_REPO.replace('/', '--')}"
    assert not list((repo_dir / "snapshots").rglob("*.gguf")), "no model at the final path"
    assert not [p for p in (repo_dir / "blobs").iterdir()], "the bad blob is deleted, no .incomplete left"


def test_errors_are_one_line_that_says_what_to_do(server: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as missing:
        pull_blocking("hf:test/no-such-model", tmp_path, endpoint=server.url)
    assert str(missing.value).startswith("no model test/no-such-model on the Hub (check the name")
    with pytest.raises(PermissionDeniedError) as gated:
        pull_blocking(f"hf:{GATED_REPO}", tmp_path, endpoint=server.url)
    assert str(gated.value) == f"{GATED_REPO} is gated: accept its licence on huggingface.co and set HF_TOKEN"
    assert pull_blocking(f"hf:{GATED_REPO}", tmp_path, endpoint=server.url, token="hf_goodtoken").quant == "Q4_K_M"
    with pytest.raises(NotFoundError) as tag:
        pull_blocking(f"hf:{GGUF_REPO}:Q5_K_M", tmp_path, endpoint=server.url)
    assert str(tag.value) == f"no Q5_K_M in {GGUF_REPO}: it has Q2_K, Q4_1, Q8_0"
    with pytest.raises(NotFoundError, match="no revision nope"):
        pull_blocking(f"hf:{GGUF_REPO}@nope", tmp_path, endpoint=server.url)
    closed = FakeHub().start()
    url = closed.url
    closed.stop()
    started = time.monotonic()
    with pytest.raises(HubUnavailableError) as offline:
        pull_blocking(f"hf:{GGUF_REPO}", tmp_path, endpoint=url)
    assert str(offline.value) == f"cannot reach {url} (HF_ENDPOINT unset): check the network or set HF_ENDPOINT to a mirror"
    assert offline.value.status == 503 and time.monotonic() - started < 10
    for error in (missing.value, gated.value, tag.value, offline.value):
        assert "\n" not in str(error)


def test_disk_full_is_refused_before_downloading(server: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: SimpleNamespace(free=1 << 20))
    with pytest.raises(DiskFullError) as info:
        pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    assert str(info.value).startswith("disk full: 0.1 GiB needed at ") and info.value.status == 507
    assert server.gets[(GGUF_REPO, Q4)] == 0


def repo_dir(cache: Path, repo: str = GGUF_REPO) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


def partials(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.incomplete"))


def cancel_when(more_than: int) -> tuple[threading.Event, Callable[[PullProgress], None]]:
    cancelled = threading.Event()

    def on_progress(event: PullProgress) -> None:
        if event.completed > more_than:
            cancelled.set()

    return cancelled, on_progress


def q4_sha256() -> str:
    return hashlib.sha256(smollm_gguf().read_bytes()).hexdigest()


def test_cancel_keeps_the_partial_and_the_next_pull_fetches_only_the_rest(server: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import scan_cache_dir

    size, sha, data = smollm_gguf().stat().st_size, q4_sha256(), smollm_gguf().read_bytes()
    server.chunk_delay_s = 0.01
    cancelled, on_progress = cancel_when(30 << 20)
    with pytest.raises(hub.PullCancelled):
        pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url, on_progress=on_progress, cancelled=cancelled)
    part = repo_dir(tmp_path) / "blobs" / f"{sha}.incomplete"
    assert partials(tmp_path) == [part], "one stable partial per blob"
    have = part.stat().st_size
    assert 30 << 20 <= have < size and part.read_bytes() == data[:have]
    assert not (part.parent / sha).exists() and not list(tmp_path.rglob("*.gguf")), "nothing at a final path"
    assert [i.file_path for i in scan_cache_dir(tmp_path).incomplete_files] == [part]  # huggingface_hub sees a partial download

    server.reset_counts()
    server.chunk_delay_s = 0.0
    events: list[PullProgress] = []
    model = pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url, on_progress=events.append)
    assert server.gets[(GGUF_REPO, Q4)] == 1 and server.bytes_served[(GGUF_REPO, Q4)] == size - have, "only the rest"
    assert model.downloaded_bytes == size - have
    assert hashlib.sha256(Path(model.path).read_bytes()).hexdigest() == sha
    assert not partials(tmp_path) and not any((repo_dir(tmp_path) / ".sage-partial").iterdir())
    check_progress(events, size)
    assert [e.completed for e in events if e.phase == "downloading"][-1] >= have


def test_a_connection_cut_until_huggingface_hub_gives_up_fails_and_the_next_pull_resumes(
        server: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import file_download

    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda s: None))  # its 1 s pause between retries
    size, sha = smollm_gguf().stat().st_size, q4_sha256()
    server.cuts[Q4] = [20 << 20] + [0] * 5  # 20 MiB, then five GETs cut before any byte: http_get's retries run out
    with pytest.raises(HubUnavailableError) as info:
        pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    assert server.gets[(GGUF_REPO, Q4)] == 6 and not server.cuts[Q4]
    assert info.value.status == 503 and "\n" not in str(info.value)
    assert [p.stat().st_size for p in partials(tmp_path)] == [20 << 20]

    server.reset_counts()
    model = pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    assert server.bytes_served[(GGUF_REPO, Q4)] == size - (20 << 20) and model.downloaded_bytes == size - (20 << 20)
    assert hashlib.sha256(Path(model.path).read_bytes()).hexdigest() == sha and not partials(tmp_path)


def test_a_corrupted_partial_fails_the_checksum_is_deleted_and_the_next_pull_starts_over(server: FakeHub, tmp_path: Path) -> None:
    size, sha, data = smollm_gguf().stat().st_size, q4_sha256(), smollm_gguf().read_bytes()
    blobs = repo_dir(tmp_path) / "blobs"
    blobs.mkdir(parents=True)
    damaged = bytearray(data[:25 << 20])
    damaged[1 << 20:(1 << 20) + 64] = bytes(b ^ 0xFF for b in damaged[1 << 20:(1 << 20) + 64])
    (blobs / f"{sha}.incomplete").write_bytes(bytes(damaged))  # an earlier attempt's partial, with wrong bytes in it

    with pytest.raises(HubIntegrityError, match="checksum mismatch .resumed") as info:
        pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    assert info.value.status == 502 and "\n" not in str(info.value)
    assert server.bytes_served[(GGUF_REPO, Q4)] == size - (25 << 20), "it resumed from the partial"
    assert not partials(tmp_path) and not (blobs / sha).exists() and not list(tmp_path.rglob("*.gguf")), "the bad bytes are gone"

    server.reset_counts()
    model = pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url)
    assert server.bytes_served[(GGUF_REPO, Q4)] == size and model.downloaded_bytes == size, "from scratch"
    assert Path(model.path).read_bytes() == data


def test_a_pulled_file_is_huggingface_hubs_own(server: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    model = pull_blocking(f"hf:{GGUF_REPO}/{Q8}", tmp_path, endpoint=server.url)
    sha = hashlib.sha256(fake_bytes(300_000, 8)).hexdigest()
    assert os.readlink(model.path) == f"../../blobs/{sha}", "a relative link to the blob, as huggingface_hub makes"
    assert (repo_dir(tmp_path) / "refs" / "main").read_text() == model.revision
    assert hf_hub_download(GGUF_REPO, Q8, cache_dir=tmp_path, local_files_only=True) == model.path
    server.reset_counts()
    assert hf_hub_download(GGUF_REPO, Q8, cache_dir=tmp_path, endpoint=server.url) == model.path
    assert not server.gets, "huggingface_hub finds it cached"
    info = scan_cache_dir(tmp_path)
    assert not info.warnings and not info.incomplete_files
    [repo] = info.repos
    [revision] = repo.revisions
    assert (repo.repo_id, revision.commit_hash, revision.refs) == (GGUF_REPO, model.revision, frozenset({"main"}))
    assert [(f.file_name, f.size_on_disk) for f in revision.files] == [(Q8, 300_000)]


def test_two_concurrent_pulls_of_one_file_download_it_once(server: FakeHub, tmp_path: Path) -> None:
    server.chunk_delay_s = 0.002
    size = smollm_gguf().stat().st_size
    results: dict[str, hub.PulledModel] = {}
    errors: list[BaseException] = []

    def run(ref: str) -> None:
        try:
            results[ref] = pull_blocking(ref, tmp_path, endpoint=server.url)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    refs = (f"hf:{GGUF_REPO}:Q4_1", f"hf:{GGUF_REPO}/{Q4}")  # two refs (PullManager would run both), one file
    threads = [threading.Thread(target=run, args=(ref,)) for ref in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert server.gets[(GGUF_REPO, Q4)] == 1 and server.bytes_served[(GGUF_REPO, Q4)] == size
    assert results[refs[0]].path == results[refs[1]].path
    assert sorted(r.downloaded_bytes for r in results.values()) == [0, size]


def test_a_pull_waits_for_huggingface_hubs_file_lock_of_the_blob(server: FakeHub, tmp_path: Path) -> None:
    """Another process (here: this test, holding the same lock file) downloading the blob."""
    from huggingface_hub.utils._fixes import WeakFileLock

    lock_path = tmp_path / ".locks" / repo_dir(tmp_path).name / f"{q4_sha256()}.lock"
    lock_path.parent.mkdir(parents=True)
    done: list[object] = []

    def run(cancelled: threading.Event) -> None:
        try:
            done.append(pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url, cancelled=cancelled))
        except BaseException as exc:  # noqa: BLE001
            done.append(exc)

    with WeakFileLock(lock_path):
        cancelled = threading.Event()
        waiting = threading.Thread(target=run, args=(cancelled,))
        waiting.start()
        time.sleep(0.6)
        assert not done and not server.gets, "it waits for the lock"
        cancelled.set()  # and can be cancelled while it waits
        waiting.join(5)
        assert len(done) == 1 and isinstance(done[0], hub.PullCancelled)
        waiting = threading.Thread(target=run, args=(threading.Event(),))
        waiting.start()
        time.sleep(0.3)
        assert len(done) == 1
    waiting.join(60)
    assert isinstance(done[-1], hub.PulledModel) and server.gets[(GGUF_REPO, Q4)] == 1


def test_a_partial_of_a_file_the_repo_has_since_changed_is_discarded(server: FakeHub, tmp_path: Path) -> None:
    repo, name = "test/changing-GGUF", "m-Q8_0.gguf"
    old, new = fake_bytes(30 << 20, 1), fake_bytes(30 << 20, 2)
    server.add_repo(repo, {name: old})
    server.chunk_delay_s = 0.01
    cancelled, on_progress = cancel_when(5 << 20)
    with pytest.raises(hub.PullCancelled):
        pull_blocking(f"hf:{repo}:Q8_0", tmp_path, endpoint=server.url, on_progress=on_progress, cancelled=cancelled)
    [stale] = partials(tmp_path)
    assert stale.name == f"{hashlib.sha256(old).hexdigest()}.incomplete"

    server.add_repo(repo, {name: new})  # a new commit: the file has another etag now
    server.reset_counts()
    server.chunk_delay_s = 0.0
    model = pull_blocking(f"hf:{repo}:Q8_0", tmp_path, endpoint=server.url)
    assert Path(model.path).read_bytes() == new and server.bytes_served[(repo, name)] == len(new)
    assert not stale.exists() and not partials(tmp_path)


def test_progress_is_throttled(server: FakeHub, tmp_path: Path) -> None:
    server.chunk_delay_s = 0.005
    events: list[PullProgress] = []
    started = time.monotonic()
    pull_blocking(f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url, on_progress=events.append)
    elapsed = time.monotonic() - started
    downloading = [e for e in events if e.phase == "downloading"]
    assert len(downloading) <= elapsed * 10 + 3
    assert any(e.bytes_per_s > 0 and e.eta_s is not None for e in downloading)


# ============================================================================ PullManager

async def follow(manager: PullManager, ref: str, into: list[PullProgress]) -> None:
    async with contextlib.aclosing(manager.pull(ref)) as events:
        async for event in events:
            into.append(event)


async def test_two_pulls_of_one_ref_download_once(server: FakeHub, tmp_path: Path) -> None:
    server.chunk_delay_s = 0.002
    manager = PullManager(tmp_path, endpoint=server.url)
    a: list[PullProgress] = []
    b: list[PullProgress] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        async with trio.open_nursery() as pulls:
            pulls.start_soon(follow, manager, f"hf:{GGUF_REPO}:Q4_1", a)
            while not any(e.completed for e in a):  # the first pull is downloading (not a fixed sleep: a busy machine)
                await trio.sleep(0.01)
            pulls.start_soon(follow, manager, f"{GGUF_REPO.lower()}:q4_1", b)  # the same ref, spelled otherwise
        nursery.cancel_scope.cancel()
    assert server.gets == {(GGUF_REPO, Q4): 1} and server.api_calls == 1
    assert a[-1].phase == b[-1].phase == "done" and a[-1].model == b[-1].model is not None
    assert b[0].completed > 0, "the second caller joins where the pull is"
    assert [e.completed for e in b] == sorted(e.completed for e in b)


async def test_a_follower_leaving_does_not_stop_the_pull_but_the_last_does(server: FakeHub, tmp_path: Path) -> None:
    server.chunk_delay_s = 0.01
    manager = PullManager(tmp_path, endpoint=server.url)
    stays: list[PullProgress] = []
    leaves: list[PullProgress] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        async with trio.open_nursery() as pulls:
            pulls.start_soon(follow, manager, f"hf:{GGUF_REPO}:Q4_1", stays)
            with trio.move_on_after(0.5):
                await follow(manager, f"hf:{GGUF_REPO}:Q4_1", leaves)
        assert stays[-1].phase == "done" and leaves and leaves[-1].phase == "downloading"
        assert server.gets[(GGUF_REPO, Q4)] == 1

        # Alone, a follower that leaves cancels the pull: the thread stops; what it fetched stays
        # in the partial file and the next pull of the ref fetches only the rest.
        other = PullManager(tmp_path / "other", endpoint=server.url)
        await nursery.start(other.run)
        lone: list[PullProgress] = []
        async with trio.open_nursery() as leaving:
            leaving.start_soon(follow, other, f"hf:{GGUF_REPO}:Q4_1", lone)
            await trio.sleep(0.2)
            [job] = other._jobs.values()
            await trio.sleep(0.3)
            leaving.cancel_scope.cancel()
        assert lone and lone[-1].phase != "done" and not other._jobs
        server.chunk_delay_s = 0.0
        with trio.fail_after(10):
            while not job.done:  # its thread stops at its next chunk
                await trio.sleep(0.05)
        [part] = partials(tmp_path / "other")
        kept = part.stat().st_size
        server.reset_counts()
        again: list[PullProgress] = []
        await follow(other, f"hf:{GGUF_REPO}:Q4_1", again)
        assert again[-1].phase == "done" and again[-1].model is not None
        assert server.bytes_served[(GGUF_REPO, Q4)] == smollm_gguf().stat().st_size - kept and not partials(tmp_path)
        nursery.cancel_scope.cancel()


async def test_manager_raises_the_typed_error_to_every_follower(server: FakeHub, tmp_path: Path) -> None:
    manager = PullManager(tmp_path, endpoint=server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with pytest.raises(ModelNotFoundError):
            await follow(manager, "hf:test/no-such-model", [])
        with pytest.raises(InvalidRequestError):
            await follow(manager, "hf:bad", [])
        nursery.cancel_scope.cancel()


async def test_manager_shutdown_stops_running_pulls(server: FakeHub, tmp_path: Path) -> None:
    server.chunk_delay_s = 0.02
    manager = PullManager(tmp_path, endpoint=server.url)
    seen: list[PullProgress] = []

    async def follow_quietly() -> None:
        with contextlib.suppress(Exception):
            await follow(manager, f"hf:{GGUF_REPO}:Q4_1", seen)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            nursery.start_soon(follow_quietly)
            await trio.sleep(0.4)
            nursery.cancel_scope.cancel()
    assert seen and seen[-1].phase != "done"
    assert not list(tmp_path.rglob("*.gguf")), "nothing at a final path; the partial stays for the next pull"


async def test_pulls_run_at_background_cpu_priority_and_leave_trio_threads_alone(server: FakeHub, tmp_path: Path) -> None:
    """A pull's download and hashing threads run at nice PULL_NICE (a loopback-speed pull took the
    cores llama.cpp decodes on); trio's cached worker threads keep the daemon's priority."""
    seen: dict[str, int] = {}
    real = hub.pull_blocking

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen["download"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real(*args, **kwargs)

    manager = PullManager(tmp_path, endpoint=server.url)
    manager._pull_blocking = spy
    events: list[PullProgress] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await follow(manager, f"hf:{GGUF_REPO}:Q4_1", events)
        nursery.cancel_scope.cancel()
    assert events[-1].phase == "done" and events[-1].model is not None
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen["download"] == hub.PULL_NICE
    after = await trio.to_thread.run_sync(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert after == base, "trio's worker threads are not lowered"


def test_a_pull_holds_between_chunks_while_a_chat_waits_for_its_first_token(server: FakeHub, tmp_path: Path) -> None:
    """The daemon hands pulls the CPU gate's pause: with a chat waiting for its first token the
    download stops after the piece in hand, and goes on at full speed once the token is out."""
    from sage_daemon.control.gate import CpuGate

    gate = CpuGate()
    calls: list[float] = []

    def pause(cancelled: threading.Event) -> None:
        calls.append(gate.pause_for_interactive(cancelled, max_s=30))

    events: list[PullProgress] = []
    gate.set_interactive_pending(1)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(model=pull_blocking(
        f"hf:{GGUF_REPO}:Q4_1", tmp_path, endpoint=server.url, on_progress=events.append, pause=pause)), daemon=True)
    worker.start()
    size = smollm_gguf().stat().st_size
    try:
        deadline = time.monotonic() + 30
        while not partials(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.01)  # listing, planning, then the download starts
        time.sleep(0.2)  # the pull is held after it
        held_at = partials(tmp_path)[0].stat().st_size
        time.sleep(0.3)
        assert partials(tmp_path)[0].stat().st_size == held_at, "the pull went on while a chat waited"
        assert held_at <= 2 * hub.READ_CHUNK < size
        assert calls == []  # the first pause is still holding
    finally:
        gate.set_interactive_pending(0)
    worker.join(60)
    assert result["model"].size_bytes == size
    assert len(calls) >= size // hub.READ_CHUNK  # once per piece
    assert calls[0] >= 0.3 and all(c < 0.1 for c in calls[1:])  # held once, then not at all
