"""The condition language of RAVN rules: parsing, checking and compiling to Python closures.

A condition is a Falco-style boolean expression over event fields::

    evt.type = open and file.write = true and file.path startswith (/etc/, /usr/bin/)
      and not proc.anames intersects (package_managers)

Grammar (keywords are case-sensitive, lower case)::

    expr  := and ('or' and)*
    and   := not ('and' not)*
    not   := 'not' not | '(' expr ')' | MACRO | FIELD OP [VALUE]
    VALUE := WORD | 'quoted' | "quoted" | '(' item (',' item)* ')' | LIST
    item  := WORD | quoted | LIST            (a list name inside a list expands to its items)

Operators: ``= != < <= > >=`` (a missing field compares false), ``in`` (set membership), ``startswith``,
``endswith``, ``glob`` (fnmatch, ``*`` also crosses ``/``), ``contains`` / ``icontains`` (substring for
strings; element or key membership for lists and dicts), ``regex`` (a search with RE2, linear time: no
backreferences or lookaround; rules/linear_re.py), ``intersects`` (a list
field shares an element with the value list), ``anybits`` / ``allbits`` (integer masks, e.g.
``file.mode anybits 0o6000``) and the unary ``exists``. Values are converted to the field's type from
ravn_core/events.py (``0o6000``, ``0x10`` and ``-115`` are ints; ``true``/``false`` are bools), so a typo'd
value fails when the rule loads, not silently at run time.

Syntax tree: the parser gives frozen dataclasses, one per kind of node (``Cmp``, ``MacroRef``, ``Not``, ``And``,
``Or``, and ``Const`` once simplified); the compiler takes them apart with ``match``. ``comparisons()`` walks a
tree (through macros), so the fields a condition reads are known from the tree, not from the code generated for it.

Compilation: every condition becomes ONE Python lambda built from generated source, with all literal
values bound as constants (sets, tuples, compiled regexes), never interpolated into the source. Fields the
event does not carry (``proc.exe``, ``proc.pname``, ``proc.anames``, basenames...) are resolved through
``Resolvers``, lazily, only when evaluation reaches them, and cached for the current event.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias, assert_never

from ravn_analyzers.rules.linear_re import LinearRegex, RegexError
from ravn_core.events import COMMON_FIELDS, EVENT_TYPES, PROCESS_TREE_FIELDS, SYSTEM_EXE_DIRS, Event
from ravn_core.proctree import ProcessTree

Predicate: TypeAlias = Callable[[Event], bool]
Access: TypeAlias = Callable[[str], str]  # field name -> the Python expression that reads it


class ConditionError(ValueError):
    """A condition does not parse or does not check; ``pos`` is the 0-based column in the condition text."""

    def __init__(self, msg: str, pos: int = -1) -> None:
        super().__init__(msg)
        self.msg = msg
        self.pos = pos

    def __str__(self) -> str:
        return f"{self.msg} (column {self.pos + 1})" if self.pos >= 0 else self.msg


# ---------------------------------------------------------------------------------------------- fields
# Fields computed from the event itself (no process tree needed).
DERIVED_FIELDS: dict[str, str] = {
    "file.name": "str",  # basename of file.path
    "file.dir": "str",  # dirname of file.path
    "file.newname": "str",  # basename of file.newpath
    "file.newdir": "str",  # dirname of file.newpath
    "exec.name": "str",  # basename of exec.filename
    "exec.cmdline": "str",  # exec.argv joined by spaces
    "file.other_proc": "bool",  # file.path is under /proc/<N>/ of another process than the acting one
    "exec.script": "str",  # the first argument after argv[0] that is not an option; absent after -c/-e/-m
    "exec.stdin_script": "bool",  # no script argument and no inline code: a shell/interpreter would read stdin
    "exec.argv0": "str",  # exec.argv[0] (what ps shows; exec -a sets it freely)
    "proc.cmdline": "str",  # proc.args joined by spaces (process tree)
}
# Which event field a derived field needs, to check that a rule's events can carry it.
_DERIVED_FROM = {
    "file.name": "file.path", "file.dir": "file.path", "file.newname": "file.newpath",
    "file.newdir": "file.newpath", "exec.name": "exec.filename", "exec.cmdline": "exec.argv",
    "file.other_proc": "file.path", "exec.script": "exec.argv", "exec.stdin_script": "exec.argv",
    "exec.argv0": "exec.argv",
}
TREE_FIELDS: frozenset[str] = frozenset({f.name for f in PROCESS_TREE_FIELDS} | {"proc.cmdline"})


def field_types() -> dict[str, str]:
    """Every field name a condition may use, with its type."""
    out = {f.name: f.type for f in COMMON_FIELDS}
    for et in EVENT_TYPES.values():
        for f in et.fields:
            out.setdefault(f.name, f.type)
    out.update({f.name: f.type for f in PROCESS_TREE_FIELDS})
    out.update(DERIVED_FIELDS)
    return out


FIELD_TYPES = field_types()


def fields_of(event_types: Iterable[str]) -> set[str]:
    """Fields that events of these types carry or that can be resolved for them."""
    out = {f.name for f in COMMON_FIELDS} | set(TREE_FIELDS)
    for t in event_types:
        out |= {f.name for f in EVENT_TYPES[t].fields}
    out |= {d for d, src in _DERIVED_FROM.items() if src in out}
    return out


class Resolvers:
    """Resolves fields that are not in the event dict, for the batch being analyzed.

    The engine sets ``tree`` (and ``host``) before each batch. A per-event cache makes a field used by
    several rules cost one lookup.
    """

    def __init__(self) -> None:
        self.tree: ProcessTree = ProcessTree(max_size=16)
        self.host = ""
        self._ev: Event | None = None
        self._cache: dict[str, Any] = {}
        self.funcs: dict[str, Callable[[Event], Any]] = {
            "proc.exe": self._cached("proc.exe", self._exe),
            "proc.args": self._cached("proc.args", self._args),
            "proc.cmdline": self._cached("proc.cmdline", lambda ev: " ".join(self._args(ev) or ()) or None),
            "proc.pname": self._cached("proc.pname", lambda ev: _attr(self._parent(ev), "comm")),
            "proc.pexe": self._cached("proc.pexe", lambda ev: _attr(self._parent(ev), "exe")),
            "proc.anames": self._cached("proc.anames", lambda ev: [a.comm for a in self._ancestors(ev)]),
            "proc.aexes": self._cached("proc.aexes", lambda ev: [a.exe for a in self._ancestors(ev) if a.exe]),
            "proc.exename": self._cached("proc.exename", lambda ev: _exe_name(self._exe(ev))),
            "proc.trusted_name": self._cached("proc.trusted_name", lambda ev: _trusted_name(self._exe(ev))),
            "proc.ptrusted_name": self._cached(
                "proc.ptrusted_name", lambda ev: _trusted_name(_attr(self._parent(ev), "exe"))),
            "proc.atrusted_names": self._cached(
                "proc.atrusted_names",
                lambda ev: [n for a in self._ancestors(ev) if (n := _trusted_name(a.exe)) is not None]),
            "file.name": _basename("file.path"),
            "file.dir": _dirname("file.path"),
            "file.newname": _basename("file.newpath"),
            "file.newdir": _dirname("file.newpath"),
            "exec.name": _basename("exec.filename"),
            "exec.cmdline": lambda ev: " ".join(ev.get("exec.argv") or ()) or None,
            "file.other_proc": _other_proc,
            "exec.script": lambda ev: _script_arg(ev)[0],
            "exec.stdin_script": lambda ev: _script_arg(ev)[1] if "exec.argv" in ev else None,
            "exec.argv0": lambda ev: (ev.get("exec.argv") or [None])[0],
        }

    def _cached(self, name: str, fn: Callable[[Event], Any]) -> Callable[[Event], Any]:
        def get(ev: Event) -> Any:
            if ev is not self._ev:
                self._ev = ev
                self._cache = {}
            elif name in self._cache:
                return self._cache[name]
            value = self._cache[name] = fn(ev)
            return value

        return get

    def _exe(self, ev: Event) -> str | None:
        if ev.get("evt.type") == "exec" and ev.get("exec.ret", 0) == 0 and ev.get("exec.filename"):
            return str(ev["exec.filename"])
        info = self.tree.peek(ev.get("proc.pid", 0))
        return info.exe if info is not None and info.exe else None

    def _args(self, ev: Event) -> list[str] | None:
        if ev.get("evt.type") == "exec" and ev.get("exec.ret", 0) == 0 and "exec.argv" in ev:
            return list(ev["exec.argv"] or ())
        info = self.tree.peek(ev.get("proc.pid", 0))
        return info.args if info is not None else None

    def _parent(self, ev: Event) -> Any:
        peek = self.tree.peek
        ppid = ev.get("proc.ppid") or 0
        if not ppid:
            info = peek(ev.get("proc.pid", 0))
            ppid = info.ppid if info is not None else 0
        return peek(ppid) if ppid else None

    def _ancestors(self, ev: Event) -> list[Any]:
        pid = ev.get("proc.pid", 0)
        out = self.tree.ancestors(pid)
        if not out and pid not in self.tree:
            # The process is unknown to the tree: start from the event's parent.
            parent = self._parent(ev)
            if parent is not None:
                out = [parent, *self.tree.ancestors(parent.pid)]
        return out


def _other_proc(ev: Event) -> bool | None:
    """``file.other_proc``: the path is /proc/<N>/... (or /proc/<N>/task/<M>/...) of a process other than the
    acting one; False for /proc/self, /proc/thread-self and the process's own pid or tid."""
    p = ev.get("file.path")
    if not p:
        return None
    if not p.startswith("/proc/"):
        return False
    n = p[6:].split("/", 1)[0]
    return n.isdigit() and int(n) not in (ev.get("proc.pid"), ev.get("proc.tid"))


