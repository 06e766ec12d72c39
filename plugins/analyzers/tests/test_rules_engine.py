"""analyzer_rules engine: every operator, lists, macros, exceptions, ancestry, sequences, thresholds, bounds,
validation errors with file:line, reload. Events are synthetic dicts shaped like ravn_core/events.py."""

from __future__ import annotations

import logging
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from ravn_analyzers.rules.engine import RulesAnalyzer, RulesConfig

from ravn_core.components import BatchContext
from ravn_core.config import parse_yaml, validate
from ravn_core.errors import ConfigError
from ravn_core.proctree import ProcessTree
from ravn_core.testing import make_context

T0 = 1_700_000_000 * 10**9  # ns


def ev(etype: str, pid: int = 100, comm: str = "bash", ts_s: float = 0.0, **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"evt.type": etype, "evt.ts": T0 + int(ts_s * 1e9), "proc.pid": pid, "proc.tid": pid,
                         "proc.ppid": fields.pop("ppid", 1), "proc.uid": 0, "proc.gid": 0, "proc.comm": comm}
    e.update({k.replace("__", "."): v for k, v in fields.items()})
    return e


def make(tmp_path: Path, text: str, **cfg: Any) -> RulesAnalyzer:
    f = tmp_path / "rules.yaml"
    f.write_text(textwrap.dedent(text))
    return RulesAnalyzer("analyzer_rules", RulesConfig(rule_files=[str(f)], **cfg), make_context("rules"))


def run(an: RulesAnalyzer, events: list[dict[str, Any]], tree: ProcessTree | None = None) -> list[Any]:
    tree = tree or ProcessTree()
    tree.update(events)
    return an.analyze(events, BatchContext("testhost", tree, time.time()))


def rule(cond: str, events: str = "[open]", extra: str = "") -> str:
    return f"""
    - rule: r
      description: "{{proc.comm}} hit"
      score: 60
      tags: [T1000]
      events: {events}
      condition: {cond}
    {extra}"""


# ---------------------------------------------------------------------------------------------- operators
@pytest.mark.parametrize(
    ("cond", "fields", "hit"),
    [
        ("file.path = /etc/shadow", {"file__path": "/etc/shadow"}, True),
        ("file.path = /etc/shadow", {"file__path": "/etc/passwd"}, False),
        ("file.path != /etc/shadow", {"file__path": "/etc/passwd"}, True),
        ("file.path != /etc/shadow", {}, False),  # a missing field compares false
        ("file.path in (/a, /b)", {"file__path": "/b"}, True),
        ("file.path in (/a, /b)", {"file__path": "/c"}, False),
        ("file.path startswith (/etc/, /usr/)", {"file__path": "/usr/bin/x"}, True),
        ("file.path startswith /etc/", {"file__path": "/tmp/etc/"}, False),
        ("file.path endswith .so", {"file__path": "/lib/x.so"}, True),
        ("file.path glob '/home/*/.ssh/id_*'", {"file__path": "/home/al/.ssh/id_rsa"}, True),
        ("file.path glob '/home/*/.ssh/id_*'", {"file__path": "/home/al/.ssh/known_hosts"}, False),
        ("file.path contains ssh", {"file__path": "/root/.ssh/x"}, True),
        ("file.path contains (aws, gcloud)", {"file__path": "/root/.config/gcloud/c"}, True),
        ("file.path icontains SSH", {"file__path": "/root/.ssh/x"}, True),
        ("file.path regex '^/proc/[0-9]+/mem$'", {"file__path": "/proc/12/mem"}, True),
        ("file.path regex '^/proc/[0-9]+/mem$'", {"file__path": "/proc/self/mem"}, False),
        ("file.flags > 2", {"file__flags": 3}, True),
        ("file.flags >= 3", {"file__flags": 3}, True),
        ("file.flags < 3", {"file__flags": 3}, False),
        ("file.flags <= 3", {"file__flags": 3}, True),
        ("file.flags < 3", {}, False),
        ("file.mode anybits 0o6000", {"file__mode": 0o4755}, True),
        ("file.mode anybits 0o6000", {"file__mode": 0o755}, False),
        ("file.mode allbits 0o6000", {"file__mode": 0o4755}, False),
        ("file.mode allbits 0o6000", {"file__mode": 0o6755}, True),
        ("file.ret in (0, -13)", {"file__ret": -13}, True),
        ("file.write = true", {"file__write": True}, True),
        ("file.write = true", {"file__write": False}, False),
        ("file.path exists", {"file__path": "/x"}, True),
        ("file.path exists", {}, False),
        ("file.name = shadow", {"file__path": "/etc/shadow"}, True),
        ("file.dir = /etc", {"file__path": "/etc/shadow"}, True),
        ("not file.path = /a", {"file__path": "/b"}, True),
        ("file.path = /a or file.path = /b", {"file__path": "/b"}, True),
        ("file.path = /a and file.flags = 1", {"file__path": "/a", "file__flags": 2}, False),
        ("(file.path = /a or file.path = /b) and not file.flags = 1", {"file__path": "/a", "file__flags": 2}, True),
        ("evt.type = open and proc.comm = bash", {}, True),
    ],
)
def test_operators(tmp_path: Path, cond: str, fields: dict[str, Any], hit: bool) -> None:
    an = make(tmp_path, rule(f"'{cond}'" if "'" not in cond else f'"{cond}"'))
    alerts = run(an, [ev("open", **fields)])
    assert bool(alerts) is hit


