"""The HTTP door's connections, over real sockets against a real daemon (the in-test control
plane behind it): the backlog asked for is the one listening, Connection: close / HTTP/1.0 /
CL+TE requests are answered and then closed, a connection past http.max_connections gets a 503
with Retry-After, the keep-alive timeout is the configured one, and a client that closes never
leaves the server's side in CLOSE-WAIT. Plus sage_daemon.http.connections.serve alone, for the
drain (new connections get a 503 while open ones finish)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from sage_daemon.core.config import HttpConfig
from sage_daemon.core.ports import tcp_sockets
from sage_daemon.http.connections import check_somaxconn, hypercorn_config, raise_nofile_limit, serve

Response = tuple[int, dict[str, str], bytes]


def parse_responses(data: bytes) -> list[Response]:
    """Every complete HTTP/1.1 response in `data` (Content-Length or chunked bodies)."""
    out: list[Response] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, rest = rest.partition(b"\r\n")
                    break
                body, rest = body + rest[:size], rest[size + 2 :]
            data = rest
        else:
            body, data = rest, b""
        out.append((status, headers, body))
    return out


class Conn:
    """One raw client connection; `read` collects bytes until the server closes or time is up."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.data = b""
        self.closed = False  # the server closed (EOF)
        self.reset = False

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def read(self, timeout: float, until_responses: int | None = None) -> float:
        """Read until EOF, a reset, `until_responses` complete responses, or `timeout`; returns the seconds taken."""
        started = time.monotonic()
        with trio.move_on_after(timeout):
            while not (until_responses and len(parse_responses(self.data)) >= until_responses):
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    self.reset = True
                    break
                if not chunk:
                    self.closed = True
                    break
                self.data += chunk
        return time.monotonic() - started

    @property
    def responses(self) -> list[Response]:
        return parse_responses(self.data)

    async def aclose(self) -> None:
        await self.stream.aclose()


def port_of(fake: Any) -> int:
    return int(fake.url.rsplit(":", 1)[1])


def close_wait_count(port: int) -> int:
    """Sockets on our side of `port` in CLOSE-WAIT."""
    return len(tcp_sockets(port, "08"))


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


# -- settings --------------------------------------------------------------------------------


def test_hypercorn_config_takes_the_http_section() -> None:
    hyper = hypercorn_config(HttpConfig(backlog=777, keep_alive_timeout_s=2.5), 7.0, "fd://9")
    assert (hyper.backlog, hyper.keep_alive_timeout, hyper.graceful_timeout, hyper.bind) == (777, 2.5, 7.0, ["fd://9"])
    assert hyper.accesslog is None


def test_somaxconn_below_the_backlog_is_a_warning(tmp_path: Path) -> None:
    proc = tmp_path / "somaxconn"
    proc.write_text("128\n")
    warning = check_somaxconn(2048, proc)
    assert warning is not None and "128" in warning and "2048" in warning and "somaxconn" in warning
    proc.write_text("4096\n")
    assert check_somaxconn(2048, proc) is None
    assert check_somaxconn(2048, tmp_path / "absent") is None  # not Linux, or no /proc: nothing to say


def test_nofile_limit_is_raised_for_the_connection_cap() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        soft, hard = before
        if hard != resource.RLIM_INFINITY and hard < 3000:
            pytest.skip(f"hard open-files limit {hard} is too low to test raising the soft one")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert raise_nofile_limit(1000) is None
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1000 + 1024
        if hard != resource.RLIM_INFINITY:
            warning = raise_nofile_limit(hard)  # more than the hard limit can give
            assert warning is not None and "max_connections" in warning
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


async def test_listen_backlog_is_the_configured_one(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.backlog", 777))
    port = port_of(fake)
    # For a listening socket, ss's Send-Q is the backlog the kernel uses (capped by somaxconn).
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout.split()
    limit = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(out[2]) == min(777, limit), out


# -- closes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", id="connection-close"),
        pytest.param(b"GET /health HTTP/1.0\r\n\r\n", id="http-1.0"),
        pytest.param(b"POST /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", id="405-with-body"),
    ],
)
async def test_the_connection_closes_after_the_response(make_fake_daemon: Any, request_bytes: bytes) -> None:
    fake = await make_fake_daemon(("http.keep_alive_timeout_s", 30.0))
    conn = await Conn.open(port_of(fake))
    await conn.send(request_bytes)
    took = await conn.read(timeout=5)
    assert len(conn.responses) == 1, conn.data
    assert conn.closed and took < 1.0, f"server closed: {conn.closed}, after {took:.2f} s"
    await conn.aclose()


