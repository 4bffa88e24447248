"""Who submitted a job, what it touches, and whether that submitter may.

A job runs as the daemon's user, so what it reads, writes and imports is the daemon's power
lent to whoever submitted it. Admins (the daemon's own uid, root, or group members with
`[rpc].group_role = "admin"`) may use any path and any importable function. A `user` peer may
submit jobs of the built-in operators that read and write files only under
`[jobs].allowed_roots`, and name map/filter/key_by functions only from
`[jobs].allowed_function_modules`.

Checked twice: at submit, on the declaration (so the refusal names the stage and the setting,
and no module is imported for a refused job), and while the job runs, on each real path after
symlinks are followed (a symlink under an allowed root that points outside is refused there).
"""

from __future__ import annotations

import glob
import os
import string
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from sage_daemon.core.errors import PermissionDeniedError
from sage_daemon.jobs import spec as s

Role = Literal["user", "admin"]


@dataclass(frozen=True)
class Principal:
    """Who a job acts for: the peer uid that submitted it and that peer's role."""

    uid: int
    role: Role

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def __str__(self) -> str:
        return f"uid {self.uid} ({self.role})"


def daemon_principal() -> Principal:
    """In-process submitters (the Python API, tests) act as the daemon itself."""
    return Principal(os.geteuid(), "admin")


class JobAccess(msgspec.Struct):
    """What a declaration reads, writes and imports; absolute paths (globs kept as written)."""

    reads: list[str]
    writes: list[str]
    functions: list[str]  # "module:attr" as named; "<python NAME>" for in-process objects
    template_fields: list[str] = []  # the fields prompt templates format (not logged: they read items)

    def fields(self) -> dict[str, str]:
        """key=value fields for the daemon log."""
        return {"reads": ",".join(self.reads) or "-", "writes": ",".join(self.writes) or "-", "functions": ",".join(self.functions) or "-"}

    def describe(self) -> str:
        """One line for the job's own events."""
        return (
            f"reads {', '.join(self.reads) or 'no files'}; writes {', '.join(self.writes) or 'no files'}; "
            f"imports {', '.join(self.functions) or 'no functions'}"
        )


def _absolute(base_dir: str, path: str) -> str:
    expanded = os.path.expanduser(path)
    full = expanded if os.path.isabs(expanded) or not base_dir else os.path.join(base_dir, expanded)
    return os.path.normpath(os.path.abspath(full))


def _function_name(fn: Any) -> str:
    if isinstance(fn, str):
        return fn
    return f"<python {getattr(fn, '__qualname__', type(fn).__name__)}>"


def job_access(spec: s.PipelineSpec, base_dir: str) -> JobAccess:
    reads: list[str] = []
    writes: list[str] = []
    functions: list[str] = []
    template_fields: list[str] = []
    for stage in spec.stages:
        if isinstance(stage, s.FromFiles):
            reads += [_absolute(base_dir, path) for path in stage.paths]
        elif isinstance(stage, s.FromJsonl):
            reads.append(_absolute(base_dir, stage.path))
        elif isinstance(stage, s.ToJsonl):
            writes.append(_absolute(base_dir, stage.path))
        elif isinstance(stage, s.Prompt):
            try:
                template_fields += [name for _, name, _, _ in string.Formatter().parse(stage.template) if name]
            except ValueError:
                pass  # the planner reports the broken template
        fn = getattr(stage, "fn", None)
        if fn is not None and fn != "":
            functions.append(_function_name(fn))
    return JobAccess(reads, writes, functions, template_fields)


# ----------------------------------------------------------------------------- the rules


def module_allowed(module: str, allowed: tuple[str, ...]) -> bool:
    """`module` is one of `allowed` or inside one of them (a package allows its submodules)."""
    return any(module == name or module.startswith(name + ".") for name in allowed)


def under_roots(path: str, roots: tuple[str, ...]) -> bool:
    """`path` (already absolute) is one of `roots` or inside one. Roots are compared after
    symlinks are followed, as the paths are."""
    for root in roots:
        real_root = os.path.realpath(root)
        if path == real_root or path.startswith(real_root.rstrip(os.sep) + os.sep):
            return True
    return False


def _fixed_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard: every match lies under it."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


ROOTS_HINT = "add its folder to [jobs].allowed_roots in the daemon's config, or ask an admin (the daemon's user or root) to submit it"
MODULES_HINT = "add the module to [jobs].allowed_function_modules in the daemon's config, or ask an admin (the daemon's user or root) to submit it"


def submit_refusal(access: JobAccess, who: Principal, allowed_roots: list[str], allowed_modules: list[str]) -> str | None:
    """Why `who` may not submit a job touching `access` (one message saying what to do), or None."""
    if who.admin:
        return None
    roots = tuple(allowed_roots)
    for verb, paths in (("read", access.reads), ("write", access.writes)):
        for path in paths:
            prefix = _fixed_prefix(path)
            if not under_roots(os.path.realpath(prefix), roots):
                where = f"allowed: {', '.join(roots)}" if roots else "[jobs].allowed_roots is empty"
                return f"{who}: a job may not {verb} {path} ({where}); {ROOTS_HINT}"
    for name in access.template_fields:
        # str.format follows attributes: {text.__class__.__mro__} walks the daemon's objects.
        if "__" in name:
            return f"{who}: prompt template field {{{name}}}: a user peer's template may not reach dunder attributes; use the item's fields by name"
    modules = tuple(allowed_modules)
    for name in access.functions:
        module, sep, attr = name.partition(":")
        if not sep or not attr or name.startswith("<"):
            return f"{who}: fn {name!r}: a user peer names functions as \"module:function\" from [jobs].allowed_function_modules"
        if not module_allowed(module, modules):
            where = f"allowed: {', '.join(modules)}" if modules else "[jobs].allowed_function_modules is empty"
            return f"{who}: a job may not import {name!r} ({where}); {MODULES_HINT}"
    return None


def check_path(path: str, roots: tuple[str, ...] | None, verb: str) -> str:
    """While the job runs: the real path (symlinks followed) must lie under a root. `roots` None:
    an admin's job, any path. Returns the path; raises PermissionDeniedError."""
    if roots is None:
        return path
    real = os.path.realpath(path)
    if not under_roots(real, roots):
        shown = path if real == os.path.abspath(path) else f"{path} (-> {real})"
        raise PermissionDeniedError(f"the job may not {verb} {shown}: it is outside [jobs].allowed_roots; {ROOTS_HINT}")
    return path