#: options after which a shell or interpreter runs inline code or a module, not a script file
_INLINE_OPTS = frozenset({"-c", "-e", "-E", "-m", "-r", "--command", "--eval"})


def _script_arg(ev: Event) -> tuple[str | None, bool]:
    """``(exec.script, exec.stdin_script)``. exec.script: the file a shell or interpreter was asked to run
    (``sh /tmp/x`` -> /tmp/x), i.e. the first argument after argv[0] that is not an option; None when inline code
    or a module comes first (``-c``, ``-e``, ``-m``) or there is none. exec.stdin_script: there is neither, or
    ``-s`` / ``-`` asks for stdin: the program would run what arrives on its stdin, as the shell at the end of
    ``curl ... | sh`` does. Meaningful for shells and interpreters only (rules test exec.name first)."""
    argv = ev.get("exec.argv") or ()
    for a in argv[1:]:
        if a in _INLINE_OPTS or (a[:1] == "-" and a[1:].isalpha() and "c" in a):
            return None, False  # -c, -e ... and bundles such as -ec, -lc
        if a == "-" or a == "-s":
            return None, True  # read the program from stdin explicitly
        if not a.startswith("-"):
            return str(a), False
    return None, True


def _script(ev: Event) -> str | None:
    return _script_arg(ev)[0]


