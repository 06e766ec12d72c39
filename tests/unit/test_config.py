"""Config errors name the file, the line and the key path; each kind of bad input has its test."""

from __future__ import annotations

from pathlib import Path

import pytest

from ravn_core.config import Secret, load, parse_yaml, validate
from ravn_core.errors import ConfigError
from ravn_core.testing import make_host

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def host():  # type: ignore[no-untyped-def]
    return make_host()


def check(host, text: str, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "ravn.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, host.registries())
    return str(info.value)


def test_valid_minimal(host) -> None:  # type: ignore[no-untyped-def]
    data, lines = parse_yaml("sources:\n  - plugin: test_source\n    batches: 3\n")
    cfg = validate(data, host.registries(), "x.yaml", lines)
    assert cfg.sources[0].config.batches == 3
    assert cfg.transport.plugin == "embedded"


def test_malformed_yaml_names_line(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "ravn:\n  host: a\n sources: [\n", tmp_path)
    assert "ravn.yaml:3" in msg and "malformed YAML" in msg


def test_unknown_core_key(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "ravn:\n  host: a\n  hots: b\n", tmp_path)
    assert msg.endswith("ravn.yaml:3: ravn.hots: unknown key"), msg


def test_unknown_plugin_key_names_plugin_and_line(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "sources:\n  - plugin: test_source\n  - plugin: test_source\n    name: b\n    batchez: 1\n",
                tmp_path)
    assert "ravn.yaml:5: sources[1].batchez (test_source): unknown key" in msg, msg


def test_wrong_type(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "ravn:\n  queue_batches: many\n", tmp_path)
    assert "ravn.yaml:2: ravn.queue_batches" in msg and "integer" in msg, msg


def test_bad_value(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "ravn:\n  threat:\n    medium: 90\n    high: 80\n", tmp_path)
    assert "ravn.yaml:2: ravn.threat" in msg and "must be below high" in msg, msg  # the line of `threat:`


def test_unknown_plugin_lists_known(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "sinks:\n  - plugin: stdout\n  - plugin: kafka\n", tmp_path)
    assert "ravn.yaml:3: sinks[1].plugin: unknown sink plugin 'kafka'" in msg and "jsonl" in msg, msg


def test_missing_file(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.yaml", host.registries())


def test_duplicate_instance_name(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "sinks:\n  - plugin: stdout\n  - plugin: stdout\n", tmp_path)
    assert "ravn.yaml:3: sinks[1]: name 'stdout' is used twice in sinks (sinks[0] and sinks[1])" in msg, msg


def test_duplicate_instance_name_after_a_disabled_section_names_its_own_line(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The duplicate at sinks[2] was reported as sinks[1] (its index among the enabled sections)."""
    text = "sinks:\n  - plugin: stdout\n  - plugin: jsonl\n    enabled: false\n  - plugin: stdout\n"
    msg = check(host, text, tmp_path)
    assert "ravn.yaml:5: sinks[2]: name 'stdout' is used twice in sinks (sinks[0] and sinks[2])" in msg, msg


def test_duplicate_key(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "ravn:\n  host: a\n  host: b\n", tmp_path)
    assert "ravn.yaml:3: ravn.host: duplicate key" in msg


def test_not_a_mapping(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "must be a mapping" in check(host, "- a\n- b\n", tmp_path)


def test_secret_references(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ravn_core.components import PluginConfig
    from ravn_core.config import SecretRef

    class M(PluginConfig):
        password: SecretRef

    monkeypatch.setenv("RAVN_TEST_PW", "hunter2")
    assert M.model_validate({"password": {"$env": "RAVN_TEST_PW"}}).password.get() == "hunter2"
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    s = M.model_validate({"password": {"$file": str(secret_file)}}).password
    assert isinstance(s, Secret) and s.get() == "s3cret" and "s3cret" not in repr(s)
    for bad, why in (("literal", "references, not literals"), ({"$env": "RAVN_NOT_SET_X"}, "not set"),
                     ({"$file": str(tmp_path / "missing")}, "cannot read secret file"), ({"$foo": 1}, "a secret is")):
        with pytest.raises(ValueError, match=why):
            M.model_validate({"password": bad})


def test_bad_secret_reference_in_config_names_line(tmp_path: Path) -> None:
    from ravn_core.components import PluginConfig, RuntimeContext, Sink
    from ravn_core.config import SecretRef
    from ravn_core.testing import make_host as mk

    class SecretSinkConfig(PluginConfig):
        token: SecretRef

    class SecretSink(Sink):
        def __init__(self, name: str, config: SecretSinkConfig, context: RuntimeContext) -> None:
            super().__init__(name, config, context)

        def emit_alerts(self, alerts):  # type: ignore[no-untyped-def]
            pass

    class P:
        from ravn_core import hookimpl

        @hookimpl
        def ravn_register_sinks(self, registry):  # type: ignore[no-untyped-def]
            registry.add("secret_sink", SecretSink, SecretSinkConfig)

    h = mk((P(), "secret-plugin"))
    msg = check(h, "sinks:\n  - plugin: secret_sink\n    token: {$env: RAVN_SURELY_UNSET}\n", tmp_path)
    assert "ravn.yaml:3: sinks[0].token (secret_sink)" in msg and "RAVN_SURELY_UNSET" in msg and "not set" in msg


def test_shipped_configs_validate_with_installed_plugins() -> None:
    """config/*.yaml validate against the plugins installed in this venv (what `ravn config check` does)."""
    from ravn_core.cli import main

    for name in ("ravn.yaml", "ravn.example.yaml"):
        assert main(["config", "check", str(ROOT / "config" / name)]) == 0, name


def test_empty_values_and_scalars_parse(host) -> None:  # type: ignore[no-untyped-def]
    data, lines = parse_yaml("sources:\nsinks: []\nravn:\n  host: ~\n  queue_batches: 0x10\n")
    assert data == {"sources": None, "sinks": [], "ravn": {"host": None, "queue_batches": 16}}
    assert lines[("ravn", "queue_batches")] == 5


def test_empty_section_is_a_clear_error(host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msg = check(host, "sources:\n", tmp_path)
    assert msg.startswith(f"{tmp_path / 'ravn.yaml'}:1: sources:") and "list" in msg, msg


# ---------------------------------------------------------------------------------------------- hostile YAML
BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_alias_bomb_is_refused_fast_in_config_check(tmp_path: Path) -> None:
    """403 bytes that expand to 9^9 strings took 31 s and 2.4 GB in `ravn config check`."""
    import resource
    import subprocess
    import sys
    import time

    assert len(BOMB) < 420
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "config", "check", str(path)], capture_output=True,
                         text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 2 and "alias bomb" in out.stderr and "bomb.yaml:" in out.stderr, out.stderr
    assert took < 20, took  # the CLI's own start (plugin loading) is most of it
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 600_000, peak_kb


def test_a_recursive_alias_is_a_clear_error_not_a_recursion_error() -> None:
    with pytest.raises(ConfigError, match=r"<config>:1: ravn\.x: a YAML alias that contains itself"):
        parse_yaml("ravn: &a\n  x: *a\n")
    with pytest.raises(ConfigError, match="contains itself"):
        parse_yaml("sources: &s [*s]\n")


def test_deep_nesting_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_yaml("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_yaml("a: " + "[" * 100 + "]" * 100 + "\n")


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="<config>:2: ravn: keys must be strings"):
        parse_yaml("ravn:\n  1: x\n")


@pytest.mark.parametrize(("text", "error"), [
    ("sinks: &s\n  - plugin: stdout\n    extra: *s\n",
     "ravn.yaml:1: sinks[0].extra: a YAML alias that contains itself (recursive anchor)"),
    ("sinks:\n  - plugin: stdout\n  - plugin: jsonl\n    path: /tmp/a.jsonl\n  - plugin: jsonl\n    name: two\n"
     "    path: /tmp/b.jsonl\n    path: /tmp/c.jsonl\n",
     "ravn.yaml:8: sinks[2].path: duplicate key"),
])
def test_hostile_yaml_in_ravn_config_check_is_one_error_line_with_file_and_line(tmp_path: Path, text: str,
                                                                                 error: str) -> None:
    """Through the real CLI: a recursive alias (was a RecursionError traceback) and a duplicate key inside the
    third list item (PyYAML keeps the last value silently) are exit code 2 with one line naming file and line."""
    import subprocess
    import sys

    path = tmp_path / "ravn.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "config", "check", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    assert out.stderr.strip().splitlines() == [f"ravn: error: {tmp_path}/{error}"], out.stderr
