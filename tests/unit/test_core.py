"""Paths, ports, node facts, sd_notify and log formatting."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from sage_daemon.core import nodes
from sage_daemon.core.config import Config, NodesConfig, PathsConfig, RpcConfig
from sage_daemon.core.logging import StructuredFormatter
from sage_daemon.core.memory import IdleTrimmer, trim_heap
from sage_daemon.core.paths import resolve_paths
from sage_daemon.core.ports import SagePorts, is_port_free, port_holder
from sage_daemon.core.sdnotify import SystemdNotifier


def test_paths_prefer_config_then_systemd_then_platformdirs(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/sage", "RUNTIME_DIRECTORY": "/run/sage", "CACHE_DIRECTORY": "/var/cache/sage", "LOGS_DIRECTORY": "/var/log/sage"}
    paths = resolve_paths(Config(), env)
    assert paths.state_dir == Path("/var/lib/sage") and paths.socket == Path("/run/sage/sage.sock")
    assert paths.cache_dir == Path("/var/cache/sage") and paths.log_dir == Path("/var/log/sage")
    configured = Config(paths=PathsConfig(runtime_dir=str(tmp_path)), rpc=RpcConfig(socket=str(tmp_path / "x.sock")))
    paths = resolve_paths(configured, env)
    assert paths.runtime_dir == tmp_path and paths.socket == tmp_path / "x.sock"
    plain = resolve_paths(Config(), {})
    assert "sage" in str(plain.state_dir) and plain.socket.name == "sage.sock"


def test_seed_port_constants_and_wsl2_choice() -> None:
    assert (SagePorts.GATEWAY_DEFAULT, SagePorts.LLM_DEFAULT, SagePorts.LLM_SECONDARY, SagePorts.LLM_WSL_FALLBACK) == (8888, 8001, 8002, 8901)
    assert (SagePorts.EMBEDDING_DEFAULT, SagePorts.EMBEDDING_SECONDARY) == (8090, 8091)
    assert (SagePorts.BENCHMARK_LLM, SagePorts.BENCHMARK_EMBEDDING, SagePorts.BENCHMARK_API) == (8901, 8902, 8903)
    assert SagePorts.recommended_llm_port(is_wsl2=True)[0] == 8901
    assert SagePorts.recommended_llm_port(is_wsl2=False)[0] == 8001


def test_free_port_search_skips_taken_ports() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # another test may take any fixed port: let the kernel pick
        holder.listen()
        taken = holder.getsockname()[1]
        assert not is_port_free("127.0.0.1", taken)
        assert "pid" in port_holder(taken)
        window = range(taken, taken + 50)
        found = SagePorts.find_free_port(ports=window)
        assert found != taken and found in window and is_port_free("127.0.0.1", found)
    assert SagePorts.find_free_port() in SagePorts.ENGINE_RANGE


def test_node_overrides_pretend_gpu_and_wsl2() -> None:
    node = nodes.detect_node(NodesConfig(wsl2="yes", vllm="yes", pretend_gpus=2, pretend_gpu_memory_gb=8))
    assert node.is_wsl2 and node.vllm_available and len(node.gpus) == 2 and node.gpu_source == "config"
    assert node.gpus[0].memory_total_bytes == 8 * 2**30
    assert len(node.overrides) == 3
    real = nodes.detect_node()
    assert real.cpu_count >= 1 and real.memory_total_bytes > 0 and real.overrides == []


def test_wsl2_detection_reads_proc_version(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text("Linux version 5.15.90.1-microsoft-standard-WSL2 (gcc ...)")
    assert nodes.is_wsl2_host(version)
    version.write_text("Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org)")
    assert not nodes.is_wsl2_host(version)


def test_sd_notify_sends_datagrams_only_when_asked(tmp_path: Path) -> None:
    assert not SystemdNotifier({}).enabled
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.settimeout(2)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval_s == 2.0
        notifier.ready("serving")
        assert listener.recv(1024).decode().split("\n")[0] == "READY=1"
        notifier.watchdog()
        assert listener.recv(1024) == b"WATCHDOG=1"
        notifier.close()
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


@pytest.mark.parametrize(("journald", "level", "prefix"), [(True, logging.ERROR, "<3>"), (True, logging.DEBUG, "<7>"), (False, logging.INFO, "ts=")])
def test_log_lines_carry_journald_priorities(journald: bool, level: int, prefix: str) -> None:
    record = logging.LogRecord("sage.test", level, __file__, 1, 'said "hi"', None, None)
    record.fields = {"port": 8888}  # type: ignore[attr-defined]
    line = StructuredFormatter(journald).format(record)
    assert line.startswith(prefix) and 'msg="said \\"hi\\""' in line and line.endswith("port=8888")


def test_heap_is_trimmed_once_after_each_stretch_of_work() -> None:
    trimmer = IdleTrimmer()
    assert not trimmer.should_trim(0, 0)  # nothing happened yet
    assert not trimmer.should_trim(3, 3)  # busy
    assert trimmer.should_trim(0, 3)  # idle after work: trim
    assert not trimmer.should_trim(0, 3)  # still idle, nothing new: not again
    assert trimmer.should_trim(0, 5)  # a burst came and went between two samples: trim


def test_trim_heap_returns_freed_pages_to_the_kernel() -> None:
    def rss_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    # ~100 MB in 4 KiB blocks: past pymalloc's 512 bytes and below glibc's mmap threshold, so they
    # come from malloc's heap, as a burst's buffers do.
    blocks = [bytearray(4096) for _ in range(25_000)]
    for block in blocks[1:-1]:
        block[0] = 1
    keep = blocks[-1]  # a live block at the top, so plain free() cannot shrink the heap
    del blocks
    before = rss_kib()
    if not trim_heap():
        pytest.skip("the C library has no malloc_trim (not glibc)")
    after = rss_kib()
    assert after < before - 20_000, f"RSS {before} KiB -> {after} KiB"
    assert keep is not None
