"""Logs under journald: with JOURNAL_STREAM set, every line of a real daemon starts with its
sd-daemon priority (<3> error … <7> debug) and drops the timestamp journald adds itself."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, DaemonProcess

pytestmark = pytest.mark.slow


def test_daemon_lines_carry_priority_prefixes_under_journald(spawn_daemon: Any, clean_env: Path) -> None:
    config = clean_env / "sage.toml"
    config.write_text("[daemon]\nlog_level = 'debug'\n")
    daemon: DaemonProcess = spawn_daemon("--config", str(config), env={"JOURNAL_STREAM": "8:123456", "PYTHONPATH": str(REPO)})
    config.write_text("[daemon]\nlog_level = 'shouting'\n")  # a reload that fails: an error line
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("STATUS=serving (config reload failed)")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    ours = [line for line in daemon.output().splitlines() if "logger=sage." in line]
    assert ours and all(re.match(r"<[2-7]>level=", line) for line in ours), ours
    assert any(line.startswith("<6>level=info logger=sage.daemon msg=serving") for line in ours)
    assert any(line.startswith("<3>level=error") and "config reload failed" in line for line in ours)
    assert not any("ts=" in line for line in ours), "journald stamps lines itself"


def test_no_prefixes_without_journald(spawn_daemon: Any) -> None:
    daemon: DaemonProcess = spawn_daemon(env={"PYTHONPATH": str(REPO)})
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    serving = [line for line in daemon.output().splitlines() if "msg=serving" in line]
    assert serving and serving[0].startswith("ts=") and "level=info" in serving[0]