def _exe_name(exe: str | None) -> str | None:
    return exe.rsplit("/", 1)[-1] or None if exe else None


def _trusted_name(exe: str | None) -> str | None:
    """The basename of an executable under SYSTEM_EXE_DIRS, else None. Allowlists key on it, never on comm: any
    process can rename itself (prctl PR_SET_NAME, /proc/self/comm), but not move its executable into /usr."""
    if not exe or not exe.startswith(SYSTEM_EXE_DIRS) or "/../" in exe:
        return None
    return exe.rsplit("/", 1)[-1].removesuffix(" (deleted)") or None  # a daemon whose package was upgraded


def _attr(obj: Any, name: str) -> Any:
    return getattr(obj, name) or None if obj is not None else None


def _basename(src: str) -> Callable[[Event], Any]:
    def get(ev: Event) -> Any:
        p = ev.get(src)
        return p.rsplit("/", 1)[-1] if p else None

    return get


def _dirname(src: str) -> Callable[[Event], Any]:
    def get(ev: Event) -> Any:
        p = ev.get(src)
        return (os.path.dirname(p) or None) if p else None

    return get


# ---------------------------------------------------------------------------------------------- tokens
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<lp>\() | (?P<rp>\)) | (?P<comma>,)
    | (?P<op><=|>=|!=|==|=|<|>)
    | '(?P<sq>[^']*)' | "(?P<dq>[^"]*)"
    | (?P<word>[^\s(),=<>!'"]+)
    )""",
    re.VERBOSE,
)
_WORD_OPS = {"in", "startswith", "endswith", "glob", "contains", "icontains", "regex", "intersects",
             "anybits", "allbits", "exists"}
_UNSET = object()  # a derived field not computed yet for this event
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_KEYWORDS = {"and", "or", "not"}


@dataclass
class Tok:
    kind: str  # lp rp comma op str word end
    text: str
    pos: int


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    i = 0
    n = len(text)
    while i < n:
        if text[i:].strip() == "":
            break
        m = _TOKEN.match(text, i)
        if m is None or m.end() == i:
            raise ConditionError(f"cannot read {text[i:].strip()[:20]!r}", i)
        kind = m.lastgroup or "?"
        start = m.start(kind)
        if kind in ("sq", "dq"):
            out.append(Tok("str", m.group(kind), start))
        else:
            out.append(Tok(kind, m.group(kind), start))
        i = m.end()
    out.append(Tok("end", "", n))
    return out


# ---------------------------------------------------------------------------------------------- syntax tree
@dataclass(frozen=True, slots=True)
class Value:
    """One value of a comparison as written: its text (a list name is already expanded to its items), the column
    it starts at, and whether it was quoted or came from a list (``"true"`` quoted is still converted by type)."""

    text: str
    pos: int
    quoted: bool


@dataclass(frozen=True, slots=True)
class Cmp:
    """``field op values`` at column ``pos``; ``is_list`` when the values were written as ``(a, b)`` or a list name.
    ``exists`` has no values."""

    field: str
    op: str
    values: tuple[Value, ...]
    pos: int
    is_list: bool = False

    @property
    def matches_nothing(self) -> bool:
        """``in`` / ``intersects`` an empty list (a user list not filled in): false without reading the field."""
        return not self.values and self.is_list and self.op in ("in", "intersects")


@dataclass(frozen=True, slots=True)
class MacroRef:
    """A macro's name used as a condition, at column ``pos``; expanded by the compiler (which detects cycles)."""

    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]  # two or more (the parser and ``simplify`` never build one of fewer)


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]  # two or more


@dataclass(frozen=True, slots=True)
class Const:
    """A condition folded to true or false by ``Compiler.simplify``; the parser never builds one."""

    value: bool


Node: TypeAlias = Cmp | MacroRef | Not | And | Or | Const
TRUE, FALSE = Const(True), Const(False)


