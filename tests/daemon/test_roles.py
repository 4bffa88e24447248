"""Roles on the RPC socket, with a real second uid: a member of [rpc].group is a `user` peer.

The test creates a group and a user in it (`groupadd`/`useradd`, removed at the end), starts a
real daemon with `rpc.group` set, and talks to it as that uid through `setpriv` running a small
client: it can chat and read status, cannot submit a job with `fn=` or a path outside
[jobs].allowed_roots, cannot change the policy, sees only its own jobs; each refusal is a
PERMISSION_DENIED naming the setting, and the daemon's log has it with the uid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_client import protocol as p
from sage_client.rpc import RpcClient
from tests.conftest import FRANCE, REPO, DaemonProcess

pytestmark = pytest.mark.slow

# Run as the other uid: each call's result (as builtins) or its error code and message.
CLIENT = """
import json, sys
import msgspec
from sage_client.rpc import RpcCallError, RpcClient
socket_path, calls = sys.argv[1], json.loads(sys.argv[2])
out = []
with RpcClient(socket_path, timeout=300) as client:
    for method, params in calls:
        try:
            out.append({"ok": msgspec.to_builtins(client.call(method, params))})
        except RpcCallError as exc:
            out.append({"code": exc.code, "message": exc.message})
print(json.dumps(out))
"""


class Member:
    def __init__(self, name: str, uid: int, gid: int, group: str):
        self.name, self.uid, self.gid, self.group = name, uid, gid, group

    def calls(self, socket_path: Path, calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """Run the calls as this uid (its own groups, so the group membership is what the kernel reports)."""
        result = subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", sys.executable, "-c", CLIENT, str(socket_path), json.dumps(calls)],
            capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/"}, cwd="/",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)


@pytest.fixture
def member() -> Iterator[Member]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user and switch to it")
    missing = [tool for tool in ("useradd", "groupadd", "userdel", "groupdel", "setpriv") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (util-linux and passwd) to create a second uid")
    suffix = secrets.token_hex(3)
    group, name = f"sagegrp{suffix}", f"sageusr{suffix}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, name], check=True, capture_output=True)
        try:
            import grp
            import pwd

            entry = pwd.getpwnam(name)
            probe = subprocess.run(
                ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", sys.executable, "-c", "import sage_client.rpc"],
                capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, cwd="/",
            )
            if probe.returncode != 0:
                pytest.skip(f"uid {entry.pw_uid} cannot run this checkout's Python: {probe.stderr.strip()[-300:]}")
            assert name in grp.getgrnam(group).gr_mem
            yield Member(name, entry.pw_uid, entry.pw_gid, group)
        finally:
            subprocess.run(["userdel", name], capture_output=True)
    finally:
        subprocess.run(["groupdel", group], capture_output=True)


def test_a_group_member_is_a_user_peer(member: Member, clean_env: Path) -> None:
    # Outside pytest's tmp dir (0700 under /tmp/pytest-of-root): the member must reach the socket.
    shared = Path(tempfile.mkdtemp(prefix="sage-roles-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        allowed = shared / "allowed"
        allowed.mkdir()
        (allowed / "a.txt").write_text("alpha beta")
        (shared / "outside.txt").write_text("not for user peers")
        sock = shared / "sage.sock"
        env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        daemon = DaemonProcess(
            clean_env / "d", "--socket", str(sock), "--set", f"rpc.group={member.group!r}", "--set", f"jobs.allowed_roots=[{str(allowed)!r}]", env=env,
        )
        try:
            run_as_member(member, daemon, sock, allowed, shared)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon.output()[-6000:]}") from None
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def run_as_member(member: Member, daemon: DaemonProcess, sock: Path, allowed: Path, shared: Path) -> None:
    assert sock.stat().st_mode & 0o777 == 0o660
    with RpcClient(sock) as client:  # root's own job: the member must not see it
        roots_job = client.call("job.submit", {"spec": {"name": "root's", "stages": [{"op": "from_items", "items": [1]}, {"op": "collect"}]}})
        assert client.call("job.wait", {"id": roots_job.id, "timeout_s": 60}).job.state == "succeeded"

    def job(*stages: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"name": "member's", "stages": list(stages)}}

    good = job({"op": "from_files", "paths": [str(allowed / "*.txt")]}, {"op": "to_jsonl", "path": str(allowed / "out.jsonl")})
    (allowed / "link.txt").symlink_to(shared / "outside.txt")  # inside the root, pointing out of it
    results = member.calls(sock, [
        ("status", {}),
        ("job.embed", {"model": "minilm", "texts": ["a user peer may embed"]}),
        ("job.generate", {"model": "smollm2", "messages": FRANCE, "max_tokens": 8}),
        ("job.submit", job({"op": "from_items", "items": ["id"]}, {"op": "map", "fn": "os:system"}, {"op": "collect"})),
        ("job.submit", job({"op": "from_files", "paths": ["/etc/shadow"]}, {"op": "collect"})),
        ("job.submit", job({"op": "from_items", "items": [1]}, {"op": "to_jsonl", "path": str(shared / "written.jsonl")})),
        ("policy.set", {"name": "fifo"}),
        ("config.show", {}),
        ("job.show", {"id": roots_job.id}),
        ("job.submit", good),
    ])
    status, embedded, chat, fn_job, shadow_job, write_job, policy, config, others, accepted = results
    assert status["ok"]["state"] == "serving"
    assert len(embedded["ok"]["vectors"][0]) == 384, embedded
    assert chat.get("ok", {}).get("text"), chat
    assert fn_job["code"] == p.ErrorCode.PERMISSION_DENIED and "'os:system'" in fn_job["message"] and "[jobs].allowed_function_modules" in fn_job["message"]
    assert shadow_job["code"] == p.ErrorCode.PERMISSION_DENIED and "/etc/shadow" in shadow_job["message"] and "[jobs].allowed_roots" in shadow_job["message"]
    assert write_job["code"] == p.ErrorCode.PERMISSION_DENIED and "may not write" in write_job["message"]
    assert policy["code"] == p.ErrorCode.PERMISSION_DENIED and "group_role" in policy["message"]
    assert config["code"] == p.ErrorCode.PERMISSION_DENIED
    assert others["code"] == p.ErrorCode.PERMISSION_DENIED and "own jobs" in others["message"]
    assert not (shared / "written.jsonl").exists()

    # The accepted job runs, and meets the symlink while running: refused on its real path.
    job_id = accepted["ok"]["id"]
    waited, listed = member.calls(sock, [("job.wait", {"id": job_id, "timeout_s": 60}), ("job.list", {})])
    assert waited["ok"]["job"]["state"] == "failed" and "outside [jobs].allowed_roots" in waited["ok"]["job"]["error"]
    assert [j["id"] for j in listed["ok"]["jobs"]] == [job_id]  # its own job only
    events = " ".join(e["message"] for e in waited["ok"]["events"])
    assert f"access: uid {member.uid} (user) reads {allowed}/*.txt; writes {allowed}/out.jsonl" in events
    with RpcClient(sock) as client:  # the policy did not change; root sees the member's job
        assert client.call("policy.get").policy == "hybrid"
        assert client.call("job.show", {"id": job_id}).job.state == "failed"

    log = daemon.output()
    refusals = [line for line in log.splitlines() if 'msg="rpc refused"' in line]
    assert len(refusals) == 6, "\n".join(refusals)
    assert all(f"uid={member.uid}" in line and "role=user" in line for line in refusals)
    assert any("method=policy.set" in line for line in refusals) and any("method=job.submit" in line and "os:system" in line for line in refusals)
    submitted = next(line for line in log.splitlines() if 'msg="job submitted"' in line and f"job={job_id}" in line)
    assert f"uid={member.uid}" in submitted and f"reads={allowed}/*.txt" in submitted and "functions=-" in submitted
