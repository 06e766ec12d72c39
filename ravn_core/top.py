"""``ravn top``: a live terminal view of a running daemon.

Reads the daemon's status through ``ravn_core.status.StatusReader`` (the one reader ``ravn status`` uses too): the
root-only socket ``<ravn.state_dir>/ravn.sock``, else the status file the daemon rewrites every second. Shows
events/s, queue drops and kernel drops per source, queue depths, analysis latency, threat level and score, component
health, the open incidents (one line each: id, level, score, age, root process, rules in order) and the latest
alerts. Plain text redrawn in place (rich): works over ssh, no mouse; ``--once`` prints one frame and exits (for
tests and scripts). Text from the daemon (alert descriptions, comms, paths, details) is shown
as plain text, never read as rich markup, with control characters escaped. Exit codes: 0 ok, 1 no running daemon.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ravn_core.errors import EXIT_FAILURE, EXIT_OK, RavnError
from ravn_core.events import printable
from ravn_core.status import StatusReader

LEVEL_STYLE = {"LOW": "green", "MEDIUM": "yellow", "HIGH": "bold red"}


def add_top_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("top", help="live view of a running daemon (events/s, drops, queues, alerts)")
    p.add_argument("--config", "-c", help="config file (for ravn.state_dir)")
    p.add_argument("--state-dir", help="the daemon's state directory (default: the config's, else /run/ravn)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=cmd_top)


def _text(value: Any, style: str = "") -> Any:
    """A rich Text of ``value`` as it is: no markup, control characters escaped."""
    from rich.text import Text

    return Text(printable(str(value)), style=style)


def rates(prev: dict[str, Any] | None, cur: dict[str, Any]) -> dict[str, float]:
    """Events/s per source between two status samples (the sources' own rate when there is one sample)."""
    out: dict[str, float] = {}
    for name, s in cur["stats"]["sources"].items():
        if prev is not None and name in prev["stats"]["sources"]:
            dt = float(cur["updated_at"]) - float(prev["updated_at"])
            if dt > 0:
                out[name] = (s["accepted"] - prev["stats"]["sources"][name]["accepted"]) / dt
                continue
        counters = cur["components"].get(f"source:{name}", {}).get("counters", {})
        out[name] = float(counters.get("events_per_s", 0.0))
    return out


def render(status: dict[str, Any], prev: dict[str, Any] | None, where: str) -> Any:
    """One frame as a rich renderable."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    st = status["stats"]
    level = status.get("level", "LOW")
    age = time.time() - float(status.get("updated_at", 0))
    head = Text()
    head.append(printable(f"RAVN {status['host']} pid {status['pid']} role {status['role']}  "))
    head.append(f"threat {level}", style=LEVEL_STYLE.get(level, ""))
    head.append(f" score {float(status.get('score', 0)):.1f}  health {status['health']}")
    if status["health"] != "ok":
        head.append(printable(f" ({', '.join(status['degraded'])})"), style="yellow")
    rss = float(status.get("rss_bytes", 0)) / 1048576
    lat = status.get("latency_s") or {}
    head.append(f"\nRSS {rss:.0f} MB  latency p50 {1000 * lat.get('p50', 0):.1f} ms p99 "
                f"{1000 * lat.get('p99', 0):.1f} ms  queues ingress {st['ingress_depth']} "
                f"transport {st['transport_pending']} sink {st['sink_depth']}  "
                f"analyzed {st['analyzed']} alerts {st['alerts_emitted']}  [{printable(where)}, {age:.0f}s old]")

    r = rates(prev, status)
    src = Table(title="sources", title_justify="left", expand=False, box=None, pad_edge=False)
    for col in ("source", "events/s", "accepted", "queue drops", "kernel drops", "state"):
        src.add_column(col, justify="left" if col in ("source", "state") else "right")
    for name, s in st["sources"].items():
        comp = status["components"].get(f"source:{name}", {})
        state = comp.get("state", "?")
        src.add_row(_text(name), f"{r.get(name, 0.0):,.0f}", f"{s['accepted']:,}", f"{s['dropped']:,}",
                    f"{s['kernel_drops']:,}", _text(state, "" if state == "ok" else "yellow"))

    comps = Table(title="components", title_justify="left", box=None, pad_edge=False)
    for col in ("component", "state", "restarts", "detail"):
        comps.add_column(col)
    for name, c in sorted(status["components"].items()):
        if name.startswith("source:"):
            continue
        comps.add_row(_text(name), _text(c["state"]), str(c["restarts"]), _text((c.get("detail") or "")[:60]))

    incidents = Table(title="open incidents (worst first)", title_justify="left", box=None, pad_edge=False)
    for col in ("incident", "level", "score", "age", "root", "rules"):
        incidents.add_column(col)
    for inc in list(status.get("incidents") or [])[:8]:
        root = inc.get("root") or {}
        who = f"{root.get('pid', 0)} {root.get('comm', '') or '?'}" + (f" ({root['exe']})" if root.get("exe") else "")
        rules = " > ".join(inc.get("rules") or []) or "-"
        if inc.get("corroboration"):
            rules += f" [+{', '.join(inc['corroboration'])}]"
        lvl = str(inc.get("level", "LOW"))
        incidents.add_row(_text(str(inc.get("id", "?"))), _text(lvl, LEVEL_STYLE.get(lvl, "")),
                          f"{float(inc.get('score', 0)):.1f}", f"{float(inc.get('age_s', 0)):.0f}s",
                          _text(who[:50]), _text(rules[:90]))

    alerts = Table(title="latest alerts", title_justify="left", box=None, pad_edge=False)
    for col in ("time", "level", "score", "rule", "pid", "comm", "incident", "description"):
        alerts.add_column(col)
    for a in list(status.get("recent_alerts", []))[-8:][::-1]:
        alerts.add_row(time.strftime("%H:%M:%S", time.localtime(float(a["ts"]))),
                       _text(a["level"], LEVEL_STYLE.get(a["level"], "")), str(a["score"]), _text(a["rule"]),
                       str(a["pid"]), _text(a["comm"]), _text(str(a.get("incident") or "-")),
                       _text(str(a["description"])[:70]))
    return Group(head, Text(""), src, Text(""), comps, Text(""), incidents, Text(""), alerts)


def _reader(args: argparse.Namespace, host: Any) -> StatusReader:
    from ravn_core.cli import state_dir_of

    return StatusReader(state_dir_of(args, host))


def cmd_top(args: argparse.Namespace, host: Any = None) -> int:
    from rich.console import Console
    from rich.live import Live

    reader = _reader(args, host)
    console = Console()
    if args.once:
        first = reader.read()
        time.sleep(max(0.0, min(args.interval, 5.0)))
        second = reader.read()
        console.print(render(second, first if second["updated_at"] != first["updated_at"] else None,
                             second.get("via", reader.where)))
        return EXIT_OK
    prev: dict[str, Any] | None = None
    try:
        with Live(console=console, auto_refresh=False, screen=False, redirect_stderr=False) as live:
            while True:
                try:
                    cur = reader.read()
                except RavnError as exc:
                    from rich.text import Text

                    live.update(Text(f"{exc} (retrying)", style="red"), refresh=True)
                    time.sleep(args.interval)
                    continue
                live.update(render(cur, prev, cur.get("via", reader.where)), refresh=True)
                if prev is None or cur["updated_at"] != prev["updated_at"]:
                    prev = cur
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_FAILURE  # unreachable; keeps mypy's return check honest


if __name__ == "__main__":  # pragma: no cover - `python -m ravn_core.top`
    parser = argparse.ArgumentParser(prog="ravn top")
    sub = parser.add_subparsers()
    add_top_command(sub)
    ns = parser.parse_args(["top", *sys.argv[1:]])
    sys.exit(cmd_top(ns))