def test_list_field_operators(tmp_path: Path) -> None:
    an = make(tmp_path, """
    - rule: args
      description: "{exec.cmdline}"
      score: 50
      events: [exec]
      condition: exec.argv contains -e and exec.argv intersects (nc, ncat) and exec.argv startswith /bin
    """)
    assert run(an, [ev("exec", exec__filename="/bin/nc", exec__argv=["nc", "-e", "/bin/sh"], exec__ret=0)])
    assert not run(an, [ev("exec", exec__filename="/bin/nc", exec__argv=["nc", "-l"], exec__ret=0)])
    assert run(an, [ev("exec", exec__filename="/bin/nc", exec__argv=["nc", "-e", "/bin/sh"], exec__ret=0)])[0] \
        .description == "nc -e /bin/sh"


def test_alert_shape(tmp_path: Path) -> None:
    an = make(tmp_path, """
    - rule: shadow
      description: "{proc.comm} read {file.path} (parent {proc.pname})"
      score: 70
      tags: [T1003.008]
      events: [open]
      condition: file.path = /etc/shadow
    """)
    tree = ProcessTree()
    tree.update([ev("exec", pid=50, comm="sshd", exec__filename="/usr/sbin/sshd", exec__argv=["sshd"], exec__ret=0),
                 ev("exec", pid=100, ppid=50, comm="cat", exec__filename="/bin/cat", exec__argv=["cat"], exec__ret=0)])
    (a,) = run(an, [ev("open", pid=100, ppid=50, comm="cat", file__path="/etc/shadow")], tree)
    assert (a.analyzer, a.rule, a.score, a.pid, a.comm, a.tags) == ("analyzer_rules", "shadow", 70, 100, "cat",
                                                                    ["T1003.008"])
    assert a.description == "cat read /etc/shadow (parent sshd)"
    assert a.evidence["events"][0]["file.path"] == "/etc/shadow"
    assert a.evidence["process"]["exe"] == "/bin/cat"
    assert [p["pid"] for p in a.evidence["ancestry"]] == [100, 50]
    assert a.evidence["rule"]["name"] == "shadow" and a.evidence["rule"]["source"].endswith("rules.yaml:2")
    assert a.ts == pytest.approx(T0 / 1e9)
    assert a.host == "testhost"


def test_prefilter_by_event_type(tmp_path: Path) -> None:
    an = make(tmp_path, rule("proc.comm = bash", "[exec]"))
    assert not run(an, [ev("open", file__path="/x")])  # the rule is not even evaluated on open
    assert an.matched == 0
    assert "open" not in an._dispatch