async def test_content_length_and_chunked_is_answered_then_closed(make_fake_daemon: Any) -> None:
    """RFC 9112 §6.1: answer, then close; what follows the chunked body is not a second request."""
    fake = await make_fake_daemon(("http.keep_alive_timeout_s", 30.0))
    conn = await Conn.open(port_of(fake))
    body = json.dumps({"model": "emb", "input": "hello"}).encode()
    smuggled = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
    await conn.send(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body) + 7}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" + smuggled
    )
    took = await conn.read(timeout=5)
    assert len(conn.responses) == 1, conn.data
    assert conn.responses[0][1].get("connection") == "close"
    assert conn.closed and took < 1.0, f"server closed: {conn.closed}, after {took:.2f} s"
    await conn.aclose()


async def test_keep_alive_timeout_is_the_configured_one(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.keep_alive_timeout_s", 1.0))
    conn = await Conn.open(port_of(fake))
    await conn.send(GET_HEALTH)
    await conn.read(timeout=5, until_responses=1)
    assert conn.responses and conn.responses[0][0] == 200
    idle = await conn.read(timeout=6)  # the connection is now idle: the server closes it at 1 s
    assert conn.closed and 0.5 < idle < 2.5, f"server closed: {conn.closed}, after {idle:.2f} s idle"
    # A second connection that is kept busy is not cut: three requests 0.6 s apart all answered.
    conn2 = await Conn.open(port_of(fake))
    for n in range(1, 4):
        await conn2.send(GET_HEALTH)
        await conn2.read(timeout=5, until_responses=n)
        await trio.sleep(0.6)
    assert [r[0] for r in conn2.responses] == [200, 200, 200] and not conn2.closed
    await conn.aclose()
    await conn2.aclose()


# -- the connection cap ----------------------------------------------------------------------


async def test_connections_past_the_cap_get_a_503_with_retry_after(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.max_connections", 4), ("http.keep_alive_timeout_s", 30.0))
    port = port_of(fake)
    held = []
    for _ in range(4):  # four keep-alive connections, answered and left open
        conn = await Conn.open(port)
        await conn.send(GET_HEALTH)
        await conn.read(timeout=5, until_responses=1)
        assert conn.responses[0][0] == 200 and not conn.closed
        held.append(conn)
    extra = [await Conn.open(port) for _ in range(6)]
    for conn in extra:
        await conn.send(GET_HEALTH)
    for conn in extra:
        took = await conn.read(timeout=5)
        assert not conn.reset and conn.closed and took < 1.5, (conn.data, conn.reset, took)
        [(status, headers, body)] = conn.responses
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert json.loads(body) == {"error": {"message": json.loads(body)["error"]["message"], "type": "server_error", "param": None, "code": "too_many_connections"}}
        await conn.aclose()
    for conn in held:  # the four held ones still work
        await conn.send(GET_HEALTH)
        await conn.read(timeout=5, until_responses=2)
        assert [r[0] for r in conn.responses] == [200, 200]
    await held.pop().aclose()
    # A slot is free again once the server has seen the close.
    for _ in range(50):
        conn = await Conn.open(port)
        await conn.send(GET_HEALTH)
        await conn.read(timeout=5, until_responses=1)
        await conn.aclose()
        if conn.responses and conn.responses[0][0] == 200:
            break
        await trio.sleep(0.05)
    assert conn.responses[0][0] == 200
    for conn in held:
        await conn.aclose()


# -- CLOSE-WAIT ------------------------------------------------------------------------------


async def test_a_client_that_closes_leaves_no_close_wait(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.keep_alive_timeout_s", 30.0))
    port = port_of(fake)
    # Connected and closed before any request; idle after a request; mid-stream.
    silent = [await Conn.open(port) for _ in range(5)]
    idle = []
    for _ in range(5):
        conn = await Conn.open(port)
        await conn.send(GET_HEALTH)
        await conn.read(timeout=5, until_responses=1)
        idle.append(conn)
    chat = json.dumps({"model": "chatty", "messages": [{"role": "user", "content": "SLOW"}], "stream": True}).encode()
    streaming = []
    for _ in range(3):
        conn = await Conn.open(port)
        await conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(chat)}\r\n\r\n".encode() + chat)
        with trio.move_on_after(5):
            while b"data:" not in conn.data:
                conn.data += await conn.stream.receive_some(65536)
        assert b"data:" in conn.data
        streaming.append(conn)
    await trio.sleep(0.2)
    for conn in silent + idle + streaming:
        await conn.aclose()
    deadline = trio.current_time() + 1.0
    while close_wait_count(port) and trio.current_time() < deadline:
        await trio.sleep(0.05)
    assert close_wait_count(port) == 0


# -- serve() alone: the drain ----------------------------------------------------------------


async def test_during_the_drain_new_connections_get_a_503_and_open_ones_finish(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    shutdown = trio.Event()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        await serve(app, hypercorn_config(HttpConfig(), 10.0, f"fd://{sock.detach()}"), max_connections=100, shutdown_trigger=shutdown.wait, task_status=task_status)
        done.set()

    await nursery.start(run)
    slow = await Conn.open(port)
    await slow.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
    await trio.sleep(0.2)
    shutdown.set()
    await trio.sleep(0.2)
    late = await Conn.open(port)
    await late.send(GET_HEALTH)
    await late.read(timeout=5)
    [(status, headers, body)] = late.responses
    assert status == 503 and headers["retry-after"] and json.loads(body)["error"]["code"] == "shutting_down" and late.closed
    release.set()
    await slow.read(timeout=5)
    [(status, headers, _)] = slow.responses
    assert status == 200 and headers.get("connection") == "close" and slow.closed  # told not to reuse it, and closed
    with trio.fail_after(5):
        await done.wait()  # no open connection left: serve returns (and the listener is closed)
    await late.aclose()
    await slow.aclose()


async def test_keep_alive_connection_serves_posts_one_after_another(make_fake_daemon: Any) -> None:
    """The held-back http.disconnect must not break the next request on a kept-alive connection."""
    fake = await make_fake_daemon(("http.keep_alive_timeout_s", 30.0))
    conn = await Conn.open(port_of(fake))
    chat = json.dumps({"model": "chatty", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    emb = json.dumps({"model": "emb", "input": "hello"}).encode()
    for n, (path, body) in enumerate([("/v1/chat/completions", chat), ("/v1/embeddings", emb), ("/v1/chat/completions", chat)], 1):
        await conn.send(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await conn.read(timeout=5, until_responses=n)
        assert len(conn.responses) == n, conn.data
    assert [r[0] for r in conn.responses] == [200, 200, 200] and not conn.closed
    await conn.aclose()


async def test_requests_with_bodies_on_any_method_never_hang_the_connection(make_fake_daemon: Any) -> None:
    """Issue 22: a GET/PUT carrying a body left its keep-alive connection hung. Each request gets
    its answer; where the server closes the connection after one, the next goes on a new one."""
    fake = await make_fake_daemon(("http.keep_alive_timeout_s", 30.0))
    port = port_of(fake)
    body = b'{"padding": "' + b"x" * 1_000_000 + b'"}'  # more than a socket buffer: answered before it is all read
    requests = [
        b"GET /health HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"PUT /v1/models HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        b"DELETE /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    ] * 4
    conn = await Conn.open(port)
    answered = 0
    for raw in requests:
        if conn.closed:
            await conn.aclose()
            conn = await Conn.open(port)
        seen = len(conn.responses)
        await conn.send(raw)
        took = await conn.read(timeout=3, until_responses=seen + 1)
        assert len(conn.responses) == seen + 1, f"no answer after {took:.1f} s to {raw[:30]!r}"
        answered += 1
        if conn.responses[-1][1].get("connection") == "close":
            await conn.read(timeout=2)  # it said it would close: it must
            assert conn.closed, "answered with Connection: close but left open"
    assert answered == len(requests)
    await conn.aclose()


# -- the fast write path and a slow reader ------------------------------------------------------


def _stream_request(port: int, tokens: int) -> bytes:
    body = json.dumps({"model": "chatty", "messages": [{"role": "user", "content": "COUNT"}], "stream": True, "max_tokens": tokens}).encode()
    # HTTP/1.0: the body ends at the close (no chunked framing to take apart here).
    return b"POST /v1/chat/completions HTTP/1.0\r\nHost: test\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _small_window_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window follows it
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_a_slow_reader_gets_every_event_once_in_order(make_fake_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write goes straight to the socket while the kernel takes it; when a client stops
    reading, the rest goes hypercorn's way (its lock and send_all), and nothing is lost, doubled
    or reordered: every token once, in order, then [DONE]."""
    from hypercorn.events import RawData
    from hypercorn.trio.tcp_server import TCPServer

    queued: list[int] = []
    hypercorns_send = TCPServer.protocol_send

    async def counting_send(self: Any, event: Any) -> None:
        if isinstance(event, RawData):
            queued.append(len(event.data))
        await hypercorns_send(self, event)

    monkeypatch.setattr(TCPServer, "protocol_send", counting_send)
    fake = await make_fake_daemon()
    port = port_of(fake)
    tokens = 4000

    def slow_client() -> bytes:
        with _small_window_socket(port) as sock:
            sock.sendall(_stream_request(port, tokens))
            time.sleep(1.5)  # the server's writes fill both buffers meanwhile
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    data = await trio.to_thread.run_sync(slow_client)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert texts == [f" t{k}" for k in range(tokens)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert queued, "the client's window never filled: the test did not reach the lock path"


async def test_a_client_that_leaves_while_writes_wait_frees_its_stream(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon()
    port = port_of(fake)

    def leaving_client() -> int:
        with _small_window_socket(port) as sock:
            sock.sendall(_stream_request(port, 1_000_000))
            time.sleep(0.5)  # writes are waiting on the full window now
            return len(sock.recv(8192))

    assert await trio.to_thread.run_sync(leaving_client) > 0
    with trio.fail_after(10):
        while fake.control.running or not fake.control.closed_streams:
            await trio.sleep(0.05)
    async with fake.client() as client:  # the door goes on serving
        assert (await client.get("/health")).status_code == 200
