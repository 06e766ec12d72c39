"""What the daemon's status costs: ``Runtime.status()``, ``snapshot()`` (what ``/status`` and ``/metrics`` serve) and
``write_status()`` (status.json, once a second), in CPU ms per call of the calling thread.

Runs the real runtime in this process on ``config/ravn.yaml`` (all four probes, both analyzers; state dir and alert
file in a temp dir, HTTP off), makes ``--alerts`` alerts first (a process that is not RAVN's descendant reads
/etc/shadow: rule ``sensitive_file_read``) so that the recent alerts, which status carries with their evidence,
are there as on a busy host, then times each call ``--calls`` times while the pipeline runs. Root (the probes).
The last line is one JSON object; "per_s_with_polling" is status.json once a second plus ``/status`` every 0.5 s,
as bench/e2e.py polls it.

    sudo .venv/bin/python bench/status.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ravn_core.cli import load_config, load_host
from ravn_core.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config" / "ravn.yaml"))
    p.add_argument("--alerts", type=int, default=12, help="alerts made before timing (default 12)")
    p.add_argument("--calls", type=int, default=50, help="calls timed per function (default 50)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ravn-status-"))
    config = yaml.safe_load(Path(args.config).read_text())
    config.setdefault("ravn", {}).update({"state_dir": str(tmp / "state"), "http_listen": ""})
    for sink in config.get("sinks", []):
        if sink.get("plugin") == "jsonl":
            sink["path"] = str(tmp / "alerts.jsonl")
    path = tmp / "ravn.yaml"
    path.write_text(yaml.safe_dump(config))
    # RAVN never reports its own descendants: the reader is orphaned (reparented away from this process) before
    # the runtime starts, and waits on a fifo
    fifo = tmp / "go"
    os.mkfifo(fifo)
    subprocess.run(["sh", "-c", f"(read x < {fifo}; for i in $(seq {args.alerts}); do cat /etc/shadow >/dev/null; "
                    "sleep 0.05; done) >/dev/null 2>&1 &"], check=True)
    host = load_host(str(path))
    rt = Runtime(load_config(str(path), host), host)
    rt.start()
    try:
        time.sleep(1)
        with open(fifo, "w") as go:
            go.write("go\n")
        deadline = time.monotonic() + 20
        while len(rt.sink_stage.recent_alerts) < min(args.alerts, 10) and time.monotonic() < deadline:
            time.sleep(0.1)
        shown = len(rt.status()["recent_alerts"])
        out: dict[str, Any] = {"recent_alerts": shown, "status_bytes": len(json.dumps(rt.status(), default=str))}
        for name, call in (("status", rt.status), ("snapshot", rt.snapshot), ("write_status", rt.write_status)):
            t0 = time.thread_time()
            for _ in range(args.calls):
                call()
            out[f"{name}_ms"] = round(1e3 * (time.thread_time() - t0) / args.calls, 2)
        out["per_s_with_polling_ms"] = round(out["write_status_ms"] + 2 * out["snapshot_ms"], 2)
    finally:
        rt.stop()
    print(f"status: {out['recent_alerts']} recent alerts shown, {out['status_bytes']} bytes; CPU per call: "
          f"status() {out['status_ms']} ms, snapshot() {out['snapshot_ms']} ms, write_status() "
          f"{out['write_status_ms']} ms; status.json every 1 s + /status every 0.5 s: {out['per_s_with_polling_ms']} "
          "ms of CPU per second")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
