"""The plugin host: discovery through entry points, blocking, duplicate names, plugins that cannot load."""

from __future__ import annotations

import importlib.metadata
import sys
import types
from typing import Any

import pytest

from ravn_core import hookimpl
from ravn_core.components import PluginConfig
from ravn_core.config import parse_yaml, validate
from ravn_core.errors import ConfigError, StartupError
from ravn_core.plugins import PluginHost
from ravn_core.testing import CollectSink, ListSource


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.name = name
        self.version = version
        self.metadata = {"name": name}


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: dict[str, tuple[str, str]]) -> None:
    """``{ep_name: (module_name, dist_name)}``: only these entry points exist in group ``ravn``."""
    points = []
    for name, (module, dist) in eps.items():
        ep = importlib.metadata.EntryPoint(name, module, "ravn")
        object.__setattr__(ep, "dist", FakeDist(dist))  # EntryPoint is frozen; .dist is normally set the same way
        points.append(ep)

    def entry_points(**kw: Any) -> list[importlib.metadata.EntryPoint]:
        return points if kw.get("group") == "ravn" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def module_plugin(monkeypatch: pytest.MonkeyPatch, modname: str, **hooks: Any) -> types.ModuleType:
    mod = types.ModuleType(modname)
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))
    monkeypatch.setitem(sys.modules, modname, mod)
    return mod


def sink_registrar(name: str) -> Any:
    def ravn_register_sinks(registry: Any) -> None:
        registry.add(name, CollectSink, PluginConfig)

    return ravn_register_sinks


def test_entry_point_plugins_are_discovered_and_builtins_first(monkeypatch: pytest.MonkeyPatch) -> None:
    module_plugin(monkeypatch, "acme_sink", ravn_register_sinks=sink_registrar("acme"))
    fake_entry_points(monkeypatch, {"acme": ("acme_sink", "acme-ravn")})
    host = PluginHost()
    host.load()
    host.register_components()
    names = [n for n, _ in host.pm.list_name_plugin()]
    assert names[:4] == ["ravn_core.builtin.transport_embedded", "ravn_core.builtin.record", "ravn_core.builtin.sinks",
                         "ravn_core.builtin.health"]
    reg = host.sinks.get("acme")
    assert reg is not None and reg.distribution == "acme-ravn 1.0" and reg.plugin == "acme"
    info = {i.name: i for i in host.plugin_infos()}
    assert info["acme"].hooks == ["ravn_register_sinks"]


def test_duplicate_component_name_fails_naming_both_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    module_plugin(monkeypatch, "one_sink", ravn_register_sinks=sink_registrar("jsonl"))
    fake_entry_points(monkeypatch, {"one": ("one_sink", "acme-ravn")})
    host = PluginHost()
    host.load()
    with pytest.raises(StartupError, match=r"duplicate sink 'jsonl': builtin vs acme-ravn 1.0"):
        host.register_components()


def test_disabled_plugins_are_blocked_but_essential_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    module_plugin(monkeypatch, "acme_sink", ravn_register_sinks=sink_registrar("acme"))
    fake_entry_points(monkeypatch, {"acme": ("acme_sink", "acme-ravn")})
    monkeypatch.setenv("RAVN_DISABLED_PLUGINS", "acme, ravn_core.builtin.transport_embedded")
    host = PluginHost()
    host.load()
    host.register_components()
    assert "acme" not in host.sinks and "embedded" in host.transports
    assert {i.name: i.blocked for i in host.plugin_infos()}["acme"] is True
    with pytest.raises(StartupError, match="blocked by RAVN_DISABLED_PLUGINS"):
        host.check_named_plugins({"sinks": [{"plugin": "acme"}]})


def test_plugin_that_cannot_import_fails_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {"broken": ("ravn_surely_missing_module", "broken-dist")})
    host = PluginHost()
    host.load()  # not named: startup goes on
    host.register_components()
    assert "broken" in host.failed_plugins()
    with pytest.raises(StartupError, match=r"plugin 'broken' named in the config cannot load: broken-dist 1.0: "
                                           r"ModuleNotFoundError"):
        host.check_named_plugins({"analyzers": [{"plugin": "broken"}]})


def test_autoload_off_loads_only_named(monkeypatch: pytest.MonkeyPatch) -> None:
    module_plugin(monkeypatch, "acme_sink", ravn_register_sinks=sink_registrar("acme"))
    module_plugin(monkeypatch, "other_sink", ravn_register_sinks=sink_registrar("other"))
    fake_entry_points(monkeypatch, {"acme": ("acme_sink", "a"), "other": ("other_sink", "o")})
    monkeypatch.setenv("RAVN_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = PluginHost()
    host.load(only={"acme"})
    host.register_components()
    assert "acme" in host.sinks and "other" not in host.sinks


def test_registration_error_names_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(registry: Any) -> None:
        raise KeyError("nope")

    module_plugin(monkeypatch, "boom_plugin", ravn_register_sources=boom)
    fake_entry_points(monkeypatch, {"boom": ("boom_plugin", "boom-dist")})
    host = PluginHost()
    host.load()
    with pytest.raises(StartupError, match=r"plugin 'boom' \(boom-dist 1.0\) failed in ravn_register_sources"):
        host.register_components()


def test_unknown_hook_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    def ravn_register_widgets(registry: Any) -> None:
        pass

    module_plugin(monkeypatch, "typo_plugin", ravn_register_widgets=ravn_register_widgets)
    fake_entry_points(monkeypatch, {"typo": ("typo_plugin", "typo-dist")})
    with pytest.raises(StartupError, match="unknown hook"):
        PluginHost().load()


def test_config_model_is_validated_before_construction() -> None:
    from ravn_core.testing import make_host

    before = len(ListSource.instances)
    host = make_host()
    data, lines = parse_yaml("sources:\n  - plugin: test_source\n    batches: -x\n")
    with pytest.raises(ConfigError):
        validate(data, host.registries(), "c.yaml", lines)
    assert len(ListSource.instances) == before
