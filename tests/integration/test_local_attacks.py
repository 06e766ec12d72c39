"""Attacks by a local unprivileged user (``nobody``) on RAVN's files and output, each reproduced for real; every
test passes only when the attack fails (docs/SECURITY.md lists them)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ravn_core.components import Alert
from ravn_core.errors import StartupError
from ravn_core.testing import NOBODY, as_nobody, make_context, require_root, run_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared() -> Any:
    """A directory a local user can reach and write, like /tmp (pytest's tmp_path is under a root-only dir)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ravn-shared-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the state dir
def _plant(state: str, target: str) -> None:
    """As nobody: make the state dir before RAVN does, and plant a link where the status temp file goes."""
    os.mkdir(state, 0o777)
    for pid in range(os.getppid() - 5, os.getppid() + 5):  # the daemon runs in the test process: its pid is known
        os.symlink(target, f"{state}/status.json.{pid}.tmp")
    os.symlink(target, f"{state}/status.json")


def test_a_state_dir_made_by_another_user_is_refused(tmp_path: Path, shared: Path) -> None:
    require_root()
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    state = str(shared / "ravn-state")
    as_nobody(_plant, state, str(victim))
    assert os.stat(state).st_uid == NOBODY
    with pytest.raises(StartupError, match=f"state dir {state} is owned by uid {NOBODY}"):
        run_pipeline({"ravn": {"state_dir": state}, "sources": [{"plugin": "test_source"}],
                      "analyzers": [{"plugin": "test_analyzer"}]}, duration=0.5)
    assert victim.read_text() == "root's file\n"
    assert not any(p.name == "ravn.sock" for p in Path(state).iterdir())


def test_a_symlinked_state_dir_is_refused_and_a_loose_one_is_tightened(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StartupError, match="is a symlink"):
        run_pipeline({"ravn": {"state_dir": str(link)}, "sources": [{"plugin": "test_source"}]}, duration=0.2)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o777)
    run_pipeline({"ravn": {"state_dir": str(loose)}, "sources": [{"plugin": "test_source"}],
                          "analyzers": [{"plugin": "test_analyzer"}]}, duration=0.3)
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(loose / "status.json").st_mode) == 0o600


def test_the_status_temp_file_is_never_followed_through_a_link(tmp_path: Path) -> None:
    """Defense in depth: even in RAVN's own directory, a link at the temp name is replaced, not written through."""
    from ravn_core.status import write_private_json

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (state / f"status.json.{os.getpid()}.tmp").symlink_to(victim)
    write_private_json(str(state / "status.json"), {"ok": 1})
    assert victim.read_text() == "keep\n"
    assert json.loads((state / "status.json").read_text()) == {"ok": 1}
    assert not (state / "status.json").is_symlink()
    assert stat.S_IMODE(os.stat(state / "status.json").st_mode) == 0o600


# ---------------------------------------------------------------------------------------------- output
def test_a_newline_in_a_path_does_not_forge_a_second_stdout_line(tmp_path: Path) -> None:
    """A file named 'x\\n<a benign-looking alert line>' must come out as one line, the newline shown escaped."""
    from ravn_core.builtin.sinks import StdoutConfig, StdoutSink

    forged = "2026-01-01T00:00:00.000 LOW     10 benign_rule pid=1 comm=cron [] all is well"
    alert = Alert("rules", "shadow_file_read", 90, f"cat read /tmp/x\n{forged}", pid=42, comm="c\rat\x1b[2K",
                  tags=["T1003.008"])
    sink = StdoutSink("stdout", StdoutConfig(), make_context())
    buf = io.StringIO()
    saved, sys.stdout = sys.stdout, buf
    try:
        sink.emit_alerts([alert])
    finally:
        sys.stdout = saved
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "shadow_file_read" in lines[0] and "/tmp/x\\n2026-01-01" in lines[0]
    assert "\x1b" not in lines[0] and "\r" not in lines[0] and "c\\rat\\x1b[2K" in lines[0]