def comparisons(node: Node, expand: Callable[[str], Node] | None = None,
                _stack: tuple[str, ...] = ()) -> Iterator[Cmp]:
    """Every comparison of the tree, left to right. A macro is walked into through ``expand(name)``, which returns
    its tree, or skipped when ``expand`` is None; a macro inside itself raises ConditionError."""
    match node:
        case Cmp():
            yield node
        case Not(item):
            yield from comparisons(item, expand, _stack)
        case And(items) | Or(items):
            for child in items:
                yield from comparisons(child, expand, _stack)
        case MacroRef(name):
            if expand is not None:
                if name in _stack:
                    raise ConditionError(f"macro {name!r} refers to itself through {' -> '.join(_stack)}")
                yield from comparisons(expand(name), expand, (*_stack, name))
        case Const():
            pass
        case _:
            assert_never(node)


@dataclass(frozen=True, slots=True)
class Parts:
    """A rule's condition for one event type, in the shape the dispatch function shares tests on: the conjuncts of
    its simplified condition, and the OR of its exceptions (None without any). ``Parts((FALSE,))`` never matches,
    ``Parts((TRUE,))`` always does."""

    conjuncts: tuple[Node, ...]
    exceptions: Node | None = None

    def tree(self) -> Node:
        """``conjuncts and not exceptions`` as one tree."""
        conj = TRUE if not self.conjuncts else self.conjuncts[0] if len(self.conjuncts) == 1 else And(self.conjuncts)
        return conj if self.exceptions is None else And((conj, Not(self.exceptions)))

    def nodes(self) -> tuple[Node, ...]:
        return self.conjuncts if self.exceptions is None else (*self.conjuncts, self.exceptions)


def any_of(parts: list[Parts]) -> Parts:
    """Parts that match when one of ``parts`` does (the steps of a sequence that take the same event type)."""
    return parts[0] if len(parts) == 1 else Parts((Or(tuple(p.tree() for p in parts)),))


# ---------------------------------------------------------------------------------------------- parser
@dataclass
class Env:
    """Lists and macros visible to a condition."""

    lists: dict[str, list[Any]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)


class Parser:
    """Recursive descent over the tokens; produces the tree of ``Cmp``, ``MacroRef``, ``Not``, ``And`` and ``Or``."""

    def __init__(self, text: str, env: Env) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.env = env

    def peek(self) -> Tok:
        return self.toks[self.i]

    def take(self) -> Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise ConditionError("empty condition", 0)
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise ConditionError(f"unexpected {tok.text!r}; expected 'and', 'or' or the end", tok.pos)
        return node

    def expr(self) -> Node:
        items = [self.conj()]
        while self.peek().kind == "word" and self.peek().text == "or":
            self.take()
            items.append(self.conj())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(self) -> Node:
        items = [self.neg()]
        while self.peek().kind == "word" and self.peek().text == "and":
            self.take()
            items.append(self.neg())
        return items[0] if len(items) == 1 else And(tuple(items))

    def neg(self) -> Node:
        tok = self.take()
        if tok.kind == "word" and tok.text == "not":
            return Not(self.neg())
        if tok.kind == "lp":
            node = self.expr()
            close = self.take()
            if close.kind != "rp":
                raise ConditionError(f"expected ')' but found {close.text or 'the end'!r}", close.pos)
            return node
        if tok.kind != "word" or tok.text in _KEYWORDS:
            raise ConditionError(f"expected a field, a macro or '(' but found {tok.text or 'the end'!r}", tok.pos)
        nxt = self.peek()
        is_op = nxt.kind == "op" or (nxt.kind == "word" and nxt.text in _WORD_OPS)
        if not is_op:
            if tok.text in self.env.macros:
                return MacroRef(tok.text, tok.pos)
            if _FIELD_RE.match(tok.text):
                raise ConditionError(f"field {tok.text} needs an operator, found {nxt.text or 'the end'!r}", nxt.pos)
            raise ConditionError(f"unknown macro {tok.text!r}", tok.pos)
        return self.comparison(tok)

    def comparison(self, ftok: Tok) -> Cmp:
        fname = ftok.text
        if fname not in FIELD_TYPES:
            close = difflib.get_close_matches(fname, list(FIELD_TYPES), n=1, cutoff=0.7)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConditionError(f"unknown field {fname!r}{hint}", ftok.pos)
        optok = self.take()
        op = "=" if optok.text == "==" else optok.text
        if op == "exists":
            return Cmp(fname, op, (), ftok.pos)
        values, is_list = self.value(op)
        return Cmp(fname, op, tuple(values), ftok.pos, is_list)

    def value(self, op: str) -> tuple[list[Value], bool]:
        """The values, and whether they were written as a list."""
        tok = self.take()
        if tok.kind == "lp":
            items: list[Value] = []
            while True:
                t = self.take()
                if t.kind == "rp" and not items:
                    break
                if t.kind not in ("word", "str"):
                    raise ConditionError(f"expected a list item but found {t.text or 'the end'!r}", t.pos)
                items.extend(self.expand(t))
                sep = self.take()
                if sep.kind == "rp":
                    break
                if sep.kind != "comma":
                    raise ConditionError(f"expected ',' or ')' but found {sep.text or 'the end'!r}", sep.pos)
            return items, True
        if tok.kind not in ("word", "str"):
            raise ConditionError(f"operator {op!r} needs a value, found {tok.text or 'the end'!r}", tok.pos)
        if tok.kind == "word" and tok.text in self.env.lists:
            return self.expand(tok), True
        return [Value(tok.text, tok.pos, tok.kind == "str")], False

    def expand(self, tok: Tok) -> list[Value]:
        if tok.kind == "word" and tok.text in self.env.lists:
            return [Value(str(v), tok.pos, True) for v in self.env.lists[tok.text]]
        return [Value(tok.text, tok.pos, tok.kind == "str")]


