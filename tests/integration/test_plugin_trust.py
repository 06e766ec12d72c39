"""Hostile plugin packages: code a local user could write must never be imported into the root daemon; an
allowlist (RAVN_PLUGINS) limits the rest. A plugin package planted for real by the user nobody."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ravn_core.errors import StartupError
from ravn_core.plugins import PluginHost
from ravn_core.testing import NOBODY, as_nobody, require_root

PLUGIN = '''
import os
from ravn_core import hookimpl
MARK = os.environ.get("RAVN_TEST_MARK")
if MARK:
    open(MARK, "w").write("imported as uid %d" % os.geteuid())   # what a hostile plugin does at import: as root

@hookimpl
def ravn_register_sinks(registry):
    pass
'''


class Dist:
    def __init__(self, name: str) -> None:
        self.name, self.version, self.metadata = name, "6.6.6", {"name": name}


def entry_points(monkeypatch: pytest.MonkeyPatch, eps: dict[str, str]) -> None:
    points = []
    for name, module in eps.items():
        ep = importlib.metadata.EntryPoint(name, module, "ravn")
        object.__setattr__(ep, "dist", Dist(f"{name}-dist"))
        points.append(ep)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: points if kw.get("group") == "ravn" else [])


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path that a local user can write into (like a venv or site dir left writable)."""
    path = Path(tempfile.mkdtemp(prefix="ravn-site-", dir="/tmp"))
    os.chmod(path, 0o1777)
    monkeypatch.syspath_prepend(str(path))
    mark = path / "MARK"
    monkeypatch.setenv("RAVN_TEST_MARK", str(mark))
    yield path
    for mod in [m for m in sys.modules if m.startswith("evil_") or m.startswith("good_")]:
        del sys.modules[mod]
    shutil.rmtree(path, ignore_errors=True)


def _plant(site: str, name: str) -> None:
    pkg = Path(site) / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)


def test_a_plugin_package_written_by_another_user_is_never_imported(site: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    as_nobody(_plant, str(site), "evil_ravn")
    entry_points(monkeypatch, {"evil": "evil_ravn"})
    host = PluginHost()
    host.load()
    assert not (site / "MARK").exists()  # its code never ran
    assert "evil_ravn" not in sys.modules and not host.pm.has_plugin("evil")
    why = host.failed_plugins()["evil"]
    assert f"evil_ravn is owned by uid {NOBODY}" in why, why
    with pytest.raises(StartupError, match=r"plugin 'evil' named in the config cannot load: .*owned by uid"):
        host.check_named_plugins({"sinks": [{"plugin": "evil"}]})


def test_a_root_package_that_others_can_write_is_refused_and_a_clean_one_loads(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("good_ravn", "good_loose"):
        _plant(str(site), name)
        os.chmod(site / name, 0o755)
        os.chmod(site / name / "__init__.py", 0o644)
    os.chmod(site / "good_loose" / "__init__.py", 0o666)
    entry_points(monkeypatch, {"good": "good_ravn", "loose": "good_loose"})
    host = PluginHost()
    host.load()
    assert host.pm.has_plugin("good") and not host.pm.has_plugin("loose")
    assert "writable by group and others (mode 666)" in host.failed_plugins()["loose"]
    assert (site / "MARK").read_text() == f"imported as uid {os.geteuid()}"


def test_the_allowlist_loads_only_the_plugins_it_names(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("good_a", "good_b"):
        _plant(str(site), name)
        os.chmod(site / name, 0o755)
    entry_points(monkeypatch, {"a": "good_a", "b": "good_b"})
    monkeypatch.setenv("RAVN_PLUGINS", "a")
    host = PluginHost()
    host.load()
    assert host.pm.has_plugin("a") and not host.pm.has_plugin("b") and "good_b" not in sys.modules
    assert "not in RAVN_PLUGINS" in host.failed_plugins()["b"]
    assert host.pm.has_plugin("ravn_core.builtin.sinks")  # builtins always load


def test_every_shipped_plugin_passes_the_trust_check() -> None:
    from ravn_core.plugins import untrusted

    eps: Any = importlib.metadata.entry_points(group="ravn")
    assert {ep.name for ep in eps} >= {"ebpf_syscall", "analyzer_rules", "sinks", "transport_redis"}
    for ep in eps:
        assert untrusted(ep) == "", ep.name


def _ravn(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh interpreter (its own entry points and sys.modules)."""
    code = "import sys; from ravn_core.cli import main; sys.exit(main(sys.argv[1:]))"
    clean = {k: v for k, v in os.environ.items()
             if k not in ("RAVN_PLUGINS", "RAVN_DISABLED_PLUGINS", "RAVN_DISABLE_PLUGIN_AUTOLOAD")}
    return subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


def test_autoload_off_still_loads_what_the_config_and_the_allowlist_name(tmp_path: Path) -> None:
    """Before: with RAVN_DISABLE_PLUGIN_AUTOLOAD=1 the CLI loaded no entry point at all, so every config naming a
    plugin failed ("unknown analyzer plugin 'analyzer_rules' (known: none installed)") and an operator had to
    turn autoload back on (every installed entry point into the root daemon) to run at all."""
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text("analyzers:\n  - plugin: analyzer_rules\nsinks:\n  - plugin: stdout\n")
    off = {"RAVN_DISABLE_PLUGIN_AUTOLOAD": "1"}
    r = _ravn(["config", "check", str(cfg)], off)
    assert r.returncode == 0 and "analyzer:analyzer_rules" in r.stdout, r.stderr
    r = _ravn(["-c", str(cfg), "plugins", "list", "--json"], off)
    assert r.returncode == 0, r.stderr
    loaded = {p["name"] for p in json.loads(r.stdout) if "error" not in p}
    assert "analyzer_rules" in loaded  # named by the config
    assert not loaded & {"analyzer_onnx", "ebpf_syscall", "transport_redis", "sinks"}, loaded  # not named: unread
    # RAVN_PLUGINS names an entry point whose components have other names (sinks: webhook, syslog, falco)
    cfg.write_text("analyzers:\n  - plugin: analyzer_rules\nsinks:\n  - plugin: webhook\n"
                   "    url: http://127.0.0.1:9/x\n")
    r = _ravn(["config", "check", str(cfg)], off)
    assert r.returncode == 2 and "unknown sink plugin 'webhook'" in r.stderr and "RAVN_PLUGINS" in r.stderr, r.stderr
    r = _ravn(["config", "check", str(cfg)], {**off, "RAVN_PLUGINS": "analyzer_rules,sinks"})
    assert r.returncode == 0 and "sink:webhook" in r.stdout, r.stderr
    # and the allowlist still refuses what it does not name, even when the config names it
    r = _ravn(["config", "check", str(cfg)], {**off, "RAVN_PLUGINS": "sinks"})
    assert r.returncode == 2 and "'analyzer_rules'" in r.stderr and "not in RAVN_PLUGINS" in r.stderr, r.stderr