def _status_with(comm: str, description: str) -> dict[str, Any]:
    now = time.time()
    return {"pid": os.getpid(), "host": "h", "role": "all", "started_at": now, "updated_at": now,
            "stopping": False, "level": "HIGH", "score": 90.0, "hosts": {}, "health": "ok", "degraded": [],
            "components": {"sink:x": {"state": "ok", "detail": "[bold]detail[/bold", "counters": {}, "restarts": 0,
                                      "quarantined": False, "last_error": "", "heartbeat": now}},
            "threads": {}, "latency_s": {}, "rss_bytes": 0, "anon_rss_bytes": 0,
            "stats": {"sources": {"[red]s": {"accepted": 1, "dropped": 0, "batches": 1, "kernel_drops": 0}},
                      "accepted": 1, "dropped": 0, "ingress_depth": 0, "sink_depth": 0, "transport_pending": 0,
                      "analyzed": 1, "alerts_emitted": 1},
            "recent_alerts": [{"ts": now, "level": "HIGH", "score": 90, "rule": "r[/]", "pid": 7, "comm": comm,
                               "description": description}],
            "incidents": [{"id": "[i]1", "level": "HIGH", "score": 90.0, "age_s": 3,
                           "root": {"pid": 7, "comm": comm, "exe": "/tmp/[/x]\nevil"},
                           "rules": ["[bold]r", "s[/]"], "corroboration": ["[/c]"]}]}


def test_ravn_top_shows_alert_text_as_text_not_markup(tmp_path: Path) -> None:
    """A process named '[/oops]' crashed `ravn top` (rich markup); '[link=...]' or a style would be acted on."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "status.json").write_text(json.dumps(_status_with("[/oops]", "opened [bold red]/etc/shadow[/] x\ny")))
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "top", "--once", "--interval", "0",
                          "--state-dir", str(state)], capture_output=True, text=True, timeout=60,
                         env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "[/oops]" in out.stdout and "[bold red]/etc/shadow[/]" in out.stdout, out.stdout
    assert "x\\ny" in out.stdout and "[red]s" in out.stdout and "r[/]" in out.stdout
    assert "[bold]detail[/bold" in out.stdout
    # the open incidents table: the root process's comm and exe, the rules, as they are
    incident = [ln for ln in out.stdout.splitlines() if "[i]1" in ln]
    assert len(incident) == 1, out.stdout
    assert "7 [/oops] (/tmp/[/x]\\nevil)" in incident[0] and "[bold]r > s[/] [+[/c]]" in incident[0], incident


def test_ravn_status_prints_one_line_per_alert(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "status.json").write_text(json.dumps(_status_with("ev\nil", "read /tmp/a\n  HIGH 99 forged")))
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", "status", "--state-dir", str(state)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    alert_lines = [ln for ln in out.stdout.splitlines() if "HIGH" in ln and "pid=" in ln]
    assert len(alert_lines) == 1 and "comm=ev\\nil" in alert_lines[0] and "/tmp/a\\n  HIGH 99" in alert_lines[0]


# ---------------------------------------------------------------------------------------------- ravn record
def _read(path: str) -> str:
    return Path(path).read_text()[:100]


def test_recorded_events_are_root_only(tmp_path: Path, shared: Path) -> None:
    """`ravn record -o /tmp/...` wrote 0644: every user could read the recorded argv, paths and addresses. Also a
    file nobody planted at the output path (theirs, readable by them) or a symlink there is refused."""
    from ravn_core.builtin.record import RecordConfig, RecordTransport
    from ravn_core.errors import RavnError

    require_root()
    out = shared / "events.jsonl"
    rec = RecordTransport("record", RecordConfig(path=str(out)), make_context("record"))
    rec.publish("h", [{"evt.type": "exec", "exec.argv": ["mysql", "-psecret"]}])
    rec.close()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and "secret" in out.read_text()
    with pytest.raises(PermissionError):
        as_nobody(_read, str(out))

    def plant(path: str, target: str) -> None:
        Path(path).write_text("")
        os.chmod(path, 0o666)
        os.symlink(target, path + ".link")

    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    planted = str(shared / "planted.jsonl")
    as_nobody(plant, planted, str(victim))
    with pytest.raises(RavnError, match=f"owned by uid {NOBODY}"):
        RecordTransport("record", RecordConfig(path=planted), make_context("record"))
    with pytest.raises(RavnError, match="cannot write"):  # the kernel's protected_symlinks may refuse it first
        RecordTransport("record", RecordConfig(path=planted + ".link"), make_context("record"))
    (tmp_path / "link").symlink_to(victim)  # where the kernel does not protect: RAVN's O_NOFOLLOW does
    with pytest.raises(RavnError, match="a symlink: refused"):
        RecordTransport("record", RecordConfig(path=str(tmp_path / "link")), make_context("record"))
    assert victim.read_text() == "keep\n" and Path(planted).read_text() == ""
