"""The condition language's syntax tree (rules/lang.py): what the parser builds, how the compiler simplifies it, and
the fields collected by walking it (through macros, negations, nested and/or, and list operators)."""

from __future__ import annotations

import dataclasses

import pytest
from ravn_analyzers.rules.lang import (
    FALSE,
    TRUE,
    And,
    Cmp,
    Compiler,
    ConditionError,
    Const,
    Env,
    MacroRef,
    Not,
    Or,
    Parts,
    Resolvers,
    Value,
    any_of,
    comparisons,
    parse,
)
from ravn_analyzers.rules.linear_re import LinearRegex

ENV = Env(
    lists={"shells": ["bash", "sh"], "more_shells": ["zsh"], "nothing": []},
    macros={
        "is_write": "file.write = true",
        "shell_parent": "proc.pname in (shells) or proc.anames intersects (shells)",
        "nested": "not shell_parent and exec.argv contains -c",
        "loop_a": "loop_b",
        "loop_b": "proc.uid = 0 and loop_a",
    },
)


def compiler() -> Compiler:
    return Compiler(ENV, Resolvers())


# ---------------------------------------------------------------------------------------------- parse -> nodes
def test_parse_builds_one_typed_node_per_construct() -> None:
    text = "evt.type = open and not (file.path startswith /etc/ or file.name in (a, 'b c')) or proc.comm exists"
    col = text.index
    assert parse(text, ENV) == Or((
        And((
            Cmp("evt.type", "=", (Value("open", col("open"), False),), 0),
            Not(Or((
                Cmp("file.path", "startswith", (Value("/etc/", col("/etc/"), False),), col("file.path")),
                Cmp("file.name", "in", (Value("a", col("a,"), False), Value("b c", col("b c"), True)),
                    col("file.name"), is_list=True),
            ))),
        )),
        Cmp("proc.comm", "exists", (), col("proc.comm")),
    ))
    assert (col("/etc/"), col("b c")) == (46, 73)  # columns count from 0, a quoted value's from inside the quote


def test_and_binds_tighter_than_or_and_not_applies_to_one_operand() -> None:
    node = parse("not proc.uid = 0 and proc.gid = 0 or proc.pid = 1", ENV)
    match node:
        case Or((And((Not(Cmp("proc.uid")), Cmp("proc.gid"))), Cmp("proc.pid"))):
            pass
        case _:
            pytest.fail(f"unexpected tree {node!r}")


def test_list_names_expand_to_values_at_the_names_column() -> None:
    assert parse("proc.comm in shells", ENV) == Cmp(
        "proc.comm", "in", (Value("bash", 13, True), Value("sh", 13, True)), 0, is_list=True)
    # inside a literal list, a list name expands in place
    assert parse("proc.comm in (shells, dash, more_shells)", ENV) == Cmp(
        "proc.comm", "in",
        (Value("bash", 14, True), Value("sh", 14, True), Value("dash", 22, False), Value("zsh", 28, True)),
        0, is_list=True)


def test_a_macro_name_is_a_reference_not_its_expansion() -> None:
    assert parse("is_write and not shell_parent", ENV) == And((
        MacroRef("is_write", 0), Not(MacroRef("shell_parent", 17))))


def test_nodes_are_frozen_hashable_values() -> None:
    a, b = parse("file.path glob '/tmp/*' and file.write = true", ENV), parse(
        "file.path glob '/tmp/*' and file.write = true", ENV)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert isinstance(a, And)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.items = ()  # type: ignore[misc]


def test_empty_list_membership_matches_nothing_other_comparisons_do_not() -> None:
    assert parse("proc.comm in (nothing)", ENV) == Cmp("proc.comm", "in", (), 0, is_list=True)
    c = parse("proc.comm in (nothing)", ENV)
    assert isinstance(c, Cmp) and c.matches_nothing
    e = parse("proc.comm exists", ENV)
    assert isinstance(e, Cmp) and not e.matches_nothing
    f = parse("proc.anames intersects (nothing)", ENV)
    assert isinstance(f, Cmp) and f.matches_nothing


# ---------------------------------------------------------------------------------------------- field collection
def test_fields_are_collected_from_nested_negated_and_list_operators() -> None:
    text = ("evt.type in (open, exec) and not (file.path startswith (/etc/, /usr/) and not (exec.argv contains -c "
            "or proc.anames intersects (shells))) and (file.name glob '*.sh' or not not exec.name in (a, b))")
    assert compiler().fields(parse(text, ENV)) == {
        "evt.type", "file.path", "exec.argv", "proc.anames", "file.name", "exec.name"}


