"""Socket activation through the real `systemd-socket-activate`, and sd_notify under it.

The tool listens on the HTTP port and the RPC socket the way sage.socket does, and execs the
daemon on the first connection with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set. Whatever arrives
before the daemon is up waits in the kernel's listen queue and must be answered.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from sage_client.rpc import RpcClient
from tests.conftest import REPO
from tests.workstation.conftest import ActivatedDaemon, needs_socket_activate

pytestmark = [pytest.mark.slow, needs_socket_activate]


def test_first_http_request_starts_the_daemon_and_is_answered(activate: Any) -> None:
    daemon: ActivatedDaemon = activate()
    assert not daemon.daemon_started(), "the daemon must not start before the first contact"
    reply = httpx.get(daemon.url + "/health", timeout=60)
    assert reply.status_code == 200 and reply.json()["status"] == "ok"
    assert daemon.daemon_started()
    with RpcClient(daemon.socket) as client:
        status = client.call("status")
        assert client.call("ping", {"payload": "after-http"}).payload == "after-http"
    # It serves systemd's sockets, not ones of its own: same pid (exec), same port, same path.
    assert status.pid == daemon.proc.pid
    assert status.http_url == daemon.url
    assert status.socket == str(daemon.socket)
    assert not (daemon.root / "run" / "sage.sock").exists(), "the daemon bound its own RPC socket besides systemd's"


def test_first_rpc_ping_starts_the_daemon_and_is_answered(activate: Any) -> None:
    daemon: ActivatedDaemon = activate()
    with RpcClient(daemon.socket, timeout=60) as client:
        assert client.welcome is not None and client.welcome.http_url == daemon.url
        assert client.call("ping", {"payload": "first"}).payload == "first"
    assert httpx.get(daemon.url + "/health", timeout=10).status_code == 200
    messages = daemon.notify.wait_for("READY=1")
    ready = next(m for m in messages if "READY=1" in m.split("\n"))
    assert f"MAINPID={daemon.proc.pid}" in ready and f"STATUS=serving on {daemon.url} and {daemon.socket}" in ready


def test_no_request_is_lost_while_the_daemon_starts(activate: Any) -> None:
    """A burst on both doors before the daemon exists: every request is queued and answered."""
    daemon: ActivatedDaemon = activate()
    answers: dict[str, Any] = {}

    def http_call(i: int) -> None:
        answers[f"http{i}"] = httpx.get(daemon.url + "/health", timeout=60).status_code

    def rpc_call(i: int) -> None:
        with RpcClient(daemon.socket, timeout=60) as client:
            answers[f"rpc{i}"] = client.call("ping", {"payload": f"p{i}"}).payload

    threads = [threading.Thread(target=http_call, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=rpc_call, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == {**{f"http{i}": 200 for i in range(6)}, **{f"rpc{i}": f"p{i}" for i in range(6)}}
    assert daemon.output().count("Execing") == 1, "one daemon serves the whole burst"


def test_sigterm_stops_and_leaves_systemds_socket_in_place(activate: Any) -> None:
    daemon: ActivatedDaemon = activate()
    with RpcClient(daemon.socket, timeout=60) as client:
        client.call("ping")
    daemon.notify.wait_for("READY=1")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")
    assert daemon.proc.wait(30) == 0
    # systemd owns the socket: it stays so the next connection can start the daemon again.
    assert daemon.socket.exists()
    assert "stopped" in daemon.output()


def test_unnamed_sockets_are_told_apart_by_family(activate: Any) -> None:
    """A socket unit without FileDescriptorName= still works: AF_UNIX is RPC, AF_INET is HTTP."""
    daemon: ActivatedDaemon = activate(fdnames=None)
    assert httpx.get(daemon.url + "/health", timeout=60).status_code == 200
    with RpcClient(daemon.socket, timeout=10) as client:
        assert client.call("status").http_url == daemon.url


def test_misnamed_sockets_stop_startup_with_the_fix(activate: Any) -> None:
    daemon: ActivatedDaemon = activate(fdnames="web:control")
    try:
        httpx.get(daemon.url + "/health", timeout=30)
    except httpx.TransportError:
        pass  # the daemon refuses to start: the connection is dropped
    assert daemon.proc.wait(30) == 1
    output = daemon.output()
    assert "named 'web'" in output and "FileDescriptorName=" in output
    assert "Traceback" not in output


def test_watchdog_pings_only_when_meant_for_this_pid(activate: Any) -> None:
    """systemd sets WATCHDOG_PID to the main pid; a watchdog meant for another process is ignored,
    while under activation (pid kept across exec) the daemon's own watchdog ticks."""
    ours: ActivatedDaemon = activate(env={"WATCHDOG_USEC": "400000"})
    with RpcClient(ours.socket, timeout=60) as client:
        client.call("ping")
    ours.notify.wait_for("READY=1")
    before = len(ours.notify.messages)
    pings = sum(m == "WATCHDOG=1" for m in ours.notify.collect(1.0)[before:])
    assert 3 <= pings <= 7, f"expected a WATCHDOG=1 every 0.2 s, got {pings}"

    other: ActivatedDaemon = activate(env={"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    with RpcClient(other.socket, timeout=60) as client:
        client.call("ping")
    messages = other.notify.wait_for("READY=1")
    time.sleep(0.6)
    assert not any(m == "WATCHDOG=1" for m in other.notify.collect(0.2) + messages)


def test_ready_means_both_doors_answer_at_once(spawn_daemon: Any) -> None:
    """Without activation the daemon binds its own doors; READY=1 comes only once both serve,
    so a client that waited for it never needs a retry."""
    daemon = spawn_daemon(env={"PYTHONPATH": str(REPO)})  # waits for READY=1
    ready = next(m for m in daemon.notify.messages if "READY=1" in m.split("\n"))
    url = re.search(r"STATUS=serving on (http://\S+) and ", ready).group(1)  # type: ignore[union-attr]
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    with RpcClient(daemon.socket, timeout=5) as client:
        assert client.welcome is not None and client.welcome.http_url == url
        assert client.call("ping", {"payload": "ready"}).payload == "ready"