# ---------------------------------------------------------------------------------------------- lists, macros
def test_lists_macros_and_overrides(tmp_path: Path) -> None:
    text = """
    - list: shells
      items: [bash, sh]
    - list: shells
      items: [zsh]
      append: true
    - list: all_shells
      items: [shells, fish]
    - macro: shell_exec
      condition: exec.name in (all_shells)
    - macro: interactive
      condition: shell_exec and exec.argv contains -i
    - rule: r
      description: x
      score: 10
      events: [exec]
      condition: interactive
    """
    an = make(tmp_path, text)
    hit = ev("exec", exec__filename="/bin/zsh", exec__argv=["zsh", "-i"])
    assert run(an, [hit])
    assert run(an, [ev("exec", exec__filename="/usr/bin/fish", exec__argv=["fish", "-i"])])
    assert not run(an, [ev("exec", exec__filename="/bin/zsh", exec__argv=["zsh"])])
    assert an.ruleset.lists["all_shells"] == ["bash", "sh", "zsh", "fish"]
    # config overrides replace a list and a macro
    an2 = make(tmp_path, text, lists={"all_shells": ["ksh"]})
    assert not run(an2, [hit])
    an3 = make(tmp_path, text, macros={"interactive": "shell_exec"})
    assert run(an3, [ev("exec", exec__filename="/bin/zsh", exec__argv=["zsh"])])


def test_exceptions_and_config_exceptions(tmp_path: Path) -> None:
    text = rule("file.path startswith /etc/", extra="""  exceptions:
        - {name: pkg, condition: 'proc.comm in (dpkg, apt)'}
    """)
    an = make(tmp_path, text)
    assert run(an, [ev("open", comm="vi", file__path="/etc/hosts")])
    assert not run(an, [ev("open", comm="dpkg", file__path="/etc/hosts")])
    an2 = make(tmp_path, text, exceptions={"r": ["proc.comm = vi"]})
    assert not run(an2, [ev("open", comm="vi", file__path="/etc/hosts")])
    assert run(an2, [ev("open", comm="nano", file__path="/etc/hosts")])


def test_exceptions_apply_when_the_condition_is_only_the_event_type(tmp_path: Path) -> None:
    # for open events the condition folds to true; its exceptions must still be tested
    text = rule("evt.type = open", extra="""  exceptions:
        - {name: pkg, condition: 'proc.comm = dpkg'}
    """)
    an = make(tmp_path, text, exceptions={"r": ["proc.comm = vi"]})
    assert run(an, [ev("open", comm="cat", file__path="/etc/hosts")])
    assert not run(an, [ev("open", comm="dpkg", file__path="/etc/hosts")])
    assert not run(an, [ev("open", comm="vi", file__path="/etc/hosts")])


def test_disabled_and_score_override(tmp_path: Path) -> None:
    text = rule("file.path = /x") + """
    - rule: disabled_one
      description: x
      score: 10
      events: [open]
      condition: file.path = /x
      enabled: false
    """
    an = make(tmp_path, text, score_overrides={"r": 95})
    (a,) = run(an, [ev("open", file__path="/x")])
    assert a.score == 95
    assert not run(make(tmp_path, text, disabled_rules=["r"]), [ev("open", file__path="/x")])


# ---------------------------------------------------------------------------------------------- ancestry
def test_ancestry_fields(tmp_path: Path) -> None:
    an = make(tmp_path, """
    - rule: web_shell
      description: "{proc.comm} under {proc.pname} ({proc.pexe}); ancestors {proc.anames}"
      score: 85
      events: [exec]
      condition: >
        exec.name in (sh, bash) and proc.anames intersects (nginx, httpd)
        and not proc.aexes startswith /usr/lib/systemd/
    - rule: parent_exe
      description: x
      score: 10
      events: [exec]
      condition: proc.pexe = /usr/bin/python3 and proc.exe = /bin/sh and proc.cmdline contains "-c id"
    """)
    tree = ProcessTree()
    tree.update([
        ev("exec", pid=10, comm="nginx", exec__filename="/usr/sbin/nginx", exec__argv=["nginx"]),
        ev("exec", pid=20, ppid=10, comm="python3", exec__filename="/usr/bin/python3", exec__argv=["python3"]),
    ])
    alerts = run(an, [ev("exec", pid=30, ppid=20, comm="sh", exec__filename="/bin/sh", exec__argv=["sh", "-c", "id"])],
                 tree)
    assert sorted(a.rule for a in alerts) == ["parent_exe", "web_shell"]
    web = next(a for a in alerts if a.rule == "web_shell")
    assert web.description == "sh under python3 (/usr/bin/python3); ancestors python3 nginx"
    # not under nginx: no alert
    tree2 = ProcessTree()
    tree2.update([ev("exec", pid=20, comm="cron", exec__filename="/usr/sbin/cron", exec__argv=["cron"])])
    assert [a.rule for a in run(an, [ev("exec", pid=31, ppid=20, comm="sh", exec__filename="/bin/sh",
                                        exec__argv=["sh"])], tree2)] == []


