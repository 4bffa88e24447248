"""Configuration layers, provenance and one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from sage_daemon.core import config as c


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_packaged_defaults_document_every_key_with_the_struct_defaults() -> None:
    with c.packaged_defaults_path().open("rb") as f:
        packaged = tomllib.load(f)
    assert packaged == msgspec.to_builtins(c.Config()), "etc/sage.toml and the Config defaults disagree"
    text, _, model_entries = c.packaged_defaults_path().read_text().partition("\n[[models]]")
    for field in c.ModelConfig.__struct_fields__:  # model keys are documented once, above the list
        assert f"#   {field} " in text or f" {field} " in text, f"model key {field} is not documented"
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key = line.split("=")[0].strip()
            before = text[: text.index(line)].rstrip().splitlines()
            assert before[-1].lstrip().startswith("#"), f"key {key} has no comment above it"


def test_layers_later_wins_and_sources_are_kept(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write(clean_env / "etc-sage.toml", "[http]\nport = 9001\nhost = '0.0.0.0'\n[daemon]\nlog_level = 'debug'\n")
    user = write(clean_env / "xdg-config" / "sage" / "sage.toml", "[http]\nport = 9002\n")
    monkeypatch.setattr(c, "system_config_path", lambda: system)
    monkeypatch.setenv("SAGE_DAEMON_LOG_LEVEL", "warning")
    monkeypatch.setenv("SAGE_RPC_MAX_FRAME_BYTES", "2048")
    loaded = c.load_config(None, [("http.port", 9003, "--port")])
    assert loaded.config.http.port == 9003 and loaded.sources["http.port"] == "flag --port"
    assert loaded.config.http.host == "0.0.0.0" and loaded.sources["http.host"] == str(system)
    assert loaded.config.daemon.log_level == "warning" and loaded.sources["daemon.log_level"] == "env SAGE_DAEMON_LOG_LEVEL"
    assert loaded.config.rpc.max_frame_bytes == 2048
    assert loaded.files == [str(system), str(user)]
    values = {key: (value, source) for key, value, source in c.effective_values(loaded)}
    assert values["rpc.group"] == ("", values["rpc.group"][1]) and values["rpc.group"][1].startswith("defaults")


def test_config_flag_replaces_the_file_layers(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write(clean_env / "etc-sage.toml", "[http]\nport = 9001\n")
    monkeypatch.setattr(c, "system_config_path", lambda: system)
    mine = write(clean_env / "mine.toml", "[http]\nhost = '::1'\n")
    loaded = c.load_config(mine)
    assert loaded.config.http.port == 8888 and loaded.config.http.host == "::1"
    assert loaded.files == [str(mine)]


def test_sage_api_key_env_adds_a_key(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_API_KEY", "sk-test")
    assert c.load_config().config.http.api_keys == ["sk-test"]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[http]\nprot = 1\n", "http.prot: unknown key (known keys here: api_key_file, api_keys"),
        ("[htp]\nport = 1\n", "htp: unknown key"),
        ("[http]\nport = 'x'\n", "http.port: expected `int`, got `str`"),
        ("[http]\nport = 70000\n", "http.port: expected `int` <= 65535"),
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level: invalid enum value 'loud'"),
        ("[http\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_file_gives_one_line_naming_file_and_key(clean_env: Path, toml: str, expected: str) -> None:
    path = write(clean_env / "bad.toml", toml)
    with pytest.raises(c.ConfigError) as info:
        c.load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and expected in message


def test_bad_env_and_flag_values_name_their_layer(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_HTTP_PORT", "not-a-port")
    with pytest.raises(c.ConfigError, match=r"env SAGE_HTTP_PORT: http.port: expected `int`"):
        c.load_config()
    monkeypatch.delenv("SAGE_HTTP_PORT")
    monkeypatch.setenv("SAGE_HTTP_PROTT", "1")
    with pytest.raises(c.ConfigError, match=r"env SAGE_HTTP_PROTT: http.prott: unknown key"):
        c.load_config()
    monkeypatch.delenv("SAGE_HTTP_PROTT")
    with pytest.raises(c.ConfigError, match=r"flag --port: http.port: expected `int` >= 0"):
        c.load_config(None, [("http.port", -1, "--port")])
    with pytest.raises(c.ConfigError, match=r"is not SECTION.KEY"):
        c.load_config(None, [("nosuch.key", 1, "--set nosuch.key")])


def test_foreign_sage_variables_are_ignored(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_SOCKET", "/tmp/x.sock")  # the client's
    monkeypatch.setenv("SAGE_HOME", "/opt/sagemath")  # another program's
    assert c.load_config().config == c.Config()


def test_diff_keys_lists_changed_values() -> None:
    old = c.Config()
    new = msgspec.structs.replace(old, http=msgspec.structs.replace(old.http, port=1), daemon=msgspec.structs.replace(old.daemon, log_level="debug"))
    assert c.diff_keys(old, new) == ["daemon.log_level", "http.port"]


# ----------------------------------------------------------------------------- safe reloads


def test_reload_refusal_keeps_api_keys_unless_the_file_says_so(clean_env: Path) -> None:
    path = write(clean_env / "sage.toml", "[http]\napi_keys = ['sk-a', 'sk-b']\n")
    old = c.load_config(path, environ={})

    path.write_text("")  # truncated: loads as the defaults, which have no keys
    refusal = c.reload_refusal(old, c.load_config(path, environ={}))
    assert refusal is not None and f"{path} is empty" in refusal and "http.api_keys" in refusal

    path.write_text("[daemon]\nlog_level = 'debug'\n")  # a real edit that forgot the keys
    refusal = c.reload_refusal(old, c.load_config(path, environ={}))
    assert refusal is not None and "remove every API key (http.api_keys: 2 keys -> none)" in refusal
    assert "api_keys = []" in refusal and "--set http.api_keys=[]" in refusal

    path.write_text("[daemon]\nlog_level = 'debug'\n[http]\napi_keys = []\n")  # said on purpose
    assert c.reload_refusal(old, c.load_config(path, environ={})) is None
    path.write_text("[http]\napi_keys = ['sk-c']\n")  # keys replaced, not removed
    assert c.reload_refusal(old, c.load_config(path, environ={})) is None


def test_reload_refusal_for_a_file_that_is_gone_and_not_for_no_change(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = write(clean_env / "xdg-config" / "sage" / "sage.toml", "[control]\npolicy = 'fifo'\n")
    monkeypatch.setattr(c, "system_config_path", lambda: clean_env / "no-such-system.toml")
    old = c.load_config(None, environ={})
    assert c.reload_refusal(old, c.load_config(None, environ={})) is None  # nothing changed
    user.unlink()
    refusal = c.reload_refusal(old, c.load_config(None, environ={}))
    assert refusal is not None and f"{user} was read at start and is gone now" in refusal and "control.policy" in refusal
    # An empty file that changes nothing (the daemon started with it empty) is no reason to refuse.
    user.write_text("")
    empty = c.load_config(None, environ={})
    assert c.reload_refusal(empty, c.load_config(None, environ={})) is None
