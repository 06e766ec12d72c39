"""The example analyzer, tested the way a third-party author would: built as a wheel, installed, discovered
through its entry point by PluginHost, configured from YAML and run on events.

The wheel is installed into a temporary target directory put on sys.path (not into the shared venv), so the
venv is untouched and the test cleans up completely; importlib.metadata finds its dist-info there exactly as
it would in site-packages.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ravn_core.components import BatchContext
from ravn_core.config import parse_yaml, validate
from ravn_core.errors import ConfigError
from ravn_core.plugins import PluginHost
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context

EXAMPLE = Path(__file__).resolve().parent.parent


def _install(tmp: Path) -> Path:
    src = tmp / "src-copy"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    wheels, site = tmp / "wheels", tmp / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, timeout=120, cwd=tmp)
    (wheel,) = wheels.glob("ravn_example_analyzer-0.1.0-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, timeout=120)
    return site


def _uninstall(site: Path) -> None:
    while str(site) in sys.path:
        sys.path.remove(str(site))
    for mod in [m for m in sys.modules if m == "ravn_example_analyzer" or m.startswith("ravn_example_analyzer.")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built and installed into a target directory once per module (not yet on sys.path)."""
    return _install(tmp_path_factory.mktemp("example"))


@pytest.fixture
def installed(example_site: Path) -> Iterator[Path]:
    sys.path.insert(0, str(example_site))
    importlib.invalidate_caches()
    try:
        yield example_site
    finally:
        _uninstall(example_site)


def _host() -> PluginHost:
    host = PluginHost()
    host.load()
    host.register_components()
    return host


def _exec(path: str, *args: str, pid: int = 4242) -> dict[str, object]:
    return {"evt.type": "exec", "evt.ts": time.time_ns(), "proc.pid": pid, "proc.ppid": 1, "proc.comm": "bash",
            "proc.uid": 0, "exec.filename": path, "exec.argv": [path.rsplit("/", 1)[-1], *args], "exec.ret": 0}


def test_discovered_through_its_entry_point(installed: Path) -> None:
    host = _host()
    reg = host.analyzers.get("example_analyzer")
    assert reg is not None, f"not discovered; failed plugins: {host.failed_plugins()}"
    assert reg.distribution == "ravn-example-analyzer 0.1.0"
    assert reg.plugin == "example_analyzer"
    info = {p.name: p for p in host.plugin_infos()}["example_analyzer"]
    assert info.hooks == ["ravn_register_analyzers"]


def test_configured_from_yaml_and_alerts(installed: Path) -> None:
    host = _host()
    text = ("analyzers:\n"
            "  - plugin: example_analyzer\n"
            "    programs: [/usr/bin/nmap, masscan]\n"
            "    score: 70\n")
    data, lines = parse_yaml(text, "ravn.yaml")
    cfg = validate(data, host.registries(), "ravn.yaml", lines)
    spec = cfg.analyzers[0]
    analyzer = spec.registration.factory(spec.name, spec.config, make_context("example"))
    tree = ProcessTree()
    batch = [_exec("/usr/bin/nmap", "-sS", "10.0.0.0/24"), _exec("/opt/masscan/bin/masscan", pid=4343),
             _exec("/usr/bin/ls", pid=4444)]
    tree.update(batch)
    alerts = analyzer.analyze(batch, BatchContext("h", tree, time.time()))
    assert [(a.analyzer, a.rule, a.score, a.pid) for a in alerts] == [
        ("example_analyzer", "watched_program", 70, 4242), ("example_analyzer", "watched_program", 70, 4343)]
    assert alerts[0].description == "/usr/bin/nmap executed: nmap -sS 10.0.0.0/24"
    assert alerts[0].tags == ["T1046"]
    bad, bad_lines = parse_yaml("analyzers:\n  - plugin: example_analyzer\n    score: 101\n", "ravn.yaml")
    with pytest.raises(ConfigError, match=r"ravn.yaml:3: analyzers\[0\].score \(example_analyzer\)"):
        validate(bad, host.registries(), "ravn.yaml", bad_lines)


def test_gone_after_uninstall(example_site: Path) -> None:
    sys.path.insert(0, str(example_site))
    importlib.invalidate_caches()
    try:
        assert "example_analyzer" in _host().analyzers
    finally:
        _uninstall(example_site)
    assert "example_analyzer" not in _host().analyzers
    assert "ravn_example_analyzer" not in sys.modules