def test_tree_fields_are_resolved_lazily(tmp_path: Path) -> None:
    an = make(tmp_path, rule("file.path = /x and proc.pname = bash"))
    tree = ProcessTree()
    before = tree.misses
    run(an, [ev("open", pid=5, ppid=999, file__path="/y")] * 50, tree)
    assert tree.misses == before  # file.path fails first: the tree is never consulted


# ---------------------------------------------------------------------------------------------- sequences
SEQ = """
- rule: revshell
  description: "{proc.comm} connected to {net.daddr}:{net.dport} and ran {exec.filename}"
  score: 95
  tags: [T1059.004]
  sequence:
    window: 5
    inherit: true
    steps:
      - events: [connect]
        condition: net.ret in (0, -115)
      - events: [dup]
        condition: dup.newfd in (0, 1)
        join: {dup.oldfd: net.fd}
      - events: [exec]
        condition: exec.name in (bash, sh)
"""


def _revshell(pid: int = 100, t: float = 0.0, fd: int = 3, child: int | None = None) -> list[dict[str, Any]]:
    return [
        ev("connect", pid=pid, ts_s=t, net__daddr="127.0.0.1", net__dport=4444, net__fd=3, net__ret=0),
        ev("dup", pid=pid, ts_s=t + 0.1, dup__oldfd=fd, dup__newfd=0, dup__ret=0),
        ev("exec", pid=child or pid, ppid=pid if child else 1, ts_s=t + 0.2, exec__filename="/bin/bash",
           exec__argv=["bash", "-i"], exec__ret=0),
    ]


def test_sequence_fires_with_all_steps(tmp_path: Path) -> None:
    an = make(tmp_path, SEQ)
    (a,) = run(an, _revshell())
    assert a.description == "bash connected to 127.0.0.1:4444 and ran /bin/bash"
    assert [e["evt.type"] for e in a.evidence["events"]] == ["connect", "dup", "exec"]
    assert an.state_keys() == 0  # state released after firing


def test_sequence_across_batches_and_in_child(tmp_path: Path) -> None:
    an = make(tmp_path, SEQ)
    steps = _revshell(child=200)
    assert not run(an, steps[:1])
    assert not run(an, steps[1:2])
    assert run(an, steps[2:])  # the exec happens in a child (inherit: true)


def test_sequence_needs_order_join_and_window(tmp_path: Path) -> None:
    an = make(tmp_path, SEQ)
    s = _revshell()
    assert not run(an, [s[1], s[0], s[2]])  # wrong order
    an = make(tmp_path, SEQ)
    assert not run(an, _revshell(fd=7))  # dup of another fd than the socket
    an = make(tmp_path, SEQ)
    s = _revshell()
    s[2]["evt.ts"] += 10 * 10**9  # exec 10 s later: outside the 5 s window
    assert not run(an, s)
    # other processes do not advance this process's sequence
    an = make(tmp_path, SEQ)
    s = _revshell()
    s[1]["proc.pid"] = 555
    assert not run(an, s)


SEQ_UNLESS = SEQ + """    unless:
      events: [close]
      condition: net.sport > 0
      join: {net.sport: net.sport, net.daddr: net.daddr, net.dport: net.dport}
"""


