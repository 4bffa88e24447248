"""What a user peer's job may read, write and import: the rules alone (no daemon), on real
files and real imports. The daemon-level test with a second uid is tests/daemon/test_roles.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_daemon.core.errors import PermissionDeniedError
from sage_daemon.jobs import operators as ops
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.access import Principal, check_path, job_access, module_allowed, submit_refusal
from sage_daemon.jobs.planner import ModelFacts, compile_plan, resolve_function
from sage_daemon.jobs.store import JobStore

USER = Principal(1234, "user")
ADMIN = Principal(0, "admin")
HELPERS = ("tests.jobs.helpers",)


def spec(*stages: dict[str, object]) -> s.PipelineSpec:
    return s.spec_from_dict({"name": "t", "stages": list(stages)})


def test_module_allow_list_matches_packages_not_prefixes() -> None:
    assert module_allowed("tests.jobs.helpers", ("tests.jobs",))
    assert module_allowed("tests", ("tests",))
    assert not module_allowed("testsuite", ("tests",))  # a name that merely starts the same
    assert not module_allowed("os", ())


def test_functions_must_stay_inside_the_allowed_modules() -> None:
    assert resolve_function("tests.jobs.helpers:upper", HELPERS)()({"text": "a"}) == {"text": "A"}
    for ref, why in (
        ("os:system", "module 'os' is not in"),
        ("tests.jobs.helpers:time.sleep", "leads to time"),  # the allowed module imports time
        ("tests.jobs.helpers:Any", "leads to typing"),  # a name re-exported from elsewhere
    ):
        with pytest.raises(PermissionDeniedError, match=why):
            resolve_function(ref, HELPERS)
    with pytest.raises(PermissionDeniedError, match="module:function"):
        resolve_function(len, HELPERS)  # an object: only the in-process API of the daemon's own user
    assert resolve_function("os.path:join", None)()("a", "b") == "a/b"  # admins: anything importable


def test_compile_plan_names_the_stage_of_a_refused_function() -> None:
    declared = spec({"op": "from_items", "items": [1]}, {"op": "map", "fn": "os:system"}, {"op": "collect"})
    with pytest.raises(PermissionDeniedError, match=r"stage 2 \(map\): fn 'os:system'.*allowed_function_modules"):
        compile_plan(declared, {}, None, 1, ())
    assert compile_plan(declared, {}, None, 1, None).stages  # an admin's job plans


def test_submit_refusal_for_paths_and_functions(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    (allowed / "out").symlink_to(tmp_path)  # a folder link out of the root

    def refusal(*stages: dict[str, object], modules: tuple[str, ...] = ()) -> str | None:
        access = job_access(spec(*stages), str(allowed))
        return submit_refusal(access, USER, [str(allowed)], list(modules))

    collect = {"op": "collect"}
    assert refusal({"op": "from_files", "paths": ["*.md", "sub/**/*.txt"]}, collect) is None  # relative: under the base
    assert refusal({"op": "from_files", "paths": ["/etc/shadow"]}, collect) is not None
    assert "may not read" in (refusal({"op": "from_files", "paths": ["../secret.txt"]}, collect) or "")
    assert "may not read" in (refusal({"op": "from_jsonl", "path": "out/secret.txt"}, collect) or "")  # through the link
    assert "may not write" in (refusal({"op": "from_items", "items": [1]}, {"op": "to_jsonl", "path": "/tmp/x.jsonl"}) or "")
    named = refusal({"op": "from_items", "items": [1]}, {"op": "map", "fn": "os:system"}, collect)
    assert named is not None and "'os:system'" in named and "[jobs].allowed_function_modules is empty" in named and "uid 1234 (user)" in named
    assert refusal({"op": "from_items", "items": [1]}, {"op": "map", "fn": "tests.jobs.helpers:upper"}, collect, modules=HELPERS) is None
    dunder = refusal({"op": "from_items", "items": [{"q": "x"}]}, {"op": "prompt", "template": "{q.__class__.__mro__}"}, collect)
    assert dunder is not None and "dunder" in dunder
    assert refusal({"op": "from_items", "items": [{"q": "x"}]}, {"op": "prompt", "template": "Q: {q} {contexts[0]}"}, collect) is None
    # Admins: no rule applies.
    access = job_access(spec({"op": "from_files", "paths": ["/etc/shadow"]}, {"op": "map", "fn": "os:system"}, collect), "/")
    assert submit_refusal(access, ADMIN, [], []) is None
    assert access.reads == ["/etc/shadow"] and access.functions == ["os:system"]


def test_running_job_checks_each_real_path(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.txt").write_text("fine")
    (tmp_path / "outside.txt").write_text("no")
    (allowed / "b.txt").symlink_to(tmp_path / "outside.txt")
    roots = (str(allowed),)
    items = ops.source_items(s.FromFiles(paths=["*.txt"]), str(allowed), roots)
    assert next(items)["text"] == "fine"
    with pytest.raises(PermissionDeniedError, match=r"may not read .*b\.txt \(-> .*outside\.txt\)"):
        next(items)
    assert [i["text"] for i in ops.source_items(s.FromFiles(paths=["*.txt"]), str(allowed), None)] == ["fine", "no"]
    with pytest.raises(PermissionDeniedError, match="may not write"):
        ops.sink_path(str(allowed), "../escape.jsonl", roots)
    assert check_path(str(allowed / "new" / "out.jsonl"), roots, "write").endswith("out.jsonl")


def test_store_keeps_owners_and_migrates_an_old_store(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)  # the jobs table as it was before owners were kept
    old.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL, source TEXT NOT NULL DEFAULT '', "
        "base_dir TEXT NOT NULL DEFAULT '', python_objects INTEGER NOT NULL DEFAULT 0, executor TEXT NOT NULL DEFAULT 'local', created_at REAL NOT NULL, "
        "started_at REAL, finished_at REAL, attempt INTEGER NOT NULL DEFAULT 1, error TEXT NOT NULL DEFAULT '', result_location TEXT NOT NULL DEFAULT '')"
    )
    old.execute("INSERT INTO jobs (name, state, spec, created_at) VALUES ('before', 'succeeded', '{}', 1.0)")
    old.commit()
    old.close()
    store = JobStore(path)
    try:
        before = store.get(1)
        assert before is not None and before.owner_uid is None and before.owner_role == "admin"
        mine = store.create("mine", {}, "", "/", False, "local", USER.uid, USER.role)
        store.create("root's", {}, "", "/", False, "local", 0, "admin")
        assert [r.id for r in store.list(owner_uid=USER.uid)] == [mine]
        assert len(store.list()) == 3
        assert store.get(mine).owner_role == "user"  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_user_peers_job_without_functions_plans_as_before() -> None:
    models = {"minilm": ModelFacts("minilm", "embedding", 1)}
    plan = compile_plan(spec({"op": "from_items", "items": [{"id": "a", "text": "t"}]}, {"op": "embed"}, {"op": "collect"}), models, None, 1, ())
    assert [st.ops_label for st in plan.stages] == ["from_items", "embed", "collect"]
