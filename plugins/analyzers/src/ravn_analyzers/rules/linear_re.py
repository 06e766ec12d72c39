"""Rule regexes in linear time: the ``regex`` operator compiles its patterns with RE2 (google-re2).

Python's ``re`` backtracks: a rule author's ``(a+)+$`` against a 40-character argv takes minutes, during which the
analysis thread is stuck and every later event waits (or is dropped). RE2 matches in time linear in the input
whatever the pattern. It has no backreferences (``\\1``) and no lookaround (``(?=``, ``(?!``, ``(?<=``); a pattern
that uses them is rejected when the rules load, with the pattern and RE2's reason. ``\\d``, ``\\w`` and ``\\s``
are ASCII-only in RE2, and ``$`` matches only at the very end (Python's also before a final newline).

Why RE2's own matcher (``_Regexp._regexp.Match``, not public API) is called: google-re2's public ``search``
builds a generator and a match object per call and, for ``str`` text, maps byte offsets back to characters; only
"does it match" is asked here. ``bench/regex.py`` (docs/BENCHMARKS.md, "Rules"): 0.71-0.77 us per test called
directly, 1.44-3.76 us through ``search(str)``, 1.07-1.52 us through ``search(bytes)``. The public
``search`` also raises UnicodeEncodeError on a lone surrogate, which JSON from Redis or a replay file can carry;
here text is encoded with ``replace``. With the default rules (``bench/rules.py``, synthetic mix, about 0.18 regex
tests per event) the whole analyzer differs by less than the run-to-run noise (about 5%), so the choice matters for
regex-heavy user rules. The private attribute is checked when this module is imported: if a google-re2 release
drops it, ``search`` falls back to the public API (same answers, slower), and
plugins/analyzers/tests/test_rules_hostile.py checks that both give the same answer.

Each pattern remembers its answers for recent short texts (``LinearRegex.search``, bounded): the values rules test
with a regex repeat (exec.filename, exec.exe and file.path of a host's usual programs), and a dict lookup costs a
tenth of an RE2 call.
"""

from __future__ import annotations

from typing import Any

import re2

_NO_MATCH = (-1, -1)
_UNKNOWN = object()  # not in the memo
#: texts whose answer each pattern remembers, and the longest text remembered (LinearRegex.search)
MEMO_SIZE = 256
MEMO_MAX_CHARS = 128


def _fast_path_available() -> bool:
    """Whether google-re2's internals this module calls are there (they are not public API)."""
    try:
        probe = re2.compile("x")
        return callable(probe._regexp.Match) and re2._re2.RE2.Anchor.UNANCHORED is not None
    except AttributeError:
        return False


FAST_PATH: bool = _fast_path_available()
_UNANCHORED: Any = re2._re2.RE2.Anchor.UNANCHORED if FAST_PATH else None


class RegexError(ValueError):
    """RE2 cannot compile the pattern; the message says why."""


class LinearRegex:
    """A compiled pattern with ``search(text)``: truthy when it matches anywhere in ``text``, else None
    (the shape the generated rule code tests: ``.search(x) is not None``)."""

    __slots__ = ("_compiled", "_match", "_memo", "pattern")

    def __init__(self, pattern: str, *, fast: bool = FAST_PATH) -> None:
        options = re2.Options()
        options.log_errors = False  # the error is raised, with the pattern, as RegexError
        options.never_capture = True  # only "does it match" is asked
        try:
            compiled = re2.compile(pattern, options=options)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode(errors="replace")
            raise RegexError(f"{reason} (rule regexes use RE2: linear time, no backreferences or lookaround)") \
                from None
        self.pattern = pattern
        self._compiled = compiled
        # RE2::Match on UTF-8 bytes: no per-call offset bookkeeping (see the module docstring)
        self._match = compiled._regexp.Match if fast else None
        self._memo: dict[str, bool | None] = {}  # recent short texts -> answer (see ``search``)

    def search(self, text: str) -> bool | None:
        """True when the pattern matches anywhere in ``text``, else None.

        The answers for the last (at most MEMO_SIZE) texts of up to MEMO_MAX_CHARS characters are remembered: the
        values rules test with a regex repeat (the executables of a host, the files its services write), and a
        dict lookup costs a tenth of an RE2 call. The memo is emptied when full, so it holds at most
        MEMO_SIZE x MEMO_MAX_CHARS characters per pattern."""
        memo = self._memo
        got = memo.get(text, _UNKNOWN)
        if got is not _UNKNOWN:
            return got  # type: ignore[return-value]
        data = text.encode("utf-8", "replace")
        if self._match is None:
            found = True if self._compiled.search(data) is not None else None
        else:
            found = True if self._match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH else None
        if len(text) <= MEMO_MAX_CHARS:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[text] = found
        return found

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r})"


__all__ = ["LinearRegex", "RegexError"]
