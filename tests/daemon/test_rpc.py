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


# ----------------------------------------------------------------------------- typed errors -> protocol codes


async def test_typed_errors_go_out_as_their_protocol_codes(tmp_path: Any, nursery: trio.Nursery) -> None:
    """The server sends each typed error's `rpc_code` (a protocol.ErrorCode member), not the
    HTTP door's `code`: a real RpcServer on a real socket, with handlers that raise them."""
    from sage_daemon.core import errors as e
    from sage_daemon.core.lifecycle import Lifecycle
    from sage_daemon.rpc.server import PeerPolicy, RpcServer, bind_unix_socket

    raised = {
        "ping": e.QueueFullError("the queue for smollm2 is full", retry_after_s=1.0),
        "status": e.ModelNotFoundError("no model 'nope'"),
        "nodes": e.InvalidStateError("job 1 already ended"),
        "ports": e.NotFoundError("no job 9"),
        "version": e.DeadlineExceededError("deadline passed"),
        # These differ from the HTTP codes ("engine_unavailable", "context_length_exceeded"):
        "models": e.EngineUnavailableError("engine smollm2 died; it restarts"),
        "queue": e.ContextOverflowError(4000, 200, 4096),
        # A closed channel inside a handler is a bug answered `internal`, not a client gone away
        # (that used to close the connection without a word).
        "collection.list": trio.ClosedResourceError("a channel of the plane"),
    }

    def raising(exc: Exception) -> Any:
        async def handler(params: Any, reply: Any) -> Any:
            raise exc

        return handler

    sock = await bind_unix_socket(tmp_path / "codes.sock")
    server = RpcServer({m: raising(exc) for m, exc in raised.items()}, lambda: p.Welcome(p.PROTOCOL_VERSION, "test", 0, ""), Lifecycle(), PeerPolicy())
    await nursery.start(server.serve, sock)

    def codes() -> dict[str, str]:
        out = {}
        with RpcClient(tmp_path / "codes.sock") as client:
            for method in raised:
                with pytest.raises(RpcCallError) as info:
                    client.call(method, {})
                out[method] = info.value.code
        return out

    got = await trio.to_thread.run_sync(codes)
    assert got == {
        "ping": p.ErrorCode.QUEUE_FULL, "status": p.ErrorCode.MODEL_NOT_FOUND, "nodes": p.ErrorCode.INVALID_STATE,
        "ports": p.ErrorCode.NOT_FOUND, "version": p.ErrorCode.DEADLINE_EXCEEDED, "models": p.ErrorCode.UNAVAILABLE,
        "queue": p.ErrorCode.INVALID_PARAMS, "collection.list": p.ErrorCode.INTERNAL,
    }
    members = {v for k, v in vars(p.ErrorCode).items() if k.isupper()}
    assert set(got.values()) <= members


async def test_real_daemon_sends_not_found_model_not_found_and_invalid_state(daemon: Any) -> None:
    async def code_of(method: str, params: Any) -> str:
        with pytest.raises(RpcCallError) as info:
            await call(daemon, method, params)
        return info.value.code

    assert await code_of("load", {"name": "no-such-model"}) == p.ErrorCode.MODEL_NOT_FOUND
    assert await code_of("job.show", {"id": 99999}) == p.ErrorCode.NOT_FOUND
    assert await code_of("collection.show", {"name": "no-such-collection"}) == p.ErrorCode.NOT_FOUND
    assert await code_of("policy.set", {"name": "lottery"}) == p.ErrorCode.INVALID_PARAMS
    assert await code_of("job.submit", {"spec": {"stages": [{"op": "from_items", "items": [1]}]}}) == p.ErrorCode.INVALID_PARAMS
    job = await call(daemon, "job.submit", {"spec": {"name": "ends", "stages": [{"op": "from_items", "items": [1, 2]}, {"op": "collect"}]}})
    done = await call(daemon, "job.wait", {"id": job.id, "timeout_s": 30})
    assert done.job.state == "succeeded"
    assert await code_of("job.cancel", {"id": job.id}) == p.ErrorCode.INVALID_STATE


def test_peer_roles_and_the_methods_a_user_peer_may_call() -> None:
    import grp
    import os

    from sage_daemon.rpc.server import USER_METHODS, Peer, PeerPolicy

    group = grp.getgrgid(os.getgid())
    stranger = 54321  # no such user: the group is matched on the gid SO_PEERCRED reports
    assert PeerPolicy(group.gr_name).role_of(os.geteuid(), 99999) == "admin"
    assert PeerPolicy(group.gr_name).role_of(0, 99999) == "admin"
    assert PeerPolicy(group.gr_name).role_of(stranger, group.gr_gid) == "user"
    assert PeerPolicy(group.gr_name, "admin").role_of(stranger, group.gr_gid) == "admin"
    assert PeerPolicy().role_of(stranger, group.gr_gid) is None

    policy = PeerPolicy(group.gr_name)
    user, admin = Peer(uid=stranger, role="user", pid=1, gid=group.gr_gid), Peer(uid=0, role="admin", pid=1, gid=0)
    admin_only = {m for m in p.METHODS if policy.refusal(user, m) is not None}
    assert admin_only == {"config.show", "policy.set", "load", "unload", "collection.drop", "models.add", "models.rm", "models.available", "models.pull"}
    assert all(policy.refusal(admin, m) is None for m in p.METHODS)
    message = policy.refusal(user, "policy.set") or ""
    assert f"uid {stranger}" in message and '[rpc].group_role = "admin"' in message
    assert USER_METHODS <= set(p.METHODS), "USER_METHODS names a method the protocol does not declare"
