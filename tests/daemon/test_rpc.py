"""The RPC door of a real in-process daemon: methods, typed errors, bad and oversized frames."""

from __future__ import annotations

import socket
import struct
from typing import Any

import httpx
import pytest
import trio

from sage_client import protocol as p
from sage_client.rpc import RpcCallError, RpcClient


async def call(daemon: Any, method: str, params: Any = None) -> Any:
    def blocking() -> Any:
        with RpcClient(daemon.paths.socket) as client:
            return client.call(method, params)

    return await trio.to_thread.run_sync(blocking)


def raw_exchange(path: str, payload: bytes, replies: int) -> list[p.Message]:
    """Send raw bytes after a proper hello; read `replies` messages back."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(p.encode_frame(p.Hello()) + payload)
        decoder = p.FrameDecoder()
        out: list[p.Message] = []
        while len(out) < replies + 1:
            data = sock.recv(65536)
            if not data:
                break
            decoder.feed(data)
            while (body := decoder.next_frame()) is not None:
                out.append(p.decode_message(body))
        return out[1:]  # drop the welcome


async def test_status_ping_nodes_ports_version_config(daemon: Any) -> None:
    status = await call(daemon, "status")
    assert status.state == "serving" and status.socket == str(daemon.paths.socket)
    assert status.http_url.startswith("http://127.0.0.1:")
    assert (await call(daemon, "ping", {"payload": "héllo"})).payload == "héllo"
    node = await call(daemon, "nodes")
    assert node.cpu_count >= 1
    ports = await call(daemon, "ports")
    assert {row.name for row in ports.ports} >= {"GATEWAY_DEFAULT", "LLM_DEFAULT", "EMBEDDING_DEFAULT"}
    assert (await call(daemon, "version")).protocol == p.PROTOCOL_VERSION
    shown = {v.key: v for v in (await call(daemon, "config.show")).values}
    assert shown["http.port"].source == "flag test" and shown["daemon.log_level"].source.startswith("defaults")


async def test_http_health_and_version(daemon: Any) -> None:
    async with httpx.AsyncClient(base_url=daemon.services.http_url) as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert (await client.get("/version")).json()["version"]


async def test_unknown_method_and_bad_params_are_typed(daemon: Any) -> None:
    with pytest.raises(RpcCallError) as info:
        await call(daemon, "no.such.method")
    assert info.value.code == p.ErrorCode.UNKNOWN_METHOD
    with pytest.raises(RpcCallError) as info:
        await call(daemon, "ping", {"payload": 1})
    assert info.value.code == p.ErrorCode.INVALID_PARAMS and "payload" in info.value.message
    with pytest.raises(RpcCallError) as info:
        await call(daemon, "status", {"surprise": True})
    assert info.value.code == p.ErrorCode.INVALID_PARAMS


async def test_bad_frame_is_answered_and_the_connection_goes_on(daemon: Any) -> None:
    garbage = b"\xc1\xc1\xc1"
    payload = struct.pack(">I", len(garbage)) + garbage + p.encode_frame(p.Request(5, "ping", p.encode_params({"payload": "after"})))
    replies = await trio.to_thread.run_sync(raw_exchange, str(daemon.paths.socket), payload, 2)
    assert isinstance(replies[0], p.Error) and replies[0].code == p.ErrorCode.BAD_FRAME
    assert isinstance(replies[1], p.Reply) and replies[1].id == 5 and replies[1].result["payload"] == "after"


async def test_oversized_frame_gets_typed_error_and_daemon_lives(daemon: Any) -> None:
    payload = struct.pack(">I", daemon.loaded.config.rpc.max_frame_bytes + 1)
    replies = await trio.to_thread.run_sync(raw_exchange, str(daemon.paths.socket), payload, 1)
    assert isinstance(replies[0], p.Error) and replies[0].code == p.ErrorCode.FRAME_TOO_LARGE
    assert (await call(daemon, "ping", {"payload": "still here"})).payload == "still here"


async def test_first_message_must_be_hello(daemon: Any) -> None:
    def exchange() -> p.Message:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.paths.socket))
            sock.sendall(p.encode_frame(p.Request(1, "status")))
            decoder = p.FrameDecoder()
            while (body := decoder.next_frame()) is None:
                decoder.feed(sock.recv(65536))
            return p.decode_message(body)

    reply = await trio.to_thread.run_sync(exchange)
    assert isinstance(reply, p.Error) and "hello" in reply.message


async def test_many_concurrent_clients(daemon: Any) -> None:
    results: list[str] = []

    async def one(i: int) -> None:
        results.append((await call(daemon, "ping", {"payload": str(i)})).payload)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert sorted(results, key=int) == [str(i) for i in range(20)]


async def test_socket_is_private(daemon: Any) -> None:
    assert daemon.paths.socket.stat().st_mode & 0o777 == 0o600