def test_fields_are_collected_through_macros_and_macros_inside_macros() -> None:
    c = compiler()
    assert c.fields(parse("is_write and not nested", ENV)) == {"file.write", "proc.pname", "proc.anames", "exec.argv"}
    # without expanding, a macro contributes nothing; with it, its comparisons come in order, left to right
    node = parse("proc.uid = 0 and nested", ENV)
    assert [x.field for x in comparisons(node)] == ["proc.uid"]
    assert [x.field for x in comparisons(node, lambda m: c.macro(m, ()))] == [
        "proc.uid", "proc.pname", "proc.anames", "exec.argv"]


def test_an_empty_list_membership_reads_no_field() -> None:
    assert compiler().fields(parse("proc.comm in (nothing) or proc.uid = 0", ENV)) == {"proc.uid"}


def test_field_collection_reports_a_macro_cycle() -> None:
    with pytest.raises(ConditionError, match="macro 'loop_a' refers to itself through loop_a -> loop_b"):
        compiler().fields(parse("loop_a", ENV))


# ---------------------------------------------------------------------------------------------- simplify, parts
def test_simplify_inlines_macros_folds_evt_type_and_flattens() -> None:
    c = compiler()
    text = "evt.type = open and (is_write and file.path startswith /etc/) or evt.type = exec"
    node = parse(text, ENV)
    assert c.simplify(node, "exec") == TRUE
    assert c.simplify(node, "open") == And((
        Cmp("file.write", "=", (Value("true", 13, False),), 0),  # from the macro's text
        Cmp("file.path", "startswith", (Value("/etc/", text.index("/etc/"), False),), text.index("file.path")),
    ))
    assert c.simplify(parse("evt.type != open and proc.uid = 0", ENV), "open") == FALSE
    assert c.simplify(parse("not evt.type in (open, exec)", ENV), "unlink") == TRUE
    # without an event type, evt.type stays a comparison
    assert isinstance(c.simplify(parse("evt.type = open", ENV), None), Cmp)


def test_rule_parts_splits_conjuncts_and_ors_the_exceptions() -> None:
    c = compiler()
    text = "evt.type = open and is_write and not proc.uid = 0"
    parts = c.rule_parts(text, ["proc.comm = a", "is_write"], etype="open")
    assert parts == Parts(
        (Cmp("file.write", "=", (Value("true", 13, False),), 0),
         Not(Cmp("proc.uid", "=", (Value("0", len(text) - 1, False),), text.index("proc.uid")))),
        Or((Cmp("proc.comm", "=", (Value("a", 12, False),), 0),
            Cmp("file.write", "=", (Value("true", 13, False),), 0))),
    )
    assert parts.tree() == And((And(parts.conjuncts), Not(parts.exceptions)))  # type: ignore[arg-type]
    # an exception that always holds for this type, or a conjunct over an empty list: the rule never matches
    assert c.rule_parts("proc.uid = 0", ["evt.type = open"], etype="open") == Parts((FALSE,))
    assert c.rule_parts("proc.uid = 0 and proc.comm in (nothing)", []) == Parts((FALSE,))
    assert c.rule_parts("evt.type = exec", [], etype="open") == Parts((FALSE,))
    assert c.rule_parts("evt.type = open", [], etype="open") == Parts((TRUE,))
    # a condition that always holds for this type keeps its exceptions
    assert c.rule_parts("evt.type = open", ["proc.comm = a"], etype="open") == Parts(
        (TRUE,), Cmp("proc.comm", "=", (Value("a", 12, False),), 0))


def test_rule_parts_checks_fields_against_the_event_types() -> None:
    with pytest.raises(ConditionError, match=r"field net\.dport is not carried"):
        compiler().rule_parts("proc.uid = 0", ["net.dport = 22"], {"proc.uid", "proc.comm"})


def test_any_of_is_an_or_of_whole_parts() -> None:
    a, b = Parts((TRUE,)), Parts((Cmp("proc.uid", "=", (Value("0", 11, False),), 0),), Const(False))
    assert any_of([a]) is a
    assert any_of([a, b]) == Parts((Or((TRUE, And((b.conjuncts[0], Not(Const(False)))))),))


# ---------------------------------------------------------------------------------------------- generated code
def test_dispatch_fetches_fields_read_twice_once_and_computes_derived_fields_once() -> None:
    c = compiler()
    parts = [
        c.rule_parts("file.path startswith /etc/ and file.name = passwd", [], etype="open"),
        c.rule_parts("file.path endswith .so and not file.name in (nothing)", ["proc.comm = ld"], etype="open"),
        c.rule_parts("proc.uid = 0 and proc.comm in (nothing)", [], etype="open"),
    ]
    fn = c.make_dispatch(parts, "dispatch_t")
    src = c.dispatch_sources["dispatch_t"]
    assert "    _f0 = _get('file.path')" in src  # read by two rules: one local
    assert "_get('proc.comm')" in src and "_f1" not in src  # read once (the empty-list test reads nothing)
    assert "proc.uid" not in src  # a rule over an empty list is left out
    assert "(_d0 if _d0 is not _U else (_d0 := _D_file_name(ev)))" in src
    base = {"evt.type": "open", "proc.uid": 0, "proc.comm": "x"}
    assert fn({**base, "file.path": "/etc/passwd"}) == [0]
    assert fn({**base, "file.path": "/lib/x.so"}) == [1]
    assert fn({**base, "file.path": "/lib/x.so", "proc.comm": "ld"}) == []
    assert fn({**base, "file.path": "/etc/passwd.so"}) == [1]


