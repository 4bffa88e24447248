"""cython_ops.accept: the HTTP door's GIL-free accept step (admit under the cap, refuse past it or
during the drain with the prepared answer, count the open connections across threads)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from cython_ops import AcceptGate, Outcome

FULL = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
DRAINING = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    yield sock
    sock.close()


def connect(listener: socket.socket, n: int) -> list[socket.socket]:
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(n)]
    time.sleep(0.05)  # the handshakes complete in the kernel; the listen queue holds them
    return clients


def accept_all(gate: AcceptGate, listener: socket.socket) -> list[tuple[int, int, int]]:
    accepted, error = gate.accept_batch(listener.fileno(), 100)
    assert error == 0
    return accepted


def test_admits_up_to_the_cap_and_answers_the_rest_at_once(listener: socket.socket) -> None:
    gate = AcceptGate(3, FULL, DRAINING)
    clients = connect(listener, 5)
    accepted = accept_all(gate, listener)
    assert [outcome for _, outcome, _ in accepted] == [Outcome.ADMITTED] * 3 + [Outcome.REFUSED_FULL] * 2
    assert [sent for _, outcome, sent in accepted if outcome != Outcome.ADMITTED] == [len(FULL)] * 2
    assert gate.open == 3
    for client in clients[3:]:
        reply = b"".join(iter(lambda c=client: c.recv(4096), b""))  # the write side was shut: EOF follows
        assert reply == FULL
    for fd, _, _ in accepted:
        socket.socket(fileno=fd).close()
    for client in clients:
        client.close()


def test_a_closed_connection_frees_its_place_and_the_drain_refuses_everything(listener: socket.socket) -> None:
    gate = AcceptGate(1, FULL, DRAINING)
    clients = connect(listener, 1)
    [(fd, outcome, _)] = accept_all(gate, listener)
    assert outcome == Outcome.ADMITTED and gate.open == 1
    socket.socket(fileno=fd).close()
    gate.connection_closed()
    assert gate.open == 0
    clients += connect(listener, 1)
    [(fd, outcome, _)] = accept_all(gate, listener)
    assert outcome == Outcome.ADMITTED
    socket.socket(fileno=fd).close()
    gate.connection_closed()
    gate.set_draining()
    assert gate.draining
    clients += connect(listener, 1)
    [(fd, outcome, sent)] = accept_all(gate, listener)
    assert (outcome, sent, gate.open) == (Outcome.REFUSED_DRAINING, len(DRAINING), 0)
    assert clients[-1].recv(4096) == DRAINING
    socket.socket(fileno=fd).close()
    for client in clients:
        client.close()


def test_an_empty_queue_waits_the_timeout_and_returns_nothing(listener: socket.socket) -> None:
    gate = AcceptGate(4, FULL, DRAINING)
    began = time.perf_counter()
    assert gate.accept_batch(listener.fileno(), 50) == ([], 0)
    assert 0.04 <= time.perf_counter() - began < 2.0


def test_a_blocking_listener_is_refused_with_a_clear_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    with sock, pytest.raises(ValueError, match="non-blocking"):
        AcceptGate(4, FULL, DRAINING).accept_batch(sock.fileno(), 10)
    with pytest.raises(ValueError, match="at least 1"):
        AcceptGate(0, FULL, DRAINING)


def test_the_count_holds_under_concurrent_accepts_and_closes(listener: socket.socket) -> None:
    """Two threads accept (as two listeners' threads would) while a third closes: the cap is
    never passed and every admitted connection is counted exactly once."""
    cap = 40
    gate = AcceptGate(cap, FULL, DRAINING)
    admitted: list[int] = []
    refused = 0
    lock = threading.Lock()
    stop = threading.Event()
    peak = 0
    closed = 0

    def accepter() -> None:
        nonlocal refused, peak
        while not stop.is_set():
            accepted, _ = gate.accept_batch(listener.fileno(), 20)
            with lock:
                for fd, outcome, _ in accepted:
                    if outcome == Outcome.ADMITTED:
                        admitted.append(fd)
                    else:
                        refused += 1
                        socket.socket(fileno=fd).close()
                peak = max(peak, gate.open)

    def closer() -> None:
        nonlocal closed
        while not stop.is_set():
            with lock:
                taken, admitted[:] = admitted[: len(admitted) // 2], admitted[len(admitted) // 2 :]
            for fd in taken:
                socket.socket(fileno=fd).close()
                gate.connection_closed()
                closed += 1
            time.sleep(0.001)

    threads = [threading.Thread(target=accepter), threading.Thread(target=accepter), threading.Thread(target=closer)]
    for thread in threads:
        thread.start()
    clients = []
    for _ in range(300):
        clients.append(socket.create_connection(listener.getsockname(), timeout=5))
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert peak <= cap
    assert gate.open == len(admitted)
    assert refused + closed + len(admitted) == 300  # each connection accepted exactly once
    assert closed > cap  # places were freed and taken again
    for fd in admitted:
        socket.socket(fileno=fd).close()
    for client in clients:
        client.close()
