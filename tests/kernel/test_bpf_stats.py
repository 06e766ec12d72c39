"""/metrics per-program BPF statistics of a real probe, checked against bpftool (BPF_OBJ_GET_INFO_BY_FD offsets)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ravn_core.builtin.http import bpf_stats_enabled, endpoint_for, prog_info, source_programs
from ravn_core.config import validate
from ravn_core.runtime import Runtime
from ravn_core.testing import make_host, require_kernel, wait_for


@pytest.mark.kernel
def test_bpf_program_stats_in_metrics(tmp_path: Path) -> None:
    require_kernel()
    import ravn_ebpf_security.plugin

    was_on = bpf_stats_enabled()
    host = make_host((ravn_ebpf_security.plugin, "ebpf_security"))
    cfg = validate({"ravn": {"state_dir": str(tmp_path), "http_listen": "127.0.0.1:0", "bpf_stats": True},
                    "sources": [{"plugin": "ebpf_security", "events": ["exec", "fork", "exit"]}],
                    "analyzers": []}, host.registries())
    rt = Runtime(cfg, host)
    rt.start()
    try:
        ep = endpoint_for(rt)
        assert ep is not None and ep.stats_fd >= 0 and ep.bpf_stats_on()  # BPF_ENABLE_STATS fd held while running
        probe = rt.sources[0].component
        progs = dict(source_programs(probe))
        assert progs, "no program fds found on the probe"
        for _ in range(20):
            subprocess.run(["/bin/true"], check=True)
        infos = {name: prog_info(fd) for name, fd in progs.items()}
        assert {i["id"] for i in infos.values()} == probe.program_ids()
        assert any(i["run_cnt"] > 0 and i["run_time_ns"] > 0 for i in infos.values()), infos
        if shutil.which("bpftool"):
            shown = {p["id"]: p for p in json.loads(subprocess.run(["bpftool", "prog", "show", "--json"],
                                                                   capture_output=True, check=True).stdout)}
            for name, info in infos.items():
                bt = shown[info["id"]]
                assert name.startswith(bt["name"]) or bt["name"].startswith(name[:15]), (name, bt["name"])
                assert bt.get("run_cnt", 0) >= info["run_cnt"]  # read a moment later
        def scraped() -> dict[str, float]:
            with urllib.request.urlopen(f"{ep.url}/metrics", timeout=5) as r:
                text = r.read().decode()
            out = {}
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name == "ravn_bpf_prog_run_count_total":
                        out[s.labels["program"]] = s.value
                    if s.name == "ravn_bpf_stats_enabled":
                        assert s.value == 1
            return out

        assert wait_for(lambda: set(scraped()) == set(progs) and max(scraped().values()) > 0, 5)
    finally:
        rt.stop()
    assert ep.stats_fd == -1 and bpf_stats_enabled() == was_on  # fd closed at stop; the sysctl never touched
