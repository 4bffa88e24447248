"""A remote server's refusals through a real daemon's two doors: the remote's 400 and 404 reach
an HTTP client and an RPC client as that refusal with the remote's message (issue 16, point 4),
not as a 500 / internal error. The remote is a real HTTP server on loopback (tests/engines/
test_remote.py's ScriptedRemote); the daemon is `python -m sage_daemon` with two remote models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sage_client.protocol import ErrorCode, JobEmbedParams, JobGenerateParams
from sage_client.rpc import RpcCallError, RpcClient
from tests.conftest import REPO, DaemonProcess
from tests.engines.test_remote import ScriptedRemote, openai_error

TOO_LONG = "This model's maximum context length is 64 tokens. However, you requested 5000 tokens."
NO_MODEL = "The model `m` does not exist."
REFUSED = "REFUSE ME"  # a text this remote refuses (our door checks inputs itself, so it must look fine to us)
REFUSAL = "'input' : this input breaks the remote's rules"


def embeddings(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Vectors (the load's dimension probe among them), OpenAI's 400 for the text it refuses."""
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if REFUSED in texts:
        return 400, openai_error(REFUSAL, "invalid_request_error", None, "input")
    data = [{"object": "embedding", "index": i, "embedding": [1.0, 0.0, 0.0]} for i in range(len(texts))]
    return 200, {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}}


class Setup:
    def __init__(self, daemon: DaemonProcess, url: str):
        self.daemon = daemon
        self.url = url


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    remote = ScriptedRemote({
        "/v1/completions": (400, openai_error(TOO_LONG, "BadRequestError", 400, "prompt")),
        "/v1/chat/completions": (404, openai_error(NO_MODEL, "invalid_request_error", "model_not_found", "model")),
        "/v1/embeddings": embeddings,
    })
    root = tmp_path_factory.mktemp("remote-doors")
    config = root / "sage.toml"
    config.write_text("\n".join(
        f'[[models]]\nname = "{name}"\nkind = "{kind}"\nbackend = "remote"\nremote_model = "m"\nsources = {{ remote = "{remote.url}/v1" }}\n'
        for name, kind in (("up", "llm"), ("up-embed", "embedding"))
    ))
    daemon = DaemonProcess(root / "d", "--config", str(config), env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    try:
        match = re.search(r"serving on (http://\S+)", " ".join(daemon.notify.messages))
        assert match, daemon.output()[-3000:]
        yield Setup(daemon, match.group(1))
    finally:
        daemon.stop()
        remote.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("stream", [False, True])
def test_http_door_answers_the_remotes_400_and_404(setup: Setup, stream: bool) -> None:
    with httpx.Client(base_url=setup.url, timeout=60) as http:
        response = http.post("/v1/completions", json={"model": "up", "prompt": "hi", "max_tokens": 5, "stream": stream})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert (error["message"], error["param"], error["type"]) == (TOO_LONG, "prompt", "invalid_request_error")

        response = http.post("/v1/chat/completions", json={"model": "up", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        assert response.status_code == 404, response.text
        error = error_of(response)
        assert (error["message"], error["code"], error["param"]) == (NO_MODEL, "model_not_found", "model")


def test_http_door_answers_the_remotes_400_for_an_embedding_input(setup: Setup) -> None:
    with httpx.Client(base_url=setup.url, timeout=60) as http:
        good = http.post("/v1/embeddings", json={"model": "up-embed", "input": ["fine"]})
        assert good.status_code == 200 and good.json()["data"][0]["embedding"] == [1.0, 0.0, 0.0]
        response = http.post("/v1/embeddings", json={"model": "up-embed", "input": ["fine", REFUSED]})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert (error["message"], error["param"]) == (REFUSAL, "input")


def test_rpc_door_answers_the_remotes_400_and_404(setup: Setup) -> None:
    with RpcClient(setup.daemon.socket, timeout=60) as rpc:
        with pytest.raises(RpcCallError) as info:
            rpc.call("job.generate", JobGenerateParams(model="up", prompt="hi", max_tokens=5))
        assert info.value.code == ErrorCode.INVALID_PARAMS and TOO_LONG in info.value.message
        with pytest.raises(RpcCallError) as info:
            rpc.call("job.generate", JobGenerateParams(model="up", messages=[{"role": "user", "content": "hi"}], max_tokens=5))
        assert info.value.code == ErrorCode.NOT_FOUND and NO_MODEL in info.value.message


def test_rpc_door_answers_the_remotes_400_for_an_embedding_input(setup: Setup) -> None:
    with RpcClient(setup.daemon.socket, timeout=60) as rpc:
        assert rpc.call("job.embed", JobEmbedParams(model="up-embed", texts=["fine"])).vectors == [[1.0, 0.0, 0.0]]
        with pytest.raises(RpcCallError) as info:
            rpc.call("job.embed", JobEmbedParams(model="up-embed", texts=["fine", REFUSED]))
        assert info.value.code == ErrorCode.INVALID_PARAMS and REFUSAL in info.value.message