def _conn(etype: str, pid: int, t: float, sport: int = 40000, **kw: Any) -> dict[str, Any]:
    return ev(etype, pid=pid, ts_s=t, net__family="ipv4", net__proto="tcp", net__saddr="127.0.0.1",
              net__sport=sport, net__daddr="127.0.0.1", net__dport=4444, **kw)


def test_sequence_unless_ends_it(tmp_path: Path) -> None:
    """unless: a request made and closed, then a child started with its stdout on the fd number the socket had
    (now /dev/null or a pipe), is not a reverse shell; a close of another connection changes nothing."""
    connect = _conn("connect", 100, 0.0, net__fd=3, net__ret=0)
    later = [ev("dup", pid=200, ppid=100, ts_s=1.0, dup__oldfd=3, dup__newfd=1, dup__ret=0),
             ev("exec", pid=200, ppid=100, ts_s=1.1, exec__filename="/bin/sh", exec__argv=["sh", "-c", "x"],
                exec__ret=0)]
    an = make(tmp_path, SEQ_UNLESS)
    assert not run(an, [connect, _conn("close", 100, 0.5), *later])
    assert an.state_keys() == 0
    an = make(tmp_path, SEQ_UNLESS)
    assert run(an, [connect, _conn("close", 100, 0.5, sport=40001), *later])  # another connection closed
    an = make(tmp_path, SEQ_UNLESS)
    assert run(an, [connect, _conn("close", 300, 0.5), *later])  # another process's close
    an = make(tmp_path, SEQ)
    assert run(an, [connect, _conn("close", 100, 0.5), *later])  # without unless: the closed socket's fd "matches"
    bad = SEQ + "    unless: {events: [close], condition: net.sport > 0, join: {net.sport: exec.filename}}\n"
    with pytest.raises(ConfigError, match=r"must be a field of unless.s events and exec\.filename of the first"):
        make(tmp_path, bad)


# ---------------------------------------------------------------------------------------------- thresholds
THR = """
- rule: portscan
  description: "{proc.comm} connected to many ports of {net.daddr}"
  score: 70
  tags: [T1046]
  events: [connect]
  condition: net.daddr exists
  threshold: {by: proc.pid, distinct: net.dport, count: 10, window: 2}
"""


def test_threshold_distinct_values(tmp_path: Path) -> None:
    an = make(tmp_path, THR)
    same_port = [ev("connect", ts_s=i * 0.01, net__daddr="127.0.0.1", net__dport=80) for i in range(50)]
    assert not run(an, same_port)  # many connects, one port
    ports = [ev("connect", ts_s=i * 0.01, net__daddr="127.0.0.1", net__dport=1000 + i) for i in range(10)]
    (a,) = run(an, ports)
    assert a.evidence["distinct"]["count"] == 10
    assert len(a.evidence["events"]) == 10
    assert not run(an, ports[:5])  # starts over after firing


def test_threshold_window_and_keys(tmp_path: Path) -> None:
    an = make(tmp_path, THR)
    slow = [ev("connect", ts_s=i * 0.5, net__daddr="10.0.0.1", net__dport=1000 + i) for i in range(20)]
    assert not run(an, slow)  # 20 ports but only ~4 within any 2 s window
    spread = [ev("connect", pid=100 + i, ts_s=i * 0.01, net__daddr="10.0.0.1", net__dport=1000 + i) for i in range(20)]
    assert not run(an, spread)  # one port each from 20 processes


