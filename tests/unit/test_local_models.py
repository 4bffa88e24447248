"""What a file or folder on disk is, the models the HF cache and models_dir hold, and the
models file layered over the config (no daemon, no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_daemon.core.config import ConfigError, ModelConfig, ModelSources
from sage_daemon.core.errors import InvalidRequestError
from sage_daemon.core.model_catalog import CONFIG_LAYER, ModelCatalog
from sage_daemon.engines.local_models import folder_kind, model_config, quant_of, scan_hf_cache, scan_models_dir, suggested_name


def st_folder(path: Path, cross: bool = False) -> Path:
    path.mkdir(parents=True)
    (path / "modules.json").write_text("[]")
    (path / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "CrossEncoder"} if cross else {}))
    (path / "model.safetensors").write_bytes(b"x" * 10)
    return path


def test_folder_kinds(tmp_path: Path) -> None:
    assert folder_kind(st_folder(tmp_path / "bi")) == "embedding"
    assert folder_kind(st_folder(tmp_path / "ce", cross=True)) == "rerank"
    old = tmp_path / "old-ce"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}))
    assert folder_kind(old) == "rerank"
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert folder_kind(llm) is None


@pytest.mark.parametrize(
    ("filename", "quant", "name"),
    [
        ("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "Q4_K_M", "qwen2.5-0.5b-instruct:q4_k_m"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", "smollm2-135m-instruct:q4_1"),
        ("model-IQ4_XS-00001-of-00003.gguf", "IQ4_XS", "model:iq4_xs"),
        ("gemma-f16.gguf", "F16", "gemma:f16"),
        ("plain.gguf", "", "plain"),
    ],
)
def test_quant_and_names(filename: str, quant: str, name: str) -> None:
    assert quant_of(filename) == quant
    assert suggested_name(filename, quant) == name


def test_model_config_from_paths(tmp_path: Path) -> None:
    gguf = tmp_path / "m-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    llm = model_config("m", gguf, n_ctx=2048, parallel=2)
    assert (llm.kind, llm.backend, llm.sources.llamacpp, llm.n_ctx, llm.parallel) == ("llm", "llamacpp", str(gguf), 2048, 2)
    emb = model_config("e", st_folder(tmp_path / "bi"))
    assert (emb.kind, emb.backend, emb.sources.sentence_transformers) == ("embedding", "sentence-transformers", str(tmp_path / "bi"))
    assert model_config("r", st_folder(tmp_path / "ce", cross=True)).kind == "rerank"
    with pytest.raises(InvalidRequestError, match="does not fit"):
        model_config("m", gguf, kind="embedding")
    with pytest.raises(InvalidRequestError, match="does not exist"):
        model_config("m", tmp_path / "missing.gguf")
    other = tmp_path / "notes.txt"
    other.write_text("hi")
    with pytest.raises(InvalidRequestError, match="not a GGUF"):
        model_config("m", other)


def test_scans_find_first_split_parts_and_skip_projectors(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a-Q8_0.gguf", "big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf", "mmproj-f16.gguf"):
        (models / name).write_bytes(b"x" * 100)
    st_folder(models / "minilm")
    found = {m.name: m for m in scan_models_dir(models)}
    assert set(found) == {"a:q8_0", "big:q4_k_m", "minilm"}
    assert found["big:q4_k_m"].size_bytes == 200 and found["minilm"].kind == "embedding"
    snapshot = tmp_path / "hub" / "models--bartowski--Qwen2.5-0.5B-GGUF" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "Qwen2.5-0.5B-Q4_K_M.gguf").write_bytes(b"y" * 7)
    st_folder(tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "def")
    hub = {m.name: m for m in scan_hf_cache(tmp_path / "hub")}
    assert hub["qwen2.5-0.5b:q4_k_m"].where == "huggingface cache (bartowski/Qwen2.5-0.5B-GGUF)"
    assert hub["all-minilm-l6-v2"].kind == "embedding"


def test_catalog_layers_added_models_over_the_config(tmp_path: Path) -> None:
    configured = [ModelConfig(name="smollm2", kind="llm"), ModelConfig(name="minilm", kind="embedding")]
    catalog = ModelCatalog(tmp_path / "state" / "models.json", configured)
    assert [m.name for m in catalog.models()] == ["smollm2", "minilm"] and catalog.origin("smollm2") == CONFIG_LAYER
    mine = ModelConfig(name="qwen", kind="llm", backend="llamacpp", sources=ModelSources(llamacpp="/m.gguf"))
    catalog.add(mine)
    catalog.add(ModelConfig(name="smollm2", kind="llm", n_ctx=1024))  # replaces the config's, in place
    again = ModelCatalog(tmp_path / "state" / "models.json", configured)  # a restart reads the file
    assert [(m.name, m.n_ctx) for m in again.models()] == [("smollm2", 1024), ("minilm", 4096), ("qwen", 4096)]
    assert again.origin("qwen").startswith("models file (")
    assert again.remove("smollm2") == configured[0]  # the config's comes back
    assert again.remove("qwen") is None
    with pytest.raises(KeyError):
        again.remove("minilm")  # only added models can be removed
    assert [m.name for m in ModelCatalog(again.path, configured).models()] == ["smollm2", "minilm"]
    again.path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken"):
        ModelCatalog(again.path, configured)