@pytest.mark.parametrize(("pattern", "absent"), [("^/tmp/", False), ("^$", True), ("x*", True), ("(^|:)/", False)])
def test_regex_on_a_missing_or_empty_field_is_answered_without_re2(pattern: str, absent: bool) -> None:
    """A missing or empty field gives the pattern's answer on '' (known when the rule compiles), and no RE2 call."""
    c = compiler()
    parts = [c.rule_parts(f"exec.ld_preload regex '{pattern}'", [], etype="exec")]
    fn = c.make_dispatch(parts, "dispatch_t")
    pred = c.make_parts(parts[0])
    name, rx = next((k, v) for k, v in c.ns.items() if isinstance(v, LinearRegex))
    calls: list[str] = []

    class Counting:  # the generated code reads its constants from c.ns when it runs
        def search(self, text: str) -> bool | None:
            calls.append(text)
            return rx.search(text)

    c.ns[name] = Counting()
    for ev in ({"evt.type": "exec"}, {"evt.type": "exec", "exec.ld_preload": None},
               {"evt.type": "exec", "exec.ld_preload": ""}):
        assert fn(ev) == ([0] if absent else [])
        assert bool(pred(ev)) is absent
    assert calls == []
    assert fn({"evt.type": "exec", "exec.ld_preload": "/tmp/x.so"}) == ([0] if pattern != "^$" else [])
    assert calls == ["/tmp/x.so"]


def test_blocks_starting_with_a_prefix_test_of_one_field_share_one_pretest() -> None:
    c = compiler()
    conds = ["file.path startswith /etc/ and proc.uid = 0", "file.path startswith (/root/, /home/)",
             "file.path startswith /etc/ and proc.comm = vi", "file.path in (/a, /b)", "file.path in (/c)",
             "file.path startswith /srv/", "proc.uid = 5"]
    parts = [c.rule_parts(t, [], etype="open") for t in conds]
    fn = c.make_dispatch(parts, "dispatch_t")
    src = c.dispatch_sources["dispatch_t"]
    pretest = ("    if (_f0 or '').startswith", "    if _f0 in")
    pretests = [line for line in src.splitlines() if line.startswith(pretest)]
    assert len(pretests) == 2, src  # startswith of the first two blocks, `in` of the next two; /srv/ stands alone
    reference = [c.make_parts(p) for p in parts]
    for path in ("/etc/x", "/root/.ssh", "/home/a", "/a", "/c", "/srv/x", "/var/x", "", None):
        for uid, comm in ((0, "vi"), (5, "sh")):
            ev = {"evt.type": "open", "file.path": path, "proc.uid": uid, "proc.comm": comm}
            assert fn(ev) == [i for i, pred in enumerate(reference) if pred(ev)], (path, uid, comm)


def test_a_computed_field_s_equality_and_or_blocks_share_the_pretest() -> None:
    """exec.name (computed: a string or None) = x joins a run of `in` tests, and so does an or of such tests;
    proc.comm (an event field: it may hold anything) = x does not."""
    c = compiler()
    conds = ["exec.name = sh and proc.uid = 0", "exec.name in (bash, zsh)", "exec.name = dash or exec.name in (ksh)",
             "(exec.name = ash and proc.uid = 5) or exec.name = fish", "proc.comm = sh", "proc.comm = bash",
             "exec.name = sh or proc.comm = sh"]
    parts = [c.rule_parts(t, [], etype="exec") for t in conds]
    fn = c.make_dispatch(parts, "dispatch_t")
    src = c.dispatch_sources["dispatch_t"]
    guard = next(line for line in src.splitlines() if line.startswith("    if (_d0 if _d0 is not _U"))
    assert c.ns[guard.rsplit(" in ", 1)[1].rstrip(":")] == {"sh", "bash", "zsh", "dash", "ksh", "ash", "fish"}, src
    assert sum(line.startswith("    if ") for line in src.splitlines()) == 4  # the pretest, two comm tests, the last
    reference = [c.make_parts(p) for p in parts]
    for name in ("sh", "bash", "ksh", "ash", "fish", "true", "", None):
        for uid, comm in ((0, "sh"), (5, "bash"), (5, ["not", "hashable"])):
            ev = {"evt.type": "exec", "exec.filename": name and f"/bin/{name}", "proc.uid": uid, "proc.comm": comm}
            assert fn(ev) == [i for i, pred in enumerate(reference) if pred(ev)], (name, uid, comm)