def test_state_is_bounded_and_expires(tmp_path: Path) -> None:
    an = make(tmp_path, THR, max_state_keys=100)
    churn = [ev("connect", pid=10_000 + i, ts_s=i * 0.001, net__daddr="10.0.0.1", net__dport=80) for i in range(5000)]
    run(an, churn)
    assert an.state_keys() == 100
    assert an.health().counters["state_evictions"] == 4900
    an._clock = T0 / 1e9 + 100  # event time moves on; tick expires idle state
    an.tick(BatchContext("testhost", ProcessTree(), time.time()))
    assert an.state_keys() == 0
    seq = make(tmp_path, SEQ, max_state_keys=64)
    run(seq, [ev("connect", pid=20_000 + i, net__daddr="1.2.3.4", net__dport=1, net__fd=3, net__ret=0)
              for i in range(1000)])
    assert seq.state_keys() == 64


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (rule("file.pth = /x"), "rules.yaml:7: rule 'r': condition: unknown field 'file.pth'; did you mean file.path?"),
        (rule("file.path = /x and"), "rules.yaml:7: rule 'r': condition: expected a field"),
        (rule("net.dport = 22"), "rules.yaml:7: rule 'r': condition: field net.dport is not carried"),
        (rule("file.flags = abc"), "'abc' is not an integer"),
        (rule("file.path < 3"), "operator '<' does not apply to file.path"),
        (rule("nosuchmacro"), "unknown macro 'nosuchmacro'"),
        (rule("file.path regex '('"), "regex"),
        (rule("file.path = /x", "[opn]"), "rules.yaml:6: rule 'r': unknown event type 'opn'"),
        ("\n- rule: r\n  score: 200\n  description: x\n  events: [open]\n  condition: file.path = /x\n",
         "rules.yaml:3: rule 'r': score: Input should be less than or equal to 100"),
        ("\n- rule: r\n  score: 20\n  description: x\n  events: [open]\n  condition: file.path = /x\n  bogus: 1\n",
         "rules.yaml:7: rule 'r': bogus: unknown key"),
        ("\n- rule: r\n  score: 20\n  description: '{file.nope}'\n  events: [open]\n  condition: file.path = /x\n",
         "rules.yaml:4: rule 'r': description: {file.nope} is not a field"),
        ("- rule: r\n  score: [\n", "rules.yaml:3: malformed YAML"),
        ("- macro: m\n  condition: m and file.path = /x\n", "macro 'm' refers to itself"),
        ("- {foo: 1}\n", "rules.yaml:1: item 0: needs exactly one of"),
    ],
)
def test_validation_errors_name_file_line_and_rule(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(tmp_path, text)
    assert needle in str(err.value), str(err.value)


def test_config_names_unknown_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rule 'nope' named in the analyzer_rules config does not exist"):
        make(tmp_path, rule("file.path = /x"), disabled_rules=["nope"])


def test_reload_keeps_old_set_on_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    an = make(tmp_path, rule("file.path = /x"))
    f = tmp_path / "rules.yaml"
    f.write_text(textwrap.dedent(rule("file.path = /y")))
    an.reload()
    assert not run(an, [ev("open", file__path="/x")])
    assert run(an, [ev("open", file__path="/y")])
    f.write_text(textwrap.dedent(rule("file.path = = /z")))
    with caplog.at_level(logging.ERROR):
        an.reload()
    assert "rules reload failed, keeping the 1 loaded rules" in caplog.text
    assert "rules.yaml:7" in caplog.text
    assert run(an, [ev("open", file__path="/y")])  # old set still active
    assert an.health().counters["reload_errors"] == 1


def test_plugin_is_discovered_and_configured_from_yaml(ravn_host: Any, tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(textwrap.dedent(rule("file.path = /x")))
    data, lines = parse_yaml(f"analyzers:\n  - plugin: analyzer_rules\n    rule_files: [{f}]\n"
                             "    score_overrides: {r: 81}\n", "ravn.yaml")
    cfg = validate(data, ravn_host.registries(), "ravn.yaml", lines)
    spec = cfg.analyzers[0]
    assert spec.registration.distribution.startswith("ravn-analyzers")
    an = spec.registration.factory(spec.name, spec.config, make_context())
    assert run(an, [ev("open", file__path="/x")])[0].score == 81
    bad, bad_lines = parse_yaml("analyzers:\n  - plugin: analyzer_rules\n    rule_filez: []\n", "ravn.yaml")
    with pytest.raises(ConfigError, match=r"ravn.yaml:3: analyzers\[0\].rule_filez \(analyzer_rules\): unknown key"):
        validate(bad, ravn_host.registries(), "ravn.yaml", bad_lines)