def parse(text: str, env: Env) -> Node:
    return Parser(text, env).parse()


# ---------------------------------------------------------------------------------------------- compiler
_STR_OPS = {"=", "!=", "in", "startswith", "endswith", "glob", "contains", "icontains", "regex", "exists"}
_INT_OPS = {"=", "!=", "<", "<=", ">", ">=", "in", "anybits", "allbits", "exists"}
_BOOL_OPS = {"=", "!=", "exists"}
_LIST_OPS = {"intersects", "contains", "startswith", "glob", "exists"}
_MULTI_OK = {"in", "startswith", "endswith", "glob", "contains", "icontains", "intersects", "regex"}


class Compiler:
    """Turns parsed conditions into Python: one lambda per condition, one dispatch function per event type. Holds
    the constants the generated code refers to."""

    def __init__(self, env: Env, resolvers: Resolvers) -> None:
        self.env = env
        self.resolvers = resolvers
        self.ns: dict[str, Any] = {"__builtins__": {"any": any}, "_U": _UNSET}
        self._consts: dict[tuple[str, Any], str] = {}
        self._macro_nodes: dict[str, Node] = {}
        self._re2: dict[str, LinearRegex] = {}
        self.dispatch_sources: dict[str, str] = {}  # for debugging: the generated dispatch functions

    def const(self, value: Any) -> str:
        # by value when equal values are interchangeable (a pattern compiled twice is one constant), else by identity
        key = (type(value).__name__,
               value if isinstance(value, (str, int, tuple, frozenset, re.Pattern)) else id(value))
        name = self._consts.get(key)
        if name is None:
            name = self._consts[key] = f"_k{len(self._consts)}"
            self.ns[name] = value
        return name

    def macro(self, name: str, stack: tuple[str, ...]) -> Node:
        if name in stack:
            raise ConditionError(f"macro {name!r} refers to itself through {' -> '.join(stack)}")
        node = self._macro_nodes.get(name)
        if node is None:
            try:
                node = self._macro_nodes[name] = parse(self.env.macros[name], self.env)
            except ConditionError as exc:
                raise ConditionError(f"in macro {name!r}: {exc}") from None
        return node

    def fields(self, node: Node) -> set[str]:
        """The fields the condition reads, through its macros (a macro that refers to itself raises
        ConditionError); an empty-list ``in`` / ``intersects`` reads nothing."""
        return {c.field for c in comparisons(node, lambda name: self.macro(name, ())) if not c.matches_nothing}

    def compile(self, text: str, allowed_fields: set[str] | None = None) -> Predicate:
        """Compile ``text``; ``allowed_fields``: the fields the rule's event types can carry."""
        node = parse(text, self.env)
        src = self.gen(node, allowed_fields, ())
        return self.make(src)

    def simplify(self, node: Node, etype: str | None, stack: tuple[str, ...] = ()) -> Node:
        """Inline macros, fold ``evt.type`` tests for ``etype`` to constants, propagate constants through
        and/or/not, and merge nested and/or: the shape the dispatch function shares conjuncts on."""
        match node:
            case MacroRef(name):
                return self.simplify(self.macro(name, stack), etype, (*stack, name))
            case Not(item):
                inner = self.simplify(item, etype, stack)
                return Const(not inner.value) if isinstance(inner, Const) else Not(inner)
            case And(children) | Or(children):
                kind = type(node)
                absorbing = kind is Or  # True absorbs an or, False absorbs an and
                items: list[Node] = []
                for child in children:
                    c = self.simplify(child, etype, stack)
                    if isinstance(c, Const):
                        if c.value == absorbing:
                            return c
                        continue
                    items.extend(c.items if isinstance(c, kind) else [c])
                if not items:
                    return Const(not absorbing)
                return items[0] if len(items) == 1 else kind(tuple(items))
            case Cmp("evt.type", "=" | "!=" | "in" as op, values) if etype is not None:
                hit = etype in {v.text for v in values}
                return Const(hit if op != "!=" else not hit)
            case _:
                return node

    def rule_parts(self, text: str, exceptions: list[str], allowed_fields: set[str] | None = None,
                   etype: str | None = None) -> Parts:
        """The condition's conjuncts and the OR of its exceptions, checked against ``allowed_fields``. With
        ``etype``, simplified for events of that type only (``evt.type`` tests folded); a condition that cannot
        match it (or that requires a field to be in an empty list) gives ``Parts((FALSE,))``."""
        node = self.simplify(parse(text, self.env), etype)
        if node == FALSE:
            return Parts((FALSE,))
        conjs = node.items if isinstance(node, And) else (node,)  # (TRUE,): only the exceptions are left to test
        for c in conjs:
            self.gen(c, allowed_fields, ())  # checks it: ConditionError naming field, operator or value
        if any(isinstance(c, Cmp) and c.matches_nothing for c in conjs):
            return Parts((FALSE,))
        excs = [self.simplify(parse(t, self.env), etype) for t in exceptions]
        if TRUE in excs:
            return Parts((FALSE,))
        live = [e for e in excs if not isinstance(e, Const)]
        for e in live:
            self.gen(e, allowed_fields, ())
        if not live:
            return Parts(conjs)
        return Parts(conjs, live[0] if len(live) == 1 else Or(tuple(live)))

    def make(self, src: str) -> Predicate:
        code = compile(f"lambda ev: {src}", "<rule condition>", "eval")
        fn: Predicate = eval(code, self.ns)  # source generated above; values are constants
        return fn

    def make_parts(self, parts: Parts) -> Predicate:
        """``conjuncts and not exceptions`` as one lambda."""
        return self.make(self.gen(parts.tree(), None, ()))

    def make_dispatch(self, parts: list[Parts], name: str = "dispatch") -> Callable[[Event], list[int]]:
        """One function for all the rules of one event type; returns the indices of the rules that match
        (an empty list when none does).

        Each event field the conditions read is fetched once into a local, and rules that start with the same
        conjuncts (``file.write = true and not file.ret < 0`` ...) share one test of them: the rules form a
        trie of conjuncts, emitted as nested ``if``s. A rule then costs a few comparisons, not a call. Blocks in a
        row that start with a ``startswith`` (or ``in``) test of one string field share one test of all their
        values first. A regex on a missing or empty field is answered when the rule compiles (``cmp``).
        """
        # A field read by several rules is fetched once into a local; one read once stays an inline lookup.
        # Fields derived from the event (basenames) and from the process tree (proc.exe, proc.anames: through the
        # resolver's per-event cache) are computed on first use only. The reads are counted on
        # the trees (``parts`` are simplified: no macros left), one per comparison that reads its field.
        uses = Counter(c.field for p in parts for n in p.nodes() for c in comparisons(n, None)
                       if not c.matches_nothing)
        funcs = self.resolvers.funcs
        fields: dict[str, str] = {}
        derived: dict[str, str] = {}

        def access(fname: str) -> str:
            if fname in funcs:
                if fname in TREE_FIELDS and uses[fname] < 2:
                    return self.accessor(fname)
                var = derived.setdefault(fname, f"_d{len(derived)}")  # computed on first use, then reused
                return f"({var} if {var} is not _U else ({var} := {self.accessor(fname)}))"
            if uses[fname] < 2:
                return f"_get({fname!r})"
            return fields.setdefault(fname, f"_f{len(fields)}")

        def gen(node: Node) -> str:
            return self.gen(node, None, (), access)

        Item: TypeAlias = tuple[int, tuple[str, ...], str | None, tuple[Node, ...]]  # index, code, exceptions, trees
        items: list[Item] = []
        for i, p in enumerate(parts):
            if p.conjuncts != (FALSE,):
                conjs = tuple(c for c in p.conjuncts if c != TRUE)
                items.append((i, tuple(gen(c) for c in conjs), gen(p.exceptions) if p.exceptions else None, conjs))
        body: list[str] = []

        def hit(i: int, exc: str | None, ind: str) -> None:
            if exc:
                body.append(f"{ind}if not ({exc}):")
                body.append(f"{ind}    _h.append({i})")
            else:
                body.append(f"{ind}_h.append({i})")

        def shared(node: Node) -> tuple[str, str, tuple[str, ...]] | None:
            """(field, kind, values) of a test that consecutive tests of one field can share a pre-test with:
            ``startswith`` or ``in`` on a string field (the values of a string field are its texts), and ``=`` on
            a field computed here (exec.name ...: a string or None, so a set lookup of it cannot fail where ``==``
            does not; an event field may hold anything)."""
            match node:
                case Cmp(fname, op, values) if values and FIELD_TYPES.get(fname) == "str":
                    if op == "startswith":
                        return fname, "startswith", tuple(v.text for v in values)
                    if op == "in" or (op == "=" and fname in funcs):
                        return fname, "in", tuple(v.text for v in values)
                case And(items):  # true only if its first item is
                    return shared(items[0])
                case Or(items):  # true only if one item is: the union, when all are tests of one kind on one field
                    each = [shared(n) for n in items]
                    one = each[0]
                    if one is not None and all(e is not None and e[:2] == one[:2] for e in each):
                        return one[0], one[1], tuple(v for e in each if e is not None for v in e[2])
            return None

        def emit(group: list[Item], depth: int, ind: str) -> None:
            order: dict[str, list[Item]] = {}
            for it in group:
                if depth >= len(it[1]):
                    hit(it[0], it[2], ind)
                else:
                    order.setdefault(it[1][depth], []).append(it)
            keys = [(key, sub, shared(sub[0][3][depth])) for key, sub in order.items()]
            j = 0
            while j < len(keys):
                # Blocks in a row that each start with `f startswith (...)` (or `f in (...)`, `f = x`) on one field go
                # under one test of all their values: a path under none of a dozen watched prefixes costs one
                # startswith, not twelve. The blocks keep their order, so the rules still match in the same order.
                first = keys[j][2]
                k = j + 1
                while first is not None and k < len(keys) and (nxt := keys[k][2]) is not None and nxt[:2] == first[:2]:
                    k += 1
                inner = ind
                if k - j >= 2 and first is not None:
                    fname, op, _ = first
                    values = tuple(dict.fromkeys(v for _, _, sh in keys[j:k] if sh is not None for v in sh[2]))
                    x = access(fname)
                    if op == "startswith":
                        body.append(f"{ind}if ({x} or '').startswith({self.const(values)}):")
                    else:
                        body.append(f"{ind}if {x} in {self.const(frozenset(values))}:")
                    inner = ind + "    "
                for key, sub, _ in keys[j:k]:
                    if len(sub) == 1:
                        i, conjs, exc, _ = sub[0]
                        body.append(f"{inner}if {' and '.join(f'({c})' for c in conjs[depth:])}:")
                        hit(i, exc, inner + "    ")
                    else:
                        body.append(f"{inner}if {key}:")
                        emit(sub, depth + 1, inner + "    ")
                j = k

        emit(items, 0, "    ")
        lines = [f"def {name}(ev):", "    _get = ev.get", "    _h = []"]
        lines += [f"    {var} = _get({fname!r})" for fname, var in fields.items()]
        lines += [f"    {var} = _U" for var in derived.values()]
        lines += [*body, "    return _h"]
        code = compile("\n".join(lines), f"<rules dispatch {name}>", "exec")
        scope: dict[str, Any] = {}
        exec(code, self.ns, scope)  # source generated above; values are constants
        fn: Callable[[Event], list[int]] = scope[name]
        self.dispatch_sources[name] = "\n".join(lines)
        return fn

    def gen(self, node: Node, allowed: set[str] | None, stack: tuple[str, ...], access: Access | None = None) -> str:
        """The Python expression of ``node`` (macros inlined), checking each comparison: its field must be in
        ``allowed`` (unless None), its operator must apply to the field's type and its values must convert.
        ``access`` gives the expression that reads a field (default: ``accessor``)."""
        match node:
            case And(items):
                return " and ".join(f"({self.gen(n, allowed, stack, access)})" for n in items)
            case Or(items):
                return " or ".join(f"({self.gen(n, allowed, stack, access)})" for n in items)
            case Not(item):
                return f"not ({self.gen(item, allowed, stack, access)})"
            case MacroRef(name):
                return self.gen(self.macro(name, stack), allowed, (*stack, name), access)
            case Const(value):
                return str(value)
            case Cmp():
                return self.cmp(node, allowed, stack, access or self.accessor)
            case _:
                assert_never(node)

    def accessor(self, fname: str) -> str:
        """The expression that reads ``fname`` in a lambda over ``ev``."""
        if fname in self.resolvers.funcs:
            if fname not in TREE_FIELDS:
                # computed from the event alone: a dispatch function computes it once per event (make_dispatch)
                name = "_D_" + fname.replace(".", "_")
                self.ns[name] = self.resolvers.funcs[fname]
                return f"{name}(ev)"
            return f"{self.const(self.resolvers.funcs[fname])}(ev)"
        return f"ev.get({fname!r})"

    def cmp(self, node: Cmp, allowed: set[str] | None, stack: tuple[str, ...], access: Access) -> str:
        fname, op, raw, pos = node.field, node.op, node.values, node.pos
        where = f" (in macro {stack[-1]!r})" if stack else ""
        if allowed is not None and fname not in allowed:
            raise ConditionError(f"field {fname} is not carried by the rule's event types{where}", pos)
        ftype = FIELD_TYPES[fname]
        kind = "list" if ftype.startswith(("list", "dict")) else ftype
        ops = {"str": _STR_OPS, "int": _INT_OPS, "bool": _BOOL_OPS, "list": _LIST_OPS}[kind]
        if op not in ops:
            raise ConditionError(f"operator {op!r} does not apply to {fname} ({ftype}); use one of "
                                 f"{', '.join(sorted(ops))}{where}", pos)
        if op != "exists" and not raw:
            if node.matches_nothing:
                return "False"  # an empty list (e.g. a user list not filled in) matches nothing
            raise ConditionError(f"{fname} {op}: empty value list{where}", pos)
        if len(raw) > 1 and op not in _MULTI_OK:
            raise ConditionError(f"{fname} {op} takes one value, got {len(raw)}{where}", pos)
        elem = "str" if kind == "list" else kind
        if fname == "syscall.seq" or ftype == "list[int]":
            elem = "int"
        values = [self.convert(v.text, v.pos, v.quoted, elem, fname, op) for v in raw]
        x = access(fname)
        if op == "exists":
            return f"{x} is not None"
        v0 = values[0] if values else None
        if kind == "list":
            if op in ("intersects", "contains"):
                if len(values) == 1:
                    return f"{self.const(v0)} in ({x} or ())"
                return f"not {self.const(frozenset(values))}.isdisjoint({x} or ())"
            if op == "startswith":
                return f"any(_e.startswith({self.const(tuple(values))}) for _e in ({x} or ()))"
            rx = self.const(_glob_re(values))
            return f"any({rx}.match(_e) is not None for _e in ({x} or ()))"
        if op == "=":
            return f"{x} == {self.const(v0)}"
        if op == "!=":
            return f"((_v := {x}) is not None and _v != {self.const(v0)})"
        if op in ("<", "<=", ">", ">="):
            return f"((_v := {x}) is not None and _v {op} {self.const(v0)})"
        if op == "in":
            return f"{x} in {self.const(frozenset(values))}"
        if op == "anybits":
            return f"(({x} or 0) & {self.const(v0)}) != 0"
        if op == "allbits":
            return f"(({x} or 0) & {self.const(v0)}) == {self.const(v0)}"
        if op in ("startswith", "endswith"):
            return f"({x} or '').{op}({self.const(tuple(values))})"
        if op == "glob":
            return self.glob(x, values)
        if op in ("contains", "icontains"):
            if op == "contains" and len(values) == 1:
                return f"{self.const(v0)} in ({x} or '')"
            flags = re.IGNORECASE if op == "icontains" else 0
            crx = re.compile("|".join(re.escape(v) for v in values), flags)
            return f"{self.const(crx)}.search({x} or '') is not None"
        if op == "regex":  # RE2: linear time, so no pattern can stall analysis (rules/linear_re.py)
            pattern = "|".join(f"(?:{v})" for v in values)
            lrx = self._re2.get(pattern)
            if lrx is None:
                try:
                    lrx = self._re2[pattern] = LinearRegex(pattern)
                except RegexError as exc:
                    raise ConditionError(f"{fname} regex: {exc}{where}", pos) from None
            # A missing or empty field gives the answer on '' known now: no RE2 call for it (exec.ld_preload,
            # exec.ld_audit ... are absent from nearly every event that reads them).
            on_empty = lrx.search("") is not None
            return f"({self.const(lrx)}.search(_v) is not None if (_v := {x}) else {on_empty})"
        raise ConditionError(f"operator {op!r} is not implemented", pos)  # pragma: no cover

    def glob(self, x: str, patterns: list[str]) -> str:
        """Globs that are really equality, prefix, suffix or substring tests become string methods (several
        times faster than a regex anchored after a leading ``.*``); the rest become one regex."""
        eq, pre, suf, sub, rest = [], [], [], [], []
        for p in patterns:
            star_l, star_r = p.startswith("*"), p.endswith("*") and len(p) > 1
            core = p[1 if star_l else 0: len(p) - 1 if star_r else len(p)]
            if any(c in core for c in "*?["):
                rest.append(p)
            elif star_l and star_r:
                sub.append(core)
            elif star_l:
                suf.append(core)
            elif star_r:
                pre.append(core)
            else:
                eq.append(core)
        tests = []
        if eq:
            tests.append(f"_v in {self.const(frozenset(eq))}")
        if pre:
            tests.append(f"_v.startswith({self.const(tuple(pre))})")
        if suf:
            tests.append(f"_v.endswith({self.const(tuple(suf))})")
        for c in sub:
            tests.append(f"{self.const(c)} in _v")
        if rest:
            tests.append(f"{self.const(_glob_re(rest))}.match(_v) is not None")
        return f"((_v := ({x} or '')) != '' and ({' or '.join(tests)}))"

    def convert(self, text: str, pos: int, quoted: bool, elem: str, fname: str, op: str) -> Any:
        if elem == "int" or op in ("anybits", "allbits"):
            try:
                return int(text, 0)
            except ValueError:
                raise ConditionError(f"{fname} {op}: {text!r} is not an integer", pos) from None
        if elem == "bool":
            if text.lower() not in ("true", "false"):
                raise ConditionError(f"{fname} {op}: {text!r} is not true or false", pos)
            return text.lower() == "true"
        if text == "" and op in ("startswith", "endswith", "contains", "glob"):
            raise ConditionError(f"{fname} {op}: empty pattern would match everything", pos)
        return text


def _glob_re(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


# ---------------------------------------------------------------------------------------------- templates
_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+)\}")


def template_fields(text: str) -> list[str]:
    return _PLACEHOLDER.findall(text)


def compile_template(text: str, resolvers: Resolvers) -> Callable[[list[Event]], str]:
    """``"{proc.comm} read {file.path}"`` -> a function of the triggering events (the last one wins;
    a field missing from it is taken from earlier steps). Unknown fields are rejected by the loader."""
    parts: list[tuple[str, str | None]] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append((text[last:m.start()], m.group(1)))
        last = m.end()
    tail = text[last:]
    funcs = resolvers.funcs

    def render(events: list[Event]) -> str:
        out = []
        for lit, name in parts:
            out.append(lit)
            if name is None:
                continue
            value: Any = None
            for ev in reversed(events):
                value = funcs[name](ev) if name in funcs else ev.get(name)
                if value is not None:
                    break
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            out.append("?" if value is None else str(value))
        out.append(tail)
        return "".join(out)

    return render
