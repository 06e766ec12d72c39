"""Hostile input meets the rule engine: event text built to make a rule's regex backtrack, and rule files built
to exhaust the loader (docs/SECURITY.md). Each test passes only when the attack fails."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from ravn_analyzers.rules.engine import RulesAnalyzer, RulesConfig
from ravn_analyzers.rules.linear_re import LinearRegex, RegexError

from ravn_core.components import BatchContext
from ravn_core.errors import ConfigError
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context

T0 = 1_700_000_000 * 10**9


def make(tmp_path: Path, text: str) -> RulesAnalyzer:
    f = tmp_path / "rules.yaml"
    f.write_text(textwrap.dedent(text))
    return RulesAnalyzer("analyzer_rules", RulesConfig(rule_files=[str(f)]), make_context("rules"))


def open_event(path: str, pid: int = 100) -> dict[str, Any]:
    return {"evt.type": "open", "evt.ts": T0, "proc.pid": pid, "proc.tid": pid, "proc.ppid": 1, "proc.uid": 1000,
            "proc.gid": 1000, "proc.comm": "cat", "file.path": path, "file.flags": 0, "file.ret": 3}


def rule(cond: str) -> str:
    return f"""
    - rule: r
      description: "{{proc.comm}} opened {{file.path}}"
      score: 60
      tags: [T1000]
      events: [open]
      condition: {cond}
    """


def test_a_backtracking_regex_does_not_stall_analysis(tmp_path: Path) -> None:
    """Python's re takes 2^n steps for '^(a+)+$' on n a's and a b (0.2 s at n=22, doubling with each a: minutes
    at n=32); a user who names files so stalls the analysis thread. The lengths here keep the old engine's time
    bounded (about 6 s: the test fails rather than hangs); with RE2 the batch takes microseconds, and a path of
    5,000 a's is no slower. Matching stays right."""
    an = make(tmp_path, rule("file.path regex '^/tmp/(a+)+$'"))
    batch = [open_event("/tmp/" + "a" * n + "b", pid=100 + n) for n in (24, 25, 26)] + [open_event("/tmp/aaaa", pid=99)]
    tree = ProcessTree()
    tree.update(batch)
    t0 = time.perf_counter()
    alerts = an.analyze(batch, BatchContext("h", tree, time.time()))
    took = time.perf_counter() - t0
    assert [a.pid for a in alerts] == [99]
    assert took < 1.0, f"{took:.2f}s for 4 events"
    long = [open_event("/tmp/" + "a" * 5000 + "b", pid=7)]
    tree.update(long)
    t0 = time.perf_counter()
    assert an.analyze(long, BatchContext("h", tree, time.time())) == []
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(a)\1", "invalid escape sequence"),  # a backreference
    ("^(?=.*shadow)", "invalid perl operator"),  # lookahead
    ("(?<!x)y", "invalid perl operator"),  # lookbehind
])
def test_a_regex_re2_cannot_run_in_linear_time_is_rejected_at_load(tmp_path: Path, pattern: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(tmp_path, rule(f"file.path regex '{pattern}'"))
    msg = str(err.value)
    assert "rules.yaml:" in msg and "rule 'r'" in msg and why in msg and "RE2" in msg, msg


def test_linear_regex_matches_like_a_search() -> None:
    rx = LinearRegex(r"^/proc/[0-9]+/(mem|maps)$")
    assert rx.search("/proc/12/mem") and rx.search("/proc/1/maps")
    assert rx.search("/proc/self/mem") is None and rx.search("") is None
    assert LinearRegex("(?i)SHADOW").search("/etc/shadow")
    assert LinearRegex("é+").search("café")  # UTF-8 text, not bytes
    with pytest.raises(RegexError, match="missing \\)"):
        LinearRegex("(")


PATTERNS = [r"^/proc/[0-9]+/(mem|maps)$", r"(?i)(curl|wget)\s+.*\|\s*(ba)?sh", r"^/(tmp|dev/shm|var/tmp)/",
            r"\.(so|ko)(\.\d+)*$", r"é+", r"^$", r"(^|/)\.[^/]+$", r"x*"]
TEXTS = ["", "/proc/12/mem", "/proc/self/maps", "curl -s http://x | bash", "WGET x|sh", "/tmp/a", "/dev/shmx",
         "/lib/libc.so.6", "/lib/x.ko", "café", "/home/a/.hidden", "a\nb", "/tmp/" + "a" * 300]


def test_the_fast_matcher_answers_like_the_public_api() -> None:
    """RE2's matcher is called through a private attribute (linear_re's docstring says why); the public
    ``search`` is the reference, and the fallback used when that attribute is gone gives the same answers."""
    import re2
    from ravn_analyzers.rules import linear_re

    assert linear_re.FAST_PATH  # the installed google-re2 has it: a release that drops it shows up here
    for pattern in PATTERNS:
        fast, public = LinearRegex(pattern, fast=True), LinearRegex(pattern, fast=False)
        for text in TEXTS:
            want = re2.search(pattern, text) is not None
            assert (fast.search(text) is not None) == (public.search(text) is not None) == want, (pattern, text)


def test_remembered_answers_are_the_matcher_s_and_the_memo_stays_bounded() -> None:
    """A text seen before is answered from the memo (no RE2 call): the same answer, twice over every text; the memo
    never holds more than MEMO_SIZE texts, nor one longer than MEMO_MAX_CHARS."""
    import re2
    from ravn_analyzers.rules import linear_re

    for pattern in PATTERNS:
        rx = LinearRegex(pattern)
        for text in [*TEXTS, *TEXTS]:
            assert (rx.search(text) is not None) == (re2.search(pattern, text) is not None), (pattern, text)
    rx = LinearRegex("^/tmp/")
    many = [f"/tmp/{i}" for i in range(3 * linear_re.MEMO_SIZE)] + ["/tmp/" + "x" * linear_re.MEMO_MAX_CHARS]
    for text in many:
        assert rx.search(text)
        assert len(rx._memo) <= linear_re.MEMO_SIZE
        assert all(len(t) <= linear_re.MEMO_MAX_CHARS for t in rx._memo)
    assert many[-2] in rx._memo and many[-1] not in rx._memo


def test_a_lone_surrogate_in_event_text_neither_raises_nor_hides_a_match(tmp_path: Path) -> None:
    """JSON from Redis or a replay file can carry a lone surrogate ("\\udcff"); RE2's public search raises
    UnicodeEncodeError on it, which would cost the rules analyzer an error per event."""
    an = make(tmp_path, rule("file.path regex 'shadow$'"))
    batch = [open_event("/etc/\udcff/shadow", pid=5), open_event("/etc/\udcffx", pid=6)]
    tree = ProcessTree()
    tree.update(batch)
    assert [a.pid for a in an.analyze(batch, BatchContext("h", tree, time.time()))] == [5]
    assert LinearRegex("shadow$", fast=False).search("/etc/\udcff/shadow")


def test_an_alias_bomb_in_a_rule_file_is_refused_fast(tmp_path: Path) -> None:
    """A rule file of a few hundred bytes whose list items expand to 9^9 strings (the rules loader used
    yaml.safe_load: minutes and gigabytes)."""
    levels = ['- list: l0\n  items: &l0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        levels.append(f"- list: l{i}\n  items: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"rules.yaml:\d+: over \d+ YAML nodes .*alias bomb"):
        make(tmp_path, "\n".join(levels) + "\n")
    assert time.perf_counter() - t0 < 5


def test_a_recursive_alias_in_a_rule_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"rules.yaml:2: .*a YAML alias that contains itself"):
        make(tmp_path, "- list: l\n  items: &x [a, *x]\n")


@pytest.mark.parametrize(("rules", "error"), [
    ("\n".join(['- list: l0\n  items: &l0 ["x","x","x","x","x","x","x","x","x"]'] +
               [f"- list: l{i}\n  items: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n",
     "hostile.yaml:2: over 200000 YAML nodes once aliases are expanded (an alias bomb?)"),
    ("- list: l\n  items: &a [*a]\n", "hostile.yaml:2: [0].items[0]: a YAML alias that contains itself"),
    ("- rule: r\n  description: x\n  score: 60\n  score: 70\n", "hostile.yaml:4: [0].score: duplicate key"),
    (rule("file.path regex '(a)\\1'"), "hostile.yaml:7: rule 'r': condition: file.path regex: invalid escape"),
])
@pytest.mark.parametrize("command", [["rules", "list", "--config"], ["config", "check"]])
def test_hostile_rule_files_a_config_names_fail_fast_with_file_and_line(tmp_path: Path, rules: str,
                                                                       error: str, command: list[str]) -> None:
    """Through the real CLI, as the daemon loads them: `ravn rules list --config` and `ravn config check` (which
    builds the analyzers) exit 2 within seconds, with one line naming the rule file and line."""
    import subprocess
    import sys

    (tmp_path / "hostile.yaml").write_text(textwrap.dedent(rules))
    cfg = tmp_path / "ravn.yaml"
    cfg.write_text("analyzers:\n  - plugin: analyzer_rules\n    rule_files: [default, hostile.yaml]\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ravn_core.cli", *command, str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].removeprefix("ravn: error: ").startswith(f"{tmp_path}/{error}"), lines
    assert time.monotonic() - t0 < 30  # the interpreter and plugin start are most of it
