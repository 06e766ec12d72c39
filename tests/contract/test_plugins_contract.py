"""Every discovered plugin: loads and passes check_pending, its default config validates, import has no side effects."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from ravn_core.plugins import ENTRY_POINT_GROUP, PluginHost

EXPECTED = {"ebpf_syscall", "ebpf_network", "ebpf_security", "ebpf_file", "transport_redis", "analyzer_rules",
            "analyzer_onnx", "sinks"}


def entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def test_every_project_plugin_is_installed_and_loads() -> None:
    host = PluginHost()
    host.load()
    host.register_components()
    names = {ep.name for ep in entry_points()}
    assert EXPECTED <= names, f"missing: {EXPECTED - names}"
    assert host.failed_plugins() == {}


@pytest.mark.parametrize("kind", ["sources", "transport", "analyzers", "sinks", "health_probes"])
def test_every_component_default_config_validates(kind: str) -> None:
    host = PluginHost()
    host.load()
    host.register_components()
    for reg in host.registries()[kind]:
        for name, field in reg.config_model.model_fields.items():
            assert field.description, f"{kind} {reg.name}: field {name!r} has no description"
        if any(f.is_required() for f in reg.config_model.model_fields.values()):
            continue  # e.g. a webhook needs its URL: nothing sensible to default to
        model = reg.config_model.model_validate({})
        assert model == reg.config_model.model_validate(model.model_dump(mode="json", exclude_unset=True))


def test_importing_plugins_has_no_side_effects() -> None:
    """Import every plugin module in a fresh interpreter: no thread, no BPF program/map/attachment."""
    code = """
import importlib.metadata, json, os, threading
for ep in importlib.metadata.entry_points(group="ravn"):
    ep.load()
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # the fd listdir itself used
        pass
print(json.dumps({"threads": threading.active_count(), "tasks": len(os.listdir("/proc/self/task")),
                  "bpf_fds": [f for f in fds if "bpf" in f or "perf_event" in f]}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # no thread started, and no BPF program, map or perf event (attachment) held by the importing process
    assert out == {"threads": 1, "tasks": 1, "bpf_fds": []}
